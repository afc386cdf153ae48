#!/bin/sh
# tests/cuda_bench.sh - the GPU speed figures (make cuda-bench): a benchmark that prints, not a test.
#   1. bench_device on the bundled models (BF16, FP8): prefill 512 and decode 256 tok/s, the copy
#      bandwidth and the decode's bandwidth floor;
#   2. a DeepSeek-V2-Lite-shaped FP8 model made here: run init with
#      tests/fixtures/configs/deepseek_v2_lite at V2L_LAYERS layers (default 4: the dense layer and
#      3 MoE layers; every matrix at its published shape), run quantize --to fp8, bench_device;
#   3. HF transformers (bf16, its KV cache) on the same GPU: the bundled BF16 model as stored, and
#      the V2-Lite-shaped model's FP8 weights dequantized to BF16 (run quantize --to bf16).
# V2L_DIR (default /tmp/dsv3-v2lite) holds the made checkpoints; HF=0 skips step 3.
R=${RUN:-build/cuda/run}
B=build/cuda/bench_device
W=${V2L_DIR:-/tmp/dsv3-v2lite}
L=${V2L_LAYERS:-4}
set -e
$B models/kjv-v3
$B models/kjv-v3-fp8
mkdir -p $W
python3 -c "
import json; c = json.load(open('tests/fixtures/configs/deepseek_v2_lite/config.json'))
c['num_hidden_layers'] = $L; json.dump(c, open('$W/config.json', 'w'), indent=1)"
[ -f $W/fp8/model.safetensors ] || {
    t=$(date +%s); $R init --config $W/config.json --out $W/f32 --seed 1 >/dev/null
    $R quantize $W/f32 $W/fp8 --to fp8 >/dev/null; rm -rf $W/f32
    echo "V2-Lite shape, $L layers: made and quantized in $(( $(date +%s) - t )) s"; }
$R inspect $W/fp8 | grep -E "^(layers|hidden|experts|params|checkpoint)" || true
$B $W/fp8
if [ "${HF:-1}" != 0 ]; then
    PYTHONUNBUFFERED=1 python3 tests/hf_bench.py models/kjv-v3
    [ -f $W/bf16/model.safetensors ] || $R quantize $W/fp8 $W/bf16 --to bf16 >/dev/null
    PYTHONUNBUFFERED=1 python3 tests/hf_bench.py $W/bf16
fi
