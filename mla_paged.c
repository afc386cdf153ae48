/* mla_paged.c - the latent cache of a serving engine: paged, batched, in F32, BF16 or FP8.
 *
 * A server decodes many sequences of different lengths at once. Their caches cannot be one
 * contiguous [L, 576] array each (lengths grow by one token per step and are not known ahead), so
 * the cache is a pool of fixed pages (64 tokens, as vLLM and FlashMLA) and each sequence keeps a
 * block table: token s of sequence b is row s % 64 of page block_table[b][s / 64]. Pages can sit
 * anywhere in the pool, in any order; a sequence's last page is partly filled.
 *
 * Each token's row is stored in one of mla_kv.c's formats (F32 2304 bytes, BF16 1152, FlashMLA's
 * FP8 656 in V3) and widened to FP32 when read; after the widening the attention below is the same
 * code for all three.
 *
 * Decode of one token per sequence, the absorbed form of mla.c (q_lat = W_UK^T q_nope per head):
 *   score_s = (q_lat . c_s + q_pe . k_pe_s) * scale,  p = softmax(score),  o_lat = sum_s p_s c_s
 *   lse = max_s score_s + log sum_s exp(score_s - max): what split-KV merges by (mla_decode.cu).
 * The sums run in the order of mla.c's attend_absorbed_small (dot_f32; ops.c's softmax; axpy in
 * s order), so with the F32 format a paged batch gives the bits that mla_attend_absorbed gives on
 * each sequence's rows laid out contiguously (tests/test_mla_paged.c checks it with memcmp).
 */
#include "mla_paged.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- the pool ------------------------------------------------------------------------------------ */

int mla_paged_init(MlaPagedCache *c, MlaKvFormat f, int d_c, int d_R, int n_pages, Error *e) {
    memset(c, 0, sizeof *c);
    size_t row = mla_kv_row_bytes(f, d_c, d_R);
    if (row == 0)
        return error_set(e, "mla_paged_init: format %s cannot store d_c %d, d_R %d (FP8 takes d_c up to %d)",
                         mla_kv_format_name(f), d_c, d_R, MLA_FP8_MAX_GROUPS * MLA_FP8_GROUP);
    if (n_pages <= 0) return error_set(e, "mla_paged_init: %d pages", n_pages);
    c->data = calloc((size_t)n_pages * MLA_PAGE, row);
    if (!c->data)
        return error_set(e, "mla_paged_init: no memory for %d pages of %d x %zu bytes", n_pages, MLA_PAGE, row);
    c->format = f;
    c->d_c = d_c;
    c->d_R = d_R;
    c->n_pages = n_pages;
    c->row_bytes = row;
    return 0;
}

void mla_paged_free(MlaPagedCache *c) {
    free(c->data);
    c->data = NULL;
}

void mla_paged_write(MlaPagedCache *c, const int32_t *block_table, int s, const float *latent) {
    mla_kv_encode_row(mla_paged_row(c, block_table, s), c->format, latent, c->d_c, c->d_R);
}

/* ---- batched decode ------------------------------------------------------------------------------ */

/* One (sequence, head): rows [len, d_c + d_R] widened; q_abs [d_c + d_R]; p [len] scratch.
 * The steps and their order are attend_absorbed_small's (mla.c) from its q_lat on; the softmax is
 * ops.c's, written out here to keep its max and sum for the log-sum-exp. */
static void decode_one(float *o_lat, float *lse, const float *q_abs, const float *rows, int len,
                       int d_c, int d_R, float scale, float *p) {
    int width = d_c + d_R;
    for (int s = 0; s < len; s++) {
        const float *row = rows + (size_t)s * width;
        p[s] = (dot_f32(q_abs, row, d_c) + dot_f32(q_abs + d_c, row + d_c, d_R)) * scale;
    }
    float max = -INFINITY, sum = 0.0f; /* = softmax(p, len), keeping max and sum */
    for (int s = 0; s < len; s++)
        if (p[s] > max) max = p[s];
    for (int s = 0; s < len; s++) {
        p[s] = p[s] == -INFINITY ? 0.0f : expf(p[s] - max);
        sum += p[s];
    }
    for (int s = 0; s < len; s++) p[s] /= sum;
    if (lse) *lse = max + logf(sum);
    memset(o_lat, 0, sizeof(float) * d_c);
    for (int s = 0; s < len; s++) axpy(o_lat, p[s], rows + (size_t)s * width, d_c);
}

/* rows [len, d_c + d_R] = the sequence's tokens widened to FP32, in s order. */
static void gather_rows(float *rows, const MlaPagedCache *c, const int32_t *block_table, int len) {
    int width = c->d_c + c->d_R;
    for (int s = 0; s < len; s++)
        mla_kv_decode_row(rows + (size_t)s * width, c->format, mla_paged_row(c, block_table, s), c->d_c, c->d_R);
}

static int max_len(const int *lens, int B) {
    int L = 0;
    for (int b = 0; b < B; b++) L = lens[b] > L ? lens[b] : L;
    return L;
}

int mla_paged_decode_latent(float *o_lat, float *lse, const float *q_abs, const MlaPagedCache *c,
                            const int32_t *block_tables, int max_pages, const int *lens, int B,
                            int n_h, float scale, Error *e) {
    int d_c = c->d_c, width = c->d_c + c->d_R, L = max_len(lens, B);
    float *rows = malloc(sizeof(float) * (size_t)L * width);
    if (!rows)
        return error_set(e, "mla_paged_decode_latent: out of memory (%zu bytes for %d gathered rows)",
                         sizeof(float) * (size_t)L * width, L);
    int failed = 0; /* set by any thread whose scores are missing; every thread still reaches the barrier */
    for (int b = 0; b < B && !failed; b++) {
        gather_rows(rows, c, block_tables + (size_t)b * max_pages, lens[b]);
        /* Threads take whole heads: each head's numbers are the same on any thread. */
#pragma omp parallel if (n_h > 1 && (size_t)n_h * lens[b] * width >= (1 << 14))
        {
            float *p = malloc(sizeof(float) * (size_t)L);
            if (!p) {
#pragma omp atomic write
                failed = 1;
            }
#pragma omp for schedule(static)
            for (int h = 0; h < n_h; h++) {
                if (!p) continue;
                size_t bh = (size_t)b * n_h + h;
                decode_one(o_lat + bh * d_c, lse ? lse + bh : NULL, q_abs + bh * width, rows, lens[b],
                           d_c, c->d_R, scale, p);
            }
            free(p);
        }
    }
    free(rows);
    if (failed)
        return error_set(e, "mla_paged_decode_latent: out of memory (%zu bytes of per-thread scores)", sizeof(float) * (size_t)L);
    return 0;
}

int mla_paged_decode(float *out, const float *q, const MlaPagedCache *c, const int32_t *block_tables,
                     int max_pages, const int *lens, int B, const MlaWeights *w, const MlaDims *m,
                     Error *e) {
    int d_c = m->kv_lora_rank, d_R = m->rope, width = d_c + d_R, qk = m->nope + m->rope, n_h = m->n_heads;
    if (c->d_c != d_c || c->d_R != d_R)
        return error_set(e, "mla_paged_decode: cache holds d_c %d + d_R %d, the model has %d + %d", c->d_c,
                         c->d_R, d_c, d_R);
    for (int b = 0; b < B; b++)
        if (lens[b] < 1 || (lens[b] + MLA_PAGE - 1) / MLA_PAGE > max_pages)
            return error_set(e, "mla_paged_decode: sequence %d has length %d (1 .. %d allowed)", b, lens[b],
                             max_pages * MLA_PAGE);
    float *q_abs = calloc((size_t)B * n_h * width, sizeof(float));     /* [B, n_h, d_c + d_R] */
    float *o_lat = malloc(sizeof(float) * (size_t)B * n_h * d_c);     /* [B, n_h, d_c] */
    float *w_h = malloc(sizeof(float) * (size_t)(m->nope + m->v) * d_c); /* [nope + v, d_c] */
    if (!q_abs || !o_lat || !w_h) {
        free(q_abs); free(o_lat); free(w_h);
        return error_set(e, "mla_paged_decode: no memory for a batch of %d", B);
    }
    for (int h = 0; h < n_h; h++) { /* q_lat = W_UK^T q_nope (j in order, as mla.c), q_pe copied */
        tensor_rows_f32(w_h, &w->kv_b, h * (m->nope + m->v), m->nope);
        for (int b = 0; b < B; b++) {
            const float *q_nope = q + (size_t)b * n_h * qk + (size_t)h * qk;
            float *qa = q_abs + ((size_t)b * n_h + h) * width;
            memset(qa, 0, sizeof(float) * d_c);
            for (int j = 0; j < m->nope; j++) axpy(qa, q_nope[j], w_h + (size_t)j * d_c, d_c);
            memcpy(qa + d_c, q_nope + m->nope, sizeof(float) * d_R);
        }
    }
    if (mla_paged_decode_latent(o_lat, NULL, q_abs, c, block_tables, max_pages, lens, B, n_h, m->softmax_scale, e)) {
        free(q_abs); free(o_lat); free(w_h);
        return -1;
    }
    for (int h = 0; h < n_h; h++) { /* out_h = W_UV o_lat */
        tensor_rows_f32(w_h, &w->kv_b, h * (m->nope + m->v) + m->nope, m->v);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < m->v; i++)
                out[(size_t)b * n_h * m->v + (size_t)h * m->v + i] =
                    dot_f32(w_h + (size_t)i * d_c, o_lat + ((size_t)b * n_h + h) * d_c, d_c);
    }
    free(q_abs); free(o_lat); free(w_h);
    return 0;
}
