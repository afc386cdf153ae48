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

/* How a batch is cut: heads_per_cta query heads share each loaded tile; every sequence's tiles
 * are cut into n_split chunks of chunk_tiles tiles, one CTA per (head block, chunk, sequence).
 * work_floats: the scratch for the partial outputs and their log-sum-exps (0 when n_split is 1). */
typedef struct {
    int heads_per_cta, head_blocks, n_split, chunk_tiles;
    size_t work_floats;
} MlaDecodePlan;

/* The plan for B sequences of at most max_len tokens and n_h heads on the current device. */
void mla_decode_plan(MlaDecodePlan *p, int B, int n_h, int max_len);

/* Device pointers. o_lat [B, n_h, 512] FP32, lse [B, n_h] (natural log; may be NULL);
 * q_abs [B, n_h, 576] FP32 (rounded to BF16 by the kernel); pool: the cache's pages
 * [n_pages, 64, row_bytes] in format f (MLA_KV_BF16 or MLA_KV_FP8); block_tables [B, max_pages];
 * lens [B] (each >= 1, at most the plan's max_len); work [plan->work_floats]. Asynchronous on
 * stream (NULL: the default stream). Returns 0, or -1 for a format or size the kernel lacks. */
int mla_decode_cuda(float *o_lat, float *lse, const float *q_abs, const void *pool, MlaKvFormat f,
                    const int32_t *block_tables, int max_pages, const int *lens, int B, int n_h,
                    float scale, const MlaDecodePlan *plan, float *work, void *stream);

/* The drop-in twin of mla_paged_decode_latent on host pointers (copies in, runs, copies out;
 * lse may be NULL). CUDA errors print and exit, as kernels.cu's launchers. */
void mla_paged_decode_latent_cuda(float *o_lat, float *lse, const float *q_abs, const MlaPagedCache *c,
                                  const int32_t *block_tables, int max_pages, const int *lens, int B,
                                  int n_h, float scale);

#ifdef __cplusplus
}
#endif

#endif
