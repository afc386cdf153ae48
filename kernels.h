/* kernels.h - the CUDA twins of the C functions, callable from C (kernels.cu has the kernels).
 *
 * Every `name_cuda` takes the arguments of the C function `name` (ops.h, rope.h, mla.h, moe.h,
 * fp8.h) and computes the same thing on the GPU, so a test can call both on the same arrays and
 * compare (tests/test_kernels.cu, notes/cuda.md). Two differ, and say so below: moe_gate_cuda and
 * fp8_e4m3_encode_cuda work on a batch, since a GPU launch for one token or one float is wasted.
 *
 * Pointers are HOST pointers: each launcher copies its inputs to the device, runs one kernel, copies
 * the outputs back and frees what it allocated. That keeps them drop-in twins, and makes them slow
 * (the copies cost more than the kernels); mla_attend_absorbed_cuda_dev is the device-pointer form,
 * for timing. A CUDA error prints file, line and the error, and exits (llm.c's cudaCheck): these are
 * a test harness's twins, not library code that run.c calls.
 */
#ifndef KERNELS_H
#define KERNELS_H

#ifdef __cplusplus
extern "C" {
#endif

#include "fp8.h"
#include "mla.h"
#include "moe.h"
#include "ops.h"
#include "rope.h"

/* out [n, d] = x [n, d] / rms(x) * w. One block per row. */
void rmsnorm_cuda(float *out, const float *x, const float *w, int n, int d, float eps);

/* x: n vectors of d_R floats at stride, rotated in place at position pos. One thread per pair. */
void rope_rotate_cuda(float *x, int n, int stride, int d_R, int pos, const float *inv_freq,
                      float attn_factor, int interleaved);

/* out [T, n_h * v] from q [T, n_h * (nope + rope)] and cache [pos0 + T, d_c + d_R]; one block per
 * (head, query). w->kv_b in any dtype (widened to FP32 on the host); the other weights are unused. */
void mla_attend_absorbed_cuda(float *out, const float *q, const float *cache, int T, int pos0,
                              const MlaWeights *w, const MlaDims *m);

/* The same on device pointers; kv_b [n_h * (nope + v), d_c] FP32, scratch [T * n_h * (pos0 + T)].
 * Launches the kernel and returns (asynchronous, default stream). */
void mla_attend_absorbed_cuda_dev(float *d_out, const float *d_q, const float *d_cache,
                                  const float *d_kv_b, float *d_scratch, int T, int pos0,
                                  const MlaDims *m);

/* moe_gate for T tokens at once: idx [T, top_k], weights [T, top_k], logits [T, n_experts]; bias
 * [n_experts] or NULL. Token t gets exactly moe_gate(idx + t*k, weights + t*k, logits + t*E, ...). */
void moe_gate_cuda(int *idx, float *weights, const float *logits, const float *bias,
                   const MoeGate *g, int T);

/* q[i] = fp8_e4m3_encode(x[i], FP8_SATURATE) for i < n: the hardware's cvt.rn.satfinite. */
void fp8_e4m3_encode_cuda(uint8_t *q, const float *x, int n);

void fp8_dequant_block_cuda(float *w, const uint8_t *q, const float *scale_inv, int rows, int cols,
                            int block_r, int block_c);

void fp8_quant_act_cuda(uint8_t *q, float *scale, const float *x, int rows, int cols, int tile,
                        Fp8ScaleFmt fmt);

/* y [M, N] from qx [M, K], sx, qw [N, K], sw; every Fp8Accum the C function takes. */
void fp8_gemm_cuda(float *y, const uint8_t *qx, const float *sx, const uint8_t *qw, const float *sw,
                   int M, int N, int K, int block_n, int block_k, Fp8Accum acc);

#ifdef __cplusplus
}
#endif

#endif
