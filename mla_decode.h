/* mla_decode.h - batched paged MLA decode on the GPU: the CUDA twin of mla_paged_decode_latent
 * (mla_paged.h). mla_decode.cu derives each step from the C twin; notes/mla_decode.md has the
 * measurements. Callable from C; no CUDA types here (a stream is a void *). */
#ifndef MLA_DECODE_H
#define MLA_DECODE_H

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>
#include <stdint.h>

#include "mla_paged.h"

/* The kernel's sizes: V3's latent (d_c 512, d_R 64); 32 tokens a tile (half a page). */
#define MLA_DEC_DC 512
#define MLA_DEC_DR 64
#define MLA_DEC_TILE 32

/* Kernel variants, all computing the same thing (notes/mla_decode.md section 6):
 *   0  mla_decode.cu: CTAs of 16 or 32 heads x tiles of 32 rows, partial scores summed in shared
 *      memory, a uniform split of every sequence into n_split chunks of chunk_tiles tiles;
 *   1  mla_decode_pair.cu: CTAs of 16, 32 or 64 heads in warp pairs with the softmax in registers,
 *      token streams, and a balanced schedule: the batch's pages cut evenly over n_cta CTAs per head
 *      block (one wave), whatever the lengths;
 *   2  as 1, but the 64-head CTA (more than 32 heads) computes S = Q C^T with wgmma (Q and the
 *      tiles in shared memory in wgmma's core-matrix layout); 16 and 32 heads run variant 1.
 *   3  mla_decode_fp8.cu, FP8 caches: as 1, but the codes enter the tensor cores as their exact
 *      values, converted in registers from the raw tile, the scales applied to the per-block partial
 *      scores and to p (no widened tile); BF16 caches, and FP8 at more than 32 heads (64-head
 *      CTAs, where it measured slower), run variant 1.
 * MLA_DECODE_VARIANT (environment) picks the variant of mla_decode_plan; default 3, which is
 * variant 1 except for FP8 caches at <= 32 heads (notes/mla_decode.md: 1 faster than 0 on every
 * batch >= 64 shape, section 6; 2 slower than 1 at 128 heads; 3 1.28-1.32x 1 on FP8 at 16 heads,
 * section 7; batch 1 with 3 not measured). */
#define MLA_DEC_VARIANTS 4
#define MLA_DEC_DEFAULT_VARIANT 3

/* How a batch is cut: heads_per_cta query heads share each loaded tile, head_blocks CTAs cover n_h.
 * Variant 0: every sequence's tiles are cut into n_split chunks of chunk_tiles tiles, one CTA per
 * (head block, chunk, sequence). Variant 1: n_cta CTAs per head block share the batch's pages;
 * n_split is the partial records per segment (its token streams), chunk_tiles 0.
 * work_floats: the scratch for the partial outputs, their log-sum-exps and (variant 1) the
 * schedule's per-sequence counts (0 when variant 0 needs no split). */
typedef struct {
    int heads_per_cta, head_blocks, n_split, chunk_tiles;
    size_t work_floats;
    int variant, n_cta;
} MlaDecodePlan;

/* The plan for B sequences of at most max_len tokens and n_h heads on the current device, with the
 * variant of MLA_DECODE_VARIANT (MLA_DEC_DEFAULT_VARIANT when unset or out of range). */
void mla_decode_plan(MlaDecodePlan *p, int B, int n_h, int max_len);
/* The same with the variant given (0 .. MLA_DEC_VARIANTS - 1). */
void mla_decode_plan_variant(MlaDecodePlan *p, int B, int n_h, int max_len, int variant);

/* Device pointers. o_lat [B, n_h, 512] FP32, lse [B, n_h] (natural log; may be NULL);
 * q_abs [B, n_h, 576] FP32 (rounded to BF16 by the kernel); pool: the cache's pages
 * [n_pages, 64, row_bytes] in format f (MLA_KV_BF16 or MLA_KV_FP8); block_tables [B, max_pages];
 * lens [B] (each >= 1, at most the plan's max_len); work [plan->work_floats]. Asynchronous on
 * stream (NULL: the default stream). Returns 0, or -1 for a format or size the kernel lacks. */
int mla_decode_cuda(float *o_lat, float *lse, const float *q_abs, const void *pool, MlaKvFormat f,
                    const int32_t *block_tables, int max_pages, const int *lens, int B, int n_h,
                    float scale, const MlaDecodePlan *plan, float *work, void *stream);

/* The drop-in twin of mla_paged_decode_latent on host pointers (copies in, runs, copies out;
 * lse may be NULL), with mla_decode_plan's variant. CUDA errors print and exit, as kernels.cu's
 * launchers. */
void mla_paged_decode_latent_cuda(float *o_lat, float *lse, const float *q_abs, const MlaPagedCache *c,
                                  const int32_t *block_tables, int max_pages, const int *lens, int B,
                                  int n_h, float scale);
/* The same with the variant given (the test runs each). */
void mla_paged_decode_latent_cuda_variant(float *o_lat, float *lse, const float *q_abs, const MlaPagedCache *c,
                                          const int32_t *block_tables, int max_pages, const int *lens, int B,
                                          int n_h, float scale, int variant);

/* Variant 1's own plan and launch (mla_decode_pair.cu; mla_decode_cuda calls them). fp8: the FP8
 * format, else BF16; sms: the device's multiprocessors. */
void mla_decode_pair_plan(MlaDecodePlan *p, int B, int n_h, int max_len, int sms);
void mla_decode_pair_run(float *o_lat, float *lse, const float *q_abs, const void *pool, int fp8,
                         const int32_t *block_tables, int max_pages, const int *lens, int B, int n_h, float scale,
                         const MlaDecodePlan *plan, float *work, void *stream);
/* Variant 3's launch (mla_decode_fp8.cu) for an FP8 pool, with mla_decode_pair_plan's plan. */
void mla_decode_fp8_run(float *o_lat, float *lse, const float *q_abs, const void *pool, const int32_t *block_tables,
                        int max_pages, const int *lens, int B, int n_h, float scale, const MlaDecodePlan *plan,
                        float *work, void *stream);

#ifdef __cplusplus
}
#endif

#endif
