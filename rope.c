/* rope.c - rotary position embedding on the decoupled rope part of q and k, with YaRN.
 *
 * RoPE turns position into rotation. Split a d_R-vector into d_R/2 pairs; pair j at position p is
 * rotated by the angle p * inv_freq[j], inv_freq[j] = theta^(-2j/d_R):
 *
 *     [x'_a]   [cos -sin] [x_a]        a, b = 2j, 2j+1    (adjacent pairs: DeepSeek's checkpoints)
 *     [x'_b] = [sin  cos] [x_b]        a, b = j, j+d_R/2  (rotate_half: HF with rope_interleave=false)
 *
 * so (R_t q) . (R_s k) = q^T R_t^T R_s k = q^T R_{s-t} k depends only on s - t. Why MLA rotates only
 * a small separate part ("decoupled"): the cached latent c_kv is position-free, which is what lets
 * W_UK be absorbed into the query (q^T W_UK c = (W_UK^T q)^T c, one [d_c] vector per query). Rotated
 * keys would make the score (R_t q)^T (R_s W_UK c) = q^T R_{s-t} W_UK c: a rotation that depends on
 * both positions sits between q and W_UK, so W_UK no longer folds into the query as one fixed matrix.
 * So each head gets q_nope (no position) and a d_R = 64 rope part q_pe, and one k_pe [d_R] per token
 * is shared by all heads and cached beside c_kv: 512 + 64 = 576 floats per token.
 *
 * YaRN (context extension; V3: factor 40 over 4096 original positions -> 163840). Pairs that turn
 * many times within the original context (high frequency) keep their frequency (extrapolation);
 * pairs that turn less than once are divided by `factor` (interpolation); a linear ramp between:
 *
 *     corr(r)  = d_R * ln(L_orig / (2 pi r)) / (2 ln theta)      dimension that turns r times in L_orig
 *     low      = max(floor(corr(beta_fast)), 0), high = min(ceil(corr(beta_slow)), d_R - 1)
 *     ramp[j]  = clamp((j - low) / (high - low), 0, 1)           (+0.001 to the divisor if low == high)
 *     inv_freq = inv_freq / factor * ramp + inv_freq * (1 - ramp)
 *
 * Two scale corrections come with it (HF transformers' formulas; DeepSeek's code matches for V3):
 *     cos, sin   *= get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
 *     softmax scale = (nope + rope)^-0.5 * get_mscale(factor, mscale_all_dim)^2
 *     get_mscale(s, m) = 0.1 * m * ln(s) + 1   (1 when s <= 1)
 * With V3's mscale = mscale_all_dim = 1 the first is 1 and the second 1.3689^2 = 1.874.
 * Worked numbers for d_R = 8, theta 1e4, factor 4, L_orig 16: notes/rope.md.
 *
 * Precision follows HF: the table in FP32 (theta^(2j/d_R) by powf, 1/x in FP32), the ramp bounds in
 * double, angles pos * inv_freq rounded to FP32 before cos/sin.
 */
#include "rope.h"

#include <math.h>
#include <stddef.h>

static double get_mscale(double scale, double m) {
    return scale <= 1.0 ? 1.0 : 0.1 * m * log(scale) + 1.0;
}

static double correction_dim(double rotations, int d_R, double theta, int original_len) {
    return d_R * log(original_len / (rotations * 2.0 * M_PI)) / (2.0 * log(theta));
}

float rope_inv_freq(float *inv_freq, const RopeConfig *rc, int d_R) {
    int half = d_R / 2;
    for (int j = 0; j < half; j++) {
        float pos_freq = powf(rc->theta, (float)(2 * j) / (float)d_R);
        inv_freq[j] = 1.0f / pos_freq;
    }
    if (rc->type != ROPE_YARN) return 1.0f;

    double low = correction_dim(rc->beta_fast, d_R, rc->theta, rc->original_max_pos);
    double high = correction_dim(rc->beta_slow, d_R, rc->theta, rc->original_max_pos);
    if (rc->truncate) {
        low = floor(low);
        high = ceil(high);
    }
    if (low < 0) low = 0;
    if (high > d_R - 1) high = d_R - 1;
    if (low == high) high += 0.001; /* avoid 0/0 */
    for (int j = 0; j < half; j++) {
        float pos_freq = powf(rc->theta, (float)(2 * j) / (float)d_R);
        float extrapolated = 1.0f / pos_freq;
        float interpolated = 1.0f / (rc->factor * pos_freq);
        float ramp = ((float)j - (float)low) / (float)(high - low);
        ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
        float keep = 1.0f - ramp; /* weight of the original (extrapolated) frequency */
        inv_freq[j] = interpolated * (1.0f - keep) + extrapolated * keep;
    }
    if (rc->attention_factor > 0) return rc->attention_factor;
    if (rc->mscale != 0 && rc->mscale_all_dim != 0)
        return (float)(get_mscale(rc->factor, rc->mscale) / get_mscale(rc->factor, rc->mscale_all_dim));
    return (float)get_mscale(rc->factor, 1.0);
}

float rope_softmax_mscale(const RopeConfig *rc) {
    if (rc->type != ROPE_YARN || rc->mscale_all_dim == 0) return 1.0f;
    double m = get_mscale(rc->factor, rc->mscale_all_dim);
    return (float)(m * m);
}

void rope_rotate(float *x, int n, int stride, int d_R, int pos, const float *inv_freq,
                 float attn_factor, int interleaved) {
    int half = d_R / 2;
    for (int j = 0; j < half; j++) {
        float angle = (float)pos * inv_freq[j];
        float c = cosf(angle) * attn_factor, s = sinf(angle) * attn_factor;
        int a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + half;
        for (int i = 0; i < n; i++) {
            float *v = x + (size_t)i * stride;
            float xa = v[a], xb = v[b];
            v[a] = xa * c - xb * s;
            v[b] = xb * c + xa * s;
        }
    }
}
