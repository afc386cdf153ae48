/* matmul.c - out [n, rows] = x [n, cols] . W^T for a weight W stored in F32, BF16, F16 or FP8.
 *
 * Two regimes, two strategies:
 *   decode (n <= SMALL_BATCH tokens): every weight is read from memory once per token and used for
 *     n multiply-adds, so the speed is memory bandwidth, and a widening pass that writes FP32 rows
 *     to a buffer and reads them back (3x the traffic of the BF16 weight) is what to avoid. The
 *     kernels below widen in registers and multiply straight away ("fused widen-and-dot").
 *   prefill (n > SMALL_BATCH): each weight is used n times; FP32 GEMM (OpenBLAS sgemm) is the peak,
 *     and widening a tile of TILE_ROWS rows once per call costs 1/n of it.
 *
 * What every decode kernel computes (batch invariance, ops.h): for token t and row r
 *     out[t][r] = dot_f32(x_t, w_r),  w_r = row r of W widened exactly to FP32
 *     dot_f32(a, b, n): lane k = i mod 8 accumulates a[i] * b[i] in index order (each product and
 *     each sum rounded to FP32), then ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)).
 * That is one 8-lane vector accumulator with a separate multiply and add (a fused multiply-add
 * rounds once instead of twice and would change the bits: no FMA here, and the build's -std=c11
 * keeps the compiler from contracting), and the combine is lo128 + hi128, movehl, the last add.
 * A tail of cols mod 8 is loaded zero-padded: lanes past the end add 0 * 0 = +0, which changes no
 * sum, since a lane that starts at +0 can never hold -0 (x + y is -0 only when both are -0).
 *
 * The weights widened in registers, exactly as tensor_rows_f32 does it (ops.c):
 *   BF16   zero-extend each 16-bit code to 32 bits, shift left 16: the FP32 with the same value.
 *   E4M3   with a block scale s: w = decode(code) * s, one rounding. Sign-extend the code c =
 *          S.eeee.mmm to 32 bits and shift left 20: bits 20..26 hold eeee.mmm, bits 27..31 copies of
 *          S; keeping bits 31 and 20..26 gives the FP32 S 2^(e-127) 1.mmm (or, for e = 0, the FP32
 *          subnormal S mmm 2^-129): decode(c) * 2^-120, exactly. Its product with s' = s * 2^120
 *          (exact when finite) is the real number decode(c) * s, rounded once: the same FP32 as
 *          decode-then-multiply. A block whose s' would overflow, and a row group holding a NaN code
 *          (S.1111.111, which the bit trick would read as 480), take the plain path instead.
 *   F32    loaded as it is.
 *   F16, E5M2, E4M3 without scales: the plain path (no checkpoint of ours stores them).
 *
 * The kernels, chosen at run time (matmul_small_with names them for tests and the benchmark):
 *   plain   tensor_rows_f32 widens SMALL_ROWS rows into a buffer, then dot_f32 on each: the
 *           readable reference, any dtype, any CPU.
 *   avx2    one token: KERNEL_ROWS rows per pass, each 8-float load of x feeds all of them;
 *           2..8 tokens: row by row, each 8 weights widened once for 4 (or 2) tokens. The next
 *           group's rows are prefetched in step, so that memory streams while this group computes
 *           (without it an FP8 decode ran at memory time + compute time: notes/performance.md).
 * Threads (OpenMP) take whole blocks of SMALL_ROWS output rows, never a part of a sum: every output
 * is the same dot product whichever thread computes it, so the bits do not depend on the count.
 */
#include "ops.h"
#include "fp8.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TILE_ROWS 256   /* prefill: rows widened per sgemm call */
#define SMALL_ROWS 64   /* decode: output rows per thread work item */
#define KERNEL_ROWS 4   /* decode: rows per pass of a vector kernel */
#define PARALLEL_MIN (1 << 15) /* fewer weights than this stay on one thread: starting threads costs more */

/* ---------------------------------------------------------------------------------------------
 * The reference dot product, and its AVX2 twin (same order, same bits)
 */
static float dot_f32_plain(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) acc[k] += a[i + k] * b[i + k];
    for (int k = 0; i < n; i++, k++) acc[k] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

/* ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) of the 8 lanes */
__attribute__((target("avx2"), always_inline)) static inline float hsum8(__m256 acc) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

/* n - i (< 8) floats from p, zero-padded to 8 */
__attribute__((target("avx2"), always_inline)) static inline __m256 load_tail(const float *p, int m) {
    float buf[8] = {0};
    memcpy(buf, p, sizeof(float) * (size_t)m);
    return _mm256_loadu_ps(buf);
}

__attribute__((target("avx2"))) static float dot_f32_avx2(const float *a, const float *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    if (i < n) acc = _mm256_add_ps(acc, _mm256_mul_ps(load_tail(a + i, n - i), load_tail(b + i, n - i)));
    return hsum8(acc);
}

float dot_f32(const float *a, const float *b, int n) {
    return __builtin_cpu_supports("avx2") ? dot_f32_avx2(a, b, n) : dot_f32_plain(a, b, n);
}

/* ---------------------------------------------------------------------------------------------
 * AVX2 decode kernels. A kernel takes R = 1 or KERNEL_ROWS = 4 rows of W, one token x [cols], and
 * writes the R dot products to res [R]. w points at the first row's first byte, ld is the row
 * stride in bytes. The 4-row form keeps its four accumulators in registers (written out, since
 * -O2 does not unroll a row loop), and each 8-float load of x feeds all four rows.
 * The widening step per dtype, 8 columns at a time: */
typedef enum { W_F32, W_BF16, W_E4M3 } WKind;

/* 8 BF16 codes at p -> 8 FP32 (zero-extend, shift left 16) */
__attribute__((target("avx2"), always_inline)) static inline __m256 bf16x8(const unsigned char *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(const void *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/* 8 E4M3 codes at p -> decode(c) * 2^-120 as FP32 (header comment), times s' = s * 2^120 */
__attribute__((target("avx2"), always_inline)) static inline __m256 e4m3x8(const unsigned char *p, __m256 s) {
    __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)p));
    v = _mm256_and_si256(_mm256_slli_epi32(v, 20), _mm256_set1_epi32((int)0x87F00000u));
    return _mm256_mul_ps(_mm256_castsi256_ps(v), s);
}

/* 8 weights of kind k at p (element index c of the row, byte address already applied) */
__attribute__((target("avx2"), always_inline)) static inline __m256 widen8(WKind k, const unsigned char *p, __m256 s) {
    if (k == W_BF16) return bf16x8(p);
    if (k == W_E4M3) return e4m3x8(p, s);
    return _mm256_loadu_ps((const float *)(const void *)p);
}

/* the last cols - c (< 8) weights of a row, zero-padded to 8 */
__attribute__((target("avx2"), always_inline)) static inline __m256 widen_tail(WKind k, const unsigned char *p, int m, __m256 s) {
    size_t es = k == W_F32 ? 4 : k == W_BF16 ? 2 : 1;
    unsigned char buf[32] = {0};
    memcpy(buf, p, es * (size_t)m);
    return widen8(k, buf, s);
}

#define ACC(a, xv, w) a = _mm256_add_ps(a, _mm256_mul_ps(xv, w))

/* Columns [c0, c1) of R rows into acc (c0 a multiple of 8; only the row's last span may have a
 * tail). s: the rows' scales for this span (E4M3), ignored otherwise. */
__attribute__((target("avx2"), always_inline)) static inline void span4(WKind k, __m256 *acc, const float *x, const unsigned char *w,
                                                         size_t ld, int c0, int c1, const __m256 *s) {
    size_t es = k == W_F32 ? 4 : k == W_BF16 ? 2 : 1;
    const unsigned char *w0 = w, *w1 = w + ld, *w2 = w + 2 * ld, *w3 = w + 3 * ld;
    __m256 a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    int c = c0;
    for (; c + 8 <= c1; c += 8) {
        __m256 xv = _mm256_loadu_ps(x + c);
        size_t o = es * (size_t)c;
        _mm_prefetch((const char *)w + 4 * ld + 4 * o, _MM_HINT_T0); /* the next 4 rows, in step */
        ACC(a0, xv, widen8(k, w0 + o, s[0]));
        ACC(a1, xv, widen8(k, w1 + o, s[1]));
        ACC(a2, xv, widen8(k, w2 + o, s[2]));
        ACC(a3, xv, widen8(k, w3 + o, s[3]));
    }
    if (c < c1) {
        __m256 xv = load_tail(x + c, c1 - c);
        size_t o = es * (size_t)c;
        ACC(a0, xv, widen_tail(k, w0 + o, c1 - c, s[0]));
        ACC(a1, xv, widen_tail(k, w1 + o, c1 - c, s[1]));
        ACC(a2, xv, widen_tail(k, w2 + o, c1 - c, s[2]));
        ACC(a3, xv, widen_tail(k, w3 + o, c1 - c, s[3]));
    }
    acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3;
}

__attribute__((target("avx2"), always_inline)) static inline void span1(WKind k, __m256 *acc, const float *x, const unsigned char *w,
                                                         int c0, int c1, __m256 s) {
    size_t es = k == W_F32 ? 4 : k == W_BF16 ? 2 : 1;
    __m256 a = *acc;
    int c = c0;
    for (; c + 8 <= c1; c += 8) ACC(a, _mm256_loadu_ps(x + c), widen8(k, w + es * (size_t)c, s));
    if (c < c1) ACC(a, load_tail(x + c, c1 - c), widen_tail(k, w + es * (size_t)c, c1 - c, s));
    *acc = a;
}
#undef ACC

/* R rows (1 or 4), all columns. sf [R][n_cb]: E4M3's folded scales (e4m3_fold_scales), one span
 * per block of block_c columns; the other kinds are one span. */
__attribute__((target("avx2"), always_inline)) static inline void rows_avx2(WKind k, float *res, const float *x, const unsigned char *w,
                                                             size_t ld, int cols, int R, const float *sf, int block_c) {
    __m256 acc[KERNEL_ROWS], s[KERNEL_ROWS];
    for (int r = 0; r < KERNEL_ROWS; r++) acc[r] = s[r] = _mm256_setzero_ps();
    int span = k == W_E4M3 ? block_c : cols > 0 ? cols : 1, n_sp = (cols + span - 1) / span;
    for (int sp = 0; sp < n_sp; sp++) {
        int c0 = sp * span, c1 = c0 + span < cols ? c0 + span : cols;
        if (k == W_E4M3)
            for (int r = 0; r < R; r++) s[r] = _mm256_set1_ps(sf[r * n_sp + sp]);
        if (R == KERNEL_ROWS) span4(k, acc, x, w, ld, c0, c1, s);
        else span1(k, acc, x, w, c0, c1, s[0]);
    }
    for (int r = 0; r < R; r++) res[r] = hsum8(acc[r]);
}

/* NT = 2 or 4 tokens of one row: each 8 weights, widened once, feed NT tokens (x: NT rows of
 * ldx floats). The same products and sums per output as above, so the same bits. The row of the
 * next 4-row group is prefetched in step. */
__attribute__((target("avx2"), always_inline)) static inline void toks_avx2(WKind k, float *res, const float *x, size_t ldx,
                                                                            const unsigned char *w, size_t ld, int cols, int NT,
                                                                            const float *sf, int block_c) {
    size_t es = k == W_F32 ? 4 : k == W_BF16 ? 2 : 1;
    const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, s = a0;
    int span = k == W_E4M3 ? block_c : cols > 0 ? cols : 1, n_sp = (cols + span - 1) / span;
    for (int sp = 0; sp < n_sp; sp++) {
        int c = sp * span, c1 = c + span < cols ? c + span : cols;
        if (k == W_E4M3) s = _mm256_set1_ps(sf[sp]);
        for (; c + 8 <= c1; c += 8) {
            size_t o = es * (size_t)c;
            _mm_prefetch((const char *)w + 4 * ld + o, _MM_HINT_T0);
            __m256 wv = widen8(k, w + o, s);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(_mm256_loadu_ps(x0 + c), wv));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(_mm256_loadu_ps(x1 + c), wv));
            if (NT == 4) {
                a2 = _mm256_add_ps(a2, _mm256_mul_ps(_mm256_loadu_ps(x2 + c), wv));
                a3 = _mm256_add_ps(a3, _mm256_mul_ps(_mm256_loadu_ps(x3 + c), wv));
            }
        }
        if (c < c1) {
            __m256 wv = widen_tail(k, w + es * (size_t)c, c1 - c, s);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(load_tail(x0 + c, c1 - c), wv));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(load_tail(x1 + c, c1 - c), wv));
            if (NT == 4) {
                a2 = _mm256_add_ps(a2, _mm256_mul_ps(load_tail(x2 + c, c1 - c), wv));
                a3 = _mm256_add_ps(a3, _mm256_mul_ps(load_tail(x3 + c, c1 - c), wv));
            }
        }
    }
    res[0] = hsum8(a0);
    res[1] = hsum8(a1);
    if (NT == 4) {
        res[2] = hsum8(a2);
        res[3] = hsum8(a3);
    }
}

/* Whether any of n E4M3 codes is NaN (S.1111.111, i.e. c | 0x80 == 0xFF). */
__attribute__((target("avx2"))) static int e4m3_has_nan_avx2(const unsigned char *p, size_t n) {
    __m256i top = _mm256_setzero_si256(), hi = _mm256_set1_epi8((char)0x80);
    size_t i = 0;
    for (; i + 32 <= n; i += 32) /* the largest c | 0x80 per byte lane: 0xFF iff a NaN went by */
        top = _mm256_max_epu8(top, _mm256_or_si256(_mm256_loadu_si256((const __m256i *)(const void *)(p + i)), hi));
    __m256i any = _mm256_cmpeq_epi8(top, _mm256_set1_epi8(-1));
    int nan = !_mm256_testz_si256(any, any);
    for (; i < n; i++) nan |= (p[i] | 0x80) == 0xFF;
    return nan;
}

/* s' [R][n_cb] = scale * 2^120 for the rows' blocks; 0 when one is not finite (then: plain path) */
static int e4m3_fold_scales(float *sf, const Tensor *W, int r0, int R) {
    int n_cb = (W->cols + W->block_c - 1) / W->block_c;
    for (int r = 0; r < R; r++) {
        const float *s = W->scale_inv + (size_t)((r0 + r) / W->block_r) * n_cb;
        for (int cb = 0; cb < n_cb; cb++) {
            float f = s[cb] * 0x1p120f;
            if (!isfinite(f)) return 0;
            sf[r * n_cb + cb] = f;
        }
    }
    return 1;
}

/* one kernel per (kind, R), so that each is compiled with both as constants */
__attribute__((target("avx2"))) static void rows_avx2_f32_4(float *res, const float *x, const unsigned char *w, size_t ld, int cols, const float *sf, int bc) { rows_avx2(W_F32, res, x, w, ld, cols, 4, sf, bc); }
__attribute__((target("avx2"))) static void rows_avx2_f32_1(float *res, const float *x, const unsigned char *w, size_t ld, int cols, const float *sf, int bc) { rows_avx2(W_F32, res, x, w, ld, cols, 1, sf, bc); }
__attribute__((target("avx2"))) static void rows_avx2_bf16_4(float *res, const float *x, const unsigned char *w, size_t ld, int cols, const float *sf, int bc) { rows_avx2(W_BF16, res, x, w, ld, cols, 4, sf, bc); }
__attribute__((target("avx2"))) static void rows_avx2_bf16_1(float *res, const float *x, const unsigned char *w, size_t ld, int cols, const float *sf, int bc) { rows_avx2(W_BF16, res, x, w, ld, cols, 1, sf, bc); }
__attribute__((target("avx2"))) static void rows_avx2_e4m3_4(float *res, const float *x, const unsigned char *w, size_t ld, int cols, const float *sf, int bc) { rows_avx2(W_E4M3, res, x, w, ld, cols, 4, sf, bc); }
__attribute__((target("avx2"))) static void rows_avx2_e4m3_1(float *res, const float *x, const unsigned char *w, size_t ld, int cols, const float *sf, int bc) { rows_avx2(W_E4M3, res, x, w, ld, cols, 1, sf, bc); }
typedef void TokKernel(float *, const float *, size_t, const unsigned char *, size_t, int, const float *, int);
__attribute__((target("avx2"))) static void toks_avx2_f32_4(float *res, const float *x, size_t ldx, const unsigned char *w, size_t ld, int cols, const float *sf, int bc) { toks_avx2(W_F32, res, x, ldx, w, ld, cols, 4, sf, bc); }
__attribute__((target("avx2"))) static void toks_avx2_f32_2(float *res, const float *x, size_t ldx, const unsigned char *w, size_t ld, int cols, const float *sf, int bc) { toks_avx2(W_F32, res, x, ldx, w, ld, cols, 2, sf, bc); }
__attribute__((target("avx2"))) static void toks_avx2_bf16_4(float *res, const float *x, size_t ldx, const unsigned char *w, size_t ld, int cols, const float *sf, int bc) { toks_avx2(W_BF16, res, x, ldx, w, ld, cols, 4, sf, bc); }
__attribute__((target("avx2"))) static void toks_avx2_bf16_2(float *res, const float *x, size_t ldx, const unsigned char *w, size_t ld, int cols, const float *sf, int bc) { toks_avx2(W_BF16, res, x, ldx, w, ld, cols, 2, sf, bc); }
__attribute__((target("avx2"))) static void toks_avx2_e4m3_4(float *res, const float *x, size_t ldx, const unsigned char *w, size_t ld, int cols, const float *sf, int bc) { toks_avx2(W_E4M3, res, x, ldx, w, ld, cols, 4, sf, bc); }
__attribute__((target("avx2"))) static void toks_avx2_e4m3_2(float *res, const float *x, size_t ldx, const unsigned char *w, size_t ld, int cols, const float *sf, int bc) { toks_avx2(W_E4M3, res, x, ldx, w, ld, cols, 2, sf, bc); }

/* Rows [r0, r0+nr) of W for n tokens through the AVX2 kernels; returns 0, or -1 when some row
 * group needs the plain path (the caller then runs it for the whole block). sf: scratch for
 * KERNEL_ROWS * n_cb folded scales. */
static int block_avx2(float *out, const float *x, const Tensor *W, int n, int r0, int nr, float *sf) {
    typedef void Kernel(float *, const float *, const unsigned char *, size_t, int, const float *, int);
    Kernel *k4 = W->dtype == DT_BF16 ? rows_avx2_bf16_4 : W->dtype == DT_F8_E4M3 ? rows_avx2_e4m3_4 : rows_avx2_f32_4;
    Kernel *k1 = W->dtype == DT_BF16 ? rows_avx2_bf16_1 : W->dtype == DT_F8_E4M3 ? rows_avx2_e4m3_1 : rows_avx2_f32_1;
    TokKernel *t4 = W->dtype == DT_BF16 ? toks_avx2_bf16_4 : W->dtype == DT_F8_E4M3 ? toks_avx2_e4m3_4 : toks_avx2_f32_4;
    TokKernel *t2 = W->dtype == DT_BF16 ? toks_avx2_bf16_2 : W->dtype == DT_F8_E4M3 ? toks_avx2_e4m3_2 : toks_avx2_f32_2;
    int rows = W->rows, cols = W->cols, n_cb = W->scale_inv ? (cols + W->block_c - 1) / W->block_c : 0;
    size_t ld = (size_t)cols * dtype_size(W->dtype);
    for (int g = 0; g < nr;) {
        int R = nr - g >= KERNEL_ROWS ? KERNEL_ROWS : 1, r = r0 + g;
        const unsigned char *w = (const unsigned char *)W->data + (size_t)r * ld;
        /* the NaN scan is also this group's first touch of its weights: it waits on memory */
        if (W->dtype == DT_F8_E4M3 && (e4m3_has_nan_avx2(w, R * ld) || !e4m3_fold_scales(sf, W, r, R)))
            return -1;
        if (n == 1) {
            float res[KERNEL_ROWS];
            (R == KERNEL_ROWS ? k4 : k1)(res, x, w, ld, cols, sf, W->block_c);
            for (int i = 0; i < R; i++) out[r + i] = res[i];
        } else /* several tokens: row by row, each weight widened once for 4 or 2 tokens at a time */
            for (int i = 0; i < R; i++) {
                const unsigned char *wi = w + (size_t)i * ld;
                const float *sfi = sf + (size_t)i * n_cb;
                int t = 0;
                for (float res[4]; n - t >= 2; t += n - t >= 4 ? 4 : 2) {
                    int nt = n - t >= 4 ? 4 : 2;
                    (nt == 4 ? t4 : t2)(res, x + (size_t)t * cols, (size_t)cols, wi, ld, cols, sfi, W->block_c);
                    for (int j = 0; j < nt; j++) out[(size_t)(t + j) * rows + r + i] = res[j];
                }
                if (t < n) k1(out + (size_t)t * rows + r + i, x + (size_t)t * cols, wi, ld, cols, sfi, W->block_c);
            }
        g += R;
    }
    return 0;
}

/* Rows [r0, r0+nr) the plain way: widen into buf [nr, cols] (unless W is aligned F32), dot_f32. */
static void block_plain(float *out, const float *x, const Tensor *W, int n, int r0, int nr, float *buf) {
    int rows = W->rows, cols = W->cols;
    const float *w = buf;
    if (W->dtype == DT_F32 && (uintptr_t)W->data % sizeof(float) == 0) w = (const float *)W->data + (size_t)r0 * cols;
    else tensor_rows_f32(buf, W, r0, nr);
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < n; t++)
            out[(size_t)t * rows + r0 + r] = dot_f32_plain(x + (size_t)t * cols, w + (size_t)r * cols, cols);
}

/* Which dtypes the vector kernels take (the others go the plain way on any CPU). */
static int vector_dtype(const Tensor *W) {
    if (W->dtype == DT_BF16 || W->dtype == DT_F32) return 1;
    return W->dtype == DT_F8_E4M3 && W->scale_inv && W->block_c % 8 == 0 && W->block_r > 0;
}

const char *matmul_kernel_name(MatmulKernel k) {
    static const char *names[] = {"plain", "avx2", "best"};
    return (unsigned)k <= MATMUL_BEST ? names[k] : "?";
}

int matmul_kernel_supported(MatmulKernel k) {
    return k == MATMUL_PLAIN || k == MATMUL_BEST || (k == MATMUL_AVX2 && __builtin_cpu_supports("avx2"));
}

/* matmul_small_with, and -2 when a thread's scratch could not be allocated (*bytes: its size). */
static int small_with(float *out, const float *x, const Tensor *W, int n, MatmulKernel k, size_t *bytes) {
    if (!matmul_kernel_supported(k) || n > SMALL_BATCH) return -1;
    if (k == MATMUL_BEST) k = __builtin_cpu_supports("avx2") ? MATMUL_AVX2 : MATMUL_PLAIN;
    if (!vector_dtype(W)) k = MATMUL_PLAIN;
    int rows = W->rows, cols = W->cols, n_blocks = (rows + SMALL_ROWS - 1) / SMALL_ROWS;
    int n_cb = W->scale_inv ? (cols + W->block_c - 1) / W->block_c : 0;
    size_t sf_bytes = sizeof(float) * (size_t)(KERNEL_ROWS * n_cb + 1), buf_bytes = sizeof(float) * (size_t)SMALL_ROWS * cols;
    int failed = 0; /* set by any thread whose scratch is missing; every thread still reaches the barrier */
#pragma omp parallel if (n_blocks > 1 && (size_t)rows * cols >= PARALLEL_MIN)
    {
        float *buf = NULL, *sf = malloc(sf_bytes);
        if (!sf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int b = 0; b < n_blocks; b++) {
            if (!sf) continue;
            int r0 = b * SMALL_ROWS, nr = rows - r0 < SMALL_ROWS ? rows - r0 : SMALL_ROWS;
            if (k == MATMUL_AVX2 && block_avx2(out, x, W, n, r0, nr, sf) == 0) continue;
            if (!buf && !(buf = malloc(buf_bytes))) {
#pragma omp atomic write
                failed = 1;
                free(sf);
                sf = NULL; /* skips this thread's remaining blocks */
                continue;
            }
            block_plain(out, x, W, n, r0, nr, buf);
        }
        free(buf);
        free(sf);
    }
    if (failed) {
        *bytes = sf_bytes + buf_bytes;
        return -2;
    }
    return 0;
}

int matmul_small_with(float *out, const float *x, const Tensor *W, int n, MatmulKernel k) {
    size_t bytes;
    return small_with(out, x, W, n, k, &bytes) == 0 ? 0 : -1;
}

/* ---------------------------------------------------------------------------------------------
 * The FP8 path (DeepSeek's act_quant + fp8_gemm): x [n, cols] quantized to E4M3 per row in
 * 1 x block_c tiles, multiplied with the stored codes, FP32 accumulation per K-block.
 */
static int matmul_fp8(float *out, const float *x, const Tensor *W, int n, Error *e) {
    int cols = W->cols, nkb = (cols + W->block_c - 1) / W->block_c;
    uint8_t *qx = malloc((size_t)n * cols);
    float *sx = malloc(sizeof(float) * (size_t)n * nkb);
    if (!qx || !sx) {
        free(qx);
        free(sx);
        return error_set(e, "matmul: out of memory (%zu bytes for the quantized activations of %d tokens)",
                         ((size_t)n * cols) + sizeof(float) * (size_t)n * nkb, n);
    }
    fp8_quant_act(qx, sx, x, n, cols, W->block_c, FP8_SCALE_F32);
    fp8_gemm(out, qx, sx, W->data, W->scale_inv, n, W->rows, cols, W->block_r, W->block_c,
             (Fp8Accum){0, 0, FP8_ACC_TRUNCATE});
    free(qx);
    free(sx);
    return 0;
}

int matmul(float *out, const float *x, const Tensor *W, int n, Error *e) {
    int rows = W->rows, cols = W->cols;
    if (W->fp8_gemm && W->dtype == DT_F8_E4M3 && W->scale_inv) return matmul_fp8(out, x, W, n, e);
    if (n <= SMALL_BATCH) {
        size_t bytes = 0;
        if (small_with(out, x, W, n, MATMUL_BEST, &bytes))
            return error_set(e, "matmul: out of memory (%zu bytes of per-thread scratch for a [%d, %d] weight)",
                             bytes, rows, cols);
        return 0;
    }
    int aligned = ((uintptr_t)W->data % sizeof(float)) == 0;
    if (W->dtype == DT_F32 && aligned) {
        /* out [n, rows] = x [n, cols] . W^T, W used in place from the mapping */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, rows, cols, 1.0f, x, cols,
                    (const float *)W->data, cols, 0.0f, out, rows);
        return 0;
    }
    int tile = rows < TILE_ROWS ? rows : TILE_ROWS;
    float *buf = malloc(sizeof(float) * (size_t)tile * cols);
    if (!buf)
        return error_set(e, "matmul: out of memory (%zu bytes for a tile of %d rows of a [%d, %d] weight)",
                         sizeof(float) * (size_t)tile * cols, tile, rows, cols);
    for (int r0 = 0; r0 < rows; r0 += tile) {
        int nr = rows - r0 < tile ? rows - r0 : tile;
        tensor_rows_f32(buf, W, r0, nr);
        /* out[:, r0:r0+nr] = x . tile^T  (ldc = rows writes into the column slice) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nr, cols, 1.0f, x, cols, buf, cols,
                    0.0f, out + r0, rows);
    }
    free(buf);
    return 0;
}

void matmul_naive(float *out, const float *x, const float *W, int n, int rows, int cols) {
    for (int t = 0; t < n; t++)
        for (int r = 0; r < rows; r++) {
            float acc = 0.0f;
            for (int c = 0; c < cols; c++) acc += x[(size_t)t * cols + c] * W[(size_t)r * cols + c];
            out[(size_t)t * rows + r] = acc;
        }
}
