/* mla.h - Multi-head Latent Attention, the whole attention block of a decoder layer (mla_forward:
 * the compressed query and kv paths, decoupled RoPE, the latent cache, naive or absorbed attention,
 * o_proj), and its steps one by one for tests and GPU twins. See mla.c for the math. */
#ifndef MLA_H
#define MLA_H

#include "mla_kv.h"
#include "ops.h"

typedef struct {
    int n_heads;      /* n_h, 128 */
    int q_lora_rank;  /* d_c', 1536; 0 = no query compression (q_proj) */
    int kv_lora_rank; /* d_c, 512: the cached latent */
    int nope, rope, v; /* qk_nope_head_dim 128, qk_rope_head_dim d_R 64, v_head_dim 128 */
    float eps;        /* of q_a_layernorm and kv_a_layernorm */
    float softmax_scale; /* (nope + rope)^-0.5, times YaRN's mscale^2 */
} MlaDims;

typedef struct {
    Tensor q_a;              /* [q_lora_rank, d] */
    const float *q_a_norm;   /* [q_lora_rank] */
    Tensor q_b;              /* [n_h * (nope + rope), q_lora_rank] */
    Tensor q;                /* [n_h * (nope + rope), d], when q_lora_rank == 0 */
    Tensor kv_a;             /* [d_c + d_R, d]  (kv_a_proj_with_mqa) */
    const float *kv_a_norm;  /* [d_c] */
    Tensor kv_b;             /* [n_h * (nope + v), d_c]: per head W_UK [nope, d_c] then W_UV [v, d_c] */
    Tensor o;                /* [d, n_h * v] */
} MlaWeights;

typedef enum { ATTN_ABSORBED, ATTN_NAIVE } AttnForm;

/* The rotation of q_pe and k_pe (rope.c): inv_freq [d_R / 2] and the factor on cos and sin from
 * rope_inv_freq; interleaved: the pair convention (RopeConfig.interleaved). */
typedef struct {
    const float *inv_freq;
    float attn_factor;
    int interleaved;
} MlaRope;

/* mla_forward's scratch for T tokens at positions pos0 .. pos0+T-1. */
typedef struct {
    float *q;      /* [T, n_h * (nope + rope)] */
    float *q_lora; /* [T, q_lora_rank]; unused (may be NULL) without query compression */
    float *attn;   /* [T, n_h * v]: the heads' outputs before o_proj */
    float *latent; /* [T, d_c + d_R]: this call's new rows in FP32, before they are stored */
    float *rows;   /* [pos0 + T, d_c + d_R]: the cache widened to FP32; unused (may be NULL) for an
                    * F32 cache, whose rows the attention reads where they are */
} MlaScratch;

/* Floats per cached token: d_c + d_R (576 in V3), laid out [c_kv | k_pe]. */
static inline int mla_cache_width(const MlaDims *m) { return m->kv_lora_rank + m->rope; }

/* The attention block: out [T, d] = o_proj(attention(x)) for x [T, d] (already normed by the
 * layer's input_layernorm), tokens at positions pos0 .. pos0+T-1. Stores cache rows pos0 .. pos0+T-1
 * ([c_kv | k_pe] of each token, k_pe rotated, encoded in cache->format) and attends over rows
 * 0 .. pos0+T-1 of the cache as stored (widened to FP32: with BF16 or FP8 the attention sees the
 * rounded values, this call's own rows too); the rows below pos0 must hold the earlier positions. */
int mla_forward(float *out, const MlaCache *cache, const MlaScratch *s, const float *x, int T, int pos0,
                const MlaWeights *w, const MlaDims *m, const MlaRope *r, AttnForm form, Error *e);

/* q [T, n_h * (nope + rope)] = q_b(rmsnorm(q_a(x))) or q_proj(x), from x [T, d].
 * scratch: T * q_lora_rank floats (unused without query compression). */
int mla_query(float *q, float *scratch, const float *x, int T, const MlaWeights *w, const MlaDims *m, Error *e);

/* latent [T, d_c + d_R] = [rmsnorm(c_kv) | k_pe] from kv_a(x); k_pe not yet rotated. */
int mla_latent(float *latent, const float *x, int T, const MlaWeights *w, const MlaDims *m, Error *e);

/* Attention of T queries at positions pos0 .. pos0+T-1 over cache rows 0 .. pos0+T-1 (causal).
 * q [T, n_h * (nope + rope)] with q_pe rotated; cache [>= pos0+T, d_c + d_R] with k_pe rotated.
 * out [T, n_h * v]: the per-head outputs, concatenated, before o_proj.
 * These and mla_forward return 0, or -1 with e naming the function and the bytes when their
 * scratch (sized by T and pos0 + T) cannot be allocated. */
int mla_attend_absorbed(float *out, const float *q, const float *cache, int T, int pos0,
                        const MlaWeights *w, const MlaDims *m, Error *e);
int mla_attend_naive(float *out, const float *q, const float *cache, int T, int pos0,
                     const MlaWeights *w, const MlaDims *m, Error *e);

#endif
