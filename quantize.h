/* quantize.h - `run quantize`: convert a checkpoint directory to DeepSeek's FP8 layout (E4M3 weights,
 * one FP32 weight_scale_inv per block) or back to BF16 / F32; and the switch that puts a loaded
 * model's FP8 weights on matmul's FP8 GEMM path (`run logits --fp8-gemm`). See quantize.c's header
 * comment for which tensors are quantized and why; notes/fp8.md section 6 for the logits gap. */
#ifndef QUANTIZE_H
#define QUANTIZE_H

#include <stdio.h>

#include "fp8.h"
#include "model.h"

typedef enum { QUANT_TO_FP8, QUANT_TO_BF16, QUANT_TO_F32 } QuantTarget;

typedef struct {
    QuantTarget to;
    int block;             /* FP8 weight blocks are block x block (128 in DeepSeek-V3) */
    Fp8ScaleFmt scale_fmt; /* FP8_SCALE_F32 (amax / 448) or FP8_SCALE_UE8M0 (a power of two) */
    FILE *progress;        /* a line every second or so on long conversions, and a summary; NULL: silent */
} QuantOptions;

typedef struct {
    int n_in, n_out;       /* tensors read (weight_scale_inv included) and written */
    int n_quantized;       /* weights quantized to E4M3 (--to fp8) */
    int n_dequantized;     /* FP8 weights dequantized (--to bf16, f32; or to other blocks) */
    int n_files;           /* safetensors files written */
    double bytes_in, bytes_out;
} QuantStats;

/* 1 when DeepSeek's own checkpoints store the tensor NAME as FP8: the 2-D Linear weights of
 * self_attn (q_a_proj, q_b_proj, q_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj) and of the FFN
 * (mlp.{gate,up,down}_proj, mlp.experts.E.*, mlp.shared_experts.*) of every decoder layer, the MTP
 * module's (layer index num_hidden_layers) included. 0 for everything else. */
int quant_is_fp8_weight(const char *name);

/* Converts checkpoint directory in (config.json + model.safetensors or an index and its shards)
 * into out (created if missing; must not be in): config.json with quantization_config set (fp8) or
 * removed (bf16, f32), the weights, and tokenizer.json, tokenizer_config.json and
 * generation_config.json copied when present. A single input file gives out/model.safetensors; a
 * sharded input gives the same shards and an index (so memory holds one shard at a time).
 * stats may be NULL. Returns 0, or -1 with e naming the directory, file or tensor. */
int quant_convert(const char *in, const char *out, const QuantOptions *o, QuantStats *stats, Error *e);

/* The output's config.json from the input's: quantization_config as DeepSeek writes it (fp8:
 * activation_scheme dynamic, fmt e4m3, quant_method fp8, weight_block_size [block, block], and
 * scale_fmt ue8m0 when asked), or none, with torch_dtype (when present) saying bfloat16 / float32. */
struct cJSON;
void quant_edit_config(struct cJSON *cfg, const QuantOptions *o);

/* `run quantize IN OUT --to fp8|bf16|f32 [--block 128] [--scale f32|ue8m0]`, argv after "quantize".
 * Messages go to stderr. Returns the exit status: 0, 1 (the conversion failed), 2 (bad arguments). */
int quantize_main(int argc, char **argv);

/* on = 1: every FP8 E4M3 weight of m that has block scales takes matmul's FP8 GEMM path (activations
 * quantized in 1 x 128 tiles, fp8_gemm with FP32 accumulation); on = 0: back to widen-then-FP32.
 * Returns how many weights have the flag (0: the checkpoint has no FP8 weights). */
int quant_use_fp8_gemm(Model *m, int on);

#endif
