/* kernels.cuh - what kernels.cu (the twins) and model.cu (the device forward) share: the error
 * check, copies, warp and block reductions, and the kernels of kernels.cu that the device forward
 * launches on its own device buffers (both files are compiled with -rdc, so one definition each). */
#ifndef KERNELS_CUH
#define KERNELS_CUH

#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "kernels.h"

/* The twins' error check: print file, line and error, and exit (a test harness's, llm.c's
 * cudaCheck). The device forward (model.cu) returns its errors instead, as library code must. */
static inline void cuda_check(cudaError_t err, const char *file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "[CUDA ERROR] at %s:%d: %s\n", file, line, cudaGetErrorString(err));
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(err) cuda_check((err), __FILE__, __LINE__)

/* A device buffer of `bytes`, filled from host memory when src is not NULL. */
static inline void *device_copy(const void *src, size_t bytes) {
    void *d = NULL;
    cudaCheck(cudaMalloc(&d, bytes > 0 ? bytes : 1));
    if (src && bytes > 0) cudaCheck(cudaMemcpy(d, src, bytes, cudaMemcpyHostToDevice));
    return d;
}

/* Wait for the kernel, report its error if any, copy its output back. */
static inline void host_copy(void *dst, const void *d_src, size_t bytes) {
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaMemcpy(dst, d_src, bytes, cudaMemcpyDeviceToHost));
}

#define FULL_MASK 0xffffffffu
#define THREADS 256 /* threads per block, a multiple of 32, everywhere below */

/* Sum (max) over the 32 lanes of a warp: a butterfly, every lane ends with the result. */
static __device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(FULL_MASK, v, off);
    return v;
}
static __device__ __forceinline__ float warp_max(float v) {
    for (int off = 16; off > 0; off /= 2) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, off));
    return v;
}
static __device__ __forceinline__ double warp_sum_f64(double v) {
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(FULL_MASK, v, off);
    return v;
}

/* Sum (max) over the whole block, returned to every thread. red: 32 floats of shared memory. The
 * first __syncthreads lets a previous call's readers finish before red is overwritten. */
template <bool IS_MAX> static __device__ __forceinline__ float block_reduce(float v, float *red) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = IS_MAX ? warp_max(v) : warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = lane < (int)blockDim.x / 32 ? red[lane] : (IS_MAX ? -INFINITY : 0.0f); /* the op's identity */
    return IS_MAX ? warp_max(r) : warp_sum(r);
}
static __device__ __forceinline__ float block_sum(float v, float *red) { return block_reduce<false>(v, red); }
static __device__ __forceinline__ float block_max(float v, float *red) { return block_reduce<true>(v, red); }

/* One row of rmsnorm (rmsnorm_kernel's body, which the device forward's fused kernels share so that
 * their bits are the kernel's): out[i] = w[i] * (x[i] * r), r = 1 / sqrt(mean(x^2) + eps), by the
 * whole block. C: one loop, i = 0 .. d-1. Here: THREADS strided partials (thread j: x[j], x[j +
 * THREADS], ... in order), a butterfly in each of THREADS / 32 warps, then one over the warps' sums:
 * block_sum's order for a block of THREADS. rmsnorm_inv gives that order at any blockDim.x (a
 * multiple of 32): a warp of a smaller block takes several of those warps' parts, a larger block's
 * threads past THREADS add nothing, so a fused kernel of another block size norms to the same bits. */
static __device__ __forceinline__ float rmsnorm_inv(const float *x, int d, float eps, float *red) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads(); /* a previous call's readers of red are done */
    for (int vw = warp; vw < THREADS / 32; vw += blockDim.x / 32) {
        float ss = 0.0f;
#pragma unroll 8 /* the loads of 8 iterations in flight at once; the sum keeps its order */
        for (int i = vw * 32 + lane; i < d; i += THREADS) ss += x[i] * x[i];
        ss = warp_sum(ss);
        if (lane == 0) red[vw] = ss;
    }
    __syncthreads();
    float ss = warp_sum(lane < THREADS / 32 ? red[lane] : 0.0f);
    return 1.0f / sqrtf(ss / (float)d + eps);
}
static __device__ __forceinline__ void rmsnorm_row(float *out, const float *x, const float *w, int d, float eps,
                                                   float *red) {
    float r = rmsnorm_inv(x, d, eps, red);
#pragma unroll 8
    for (int i = threadIdx.x; i < d; i += blockDim.x) out[i] = w[i] * (x[i] * r);
}

/* rope_rotate's pair j of one vector v [d_R] at position pos (rope_rotate_kernel's body, shared by
 * the device forward's fused kernels): (a, b) rotated by pos * inv_freq[j], scaled by attn_factor.
 * cosf/sinf (not __cosf): the angles reach thousands of radians and need the full range reduction. */
static __device__ __forceinline__ void rope_pair(float *v, int j, int d_R, int pos, const float *inv_freq,
                                                 float attn_factor, int interleaved) {
    int half = d_R / 2;
    float angle = (float)pos * inv_freq[j];
    float c = cosf(angle) * attn_factor, s = sinf(angle) * attn_factor;
    int a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + half;
    float xa = v[a], xb = v[b];
    v[a] = xa * c - xb * s; /* nvcc makes each line one multiply and one FMA */
    v[b] = xb * c + xa * s;
}

/* kernels.cu's kernels that model.cu launches (their comments are there). */
__global__ void rmsnorm_kernel(float *out, const float *x, const float *w, int d, int out_stride,
                               int x_stride, float eps);
__global__ void rope_rotate_kernel(float *x, int n, int stride, int token_stride, int d_R, int pos,
                                   const int *pos_dev, const float *inv_freq, float attn_factor, int interleaved);
__global__ void mla_attend_absorbed_kernel(float *out, const float *q, const float *cache,
                                           const float *kv_b, float *scratch, int T, int pos0,
                                           int n_h, int d_c, int d_R, int nope, int v_dim,
                                           float scale);
__global__ void moe_gate_kernel(int *idx_all, float *weights_all, const float *logits_all,
                                const float *bias, MoeGate g);

#endif
