#!/bin/sh
# tests/cuda_golden.sh - golden files of `run golden` read by the CUDA twins (make cuda-test runs it on
# a GPU; notes/cuda.md section 7): writes four files with build/cuda/run golden, then
# build/cuda/test_golden_cuda holds every recorded function's CUDA twin to the file's tolerances.
#   v3_yarn, v2_lite   every function, on the tiny fixtures' configs: V3's query compression, YaRN,
#                      sigmoid gate with bias and groups; V2-Lite's q_proj, softmax gate, greedy. 6 rows
#                      (batch 2 x 3 tokens: the GEMV and the decode MoE kernels) and 9 rows (cuBLAS, the
#                      MoE grouped by expert); fp8 shapes with partial 128-blocks
#   v3, v2_lite_shape  the published configs (tests/fixtures/configs): attention (128 heads for V3),
#                      the gate over 256 / 64 experts and the FP8 functions at their shapes, 10 rows
#                      (V3: cuBLAS) and 8 (V2-Lite: the GEMV); the experts' and the whole model's
#                      functions left out (GBs of random weights); 530 MB in all, written in seconds
# Output: test_golden_cuda's lines (OK / NOT OK / no twin per output); exit status its, or 1 when a
# file cannot be written.
R=${RUN:-build/cuda/run}
T=${TEST:-build/cuda/test_golden_cuda}
O=${GOLDEN_DIR:-build/cuda}
BIG=rmsnorm,rope_table,rope,mla_query,mla_latent,mla_naive,mla_absorbed,mla_decode,moe_gate
BIG=$BIG,fp8_quant_block,fp8_dequant_block,fp8_quant_act,fp8_dequant_act,fp8_gemm
set -e
"$R" golden --config tests/fixtures/v3_yarn/config.json --seed 7 --tokens 3 --shape batch=2 --shape cache=7 \
    --shape gemm_k=320 --out "$O/golden_v3_yarn.safetensors"
"$R" golden --config tests/fixtures/v2_lite/config.json --seed 3 --tokens 9 --shape gemm_n=200 \
    --out "$O/golden_v2_lite.safetensors"
"$R" golden --config tests/fixtures/configs/deepseek_v3/config.json --seed 11 --tokens 5 --shape batch=2 \
    --shape cache=256 --shape gemm_n=384 --shape gemm_k=1000 --functions $BIG --out "$O/golden_v3.safetensors"
"$R" golden --config tests/fixtures/configs/deepseek_v2_lite/config.json --seed 12 --tokens 4 --shape batch=2 \
    --shape cache=256 --shape gemm_n=384 --shape gemm_k=1000 --functions $BIG,ffn_swiglu \
    --out "$O/golden_v2_lite_shape.safetensors"
set +e
"$T" "$O/golden_v3_yarn.safetensors" "$O/golden_v2_lite.safetensors" "$O/golden_v3.safetensors" \
    "$O/golden_v2_lite_shape.safetensors"
