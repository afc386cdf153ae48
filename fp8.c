/* fp8.c - FP8 formats, block quantization and FP8 GEMM emulation, as DeepSeek-V3 uses them.
 *
 * The two formats, one byte each (S sign, E exponent, M mantissa):
 *
 *   E4M3 "fn"   S EEEE MMM   bias 7            E5M2        S EEEEE MM   bias 15
 *     E = 0:     (-1)^S * 2^-6  * (0 + M/8)      E = 0:      (-1)^S * 2^-14 * (0 + M/4)
 *     E = 1..15: (-1)^S * 2^(E-7) * (1 + M/8)    E = 1..30:  (-1)^S * 2^(E-15) * (1 + M/4)
 *     except S 1111 111 = NaN (no infinity)      E = 31:     M = 0 -> +-inf, else NaN
 *   0 0000 001 = 2^-9     (min subnormal)        0 00000 01 = 2^-16     (min subnormal)
 *   0 0001 000 = 2^-6     (min normal)           0 00001 00 = 2^-14     (min normal)
 *   0 0111 000 = 1                               0 01111 00 = 1
 *   0 1111 110 = 448      (max)                  0 11110 11 = 57344     (max)
 *   0 1111 111 = NaN                             0 11111 00 = inf
 *
 * Encoding rounds to nearest, ties to the even code (the one whose last mantissa bit is 0). Because
 * the codes of non-negative values count upwards in value, rounding is one integer computation:
 * take x's 24-bit significand, drop the bits below the FP8 ulp of x's binade (subnormal binades all
 * use the ulp of the smallest normal one), round, and add (binade - min_binade) << M. A carry out of
 * the mantissa lands on the next binade's first code by itself. A result beyond the max code is an
 * overflow: FP8_SATURATE returns max, FP8_TORCH the code just above max (E4M3 NaN, E5M2 inf), as
 * PyTorch's c10::Float8 casts do.
 *
 * Block quantization (DeepSeek-V3 report 3.3.2; inference/kernel.py act_quant, weight_dequant):
 *   per block B of x:  amax = max |x|,  scale = amax / 448 (FP32; UE8M0: rounded up to 2^n),
 *                      q = e4m3(x / scale),  x ~= q * scale.
 * Weights [out, in] use 128 x 128 blocks, scale [ceil(out/128), ceil(in/128)] (`weight_scale_inv`);
 * activations [T, d] use 1 x 128 tiles, scale [T, ceil(d/128)]. The error per element is at most
 * half an E4M3 ulp: |x - q*scale| <= 2^-4 |x| for normals (3 mantissa bits), 2^-10 * scale below.
 *
 * GEMM emulation, y [M, N] = x [M, K] . W [N, K]^T with both operands quantized:
 *   y[m,n] = sum_kb  sx[m,kb] * sw[n/128,kb] * sum_{k in kb} qx[m,k] * qw[n,k]
 * A product of two E4M3 values has at most 8 significant bits and is a multiple of 2^-18 below
 * 448^2 < 2^18, so every product and every sum of up to 2^16 of them is exact in FP64: the inner sum
 * can be formed exactly, whatever the order. Two accumulators are modelled:
 *   (a) FP32 throughout (DeepSeek's fp8_gemm kernel math): per K-block the exact inner sum, rounded
 *       once to FP32, times sx then sw, added to an FP32 accumulator in K-block order.
 *   (b) a Hopper tensor core: the running partial is rounded to `man_bits` mantissa bits after each
 *       addition (about 14; V3 report 3.3.2). Every N_C elements (and at each K-block boundary,
 *       where the scales change) the partial is promoted: scaled, added to the FP32 accumulator,
 *       reset. Truncation (towards zero) is the model we prefer, and FP8_ACC_TRUNCATE = 0 so a
 *       zeroed Fp8Accum gets it: the tensor core aligns addends to the largest exponent and
 *       shifts the low bits out, which always loses magnitude; notes/fp8.md shows it reproduces the
 *       report's "nearly 2%" at K = 4096, where rounding to nearest gives 0.06%.
 */
#include "fp8.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- codecs ------------------------------------------------------------------------------------ */

static inline uint32_t f32_bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }

/* Value of a finite non-negative code (sign bit clear) of a format with M mantissa bits. */
static float decode_finite(uint8_t v, int man_bits, int bias) {
    int e = v >> man_bits, m = v & ((1 << man_bits) - 1);
    if (e == 0) return ldexpf((float)m, 1 - bias - man_bits);                    /* subnormal */
    return ldexpf((float)((1 << man_bits) + m), e - bias - man_bits);            /* normal */
}

float fp8_e4m3_decode(uint8_t v) {
    float s = (v & 0x80) ? -1.0f : 1.0f;
    if ((v & 0x7F) == 0x7F) return copysignf(NAN, s);
    return s * decode_finite(v & 0x7F, 3, 7);
}

float fp8_e5m2_decode(uint8_t v) {
    float s = (v & 0x80) ? -1.0f : 1.0f;
    if ((v & 0x7C) == 0x7C) return (v & 0x03) ? copysignf(NAN, s) : s * INFINITY;
    return s * decode_finite(v & 0x7F, 2, 15);
}

/* The magnitude code of |x| (x not NaN) rounded to nearest even, in a format with man_bits
 * mantissa bits and the given bias, without any upper limit: may exceed the max code (overflow). */
static uint32_t encode_magnitude(float x, int man_bits, int bias) {
    uint32_t a = f32_bits(x) & 0x7FFFFFFF;
    if (a < 0x00800000) return 0;                      /* FP32 zero/subnormal: < 2^-126, rounds to 0 */
    if (a >= 0x7F800000) return UINT32_MAX;            /* inf: beyond every code */
    int e = (int)(a >> 23) - 127;                      /* |x| = sig * 2^(e - 23), sig in [2^23, 2^24) */
    uint32_t sig = (a & 0x007FFFFF) | 0x00800000;
    int e_min = 1 - bias;                              /* binade of the smallest normal */
    int eq = e < e_min ? e_min : e;                    /* binade whose ulp applies */
    int drop = (eq - e) + 23 - man_bits;               /* significand bits below that ulp, >= 20 */
    if (drop > 24) return 0;                           /* |x| < half the smallest subnormal */
    uint32_t kept = sig >> drop, rest = sig & ((1u << drop) - 1), half = 1u << (drop - 1);
    if (rest > half || (rest == half && (kept & 1))) kept++;   /* to nearest, ties to even */
    return ((uint32_t)(eq - e_min) << man_bits) + kept;
}

static uint8_t encode(float x, int man_bits, int bias, uint32_t max_code, uint8_t over_code,
                      Fp8Overflow policy) {
    uint8_t sign = (f32_bits(x) >> 24) & 0x80;
    if (isnan(x)) return sign | 0x7F;
    uint32_t code = encode_magnitude(x, man_bits, bias);
    if (code > max_code) code = policy == FP8_SATURATE ? max_code : over_code;
    return sign | (uint8_t)code;
}

uint8_t fp8_e4m3_encode(float x, Fp8Overflow policy) { return encode(x, 3, 7, 0x7E, 0x7F, policy); }
uint8_t fp8_e5m2_encode(float x, Fp8Overflow policy) { return encode(x, 2, 15, 0x7B, 0x7C, policy); }

/* ---- block quantization ------------------------------------------------------------------------ */

float fp8_scale(float amax, Fp8ScaleFmt fmt) {
    float s = amax / FP8_E4M3_MAX;
    if (!(s > 0)) return 1.0f;                  /* all-zero block: any scale works, 1 divides safely */
    if (fmt == FP8_SCALE_UE8M0 && isfinite(s)) { /* round up to a power of two: 2^ceil(log2 s) */
        int e;
        float f = frexpf(s, &e);                /* s = f * 2^e, f in [0.5, 1) */
        s = ldexpf(1.0f, f == 0.5f ? e - 1 : e);
    }
    return s;
}

void fp8_quant_block(uint8_t *q, float *scale_inv, const float *w, int rows, int cols,
                     int block_r, int block_c, Fp8ScaleFmt fmt) {
    int nbc = (cols + block_c - 1) / block_c;
    for (int r0 = 0; r0 < rows; r0 += block_r) {
        for (int c0 = 0; c0 < cols; c0 += block_c) {
            int r1 = r0 + block_r < rows ? r0 + block_r : rows;
            int c1 = c0 + block_c < cols ? c0 + block_c : cols;
            float amax = 0;
            for (int r = r0; r < r1; r++)
                for (int c = c0; c < c1; c++) amax = fmaxf(amax, fabsf(w[(size_t)r * cols + c]));
            float s = fp8_scale(amax, fmt);
            scale_inv[(size_t)(r0 / block_r) * nbc + c0 / block_c] = s;
            for (int r = r0; r < r1; r++)
                for (int c = c0; c < c1; c++) {
                    size_t i = (size_t)r * cols + c;
                    q[i] = fp8_e4m3_encode(w[i] / s, FP8_SATURATE);
                }
        }
    }
}

void fp8_dequant_block(float *w, const uint8_t *q, const float *scale_inv, int rows, int cols,
                       int block_r, int block_c) {
    int nbc = (cols + block_c - 1) / block_c;
    for (int r = 0; r < rows; r++) {
        const float *s = scale_inv + (size_t)(r / block_r) * nbc;
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * cols + c;
            w[i] = fp8_e4m3_decode(q[i]) * s[c / block_c];
        }
    }
}

void fp8_quant_act(uint8_t *q, float *scale, const float *x, int rows, int cols, int tile,
                   Fp8ScaleFmt fmt) {
    fp8_quant_block(q, scale, x, rows, cols, 1, tile, fmt);
}

void fp8_dequant_act(float *x, const uint8_t *q, const float *scale, int rows, int cols, int tile) {
    fp8_dequant_block(x, q, scale, rows, cols, 1, tile);
}

/* ---- FP8 GEMM emulation ------------------------------------------------------------------------ */

double fp8_acc_round(double v, int man_bits, Fp8AccRound round) {
    if (v == 0 || !isfinite(v)) return v;
    int e;
    frexp(v, &e);                                   /* |v| in [2^(e-1), 2^e) */
    double ulp = ldexp(1.0, e - 1 - man_bits);      /* leading bit 2^(e-1), man_bits more after it */
    double n = v / ulp;                             /* exact: a power-of-two scaling */
    double r = trunc(n);                            /* towards zero */
    if (round == FP8_ACC_NEAREST) {
        double rest = fabs(n - r);                  /* exact, in [0, 1) */
        if (rest > 0.5 || (rest == 0.5 && fmod(r, 2.0) != 0)) r += n < 0 ? -1 : 1;
    }
    return r * ulp;
}

void fp8_gemm(float *y, const uint8_t *qx, const float *sx, const uint8_t *qw, const float *sw,
              int M, int N, int K, int block_n, int block_k, Fp8Accum acc) {
    float lut[256];                                 /* every E4M3 code, decoded once */
    for (int i = 0; i < 256; i++) lut[i] = fp8_e4m3_decode((uint8_t)i);
    int nkb = (K + block_k - 1) / block_k;
    int n_c = acc.n_c > 0 && acc.n_c < block_k ? acc.n_c : block_k;
    for (int m = 0; m < M; m++) {
        const uint8_t *a = qx + (size_t)m * K;
        for (int n = 0; n < N; n++) {
            const uint8_t *b = qw + (size_t)n * K;
            float out = 0;                           /* the FP32 accumulator */
            for (int kb = 0; kb < nkb; kb++) {
                float s_a = sx[(size_t)m * nkb + kb], s_b = sw[(size_t)(n / block_n) * nkb + kb];
                int kb_end = (kb + 1) * block_k < K ? (kb + 1) * block_k : K;
                for (int k0 = kb * block_k; k0 < kb_end; k0 += n_c) {
                    int k1 = k0 + n_c < kb_end ? k0 + n_c : kb_end;
                    double part = 0;                 /* the tensor core's partial sum */
                    for (int k = k0; k < k1; k++) {
                        part += (double)lut[a[k]] * (double)lut[b[k]];   /* exact (see top) */
                        if (acc.man_bits > 0) part = fp8_acc_round(part, acc.man_bits, acc.round);
                    }
                    out += ((float)part * s_a) * s_b;    /* promotion, in kernel.py's order */
                }
            }
            y[(size_t)m * N + n] = out;
        }
    }
}
