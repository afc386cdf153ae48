/* init.h - `run init`: random checkpoints of any config's shape (init.c). */
#ifndef INIT_H
#define INIT_H

#include <stdint.h>

#include "config.h"
#include "quantize.h"
#include "safetensors.h"

/* A random checkpoint for config.json at config_path, written to out_dir (created if missing) as
 * config.json and model.safetensors: weights N(0, 1/fan_in), norms near 1, a small positive
 * correction bias, embeddings N(0, 1); the same seed gives the same bytes anywhere (Rng). with_mtp
 * adds the MTP module at layer index num_hidden_layers (and sets num_nextn_predict_layers to 1 in the
 * written config). to: QUANT_TO_F32 writes F32; QUANT_TO_BF16 and QUANT_TO_FP8 write what `run
 * quantize --to bf16 / fp8` makes of the F32 checkpoint (E4M3 in 128 x 128 blocks, F32 scales),
 * streamed one tensor at a time. */
int model_init_random(const char *config_path, const char *out_dir, uint64_t seed, int with_mtp, QuantTarget to,
                      Error *e);

#endif
