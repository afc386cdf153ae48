/* rope.h - decoupled rotary position embedding, plain and YaRN. See rope.c for the math. */
#ifndef ROPE_H
#define ROPE_H

typedef enum { ROPE_DEFAULT, ROPE_YARN } RopeType;

typedef struct {
    RopeType type;
    float theta;                  /* rope_theta, 10000 in DeepSeek-V3 */
    /* YaRN (type == ROPE_YARN) */
    float factor;                 /* 40 in V3 */
    int original_max_pos;         /* original_max_position_embeddings, 4096 in V3 */
    float beta_fast, beta_slow;   /* 32, 1 */
    float mscale, mscale_all_dim; /* 1, 1 in V3 (0 = absent) */
    float attention_factor;       /* 0 = derive from mscale / mscale_all_dim as HF does */
    int truncate;                 /* 1 (HF's default): floor/ceil the correction range; 0: keep it fractional */
    /* Pair convention: 1 rotates adjacent pairs (x[2i], x[2i+1]) as DeepSeek's code and HF with
     * rope_interleave=true do; 0 rotates (x[i], x[i + d_R/2]) (HF rotate_half, rope_interleave=false). */
    int interleaved;
} RopeConfig;

/* inv_freq [d_R/2]: the angle per position of each rotated pair. Returns the attention factor that
 * multiplies cos and sin (YaRN's get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim);
 * 1 for plain RoPE and for DeepSeek-V3's values). */
float rope_inv_freq(float *inv_freq, const RopeConfig *rc, int d_R);

/* The factor YaRN applies to the softmax scale: mscale^2 with mscale = 0.1 * mscale_all_dim *
 * ln(factor) + 1 (1 when not YaRN, factor <= 1 or mscale_all_dim is 0). */
float rope_softmax_mscale(const RopeConfig *rc);

/* Rotate n vectors of d_R floats in place, the i-th at x + i * stride, all at position pos.
 * cos and sin of pos * inv_freq[j] are multiplied by attn_factor first, as HF does. */
void rope_rotate(float *x, int n, int stride, int d_R, int pos, const float *inv_freq,
                 float attn_factor, int interleaved);

#endif
