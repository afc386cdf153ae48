/* mla_paged.h - a paged latent cache in three storage formats (mla_kv.h), and batched absorbed
 * decode over it. The C twin of mla_decode.cu; mla_paged.c has the math, notes/mla_decode.md the
 * numbers. */
#ifndef MLA_PAGED_H
#define MLA_PAGED_H

#include <stdint.h>

#include "mla.h"
#include "mla_kv.h"
#include "ops.h"

/* Tokens per page: FlashMLA's block size. A sequence's token s lives in page
 * block_table[s / MLA_PAGE], row s % MLA_PAGE. */
#define MLA_PAGE 64

/* A pool of n_pages pages of MLA_PAGE tokens each, one row_bytes row per token: [n_pages, 64, row].
 * One allocation per layer; sequences own pages through their block tables. */
typedef struct {
    MlaKvFormat format;
    int d_c, d_R;
    int n_pages;
    size_t row_bytes;
    uint8_t *data; /* [n_pages * MLA_PAGE * row_bytes] */
} MlaPagedCache;

/* 0, or -1 with e set (bad sizes, no memory). mla_paged_free frees data only. */
int mla_paged_init(MlaPagedCache *c, MlaKvFormat f, int d_c, int d_R, int n_pages, Error *e);
void mla_paged_free(MlaPagedCache *c);

/* The stored row of token s of the sequence whose pages are block_table [ceil(len / 64)]. */
static inline uint8_t *mla_paged_row(const MlaPagedCache *c, const int32_t *block_table, int s) {
    size_t page = (size_t)block_table[s / MLA_PAGE];
    return c->data + (page * MLA_PAGE + (size_t)(s % MLA_PAGE)) * c->row_bytes;
}

/* Store latent [d_c + d_R] (k_pe rotated) as token s of that sequence. */
void mla_paged_write(MlaPagedCache *c, const int32_t *block_table, int s, const float *latent);

/* The attention core, what the GPU kernel computes: for each sequence b and head h,
 *   score_s  = (q_lat . c_s + q_pe . k_pe_s) * scale        s = 0 .. lens[b]-1
 *   o_lat    = sum_s softmax(score)_s c_s                   lse = log sum_s exp(score_s)
 * q_abs [B, n_h, d_c + d_R] = [q_lat | q_pe] per head; block_tables [B, max_pages] (row b holds
 * ceil(lens[b] / 64) page indices); lens [B], each >= 1. o_lat [B, n_h, d_c]; lse [B, n_h] (natural
 * log, of the scaled scores; may be NULL). Every (b, h) is computed alone, in mla.c's
 * attend_absorbed_small order (dot_f32, softmax, axpy in s order), on rows widened to FP32, so with
 * an F32 cache it is bit for bit mla_attend_absorbed's over the same rows. Threads take whole
 * (b, h) pairs. Returns 0, or -1 with e set (the function and the bytes) when its gathered rows
 * [max lens, d_c + d_R] or a thread's scores cannot be allocated. */
int mla_paged_decode_latent(float *o_lat, float *lse, const float *q_abs, const MlaPagedCache *c,
                            const int32_t *block_tables, int max_pages, const int *lens, int B,
                            int n_h, float scale, Error *e);

/* The whole absorbed decode of one token per sequence: out [B, n_h * v] from q [B, n_h * (nope +
 * rope)] (q_pe rotated), with q_lat = W_UK^T q_nope and out_h = W_UV o_lat from w->kv_b, as
 * mla_attend_absorbed does for T = 1. F32 cache: bit-identical to mla_attend_absorbed(out_b, q_b,
 * rows, 1, lens[b] - 1, w, m) over the sequence's rows laid out contiguously. 0, or -1 with e set. */
int mla_paged_decode(float *out, const float *q, const MlaPagedCache *c, const int32_t *block_tables,
                     int max_pages, const int *lens, int B, const MlaWeights *w, const MlaDims *m,
                     Error *e);

#endif
