/* mla_decode_ptx.cuh - the few instructions mla_decode.cu and mla_decode_pair.cu are written in:
 * cp.async (global -> shared without registers), mma.sync m16n8k16 (BF16 in, FP32 accumulate),
 * ldmatrix (8 x 8 BF16 tiles from shared memory into mma fragments), named barriers.
 *
 * The fragment layout everything relies on (PTX ISA, "Matrix Fragments for mma.m16n8k16"), with
 * g = lane / 4 and c = lane % 4, each 32-bit register a pair of BF16, the lower column in the low half:
 *   A [16 x 16] (row major):  a0 = A[g][2c..2c+1]   a1 = A[g+8][2c..]   a2 = A[g][2c+8..]   a3 = A[g+8][2c+8..]
 *   B [16 x 8]  (k x n):      b0 = B[2c..2c+1][g]   b1 = B[2c+8..2c+9][g]
 *   D [16 x 8]  (FP32):       d0 = D[g][2c]  d1 = D[g][2c+1]  d2 = D[g+8][2c]  d3 = D[g+8][2c+1]
 * Two neighbouring D tiles (columns 8j..8j+7 and 8j+8..8j+15), rounded to BF16 pairs, are exactly
 * an A fragment over k = 16j..16j+15: {pack(d[2j][0,1]), pack(d[2j][2,3]), pack(d[2j+1][0,1]),
 * pack(d[2j+1][2,3])} (FlashAttention-2's trick; mla_decode_pair.cu keeps P in registers with it).
 * ldmatrix.x4: lane L gives the shared address of row L % 8 of 8 x 8 matrix L / 8; thread t receives
 * in register i the pair at row t / 4, columns 2 (t % 4), +1 of matrix i (with .trans: of matrix i
 * transposed, i.e. column t / 4, rows 2 (t % 4), +1 of the matrix as stored). */
#ifndef MLA_DECODE_PTX_CUH
#define MLA_DECODE_PTX_CUH

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static void mla_cuda_check(cudaError_t err, const char *file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "[CUDA ERROR] at %s:%d: %s\n", file, line, cudaGetErrorString(err));
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(err) mla_cuda_check((err), __FILE__, __LINE__)

static __device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared, asynchronous; src_bytes 0 writes 16 zero bytes and reads nothing. */
static __device__ __forceinline__ void cp_async16(void *dst, const void *src, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
/* Wait until at most N of this thread's committed groups are still in flight. */
template <int N> static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* d [16 x 8] += a [16 x 16] . b [16 x 8] in the layout above. */
static __device__ __forceinline__ void mma_bf16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
                 "{%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ void ldmatrix_x4(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}
static __device__ __forceinline__ void ldmatrix_x4_trans(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

/* Barrier `id` (1..15; 0 is __syncthreads') over `threads` threads, whole warps; also orders their
 * shared-memory accesses as __syncthreads does. */
static __device__ __forceinline__ void named_barrier(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

static __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* x = 0 for an array of MMA fragments held in registers (unrolled: constant indices keep it there). */
template <int A, int B, int C> static __device__ __forceinline__ void zero_frags(float (&x)[A][B][C]) {
    #pragma unroll
    for (int a = 0; a < A; a++)
        #pragma unroll
        for (int b = 0; b < B; b++)
            #pragma unroll
            for (int c = 0; c < C; c++) x[a][b][c] = 0.0f;
}

/* ---- wgmma (sm_90a's warpgroup MMA; mla_decode_pair.cu's variant 2) ------------------------------ *
 * D [64 x N] (+)= A [64 x 16] . B [16 x N], both operands in shared memory, read by the tensor
 * cores through descriptors, issued by the 4 warps of a warpgroup together and asynchronously.
 * The layout used here is the "no swizzle" canonical one: 8 x 8 core matrices of 128 contiguous
 * bytes (8 rows of 16 bytes, K contiguous in a row); LBO = bytes between core matrices adjacent in K,
 * SBO = bytes between core matrices adjacent in M (or N). Descriptor bits: [0,14) address >> 4,
 * [16,30) LBO >> 4, [32,46) SBO >> 4, [62,64) swizzle mode 0. The accumulator of warp w of the
 * warpgroup is rows 16 w .. 16 w + 15 in the mma.sync D layout above, n8-block j in d[4j .. 4j + 3].
 * Shared memory written by ordinary stores or cp.async must be fenced (fence.proxy.async) by the
 * writers before a barrier that precedes the wgmma reading it. */
static __device__ __forceinline__ uint64_t wgmma_desc(const void *p, uint32_t lbo, uint32_t sbo) {
    return (uint64_t)((smem_addr(p) & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32);
}
static __device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> static __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
static __device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
/* Tell the compiler that r is (re)defined here: keeps accumulator uses after wgmma_wait. */
static __device__ __forceinline__ void reg_fence(float &r) { asm volatile("" : "+f"(r)::"memory"); }

/* d [64 x 32] (+)= A . B over k16, accumulate = 0 overwrites; BF16 in, FP32 accumulate. */
static __device__ __forceinline__ void wgmma_m64n32k16(float *d, uint64_t da, uint64_t db, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
                 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
                   "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                 : "l"(da), "l"(db), "r"(accumulate));
}

#endif
