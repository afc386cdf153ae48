/* mla.c - Multi-head Latent Attention (DeepSeek-V2 report section 2.1; V3 keeps it unchanged): the
 * whole attention block of a decoder layer, one function as DeepSeek's MLA.forward is one method.
 *
 * Standard attention caches K and V: 2 * n_h * d_h floats per token per layer (V3 sizes: 2 * 128 *
 * 128 = 32768). MLA caches one low-rank latent instead and rebuilds K and V from it:
 *
 *   c_kv = RMSNorm(W_DKV x)               [d_c = 512]     the latent, cached
 *   k_pe = RoPE(W_KR x)                   [d_R = 64]      one rope key shared by all heads, cached
 *   k_h  = [W_UK[h] c_kv ; k_pe]          [nope + d_R]    W_UK[h]: [nope, d_c]
 *   v_h  =  W_UV[h] c_kv                  [v]             W_UV[h]: [v, d_c]
 * (W_DKV and W_KR together are kv_a_proj_with_mqa; W_UK and W_UV interleaved per head are kv_b_proj.)
 * The query is compressed too, to save activation memory in training:
 *   q = W_UQ RMSNorm(W_DQ x)  -> per head [q_nope (nope) ; q_pe (d_R)], q_pe rotated.
 *
 * mla_forward, T tokens at positions pos0 .. pos0+T-1 (the right column: V3's sizes):
 *   q      = mla_query(x)                   [T, n_h * (nope + d_R)]   [T, 128 * 192]
 *   latent = mla_latent(x)                  [T, d_c + d_R]            [T, 576]
 *   rotate each head's q_pe and each token's k_pe by the token's position (rope.c)
 *   store the latent rows as cache rows pos0 .. pos0+T-1, in the cache's format (mla_kv.c)
 *   attn   = mla_attend_absorbed(q, cache rows 0 .. pos0+T-1), or mla_attend_naive
 *                                           [T, n_h * v]              [T, 128 * 128]
 *   out    = o_proj(attn)                   [T, d]                    [T, 7168]
 *
 * score[h][t][s] = (q_nope[h,t] . W_UK[h] c_s + q_pe[h,t] . k_pe[s]) * scale,  causal (s <= t)
 * out[h][t]      = W_UV[h] sum_s p[h][t][s] c_s
 *
 * Naive form: build k_nope and v for every cached token and head, then ordinary attention.
 * Absorbed form: two folds by associativity, so attention runs directly on the cached latents and
 * no per-head K/V is ever materialized:
 *   W_UK into the query:  q_nope[h] . (W_UK[h] c_s) = (W_UK[h]^T q_nope[h]) . c_s
 *       q_lat[h] = W_UK[h]^T q_nope[h]      [d_c, nope] x [nope] -> [d_c]    (512 x 128 -> 512)
 *       score    = q_lat[h] . c_s + q_pe[h] . k_pe[s]      [d_c] + [d_R] per cached row s
 *   W_UV after the sum:   sum_s p_s (W_UV[h] c_s) = W_UV[h] (sum_s p_s c_s)
 *       o_lat[h] = sum_s p_s c_s            L rows of [d_c] -> [d_c]
 *       out[h]   = W_UV[h] o_lat[h]         [v, d_c] x [d_c] -> [v]          (128 x 512 -> 128)
 * Decode reads 576 floats per cached token once for all heads; the naive form would expand
 * 2 * 128 * 128 per token per step. Both forms give the same numbers up to FP32 rounding; tests
 * check them against each other and against HF transformers (which computes the naive form).
 *
 * Why the rope part is separate ("decoupled"): rotating the whole key W_UK c_s by R_s and the query
 * by R_t would make the score (R_t q)^T (R_s W_UK c_s) = q^T R_t^T R_s W_UK c_s = q^T R_{s-t} W_UK c_s,
 * a rotation that depends on both positions sitting between q and W_UK: W_UK could no longer be
 * folded into the query once per query. So q_nope and c_kv carry no position, and the small q_pe /
 * k_pe part carries all of it (rope.c).
 *
 * The cache's format (run --kv f32|bf16|fp8: 2304, 1152 or 656 bytes per token and layer in V3,
 * mla_kv.c) changes only what the attention reads. Every number is computed in FP32; a new row is
 * stored in the format, and then the attention reads all L rows back from the cache, widened to
 * FP32, this call's own rows included. That is how a serving engine decodes (the new token's row
 * is written to the paged cache, then FlashMLA's kernel reads the whole cache: mla_paged.c); an
 * engine's prefill may instead attend over the prompt's fresh, unrounded rows. Here a prefill
 * reads the cache too, so the values the attention sees do not depend on how a prompt is cut into
 * chunks, or on prefill versus decode. F32 reads the rows in place (an F32 cache is a malloc'd
 * array of 4 (d_c + d_R)-byte rows: aligned floats), the same bits as before formats existed.
 * Both attention forms read the same widened rows (the naive form expands K and V from them), so
 * --naive takes any format and still checks the absorbed form. A serving kernel widens a tile at
 * a time in its loader (mla_decode.cu); here the whole prefix is widened once per call,
 * L * (d_c + d_R) floats, small beside the n_h * L * (2 d_c + d_R) multiply-adds of the attention.
 *
 * Shapes in comments use T = tokens in this call, L = cached length (pos0 + T).
 */
#include "mla.h"
#include "rope.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int mla_query(float *q, float *scratch, const float *x, int T, const MlaWeights *w, const MlaDims *m, Error *e) {
    if (m->q_lora_rank == 0) return matmul(q, x, &w->q, T, e);   /* [T, n_h*(nope+rope)] */
    if (matmul(scratch, x, &w->q_a, T, e)) return -1;             /* [T, d_c'] */
    rmsnorm(scratch, scratch, w->q_a_norm, T, m->q_lora_rank, m->eps);
    return matmul(q, scratch, &w->q_b, T, e);                     /* [T, n_h*(nope+rope)] */
}

int mla_latent(float *latent, const float *x, int T, const MlaWeights *w, const MlaDims *m, Error *e) {
    int width = mla_cache_width(m);
    if (matmul(latent, x, &w->kv_a, T, e)) return -1;             /* [T, d_c + d_R] */
    for (int t = 0; t < T; t++) {                                 /* norm the latent, not k_pe */
        float *c = latent + (size_t)t * width;
        rmsnorm(c, c, w->kv_a_norm, 1, m->kv_lora_rank, m->eps);
    }
    return 0;
}

/* scores [T, L] *= scale, entries s > pos0 + t set to -inf, then softmax per row. */
static void causal_softmax(float *scores, int T, int L, int pos0, float scale) {
    for (int t = 0; t < T; t++) {
        float *row = scores + (size_t)t * L;
        int visible = pos0 + t + 1;
        for (int s = 0; s < visible; s++) row[s] *= scale;
        for (int s = visible; s < L; s++) row[s] = -INFINITY;
        softmax(row, L);
    }
}

/* Absorbed attention for a few queries (decode, speculative verify): every number a query gets is
 * computed from that query alone, in a fixed order (dot_f32), so it does not depend on T. */
static int attend_absorbed_small(float *out, const float *q, const float *cache, int T, int pos0,
                                 const MlaWeights *w, const MlaDims *m, Error *e) {
    int d_c = m->kv_lora_rank, qk = m->nope + m->rope, width = mla_cache_width(m);
    int L = pos0 + T, q_stride = m->n_heads * qk, out_stride = m->n_heads * m->v;
    size_t bytes = sizeof(float) * ((size_t)(m->nope + m->v) * d_c + 2 * (size_t)d_c + (size_t)L);
    int failed = 0; /* set by any thread whose scratch is missing; every thread still reaches the barrier */
    /* Threads (OpenMP) take whole heads, each with its own scratch: a head's numbers are computed
     * the same way on any thread, so the bits do not depend on the thread count. */
#pragma omp parallel if (m->n_heads > 1 && (size_t)m->n_heads * L * width >= (1 << 14))
    {
    float *w_h = malloc(sizeof(float) * (size_t)(m->nope + m->v) * d_c); /* [nope+v, d_c] */
    float *q_lat = malloc(sizeof(float) * (size_t)d_c), *o_lat = malloc(sizeof(float) * (size_t)d_c);
    float *p = malloc(sizeof(float) * (size_t)L);
    int ok = w_h && q_lat && o_lat && p;
    if (!ok) {
#pragma omp atomic write
        failed = 1;
    }
#pragma omp for schedule(static)
    for (int h = 0; h < m->n_heads; h++) {
        if (!ok) continue;
        tensor_rows_f32(w_h, &w->kv_b, h * (m->nope + m->v), m->nope + m->v);
        const float *w_uv = w_h + (size_t)m->nope * d_c;
        for (int t = 0; t < T; t++) {
            const float *q_nope = q + (size_t)t * q_stride + (size_t)h * qk, *q_pe = q_nope + m->nope;
            memset(q_lat, 0, sizeof(float) * d_c);                    /* q_lat = W_UK^T q_nope */
            for (int j = 0; j < m->nope; j++) axpy(q_lat, q_nope[j], w_h + (size_t)j * d_c, d_c);
            int visible = pos0 + t + 1;
            for (int s = 0; s < visible; s++) {
                const float *row = cache + (size_t)s * width;
                p[s] = (dot_f32(q_lat, row, d_c) + dot_f32(q_pe, row + d_c, m->rope)) * m->softmax_scale;
            }
            softmax(p, visible);
            memset(o_lat, 0, sizeof(float) * d_c);                    /* o_lat = sum_s p_s c_s */
            for (int s = 0; s < visible; s++) axpy(o_lat, p[s], cache + (size_t)s * width, d_c);
            for (int i = 0; i < m->v; i++)                             /* out_h = W_UV o_lat */
                out[(size_t)t * out_stride + (size_t)h * m->v + i] = dot_f32(w_uv + (size_t)i * d_c, o_lat, d_c);
        }
    }
    free(w_h); free(q_lat); free(o_lat); free(p);
    }
    if (failed)
        return error_set(e, "mla_attend_absorbed: out of memory (%zu bytes of per-thread scratch, %d cached tokens)",
                         bytes, L);
    return 0;
}

int mla_attend_absorbed(float *out, const float *q, const float *cache, int T, int pos0,
                        const MlaWeights *w, const MlaDims *m, Error *e) {
    if (T <= SMALL_BATCH) return attend_absorbed_small(out, q, cache, T, pos0, w, m, e);
    int d_c = m->kv_lora_rank, qk = m->nope + m->rope, width = mla_cache_width(m);
    int L = pos0 + T, q_stride = m->n_heads * qk, out_stride = m->n_heads * m->v;
    float *w_h = malloc(sizeof(float) * (size_t)(m->nope + m->v) * d_c); /* [nope+v, d_c] */
    float *q_lat = malloc(sizeof(float) * (size_t)T * d_c);              /* [T, d_c] */
    float *scores = malloc(sizeof(float) * (size_t)T * L);               /* [T, L] */
    float *o_lat = malloc(sizeof(float) * (size_t)T * d_c);              /* [T, d_c] */
    if (!w_h || !q_lat || !scores || !o_lat) {
        free(w_h); free(q_lat); free(scores); free(o_lat);
        return error_set(e, "mla_attend_absorbed: out of memory (%zu bytes of scratch for %d queries over %d tokens)",
                         sizeof(float) * ((size_t)(m->nope + m->v) * d_c + 2 * (size_t)T * d_c + (size_t)T * L), T, L);
    }
    for (int h = 0; h < m->n_heads; h++) {
        tensor_rows_f32(w_h, &w->kv_b, h * (m->nope + m->v), m->nope + m->v);
        const float *w_uk = w_h, *w_uv = w_h + (size_t)m->nope * d_c;
        const float *q_nope = q + (size_t)h * qk, *q_pe = q_nope + m->nope;
        /* q_lat [T, d_c] = q_nope [T, nope] . W_UK [nope, d_c] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d_c, m->nope, 1.0f, q_nope, q_stride,
                    w_uk, d_c, 0.0f, q_lat, d_c);
        /* scores [T, L] = q_lat . C^T + q_pe . K_pe^T, C = cache[:, :d_c], K_pe = cache[:, d_c:] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, L, d_c, 1.0f, q_lat, d_c, cache, width,
                    0.0f, scores, L);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, L, m->rope, 1.0f, q_pe, q_stride,
                    cache + d_c, width, 1.0f, scores, L);
        causal_softmax(scores, T, L, pos0, m->softmax_scale);
        /* o_lat [T, d_c] = P [T, L] . C [L, d_c];  out_h [T, v] = o_lat . W_UV^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d_c, L, 1.0f, scores, L, cache, width,
                    0.0f, o_lat, d_c);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, m->v, d_c, 1.0f, o_lat, d_c, w_uv, d_c,
                    0.0f, out + (size_t)h * m->v, out_stride);
    }
    free(w_h); free(q_lat); free(scores); free(o_lat);
    return 0;
}

int mla_attend_naive(float *out, const float *q, const float *cache, int T, int pos0,
                     const MlaWeights *w, const MlaDims *m, Error *e) {
    int d_c = m->kv_lora_rank, qk = m->nope + m->rope, width = mla_cache_width(m);
    int L = pos0 + T, q_stride = m->n_heads * qk, out_stride = m->n_heads * m->v;
    float *w_h = malloc(sizeof(float) * (size_t)(m->nope + m->v) * d_c); /* [nope+v, d_c] */
    float *kv = malloc(sizeof(float) * (size_t)L * (m->nope + m->v));    /* [L, nope+v] */
    float *scores = malloc(sizeof(float) * (size_t)T * L);               /* [T, L] */
    if (!w_h || !kv || !scores) {
        free(w_h); free(kv); free(scores);
        return error_set(e, "mla_attend_naive: out of memory (%zu bytes of scratch for %d queries over %d tokens)",
                         sizeof(float) * ((size_t)(m->nope + m->v) * (d_c + (size_t)L) + (size_t)T * L), T, L);
    }
    for (int h = 0; h < m->n_heads; h++) {
        tensor_rows_f32(w_h, &w->kv_b, h * (m->nope + m->v), m->nope + m->v);
        /* [k_nope | v] for every cached token: kv [L, nope+v] = C [L, d_c] . W_h^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, L, m->nope + m->v, d_c, 1.0f, cache, width,
                    w_h, d_c, 0.0f, kv, m->nope + m->v);
        const float *q_nope = q + (size_t)h * qk, *q_pe = q_nope + m->nope;
        /* scores = q_nope . K_nope^T + q_pe . K_pe^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, L, m->nope, 1.0f, q_nope, q_stride, kv,
                    m->nope + m->v, 0.0f, scores, L);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, L, m->rope, 1.0f, q_pe, q_stride,
                    cache + d_c, width, 1.0f, scores, L);
        causal_softmax(scores, T, L, pos0, m->softmax_scale);
        /* out_h [T, v] = P [T, L] . V [L, v] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, m->v, L, 1.0f, scores, L, kv + m->nope,
                    m->nope + m->v, 0.0f, out + (size_t)h * m->v, out_stride);
    }
    free(w_h); free(kv); free(scores);
    return 0;
}

int mla_forward(float *out, const MlaCache *cache, const MlaScratch *s, const float *x, int T, int pos0,
                const MlaWeights *w, const MlaDims *m, const MlaRope *r, AttnForm form, Error *e) {
    int width = mla_cache_width(m), qk = m->nope + m->rope, q_stride = m->n_heads * qk, L = pos0 + T;
    int d_c = m->kv_lora_rank;
    size_t row = mla_kv_row_bytes(cache->format, d_c, m->rope);
    float *latent = s->latent;                                    /* this call's rows [T, d_c + d_R] */
    if (mla_query(s->q, s->q_lora, x, T, w, m, e) || mla_latent(latent, x, T, w, m, e)) return -1;
    for (int t = 0; t < T; t++) {                                 /* q_pe of every head, then k_pe */
        rope_rotate(s->q + (size_t)t * q_stride + m->nope, m->n_heads, qk, m->rope, pos0 + t, r->inv_freq,
                    r->attn_factor, r->interleaved);
        rope_rotate(latent + (size_t)t * width + d_c, 1, width, m->rope, pos0 + t, r->inv_freq,
                    r->attn_factor, r->interleaved);
        mla_kv_encode_row(cache->rows + (size_t)(pos0 + t) * row, cache->format, latent + (size_t)t * width, d_c,
                          m->rope);
    }
    /* what the attention reads: the stored rows 0 .. L-1 [L, d_c + d_R] in FP32 */
    const float *rows = (const float *)cache->rows;
    if (cache->format != MLA_KV_F32) {
        for (int t = 0; t < L; t++)
            mla_kv_decode_row(s->rows + (size_t)t * width, cache->format, cache->rows + (size_t)t * row, d_c, m->rope);
        rows = s->rows;
    }
    int rc = form == ATTN_NAIVE ? mla_attend_naive(s->attn, s->q, rows, T, pos0, w, m, e)
                                : mla_attend_absorbed(s->attn, s->q, rows, T, pos0, w, m, e);
    return rc ? -1 : matmul(out, s->attn, &w->o, T, e);          /* [T, d] */
}
