/* mla.h - Multi-head Latent Attention: the compressed query and kv paths and two attention forms
 * (naive and absorbed) over one latent cache. See mla.c for the math. */
#ifndef MLA_H
#define MLA_H

#include "ops.h"

typedef struct {
    int d;            /* hidden size, 7168 in V3 */
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

/* Floats per cached token: d_c + d_R (576 in V3), laid out [c_kv | k_pe]. */
static inline int mla_cache_width(const MlaDims *m) { return m->kv_lora_rank + m->rope; }

/* q [T, n_h * (nope + rope)] = q_b(rmsnorm(q_a(x))) or q_proj(x), from x [T, d].
 * scratch: T * q_lora_rank floats (unused without query compression). */
void mla_query(float *q, float *scratch, const float *x, int T, const MlaWeights *w, const MlaDims *m);

/* latent [T, d_c + d_R] = [rmsnorm(c_kv) | k_pe] from kv_a(x); k_pe not yet rotated. */
void mla_latent(float *latent, const float *x, int T, const MlaWeights *w, const MlaDims *m);

/* Attention of T queries at positions pos0 .. pos0+T-1 over cache rows 0 .. pos0+T-1 (causal).
 * q [T, n_h * (nope + rope)] with q_pe rotated; cache [>= pos0+T, d_c + d_R] with k_pe rotated.
 * out [T, n_h * v]: the per-head outputs, concatenated, before o_proj. */
void mla_attend_absorbed(float *out, const float *q, const float *cache, int T, int pos0,
                         const MlaWeights *w, const MlaDims *m);
void mla_attend_naive(float *out, const float *q, const float *cache, int T, int pos0,
                      const MlaWeights *w, const MlaDims *m);

#endif
