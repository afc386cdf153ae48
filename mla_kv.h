/* mla_kv.h - how one cached latent row is stored: F32, BF16, or FlashMLA's FP8 layout. The
 * definitions both caches use: the contiguous per-sequence cache of model.c / mla.c (run --kv) and
 * the paged pool of mla_paged.c. mla_kv.c has the bytes drawn out and the error bounds. */
#ifndef MLA_KV_H
#define MLA_KV_H

#include <stddef.h>
#include <stdint.h>

/* FP8 scale groups: one FP32 scale per 128 values of c_kv (FlashMLA's tile_size); a c_kv that is
 * not a multiple of 128 long (the small test models) ends in one shorter group. */
#define MLA_FP8_GROUP 128
/* The most groups a row may have (d_c <= 2048): the encoder keeps the scales on the stack. */
#define MLA_FP8_MAX_GROUPS 16

/* How one cached token [c_kv (d_c) | k_pe (d_R)] is stored (bytes in V3, d_c 512, d_R 64):
 *   MLA_KV_F32   (d_c + d_R) FP32                                         2304
 *   MLA_KV_BF16  (d_c + d_R) BF16, round to nearest even                  1152
 *   MLA_KV_FP8   d_c E4M3 codes of c_kv, then ceil(d_c / 128) FP32 scales (one per group of 128
 *                codes: c = code * scale, scale = amax / 448), then d_R BF16 of k_pe (not
 *                quantized: the rope part is small and sensitive)                  656 */
typedef enum { MLA_KV_F32, MLA_KV_BF16, MLA_KV_FP8 } MlaKvFormat;

/* "f32", "bf16", "fp8"; and back, case-insensitive (-1 when unknown). */
const char *mla_kv_format_name(MlaKvFormat f);
int mla_kv_format_from_name(const char *s);

/* Bytes of one stored token; 0 when the format cannot hold these sizes (d_c <= 0, d_R < 0, or for
 * FP8 more than MLA_FP8_MAX_GROUPS groups). */
size_t mla_kv_row_bytes(MlaKvFormat f, int d_c, int d_R);

/* dst [row_bytes] from latent [d_c + d_R] (FP32); FP8 codes saturate (fp8.h FP8_SATURATE). */
void mla_kv_encode_row(uint8_t *dst, MlaKvFormat f, const float *latent, int d_c, int d_R);
/* out [d_c + d_R] FP32 from src [row_bytes]; FP8 values are the FP32 products code * scale. */
void mla_kv_decode_row(float *out, MlaKvFormat f, const uint8_t *src, int d_c, int d_R);

/* One layer's latent cache of one sequence, contiguous: token s is the row_bytes bytes at
 * rows + s * row_bytes, stored in format (model.h's State holds one per layer). */
typedef struct {
    MlaKvFormat format;
    uint8_t *rows;
} MlaCache;

#endif
