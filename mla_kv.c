/* mla_kv.c - the storage formats of a cached latent row [c_kv (d_c = 512) | k_pe (d_R = 64)].
 *
 *   F32    2304 bytes   exact: what the model computed (agreement with HF).
 *   BF16   1152 bytes   each value rounded to nearest even BF16 (8 significant bits): a relative
 *                       error of at most 2^-8 per value (half a step of 7 mantissa bits).
 *   FP8     656 bytes   FlashMLA's layout: [512 E4M3 codes | 4 FP32 scales | 64 BF16 of k_pe].
 *          c_kv is cut into groups of 128 (4 in V3; a c_kv not a multiple of 128 long ends in a
 *          shorter group, as fp8.c's edge tiles: the test models' d_c 32 or 64 is one group);
 *          group g stores scale_g = amax_g / 448 (fp8.c's fp8_scale, F32 format: 1 for an all-zero
 *          group) and codes e4m3(c / scale_g), so c ~= code * scale_g, the group's largest value at
 *          448 * scale_g: a relative error of at most 2^-4 (half a step of 3 mantissa bits) down to
 *          2^-6 * 448 * scale_g, and below that (E4M3's subnormals) an absolute one of at most
 *          2^-10 * scale_g. k_pe stays BF16: it is 64 values of 576, and the rope dot product
 *          carries position, which a coarse code would blur.
 * Reading widens a row to FP32: exact for F32 and BF16; for FP8 the value of a code is defined as
 * the FP32 product code * scale_g, rounded once (4 and 24 significant bits need not fit in 24), as
 * fp8.c's fp8_dequant_act does. After the widening every format's numbers are plain floats, and
 * the attention that reads them is the same code for all three.
 */
#include "mla_kv.h"

#include <string.h>
#include <strings.h>

#include "fp8.h"
#include "ops.h"

const char *mla_kv_format_name(MlaKvFormat f) {
    return f == MLA_KV_F32 ? "f32" : f == MLA_KV_BF16 ? "bf16" : f == MLA_KV_FP8 ? "fp8" : "?";
}

int mla_kv_format_from_name(const char *s) {
    for (int f = MLA_KV_F32; f <= MLA_KV_FP8; f++)
        if (strcasecmp(s, mla_kv_format_name((MlaKvFormat)f)) == 0) return f;
    return -1;
}

static int fp8_groups(int d_c) { return (d_c + MLA_FP8_GROUP - 1) / MLA_FP8_GROUP; }

size_t mla_kv_row_bytes(MlaKvFormat f, int d_c, int d_R) {
    if (d_c <= 0 || d_R < 0) return 0;
    switch (f) {
    case MLA_KV_F32: return sizeof(float) * (size_t)(d_c + d_R);
    case MLA_KV_BF16: return sizeof(uint16_t) * (size_t)(d_c + d_R);
    case MLA_KV_FP8:
        if (fp8_groups(d_c) > MLA_FP8_MAX_GROUPS) return 0;
        return (size_t)d_c + sizeof(float) * (size_t)fp8_groups(d_c) + sizeof(uint16_t) * (size_t)d_R;
    }
    return 0;
}

/* Rows are byte arrays (656 is not a multiple of 8, so an FP8 row's scales sit at any 4-byte
 * offset): values go in and out with memcpy, never through a cast pointer. */
static void put_f32(uint8_t *p, float v) { memcpy(p, &v, sizeof v); }
static float get_f32(const uint8_t *p) { float v; memcpy(&v, p, sizeof v); return v; }
static void put_bf16(uint8_t *p, float v) { uint16_t h = f32_to_bf16(v); memcpy(p, &h, sizeof h); }
static float get_bf16(const uint8_t *p) { uint16_t h; memcpy(&h, p, sizeof h); return bf16_to_f32(h); }

void mla_kv_encode_row(uint8_t *dst, MlaKvFormat f, const float *latent, int d_c, int d_R) {
    int width = d_c + d_R;
    if (f == MLA_KV_F32) {
        for (int i = 0; i < width; i++) put_f32(dst + 4 * (size_t)i, latent[i]);
    } else if (f == MLA_KV_BF16) {
        for (int i = 0; i < width; i++) put_bf16(dst + 2 * (size_t)i, latent[i]);
    } else { /* FP8: codes [d_c], scales [ceil(d_c / 128)], k_pe BF16 [d_R] */
        int groups = fp8_groups(d_c);
        float scale[MLA_FP8_MAX_GROUPS];
        uint8_t *scales = dst + d_c, *rope = scales + 4 * (size_t)groups;
        fp8_quant_act(dst, scale, latent, 1, d_c, MLA_FP8_GROUP, FP8_SCALE_F32);
        for (int g = 0; g < groups; g++) put_f32(scales + 4 * (size_t)g, scale[g]);
        for (int i = 0; i < d_R; i++) put_bf16(rope + 2 * (size_t)i, latent[d_c + i]);
    }
}

void mla_kv_decode_row(float *out, MlaKvFormat f, const uint8_t *src, int d_c, int d_R) {
    int width = d_c + d_R;
    if (f == MLA_KV_F32) {
        for (int i = 0; i < width; i++) out[i] = get_f32(src + 4 * (size_t)i);
    } else if (f == MLA_KV_BF16) {
        for (int i = 0; i < width; i++) out[i] = get_bf16(src + 2 * (size_t)i);
    } else {
        const uint8_t *scales = src + d_c, *rope = scales + 4 * (size_t)fp8_groups(d_c);
        for (int i = 0; i < d_c; i++)
            out[i] = fp8_e4m3_decode(src[i]) * get_f32(scales + 4 * (size_t)(i / MLA_FP8_GROUP));
        for (int i = 0; i < d_R; i++) out[d_c + i] = get_bf16(rope + 2 * (size_t)i);
    }
}
