/* fp8.h - FP8 formats (E4M3 "fn", E5M2), block quantization, FP8 GEMM emulation.
 * See fp8.c's header comment for the formats drawn bit by bit and the math; notes/fp8.md for the
 * worked numbers. The error table of `run fp8-error` is an experiment on these: fp8_error.h. */
#ifndef FP8_H
#define FP8_H

#include <stdint.h>

/* E4M3 (fn): 1 sign, 4 exponent (bias 7), 3 mantissa. Max 448, min subnormal 2^-9, no infinities,
 * NaN = S.1111.111. E5M2: 1 sign, 5 exponent (bias 15), 2 mantissa, IEEE-like: max 57344, inf, NaN. */
#define FP8_E4M3_MAX 448.0f
#define FP8_E5M2_MAX 57344.0f

/* DeepSeek-V3's layout (V3 report, 3.3.2): weights in 128x128 blocks, activations in 1x128 tiles;
 * Hopper's FP8 accumulator keeps "around 14 bits"; partial sums are promoted to FP32 every
 * N_C = 128 elements. */
#define FP8_BLOCK 128
#define FP8_ACC_BITS 14
#define FP8_NC 128

/* ---- codecs ------------------------------------------------------------------------------------ */

/* Exact decode of one code to float. */
float fp8_e4m3_decode(uint8_t v);
float fp8_e5m2_decode(uint8_t v);

/* Overflow policy, for a value that rounds (to nearest even) beyond the largest finite code, or is
 * +-inf. NaN is always NaN (its sign bit kept) and rounding is always to nearest even.
 *   FP8_SATURATE  clamp to +-max (448 / 57344); +-inf -> +-max. CUDA's __NV_SATFINITE, and what the
 *                 Hopper cvt.rn.satfinite instruction that Triton/DeepGEMM kernels use does.
 *   FP8_TORCH     PyTorch 2.11's `.to(torch.float8_e4m3fn)` / `.to(torch.float8_e5m2)`:
 *                 E4M3: NaN for |x| > 464 (up to 480 that is rounding to S.1111.111, the NaN
 *                 code; 464 itself ties to the even 448); E5M2: +-inf for |x| >= 61440 (the tie
 *                 between 57344 and 65536 goes to the even 65536 = S.11111.00 = inf). */
typedef enum { FP8_SATURATE, FP8_TORCH } Fp8Overflow;

/* Round to nearest even, subnormals, signed zero, NaN -> NaN (sign kept), overflow per policy. */
uint8_t fp8_e4m3_encode(float x, Fp8Overflow policy);
uint8_t fp8_e5m2_encode(float x, Fp8Overflow policy);

/* ---- block quantization (E4M3) ----------------------------------------------------------------- */

/* How a block's scale is stored. F32: scale = amax / 448 as computed in FP32. UE8M0: that value
 * rounded up to a power of two (DeepSeek's newer kernels, scale_fmt "ue8m0"), so that
 * |x / scale| <= 448 still holds and the scale is an 8-bit exponent. */
typedef enum { FP8_SCALE_F32, FP8_SCALE_UE8M0 } Fp8ScaleFmt;

/* The dequantization scale of a block whose largest |x| is amax (x ~= code * scale).
 * amax = 0 (or so small that amax/448 underflows to 0) gives scale 1: nothing divides by zero, and
 * every code of the block is 0, as the block is. */
float fp8_scale(float amax, Fp8ScaleFmt fmt);

/* q [rows, cols] E4M3 codes and scale_inv [ceil(rows/block_r), ceil(cols/block_c)] from
 * w [rows, cols]: per block, scale = fp8_scale(amax of the block), q = e4m3(w / scale) (FP32
 * division, saturating). Edge blocks partial. scale_inv is DeepSeek's `weight_scale_inv`. */
void fp8_quant_block(uint8_t *q, float *scale_inv, const float *w, int rows, int cols,
                     int block_r, int block_c, Fp8ScaleFmt fmt);

/* W [rows, cols] = q [rows, cols] (E4M3 codes) * scale_inv[r/block_r][c/block_c], edge blocks
 * partial. scale_inv is [ceil(rows/block_r), ceil(cols/block_c)]. */
void fp8_dequant_block(float *w, const uint8_t *q, const float *scale_inv, int rows, int cols,
                       int block_r, int block_c);

/* Activations (DeepSeek's act_quant): x [rows, cols] per row in 1 x tile tiles (tile = 128):
 * q [rows, cols], scale [rows, ceil(cols/tile)]. The same as the block functions with block_r = 1. */
void fp8_quant_act(uint8_t *q, float *scale, const float *x, int rows, int cols, int tile,
                   Fp8ScaleFmt fmt);
void fp8_dequant_act(float *x, const uint8_t *q, const float *scale, int rows, int cols, int tile);

/* ---- FP8 GEMM emulation ------------------------------------------------------------------------ */

/* How the partial sums of q_x * q_w are accumulated (fp8.c explains the model).
 *   man_bits  0: exact partial sums, rounded once to FP32 when promoted: DeepSeek's kernel math
 *             ("FP32 throughout"). 1..23: the running partial is rounded to man_bits mantissa bits
 *             (1 + man_bits significant bits) after every addition: a Hopper tensor core (~14).
 *   n_c       promote (scale the partial, add it to the FP32 accumulator, reset it) every n_c
 *             elements of K, and always at a K-block boundary; n_c <= 0 or >= block_k: once per
 *             K-block (with block_k = K: no promotion at all).
 *   round     FP8_ACC_TRUNCATE (towards zero, as the hardware's alignment shifts drop bits) or
 *             FP8_ACC_NEAREST (to nearest, ties to even). */
typedef enum { FP8_ACC_TRUNCATE, FP8_ACC_NEAREST } Fp8AccRound;
typedef struct {
    int man_bits;
    int n_c;
    Fp8AccRound round;
} Fp8Accum;

/* v rounded to 1 + man_bits significant bits (0 < man_bits < 52), truncated or to nearest even. */
double fp8_acc_round(double v, int man_bits, Fp8AccRound round);

/* y [M, N] = sum_k x[m,k] W[n,k] from the quantized operands:
 *   qx [M, K] E4M3, sx [M, ceil(K/block_k)]                     (1 x block_k tiles, fp8_quant_act)
 *   qw [N, K] E4M3, sw [ceil(N/block_n), ceil(K/block_k)]       (block_n x block_k, fp8_quant_block)
 * y[m,n] = sum over K-blocks kb, over promotion intervals I in kb of (P_I * sx[m,kb]) * sw[n/bn,kb]
 * in FP32, P_I = sum_{k in I} qx[m,k] qw[n,k] accumulated as acc says. DeepSeek-V3's fp8_gemm is
 * block_n = block_k = 128, acc = {0, 128, any}. Single-threaded, deterministic. */
void fp8_gemm(float *y, const uint8_t *qx, const float *sx, const uint8_t *qw, const float *sw,
              int M, int N, int K, int block_n, int block_k, Fp8Accum acc);

#endif
