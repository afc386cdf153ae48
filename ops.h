/* ops.h - the small shared pieces every component uses.
 *
 * Error     one-line error message filled by any function that can fail (returns -1).
 * DType     element types of checkpoint tensors (the safetensors dtype strings).
 * Tensor    a 2-D weight view [rows, cols], row-major, in its stored dtype (F32, BF16, F16, F8),
 *           with 128x128 block scales when it is FP8 (DeepSeek's weight_scale_inv).
 * rmsnorm, matmul (matmul.c), softmax, silu, argmax: the numerics, FP32 throughout.
 *
 * Library code never exits: it returns -1 and leaves one line in Error naming the file, field or
 * tensor, what was expected and what was found. run.c prints it and exits non-zero.
 */
#ifndef OPS_H
#define OPS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char msg[512];
} Error;

/* Writes a printf-style message into e (if not NULL) and returns -1, so `return error_set(...)`. */
int error_set(Error *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef enum {
    DT_F32, DT_F16, DT_BF16, DT_F8_E4M3, DT_F8_E5M2, DT_F64, DT_I8, DT_U8, DT_I16, DT_I32, DT_I64,
    DT_BOOL, DT_COUNT
} DType;

/* The whole file, NUL-terminated (malloc'd), its length in *n (n may be NULL); NULL with e set when
 * it cannot be opened or read. */
char *read_file(const char *path, size_t *n, Error *e);

/* Seconds on a monotonic clock, for the speed figures. */
double now_s(void);

const char *dtype_name(DType t);       /* "F32", "BF16", "F8_E4M3", ... (safetensors spelling) */
int dtype_from_name(const char *s);    /* -1 when unknown */
size_t dtype_size(DType t);            /* bytes per element */

/* Exact widening of one element to float (BF16/F16/FP8 are exact in FP32). p may be unaligned. */
float dtype_load_f32(DType t, const void *p, size_t i);
/* Widen n elements starting at element index i0 of src (any float dtype) into out. */
void dtype_to_f32(float *out, DType t, const void *src, size_t i0, size_t n);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f); /* round to nearest even, NaN kept NaN */
float f16_to_f32(uint16_t h);

/* A weight matrix W [rows, cols] as stored: y = W x maps cols -> rows (PyTorch's Linear layout).
 * For FP8 weights, scale_inv [ceil(rows/block_r), ceil(cols/block_c)] multiplies each block:
 * W[r][c] = fp8(W_q[r][c]) * scale_inv[r / block_r][c / block_c]. */
typedef struct {
    const void *data;
    DType dtype;
    int rows, cols;
    const float *scale_inv; /* NULL unless dtype is FP8 */
    int block_r, block_c;   /* 128, 128 in DeepSeek-V3 */
    int fp8_gemm;           /* E4M3 with scales only. 0: widen, FP32 GEMM (the default). 1: quantize x
                             * in 1 x block_c tiles (FP32 scales) and run fp8_gemm with FP32
                             * accumulation, DeepSeek's kernel math (`run logits --fp8-gemm`) */
    unsigned char *nan_codes; /* E4M3 with scales: what the decode kernels' first call found of the
                               * codes, kept for the next calls (TENSOR_NAN_*; the owner allocates
                               * one byte at TENSOR_NAN_UNKNOWN). NULL: every call scans. */
} Tensor;
/* *nan_codes: not scanned yet; no code is NaN (S.1111.111), so the scan is skipped; some are. */
enum { TENSOR_NAN_UNKNOWN, TENSOR_NAN_NONE, TENSOR_NAN_SOME };

/* Widen rows [r0, r0+n) of W into out [n, cols] as FP32, applying block scales. */
void tensor_rows_f32(float *out, const Tensor *W, int r0, int n);

/* out [n, d] = x [n, d] / rms(x) * w,  rms = sqrt(mean(x^2) + eps); row by row. out may be x. */
void rmsnorm(float *out, const float *x, const float *w, int n, int d, float eps);

/* out [n, rows] = x [n, cols] . W^T (matmul.c). W in any dtype, kept in it.
 * Batch invariance: for n <= SMALL_BATCH every output is dot_f32(x_t, W_r) with W_r widened
 * exactly to FP32 (E4M3 with block scales: e4m3_dot_plain's order, matmul_e4m3.c), whatever n is, so
 * a token's result does not depend on which other tokens share the call (decode of one token and a
 * speculative verify of two give bit-identical logits), nor on the thread count, nor on which kernel
 * (plain C, AVX2 or AVX-512) computes it. Larger n goes to OpenBLAS:
 * FP8/BF16 are widened tile by tile (TILE_ROWS rows at a time) and multiplied with cblas_sgemm. */
#define SMALL_BATCH 8
/* With W->fp8_gemm set (E4M3 weights with block scales) it is instead
 * fp8_gemm(quant_act(x), W) (fp8.h): each output depends on its own row of x only, so it is
 * batch-invariant too. */
/* Returns 0, or -1 with e set when its scratch cannot be allocated (out then partly written). */
int matmul(float *out, const float *x, const Tensor *W, int n, Error *e);

/* The decode kernels by name, for the tests (each against plain, bit for bit) and run bench.
 * MATMUL_BEST is what matmul uses: the fastest this CPU runs. */
typedef enum { MATMUL_PLAIN, MATMUL_AVX2, MATMUL_AVX512, MATMUL_BEST } MatmulKernel;
const char *matmul_kernel_name(MatmulKernel k);
int matmul_kernel_supported(MatmulKernel k); /* 1 when this CPU can run it */
MatmulKernel matmul_kernel_best(void);       /* what MATMUL_BEST means on this CPU */
/* matmul for n <= SMALL_BATCH through kernel k; -1 (nothing written) when n is larger or the CPU
 * lacks k. Dtypes a vector kernel does not take (F16, E5M2, unscaled E4M3) go the plain way. */
int matmul_small_with(float *out, const float *x, const Tensor *W, int n, MatmulKernel k);

/* sum_i a[i] * b[i] in one fixed order: 8 interleaved partial sums, combined pairwise
 * (matmul.c states the order; an AVX2 version with the same bits runs where the CPU has it). */
float dot_f32(const float *a, const float *b, int n);

/* y [n] += a * x [n], elementwise (so vectorizing it changes no bits); y and x must not overlap. */
void axpy(float *y, float a, const float *x, int n);

/* The readable reference for matmul on FP32 arrays: out [n, rows] = x [n, cols] . W [rows, cols]^T,
 * one dot product at a time, accumulated in float in index order. Tests compare matmul to it. */
void matmul_naive(float *out, const float *x, const float *W, int n, int rows, int cols);

/* In place: x [n] -> exp(x - max) / sum. Entries equal to -INFINITY get exactly 0. */
void softmax(float *x, int n);

/* x * sigmoid(x), elementwise, in place. */
void silu(float *x, int n);

/* Index of the largest entry; the first one on ties (as torch.argmax). */
int argmax(const float *x, int n);

/* A seeded generator that gives the same sequence on every machine and compiler: xorshift64*
 * (Vigna 2016) over a splitmix64-scrambled seed; uniforms take the top 24 bits, exact in float. */
typedef struct {
    uint64_t s;
} Rng;
void rng_seed(Rng *r, uint64_t seed);
uint64_t rng_next(Rng *r);
float rng_uniform(Rng *r); /* [0, 1) */
/* A standard normal by Box-Muller from two uniforms u, v: sqrt(-2 ln(1 - u)) cos(2 pi v). The one
 * normal sampler of the codebase (random checkpoints, the FP8 error experiment, the tests). */
float rng_normal(Rng *r);

/* Draw a token from logits [n]. temp == 0: argmax. Otherwise p = softmax(logits / temp); with
 * 0 < top_p < 1 only the nucleus is kept: the fewest most-probable tokens whose mass reaches top_p
 * (ties broken by lower index), renormalized. probs [n] and order [n] are scratch. -1 when the
 * nucleus's sort scratch cannot be allocated (the caller, which has the Error, says so). */
int sample(const float *logits, int n, float temp, float top_p, Rng *rng, float *probs, int *order);

/* The nucleus itself: sorts order [n] by descending p (ties: lower index first) and returns how many
 * of the first entries make up the top_p mass (n when top_p >= 1); -1 (order unsorted) when its
 * scratch of n ints cannot be allocated. */
int nucleus(const float *p, int n, float top_p, int *order);

#endif
