/* matmul.c - out [n, rows] = x [n, cols] . W^T for a weight W stored in F32, BF16, F16 or FP8.
 *
 * Two regimes, two strategies:
 *   decode (n <= SMALL_BATCH tokens): every weight is read from memory once per token and used for
 *     n multiply-adds, so the speed is memory bandwidth, and a widening pass that writes FP32 rows
 *     to a buffer and reads them back (3x the traffic of the BF16 weight) is what to avoid. The
 *     kernels below widen in registers and multiply straight away ("fused widen-and-dot").
 *   prefill (n > SMALL_BATCH): each weight is used n times; FP32 GEMM (OpenBLAS sgemm) is the peak,
 *     and widening a tile of TILE_ROWS rows once per call costs 1/n of it. With more than one
 *     thread (OpenMP's and OpenBLAS's counts both above 1) the threads take whole tiles, each
 *     widening its tile and multiplying it with a 1-thread sgemm: the widening no longer stays on
 *     one core while OpenBLAS's threads wait (a 512-token FP8 prefill of the V2-Lite-shaped model,
 *     2 threads, AMD Zen 3, the two binaries run in turn: 6.1-6.4 s before, 4.8-5.4 s after;
 *     notes/performance.md). The tiles are
 *     the same at any thread count and each is one 1-thread sgemm, so the bits are those of
 *     OPENBLAS_NUM_THREADS=1 (OpenBLAS's own threads split a product differently: other bits).
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
 * The exception is E4M3 with block scales (DeepSeek's FP8): matmul_e4m3.c sums each block of 128
 * products in 16 lanes with FMAs and applies the block's scale once to those partial sums (its
 * header states the order), in the plain kernel and the vector ones alike.
 *
 * The weights widened in registers, exactly as tensor_rows_f32 does it (ops.c):
 *   BF16   zero-extend each 16-bit code to 32 bits, shift left 16: the FP32 with the same value.
 *   F32    loaded as it is.
 *   F16, E5M2, E4M3 without scales: the plain path (no checkpoint of ours stores them).
 *
 * The kernels, chosen at run time (matmul_small_with names them for tests and the benchmark):
 *   plain   tensor_rows_f32 widens SMALL_ROWS rows into a buffer, then dot_f32 on each: the
 *           readable reference, any dtype, any CPU (E4M3 with scales: e4m3_dot_plain).
 *   avx2    one token: KERNEL_ROWS rows per pass, each 8-float load of x feeds all of them;
 *           2..8 tokens: row by row, each 8 weights widened once for 4 (or 2) tokens. The next
 *           group's rows are prefetched in step, into L2, so that memory streams while this group
 *           computes (without it an FP8 decode ran at memory time + compute time; into L1 the
 *           prefetched rows evicted the ones in use on a 32 KB L1d, BF16 decode 1.35x slower on
 *           AMD Zen 4: notes/performance.md).
 *   avx512  E4M3's kernel on 16-float vectors (matmul_e4m3.c); BF16 and F32 as avx2, whose 8-lane
 *           order a 16-lane vector would change.
 * Threads (OpenMP) take whole blocks of SMALL_ROWS output rows, never a part of a sum: every output
 * is the same dot product whichever thread computes it, so the bits do not depend on the count.
 */
#include "ops.h"
#include "fp8.h"
#include "matmul_e4m3.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TILE_ROWS 256   /* prefill: rows widened per sgemm call */
#define SMALL_ROWS 64   /* decode: output rows per thread work item */
#define KERNEL_ROWS 4   /* decode: rows per pass of a vector kernel */
#define PARALLEL_MIN (1 << 15) /* fewer weights than this stay on one thread: starting threads costs more */

/* OpenBLAS's own thread count, where the CBLAS linked is OpenBLAS; weak, so that another CBLAS
 * (tests/cblas_shim) links too, and then the prefill's tiles stay on one thread. */
int openblas_get_num_threads(void); /* as OpenBLAS's cblas.h declares them (the shim's has neither) */
void openblas_set_num_threads(int num_threads);
#pragma weak openblas_get_num_threads
#pragma weak openblas_set_num_threads

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
 * AVX2 decode kernels for BF16 and F32. A kernel takes R = 1 or KERNEL_ROWS = 4 rows of W, one
 * token x [cols], and writes the R dot products to res [R]. w points at the first row's first byte,
 * ld is the row stride in bytes. The 4-row form keeps its four accumulators in registers (written
 * out, since -O2 does not unroll a row loop), and each 8-float load of x feeds all four rows.
 * The widening step per dtype, 8 columns at a time: */
typedef enum { W_F32, W_BF16 } WKind;

/* 8 BF16 codes at p -> 8 FP32: code j in the upper half of 32-bit lane j, zeros below. One byte
 * shuffle of the 16 bytes loaded into both 128-bit halves (index -1 writes a zero byte), instead of
 * zero-extend + shift: one vector operation fewer per 8 weights, the same bits. */
__attribute__((target("avx2"), always_inline)) static inline __m256 bf16x8(const unsigned char *p) {
    const __m256i to_hi = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,
                                           -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15);
    __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(const void *)p));
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(v, to_hi));
}

/* 8 weights of kind k at p (element index c of the row, byte address already applied) */
__attribute__((target("avx2"), always_inline)) static inline __m256 widen8(WKind k, const unsigned char *p) {
    if (k == W_BF16) return bf16x8(p);
    return _mm256_loadu_ps((const float *)(const void *)p);
}

/* the last cols - c (< 8) weights of a row, zero-padded to 8 */
__attribute__((target("avx2"), always_inline)) static inline __m256 widen_tail(WKind k, const unsigned char *p, int m) {
    unsigned char buf[32] = {0};
    memcpy(buf, p, (k == W_F32 ? 4 : 2) * (size_t)m);
    return widen8(k, buf);
}

#define ACC(a, xv, w) a = _mm256_add_ps(a, _mm256_mul_ps(xv, w))

/* R rows (1 or 4), all columns */
__attribute__((target("avx2"), always_inline)) static inline void rows_avx2(WKind k, float *res, const float *x, const unsigned char *w,
                                                                            size_t ld, int cols, int R) {
    size_t es = k == W_F32 ? 4 : 2;
    const unsigned char *w0 = w, *w1 = w + ld, *w2 = w + 2 * ld, *w3 = w + 3 * ld;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int c = 0;
    for (; c + 8 <= cols; c += 8) {
        __m256 xv = _mm256_loadu_ps(x + c);
        size_t o = es * (size_t)c;
        if (R == 1) {
            ACC(a0, xv, widen8(k, w0 + o));
            continue;
        }
        _mm_prefetch((const char *)w + 4 * ld + 4 * o, _MM_HINT_T1); /* the next 4 rows, in step, into L2 */
        ACC(a0, xv, widen8(k, w0 + o));
        ACC(a1, xv, widen8(k, w1 + o));
        ACC(a2, xv, widen8(k, w2 + o));
        ACC(a3, xv, widen8(k, w3 + o));
    }
    if (c < cols) {
        __m256 xv = load_tail(x + c, cols - c);
        size_t o = es * (size_t)c;
        ACC(a0, xv, widen_tail(k, w0 + o, cols - c));
        if (R > 1) {
            ACC(a1, xv, widen_tail(k, w1 + o, cols - c));
            ACC(a2, xv, widen_tail(k, w2 + o, cols - c));
            ACC(a3, xv, widen_tail(k, w3 + o, cols - c));
        }
    }
    res[0] = hsum8(a0);
    if (R > 1) {
        res[1] = hsum8(a1);
        res[2] = hsum8(a2);
        res[3] = hsum8(a3);
    }
}

/* NT = 2 or 4 tokens of one row: each 8 weights, widened once, feed NT tokens (x: NT rows of
 * ldx floats). The same products and sums per output as above, so the same bits. The row of the
 * next 4-row group is prefetched in step. */
__attribute__((target("avx2"), always_inline)) static inline void toks_avx2(WKind k, float *res, const float *x, size_t ldx,
                                                                            const unsigned char *w, size_t ld, int cols, int NT) {
    size_t es = k == W_F32 ? 4 : 2;
    const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int c = 0;
    for (; c + 8 <= cols; c += 8) {
        size_t o = es * (size_t)c;
        _mm_prefetch((const char *)w + 4 * ld + o, _MM_HINT_T1);
        __m256 wv = widen8(k, w + o);
        ACC(a0, _mm256_loadu_ps(x0 + c), wv);
        ACC(a1, _mm256_loadu_ps(x1 + c), wv);
        if (NT == 4) {
            ACC(a2, _mm256_loadu_ps(x2 + c), wv);
            ACC(a3, _mm256_loadu_ps(x3 + c), wv);
        }
    }
    if (c < cols) {
        __m256 wv = widen_tail(k, w + es * (size_t)c, cols - c);
        ACC(a0, load_tail(x0 + c, cols - c), wv);
        ACC(a1, load_tail(x1 + c, cols - c), wv);
        if (NT == 4) {
            ACC(a2, load_tail(x2 + c, cols - c), wv);
            ACC(a3, load_tail(x3 + c, cols - c), wv);
        }
    }
    res[0] = hsum8(a0);
    res[1] = hsum8(a1);
    if (NT == 4) {
        res[2] = hsum8(a2);
        res[3] = hsum8(a3);
    }
}
#undef ACC

/* one kernel per (kind, R), so that each is compiled with both as constants */
typedef void RowKernel(float *, const float *, const unsigned char *, size_t, int);
typedef void TokKernel(float *, const float *, size_t, const unsigned char *, size_t, int);
#define AVX2_FN __attribute__((target("avx2"))) static void
AVX2_FN rows_f32_4(float *res, const float *x, const unsigned char *w, size_t ld, int cols) { rows_avx2(W_F32, res, x, w, ld, cols, 4); }
AVX2_FN rows_f32_1(float *res, const float *x, const unsigned char *w, size_t ld, int cols) { rows_avx2(W_F32, res, x, w, ld, cols, 1); }
AVX2_FN rows_bf16_4(float *res, const float *x, const unsigned char *w, size_t ld, int cols) { rows_avx2(W_BF16, res, x, w, ld, cols, 4); }
AVX2_FN rows_bf16_1(float *res, const float *x, const unsigned char *w, size_t ld, int cols) { rows_avx2(W_BF16, res, x, w, ld, cols, 1); }
AVX2_FN toks_f32_4(float *res, const float *x, size_t ldx, const unsigned char *w, size_t ld, int cols) { toks_avx2(W_F32, res, x, ldx, w, ld, cols, 4); }
AVX2_FN toks_f32_2(float *res, const float *x, size_t ldx, const unsigned char *w, size_t ld, int cols) { toks_avx2(W_F32, res, x, ldx, w, ld, cols, 2); }
AVX2_FN toks_bf16_4(float *res, const float *x, size_t ldx, const unsigned char *w, size_t ld, int cols) { toks_avx2(W_BF16, res, x, ldx, w, ld, cols, 4); }
AVX2_FN toks_bf16_2(float *res, const float *x, size_t ldx, const unsigned char *w, size_t ld, int cols) { toks_avx2(W_BF16, res, x, ldx, w, ld, cols, 2); }
#undef AVX2_FN

/* Rows [r0, r0+nr) of a BF16 or F32 W for n tokens through the AVX2 kernels. */
static void block_avx2(float *out, const float *x, const Tensor *W, int n, int r0, int nr) {
    int bf = W->dtype == DT_BF16, rows = W->rows, cols = W->cols;
    RowKernel *k4 = bf ? rows_bf16_4 : rows_f32_4, *k1 = bf ? rows_bf16_1 : rows_f32_1;
    TokKernel *t4 = bf ? toks_bf16_4 : toks_f32_4, *t2 = bf ? toks_bf16_2 : toks_f32_2;
    size_t ld = (size_t)cols * dtype_size(W->dtype);
    for (int g = 0; g < nr;) {
        int R = nr - g >= KERNEL_ROWS ? KERNEL_ROWS : 1, r = r0 + g;
        const unsigned char *w = (const unsigned char *)W->data + (size_t)r * ld;
        if (n == 1) {
            float res[KERNEL_ROWS];
            (R == KERNEL_ROWS ? k4 : k1)(res, x, w, ld, cols);
            for (int i = 0; i < R; i++) out[r + i] = res[i];
        } else /* several tokens: row by row, each weight widened once for 4 or 2 tokens at a time */
            for (int i = 0; i < R; i++) {
                const unsigned char *wi = w + (size_t)i * ld;
                int t = 0;
                for (float res[4]; n - t >= 2; t += n - t >= 4 ? 4 : 2) {
                    int nt = n - t >= 4 ? 4 : 2;
                    (nt == 4 ? t4 : t2)(res, x + (size_t)t * cols, (size_t)cols, wi, ld, cols);
                    for (int j = 0; j < nt; j++) out[(size_t)(t + j) * rows + r + i] = res[j];
                }
                if (t < n) k1(out + (size_t)t * rows + r + i, x + (size_t)t * cols, wi, ld, cols);
            }
        g += R;
    }
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

/* E4M3 with block scales takes matmul_e4m3.c's sums (any kernel); BF16 and F32 the AVX2 kernels
 * above (the AVX-512 choice changes only the E4M3 kernel); any other dtype the plain way. */
static int e4m3_scaled(const Tensor *W) {
    return W->dtype == DT_F8_E4M3 && W->scale_inv && W->block_c > 0 && W->block_r > 0;
}

const char *matmul_kernel_name(MatmulKernel k) {
    static const char *names[] = {"plain", "avx2", "avx512", "best"};
    return (unsigned)k <= MATMUL_BEST ? names[k] : "?";
}

int matmul_kernel_supported(MatmulKernel k) {
    if (k == MATMUL_PLAIN || k == MATMUL_BEST) return 1;
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (k == MATMUL_AVX2) return avx2;
    return k == MATMUL_AVX512 && avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}

MatmulKernel matmul_kernel_best(void) {
    return matmul_kernel_supported(MATMUL_AVX512) ? MATMUL_AVX512 : matmul_kernel_supported(MATMUL_AVX2) ? MATMUL_AVX2 : MATMUL_PLAIN;
}

/* matmul_small_with, and -2 when scratch could not be allocated (*bytes: its size). */
static int small_with(float *out, const float *x, const Tensor *W, int n, MatmulKernel k, size_t *bytes) {
    if (!matmul_kernel_supported(k) || n > SMALL_BATCH) return -1;
    if (k == MATMUL_BEST) k = matmul_kernel_best();
    int rows = W->rows, cols = W->cols, n_blocks = (rows + SMALL_ROWS - 1) / SMALL_ROWS;
    int threads = n_blocks > 1 && (size_t)rows * cols >= PARALLEL_MIN;
    if (e4m3_scaled(W)) {
        /* x * 2^120 once for every row (matmul_e4m3.c); without it the kernels scale the codes */
        size_t nx = (size_t)n * cols;
        float *xs = NULL;
        if (k != MATMUL_PLAIN && e4m3_x_scalable(x, nx)) {
            if (!(xs = malloc(sizeof(float) * nx + 1))) {
                *bytes = sizeof(float) * nx;
                return -2;
            }
            for (size_t i = 0; i < nx; i++) xs[i] = x[i] * 0x1p120f;
        }
        /* The NaN scan runs on a tensor's first call (or on every call when nothing keeps the
         * result); after a call that found no NaN code the next ones skip it (the codes are read
         * only). Plain calls do not scan, so they record nothing. */
        int known = W->nan_codes ? __atomic_load_n(W->nan_codes, __ATOMIC_RELAXED) : TENSOR_NAN_UNKNOWN;
        int scan = known != TENSOR_NAN_NONE, found = 0;
#pragma omp parallel for schedule(static) if (threads) reduction(| : found)
        for (int b = 0; b < n_blocks; b++) {
            int r0 = b * SMALL_ROWS, nr = rows - r0 < SMALL_ROWS ? rows - r0 : SMALL_ROWS;
            found |= e4m3_rows(out, x, xs, W, n, r0, nr, k, scan);
        }
        if (W->nan_codes && known == TENSOR_NAN_UNKNOWN && k != MATMUL_PLAIN)
            __atomic_store_n(W->nan_codes, found ? TENSOR_NAN_SOME : TENSOR_NAN_NONE, __ATOMIC_RELAXED);
        free(xs);
        return 0;
    }
    if (W->dtype != DT_BF16 && W->dtype != DT_F32) k = MATMUL_PLAIN;
    size_t buf_bytes = sizeof(float) * (size_t)SMALL_ROWS * cols;
    int failed = 0; /* set by any thread whose scratch is missing; every thread still reaches the barrier */
#pragma omp parallel if (threads)
    {
        float *buf = NULL;
        int skip = 0;
#pragma omp for schedule(static)
        for (int b = 0; b < n_blocks; b++) {
            int r0 = b * SMALL_ROWS, nr = rows - r0 < SMALL_ROWS ? rows - r0 : SMALL_ROWS;
            if (skip) continue;
            if (k != MATMUL_PLAIN) {
                block_avx2(out, x, W, n, r0, nr);
                continue;
            }
            if (!buf && !(buf = malloc(buf_bytes))) {
#pragma omp atomic write
                failed = 1;
                skip = 1; /* skips this thread's remaining blocks */
                continue;
            }
            block_plain(out, x, W, n, r0, nr, buf);
        }
        free(buf);
    }
    if (failed) {
        *bytes = buf_bytes;
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
    int tile = rows < TILE_ROWS ? rows : TILE_ROWS, n_tiles = (rows + tile - 1) / tile;
    int blas_threads = openblas_get_num_threads && openblas_set_num_threads ? openblas_get_num_threads() : 1;
    int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (threads > blas_threads) threads = blas_threads; /* OPENBLAS_NUM_THREADS still sets the prefill's */
    if (threads > n_tiles) threads = n_tiles;
    size_t buf_bytes = sizeof(float) * (size_t)tile * cols;
    if (threads > 1) openblas_set_num_threads(1); /* the threads below each run a 1-thread sgemm */
    int failed = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *buf = malloc(buf_bytes);
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < n_tiles; i++) {
            int r0 = i * tile, nr = rows - r0 < tile ? rows - r0 : tile;
            if (!buf) continue;
            tensor_rows_f32(buf, W, r0, nr);
            /* out[:, r0:r0+nr] = x . tile^T  (ldc = rows writes into the column slice) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nr, cols, 1.0f, x, cols, buf, cols, 0.0f,
                        out + r0, rows);
        }
        free(buf);
    }
    if (threads > 1) openblas_set_num_threads(blas_threads);
    if (failed)
        return error_set(e, "matmul: out of memory (%zu bytes for a tile of %d rows of a [%d, %d] weight)", buf_bytes,
                         tile, rows, cols);
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
