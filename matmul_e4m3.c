/* matmul_e4m3.c - decode dot products of an E4M3 weight with block scales (DeepSeek's FP8
 * checkpoints): matmul.c calls them for n <= SMALL_BATCH tokens. The block scale multiplies once
 * per block of block_c (128) products, not once per weight.
 *
 * For token x [cols] and row r of W (codes q [cols], scales s_b = scale_inv[r / block_r][b]), with
 * one fused multiply-add per step (fmaf: the exact a * b + c, rounded once):
 *     p_b,k = fmaf(decode(q_i), x_i, p_b,k) for the i of block b with (i - b * block_c) mod 16 = k,
 *             in index order, from p_b,k = +0                               (16 lanes per block)
 *     a_k   = fmaf(p_b,k, s_b, a_k) for the blocks b in order, from a_k = +0
 *     out   = for w = 8, 4, 2, 1: a_k = a_k + a_(k+w) for k < w; then a_0  (halves added in turn)
 * That is a 16-float vector accumulator per block, a second one across blocks, and the tree that
 * adds a vector's upper half to its lower half until one float is left. Lanes past the end of a
 * short block stay +0 and add nothing (a lane that starts at +0 never holds -0). Against the
 * widen-then-dot of the other dtypes (dot_f32 of the FP32 w_i = decode(q_i) * s_b) the products are
 * fused into the sums and the scale is rounded into 16 partial sums per block instead of into
 * every weight: a different rounding of the same sum (FP32 noise; notes/performance.md says which
 * outputs moved and by how much).
 *
 * decode(q) in registers, exactly: sign-extend the code S.eeee.mmm to 32 bits, shift left 20, keep
 * bits 31 and 20..26. That is the FP32 S 2^(e-127) 1.mmm, or for e = 0 the FP32 subnormal
 * S 0.mmm 2^-126: decode(q) * 2^-120 exactly (E4M3 is 2^(e-7) 1.mmm, and 0.mmm 2^-6 for e = 0).
 * The 2^120 goes on x instead: x' = x * 2^120 is exact while |x| < 2^8, and then
 * fmaf(decode(q) 2^-120, x', p) = fmaf(decode(q), x, p) bit for bit (the FMA rounds the exact sum,
 * and both products are the same real number). A call with a finite |x| >= 256 multiplies the
 * widened codes by 2^120 instead (exact; one more operation per vector). A NaN code (S.1111.111,
 * which those bits read as 480 * 2^-120) is found by a scan of each row group before its sums, and
 * that group takes the plain path; a tensor whose first call found none (W->nan_codes, matmul.c)
 * skips the scan after it (9.5% of FP8 decode time on AMD Zen 4, 12% of this kernel's on Zen 3).
 *
 * The kernels (matmul_small_with names them):
 *   plain   e4m3_dot_plain: the sums above as written, fp8_e4m3_decode and fmaf. The reference.
 *   avx2    the 16 lanes as two 8-float vectors, the codes widened by an in-lane byte shuffle
 *           (e4m3x16_avx2; the same bits as a sign-extend, which is lane-crossing: on AMD Zen 3 a
 *           256 x 2048 matrix in cache went from 7.0 to 9.7-11.4 G weights/s with the shuffle).
 *           One token: 4 rows per pass, each load of x feeds the 4 rows, and the next 4 rows
 *           are prefetched in step. 2..8 tokens: row by row, each widened vector of weights feeds
 *           4 (or 2) tokens.
 *   avx512  the same on one 16-float vector, block ends through masked loads.
 * Per 16 weights the AVX-512 one-token kernel issues 4 vector operations (sign-extend, shift, and,
 * FMA); the exact widen-and-scale it replaces took 12 (6 per 8 weights).
 */
#include "matmul_e4m3.h"
#include "fp8.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define GROUP 4 /* rows per pass of the one-token kernels */
/* The one-token kernels prefetch the rows two groups ahead, into L2 (_MM_HINT_T1): one group ahead
 * (4 rows of FP8 are 8 KB at d = 2048) let the NaN scan wait on memory, and into L1 the prefetched
 * rows evicted the ones being read (a 32 KB L1d). AMD EPYC (Zen 4), decode of the V2-Lite-shaped
 * FP8 model: 13.0-14.5 tok/s (L1, one group ahead), 15.2-16.8 (L2, one), 17.4-17.9 (L2, two):
 * notes/performance.md. */
#define PREFETCH (2 * GROUP)
/* The loops over rows and tokens below run 1, 2 or 4 times, a constant in each compiled kernel:
 * `#pragma GCC unroll` makes -O2 unroll them, so that their accumulators live in registers. */

float e4m3_dot_plain(const float *x, const uint8_t *q, const float *s, int cols, int block_c) {
    float a[16] = {0};
    for (int c0 = 0, b = 0; c0 < cols; c0 += block_c, b++) {
        float p[16] = {0};
        int c1 = c0 + block_c < cols ? c0 + block_c : cols;
        for (int i = c0; i < c1; i++) p[(i - c0) % 16] = fmaf(fp8_e4m3_decode(q[i]), x[i], p[(i - c0) % 16]);
        for (int k = 0; k < 16; k++) a[k] = fmaf(p[k], s[b], a[k]);
    }
    for (int w = 8; w >= 1; w /= 2)
        for (int k = 0; k < w; k++) a[k] = a[k] + a[k + w];
    return a[0];
}

int e4m3_x_scalable(const float *x, size_t n) {
    int big = 0;
    for (size_t i = 0; i < n; i++) big |= fabsf(x[i]) >= 256.0f && fabsf(x[i]) != INFINITY;
    return !big;
}

/* ---------------------------------------------------------------------------------------------
 * AVX2 + FMA. MUL: 1 when x is not scaled (the codes are multiplied by 2^120 instead).
 */
#define AVX2 __attribute__((target("avx2,fma"), always_inline)) static inline

/* a_k + a_(k+4), then + a_(k+2), then a_0 + a_1 of 8 lanes */
AVX2 float e4m3_hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

/* 16 codes at p -> decode(q) * 2^-120 (times 2^120 with mul) as two 8-float vectors: the 16 bytes
 * loaded into both 128-bit halves, code j shuffled into the top byte of 32-bit lane j (the bytes
 * below it zero), then an arithmetic shift right by 4 (q << 24 >> 4 is the sign-extended q << 20
 * of the header comment) and its and. */
AVX2 void e4m3x16_avx2(const uint8_t *p, int mul, __m256 *lo, __m256 *hi) {
    const __m256i top_lo = _mm256_setr_epi8(-1, -1, -1, 0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3,
                                            -1, -1, -1, 4, -1, -1, -1, 5, -1, -1, -1, 6, -1, -1, -1, 7);
    const __m256i top_hi = _mm256_setr_epi8(-1, -1, -1, 8, -1, -1, -1, 9, -1, -1, -1, 10, -1, -1, -1, 11,
                                            -1, -1, -1, 12, -1, -1, -1, 13, -1, -1, -1, 14, -1, -1, -1, 15);
    const __m256i bits = _mm256_set1_epi32((int)0x87F00000u);
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)p));
    __m256 a = _mm256_castsi256_ps(_mm256_and_si256(_mm256_srai_epi32(_mm256_shuffle_epi8(v, top_lo), 4), bits));
    __m256 b = _mm256_castsi256_ps(_mm256_and_si256(_mm256_srai_epi32(_mm256_shuffle_epi8(v, top_hi), 4), bits));
    *lo = mul ? _mm256_mul_ps(a, _mm256_set1_ps(0x1p120f)) : a;
    *hi = mul ? _mm256_mul_ps(b, _mm256_set1_ps(0x1p120f)) : b;
}

/* One block's 16-lane partial sums of R rows (1 or GROUP) for one token, added into a [R][2] with
 * each row's scale. A block end of m < 16 columns goes through zero-padded copies. */
AVX2 void block8_rows(int mul, int R, __m256 *a, const float *x, const uint8_t *w, size_t ld, int c0, int c1,
                      const float *sc) {
    __m256 p[2 * GROUP];
    #pragma GCC unroll 8
    for (int r = 0; r < 2 * GROUP; r++) p[r] = _mm256_setzero_ps();
    int c = c0;
    for (; c + 16 <= c1; c += 16) {
        __m256 x0 = _mm256_loadu_ps(x + c), x1 = _mm256_loadu_ps(x + c + 8);
        if (R == GROUP) _mm_prefetch((const char *)w + PREFETCH * ld + GROUP * (size_t)c, _MM_HINT_T1);
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m256 w0, w1;
            e4m3x16_avx2(w + r * ld + c, mul, &w0, &w1);
            p[2 * r] = _mm256_fmadd_ps(w0, x0, p[2 * r]);
            p[2 * r + 1] = _mm256_fmadd_ps(w1, x1, p[2 * r + 1]);
        }
    }
    if (c < c1) {
        float xb[16] = {0};
        memcpy(xb, x + c, sizeof(float) * (size_t)(c1 - c));
        __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8);
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            uint8_t qb[16] = {0};
            memcpy(qb, w + r * ld + c, (size_t)(c1 - c));
            __m256 w0, w1;
            e4m3x16_avx2(qb, mul, &w0, &w1);
            p[2 * r] = _mm256_fmadd_ps(w0, x0, p[2 * r]);
            p[2 * r + 1] = _mm256_fmadd_ps(w1, x1, p[2 * r + 1]);
        }
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        __m256 s = _mm256_set1_ps(sc[r]);
        a[2 * r] = _mm256_fmadd_ps(p[2 * r], s, a[2 * r]);
        a[2 * r + 1] = _mm256_fmadd_ps(p[2 * r + 1], s, a[2 * r + 1]);
    }
}

/* res [R] = the R rows' sums for one token x [cols]; s[r]: row r's scales. */
AVX2 void rows8(int mul, int R, float *res, const float *x, const uint8_t *w, size_t ld, int cols, int bc,
                const float *const *s) {
    __m256 a[2 * GROUP];
    #pragma GCC unroll 8
    for (int r = 0; r < 2 * GROUP; r++) a[r] = _mm256_setzero_ps();
    for (int c0 = 0, b = 0; c0 < cols; c0 += bc, b++) {
        float sc[GROUP];
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++) sc[r] = s[r][b];
        block8_rows(mul, R, a, x, w, ld, c0, c0 + bc < cols ? c0 + bc : cols, sc);
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++) res[r] = e4m3_hsum8(_mm256_add_ps(a[2 * r], a[2 * r + 1]));
}

/* res [NT] = one row's sums for NT (2 or 4) tokens, x: NT rows of ldx floats. The same sums per
 * output as rows8; the row GROUP rows ahead is prefetched in step. */
AVX2 void toks8(int mul, int NT, float *res, const float *x, size_t ldx, const uint8_t *w, size_t ld, int cols,
                int bc, const float *s) {
    __m256 a[8];
    #pragma GCC unroll 8
    for (int t = 0; t < 8; t++) a[t] = _mm256_setzero_ps();
    for (int c0 = 0, b = 0; c0 < cols; c0 += bc, b++) {
        int c1 = c0 + bc < cols ? c0 + bc : cols, c = c0;
        __m256 p[8];
        #pragma GCC unroll 8
        for (int t = 0; t < 8; t++) p[t] = _mm256_setzero_ps();
        for (; c + 16 <= c1; c += 16) {
            _mm_prefetch((const char *)w + GROUP * ld + c, _MM_HINT_T1);
            __m256 w0, w1;
            e4m3x16_avx2(w + c, mul, &w0, &w1);
            #pragma GCC unroll 8
            for (int t = 0; t < NT; t++) {
                p[2 * t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * ldx + c), p[2 * t]);
                p[2 * t + 1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * ldx + c + 8), p[2 * t + 1]);
            }
        }
        if (c < c1) {
            uint8_t qb[16] = {0};
            memcpy(qb, w + c, (size_t)(c1 - c));
            __m256 w0, w1;
            e4m3x16_avx2(qb, mul, &w0, &w1);
            #pragma GCC unroll 8
            for (int t = 0; t < NT; t++) {
                float xb[16] = {0};
                memcpy(xb, x + t * ldx + c, sizeof(float) * (size_t)(c1 - c));
                p[2 * t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xb), p[2 * t]);
                p[2 * t + 1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + 8), p[2 * t + 1]);
            }
        }
        __m256 sv = _mm256_set1_ps(s[b]);
        #pragma GCC unroll 8
        for (int t = 0; t < 2 * NT; t++) a[t] = _mm256_fmadd_ps(p[t], sv, a[t]);
    }
    #pragma GCC unroll 8
    for (int t = 0; t < NT; t++) res[t] = e4m3_hsum8(_mm256_add_ps(a[2 * t], a[2 * t + 1]));
}
#undef AVX2

/* ---------------------------------------------------------------------------------------------
 * AVX-512 (F for the 16-float vectors, BW + VL for the masked byte loads)
 */
#define AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl"), always_inline)) static inline

/* 16 codes at p (those in mask m; the others +0) -> decode(q) * 2^-120 (times 2^120 with mul) */
AVX512 __m512 e4m3x16(const uint8_t *p, __mmask16 m, int mul) {
    __m128i b = m == 0xFFFF ? _mm_loadu_si128((const __m128i *)(const void *)p) : _mm_maskz_loadu_epi8(m, p);
    __m512i v = _mm512_and_si512(_mm512_slli_epi32(_mm512_cvtepi8_epi32(b), 20), _mm512_set1_epi32((int)0x87F00000u));
    return mul ? _mm512_mul_ps(_mm512_castsi512_ps(v), _mm512_set1_ps(0x1p120f)) : _mm512_castsi512_ps(v);
}

/* the tree of the header comment: upper 8 lanes onto the lower 8, then as e4m3_hsum8 */
AVX512 float e4m3_hsum16(__m512 v) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

AVX512 void rows16(int mul, int R, float *res, const float *x, const uint8_t *w, size_t ld, int cols, int bc,
                   const float *const *s) {
    __m512 a[GROUP];
    #pragma GCC unroll 8
    for (int r = 0; r < GROUP; r++) a[r] = _mm512_setzero_ps();
    for (int c0 = 0, b = 0; c0 < cols; c0 += bc, b++) {
        int c1 = c0 + bc < cols ? c0 + bc : cols, c = c0;
        __m512 p[GROUP];
        #pragma GCC unroll 8
        for (int r = 0; r < GROUP; r++) p[r] = _mm512_setzero_ps();
        for (; c + 16 <= c1; c += 16) {
            __m512 xv = _mm512_loadu_ps(x + c);
            if (R == GROUP) _mm_prefetch((const char *)w + PREFETCH * ld + GROUP * (size_t)c, _MM_HINT_T1);
            #pragma GCC unroll 8
            for (int r = 0; r < R; r++) p[r] = _mm512_fmadd_ps(e4m3x16(w + r * ld + c, 0xFFFF, mul), xv, p[r]);
        }
        if (c < c1) {
            __mmask16 m = (__mmask16)((1u << (c1 - c)) - 1);
            __m512 xv = _mm512_maskz_loadu_ps(m, x + c);
            #pragma GCC unroll 8
            for (int r = 0; r < R; r++) p[r] = _mm512_fmadd_ps(e4m3x16(w + r * ld + c, m, mul), xv, p[r]);
        }
        #pragma GCC unroll 8
        for (int r = 0; r < R; r++) a[r] = _mm512_fmadd_ps(p[r], _mm512_set1_ps(s[r][b]), a[r]);
    }
    #pragma GCC unroll 8
    for (int r = 0; r < R; r++) res[r] = e4m3_hsum16(a[r]);
}

AVX512 void toks16(int mul, int NT, float *res, const float *x, size_t ldx, const uint8_t *w, size_t ld, int cols,
                   int bc, const float *s) {
    __m512 a[4];
    #pragma GCC unroll 8
    for (int t = 0; t < 4; t++) a[t] = _mm512_setzero_ps();
    for (int c0 = 0, b = 0; c0 < cols; c0 += bc, b++) {
        int c1 = c0 + bc < cols ? c0 + bc : cols, c = c0;
        __m512 p[4];
        #pragma GCC unroll 8
        for (int t = 0; t < 4; t++) p[t] = _mm512_setzero_ps();
        for (; c + 16 <= c1; c += 16) {
            _mm_prefetch((const char *)w + GROUP * ld + c, _MM_HINT_T1);
            __m512 wv = e4m3x16(w + c, 0xFFFF, mul);
            #pragma GCC unroll 8
            for (int t = 0; t < NT; t++) p[t] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + t * ldx + c), p[t]);
        }
        if (c < c1) {
            __mmask16 m = (__mmask16)((1u << (c1 - c)) - 1);
            __m512 wv = e4m3x16(w + c, m, mul);
            #pragma GCC unroll 8
            for (int t = 0; t < NT; t++) p[t] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + t * ldx + c), p[t]);
        }
        __m512 sv = _mm512_set1_ps(s[b]);
        #pragma GCC unroll 8
        for (int t = 0; t < NT; t++) a[t] = _mm512_fmadd_ps(p[t], sv, a[t]);
    }
    #pragma GCC unroll 8
    for (int t = 0; t < NT; t++) res[t] = e4m3_hsum16(a[t]);
}
#undef AVX512

/* Whether any of n codes is NaN (S.1111.111, i.e. q | 0x80 == 0xFF). */
__attribute__((target("avx2"))) static int has_nan(const uint8_t *p, size_t n) {
    __m256i top = _mm256_setzero_si256(), hi = _mm256_set1_epi8((char)0x80);
    size_t i = 0;
    for (; i + 32 <= n; i += 32) /* the largest q | 0x80 per byte lane: 0xFF iff a NaN went by */
        top = _mm256_max_epu8(top, _mm256_or_si256(_mm256_loadu_si256((const __m256i *)(const void *)(p + i)), hi));
    __m256i any = _mm256_cmpeq_epi8(top, _mm256_set1_epi8(-1));
    int nan = !_mm256_testz_si256(any, any);
    for (; i < n; i++) nan |= (p[i] | 0x80) == 0xFF;
    return nan;
}

/* One compiled kernel per (ISA, mul, rows or tokens), each with its constants folded in. */
typedef void RowsK(float *, const float *, const uint8_t *, size_t, int, int, const float *const *);
typedef void ToksK(float *, const float *, size_t, const uint8_t *, size_t, int, int, const float *);
#define T2 __attribute__((target("avx2,fma"))) static void
#define T5 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl"))) static void
#define ROWS_ARGS float *res, const float *x, const uint8_t *w, size_t ld, int cols, int bc, const float *const *s
#define TOKS_ARGS float *res, const float *x, size_t ldx, const uint8_t *w, size_t ld, int cols, int bc, const float *s
T2 r8_4(ROWS_ARGS) { rows8(0, 4, res, x, w, ld, cols, bc, s); }
T2 r8_1(ROWS_ARGS) { rows8(0, 1, res, x, w, ld, cols, bc, s); }
T2 r8_4m(ROWS_ARGS) { rows8(1, 4, res, x, w, ld, cols, bc, s); }
T2 r8_1m(ROWS_ARGS) { rows8(1, 1, res, x, w, ld, cols, bc, s); }
T2 t8_4(TOKS_ARGS) { toks8(0, 4, res, x, ldx, w, ld, cols, bc, s); }
T2 t8_2(TOKS_ARGS) { toks8(0, 2, res, x, ldx, w, ld, cols, bc, s); }
T2 t8_4m(TOKS_ARGS) { toks8(1, 4, res, x, ldx, w, ld, cols, bc, s); }
T2 t8_2m(TOKS_ARGS) { toks8(1, 2, res, x, ldx, w, ld, cols, bc, s); }
T5 r16_4(ROWS_ARGS) { rows16(0, 4, res, x, w, ld, cols, bc, s); }
T5 r16_1(ROWS_ARGS) { rows16(0, 1, res, x, w, ld, cols, bc, s); }
T5 r16_4m(ROWS_ARGS) { rows16(1, 4, res, x, w, ld, cols, bc, s); }
T5 r16_1m(ROWS_ARGS) { rows16(1, 1, res, x, w, ld, cols, bc, s); }
T5 t16_4(TOKS_ARGS) { toks16(0, 4, res, x, ldx, w, ld, cols, bc, s); }
T5 t16_2(TOKS_ARGS) { toks16(0, 2, res, x, ldx, w, ld, cols, bc, s); }
T5 t16_4m(TOKS_ARGS) { toks16(1, 4, res, x, ldx, w, ld, cols, bc, s); }
T5 t16_2m(TOKS_ARGS) { toks16(1, 2, res, x, ldx, w, ld, cols, bc, s); }
#undef T2
#undef T5
#undef ROWS_ARGS
#undef TOKS_ARGS

int e4m3_rows(float *out, const float *x, const float *xs, const Tensor *W, int n, int r0, int nr, MatmulKernel k,
              int scan) {
    int rows = W->rows, cols = W->cols, bc = W->block_c, n_cb = (cols + bc - 1) / bc, mul = !xs;
    size_t ld = (size_t)cols;
    int v5 = k == MATMUL_AVX512;
    RowsK *k4 = v5 ? (mul ? r16_4m : r16_4) : (mul ? r8_4m : r8_4), *k1 = v5 ? (mul ? r16_1m : r16_1) : (mul ? r8_1m : r8_1);
    ToksK *t4 = v5 ? (mul ? t16_4m : t16_4) : (mul ? t8_4m : t8_4), *t2 = v5 ? (mul ? t16_2m : t16_2) : (mul ? t8_2m : t8_2);
    const float *xv = mul ? x : xs; /* what the vector kernels multiply with */
    int found = 0;
    for (int g = 0; g < nr;) {
        int R = nr - g >= GROUP ? GROUP : 1, r = r0 + g;
        const uint8_t *w = (const uint8_t *)W->data + (size_t)r * ld;
        const float *s[GROUP];
        for (int i = 0; i < R; i++) s[i] = W->scale_inv + (size_t)((r + i) / W->block_r) * n_cb;
        int nan = scan && k != MATMUL_PLAIN && has_nan(w, R * ld);
        found |= nan;
        if (k == MATMUL_PLAIN || nan) {
            for (int i = 0; i < R; i++)
                for (int t = 0; t < n; t++)
                    out[(size_t)t * rows + r + i] = e4m3_dot_plain(x + (size_t)t * cols, w + i * ld, s[i], cols, bc);
        } else if (n == 1) {
            float res[GROUP];
            (R == GROUP ? k4 : k1)(res, xv, w, ld, cols, bc, s);
            for (int i = 0; i < R; i++) out[r + i] = res[i];
        } else /* row by row, each widened vector of weights feeding 4 or 2 tokens */
            for (int i = 0; i < R; i++) {
                int t = 0;
                for (float res[4]; n - t >= 2; t += n - t >= 4 ? 4 : 2) {
                    int nt = n - t >= 4 ? 4 : 2;
                    (nt == 4 ? t4 : t2)(res, xv + (size_t)t * cols, (size_t)cols, w + i * ld, ld, cols, bc, s[i]);
                    for (int j = 0; j < nt; j++) out[(size_t)(t + j) * rows + r + i] = res[j];
                }
                if (t < n) k1(out + (size_t)t * rows + r + i, xv + (size_t)t * cols, w + i * ld, ld, cols, bc, s + i);
            }
        g += R;
    }
    return found;
}
