/* device.cuh - what the device forward's files share (model.cu, mla.cu, moe.cu, ops.cu): the
 * weights and buffers on the device (Dev), the exact readers of a stored weight, and the steps one
 * file calls in another. Each .cu mirrors the C file of its name: ops.cu matmul (ops.c), mla.cu the
 * attention projections and the naive form (mla.c), moe.cu the FFN and MoE blocks (moe.c), model.cu
 * the upload, the layer loop, the final norm and lm_head, MTP and the State (model.c). */
#ifndef DEVICE_CUH
#define DEVICE_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <string.h>

#include "kernels.cuh"
extern "C" {
#include "device.h"
}

/* The absorbed decode's split-KV kernels (mla.cu) */
#define MLA_SPLITS 64 /* at most this many chunks of one query's visible rows */
#define MLA_TILE 16   /* cached rows staged in shared memory at a time */
#define MLA_COLS 4     /* latent columns per thread in the chunk kernel: d_c <= 4 * THREADS */
#define MLA_QREG 20    /* query values per lane in the chunk kernel: d_c + d_R <= 32 * 20 */
#define MLA_UV_ROWS 32 /* rows of W_UV per block of the merge + W_UV kernel */
#define MLA_MAX_NOPE 256 /* q_nope values per head and token that the absorb step stages */

/* Where rope_rotate's position and tables are for the fused kernels: rows rotate at *pos_dev + t. */
struct DevRope {
    const float *inv_freq; /* [d_R / 2]; NULL: no rotation */
    float attn_factor;
    int interleaved;
    const int *pos_dev;
};

/* A weight as stored (ops.h's Tensor, device pointers); FP8 brings its block scales. */
struct DevTensor {
    const void *data;
    DType dtype;
    int rows, cols;
    const float *scale; /* [ceil(rows/block_r), ceil(cols/block_c)] or NULL */
    int block_r, block_c;
};
struct DevFfn { DevTensor gate, up, down; };
struct DevLayer {
    const float *attn_norm, *ffn_norm, *q_a_norm, *kv_a_norm;
    DevTensor q_a, q_b, q, kv_a, kv_b, o;
    const float *kv_b_f32; /* [n_h * (nope + v), d_c], for the attention kernel */
    int is_moe;
    DevFfn dense, shared;   /* shared.gate.data NULL when there is none */
    DevTensor router;
    const float *bias;
    MoeGate gate;
    DevFfn *experts;        /* host array [n_experts] of device tensors */
    DevFfn *experts_dev;    /* the same array on the device, for the decode kernels */
};

struct Dev {
    cublasHandle_t blas;
    cublasStatus_t blas_err;
    DevTensor embed, lm_head, eh_proj, mtp_head;
    const float *final_norm, *enorm, *hnorm, *head_norm, *inv_freq;
    DevLayer *layers, mtp_layer;
    /* activations [max_T, ...] and caches, as State's */
    float *cache, *mtp_cache, *hidden, *x, *h, *q, *q_scratch, *attn, *out, *mtp_in;
    float *moe_y;    /* the decode MoE's expert outputs [SMALL_BATCH * top_k, d] */
    float *q_lat, *part_o, *part_ml; /* the absorbed decode's [SMALL_BATCH, (MLA_SPLITS,) n_h, d_c (2)] */
    float *ffn_h, *ffn_u, *scores, *logits, *router_logits, *gate_w, *widen, *moe_h, *tw, *xb, *yb;
    float *lat;      /* [max_T, d_c + d_R]: the new latent rows, stored into the cache once complete */
    int *step_in;    /* [1 + max_T]: the position, then the tokens of the call (device copies) */
    int *host_in;    /* the same on the host */
    int *idx, *tok, *next;
    void *argmax_scratch; /* ARGMAX_SCRATCH bytes, zero between calls (ops.cu's argmax_kernel) */
    cudaGraphExec_t step_graph; /* one decode step (T = 1 to the argmax), recorded once, replayed */
    int graph_off;              /* DSV3_CUDA_GRAPH=0: launch the kernels one by one */
    int gemv_rows;              /* DSV3_GEMV_ROWS: rows per warp of the decode GEMVs (0: gemv_rows_per_warp's) */
    int norm_unfused;           /* DSV3_FUSED_NORM=0: rmsnorm_kernel before each GEMV (ops.cu's matmul_normed_cuda) */
    int xs_off;                 /* DSV3_GEMV_XS=0: the FP8 GEMVs read x from global memory, unstaged */
    int xreg_off;               /* DSV3_GEMV_XREG=0: the FP8 GEMVs a warp a row (warp_dots_rows), not gemv_xreg.cuh's */
    /* Two branches of the recorded decode step (model.cu's branch_fork / branch_unfork / branch_join):
     * the launches that may run on the side branch take d->st (0: the thread's default stream) */
    cudaStream_t st, side;
    cudaEvent_t *ev;      /* [2 * DEV_MAX_BRANCHES]: fork and join events, one pair a branch point */
    cudaEvent_t pending_join; /* the side's work since the last fork, until the main chain waits for it */
    int n_ev, branching;  /* events used in this recording; 1 while a step is recorded with branches */
    int branches_off;     /* DSV3_CUDA_BRANCHES=0: the recorded step stays one chain */
    size_t widen_n;
    int max_T, ctx, n_layers;
    /* every cudaMalloc, for state_free_device; and host pointer -> device copy, so a tensor shared
     * by two names (a tied lm_head, the MTP head) is uploaded once */
    void **owned;
    int n_owned, cap_owned;
    const void **up_host;
    const void **up_dev;
    int n_up;
};

/* ---- reading a stored weight on the device -------------------------------------------------------- */

/* Element i of a stored array widened to FP32, exactly (ops.c's dtype_load_f32 for the weight
 * dtypes; the hardware converts FP8 to half, exact, then to float). */
static __device__ __forceinline__ float load_f32(DType t, const void *p, size_t i) {
    switch (t) {
    case DT_F32: return ((const float *)p)[i];
    case DT_BF16: return __uint_as_float((uint32_t)((const uint16_t *)p)[i] << 16);
    case DT_F16: return __half2float(((const __half *)p)[i]);
    case DT_F8_E4M3:
        return __half2float(__half(__nv_cvt_fp8_to_halfraw(((const __nv_fp8_storage_t *)p)[i], __NV_E4M3)));
    case DT_F8_E5M2:
        return __half2float(__half(__nv_cvt_fp8_to_halfraw(((const __nv_fp8_storage_t *)p)[i], __NV_E5M2)));
    default: return __int_as_float(0x7fc00000);
    }
}

/* The block scale of W[r][c]: 1 without scales. */
static __device__ __forceinline__ float scale_at(const DevTensor &W, int r, int c) {
    return W.scale ? W.scale[(size_t)(r / W.block_r) * ((W.cols + W.block_c - 1) / W.block_c) + c / W.block_c] : 1.0f;
}

/* W[r][c] as tensor_rows_f32 gives it: the stored value, times its block's scale (one rounding),
 * stored as dt (W.dtype; the decode kernels pass it as a template constant, so the switch folds). */
static __device__ __forceinline__ float w_at_dt(const DevTensor &W, DType dt, int r, int c) {
    float v = load_f32(dt, W.data, (size_t)r * W.cols + c);
    return W.scale ? v * scale_at(W, r, c) : v;
}
static __device__ __forceinline__ float w_at(const DevTensor &W, int r, int c) { return w_at_dt(W, W.dtype, r, c); }

/* CW consecutive weights of row r from column c (c % CW == 0, cols % CW == 0), one 16-byte load:
 * 8 BF16 or F16 (CW 8), 16 FP8 codes (CW 16), or two 16-byte loads of F32 (CW 8). FP8 comes back
 * as the codes' values, without the block scale (block_c % 16 == 0: the 16 share one scale; the
 * caller applies it once to their sum), converted two at a time (cvt e4m3x2 -> f16x2, exact). */
template <int DT> struct Chunk { enum { CW = (DT == DT_F8_E4M3 || DT == DT_F8_E5M2) ? 16 : 8 }; };

/* The values of one 16-byte load as floats, exact: 4 F32, 8 BF16 (a shift) or F16, or 16 FP8 codes
 * (cvt e4m3x2 -> f16x2 per pair, then f16 -> f32; the decode GEMV was bound by one conversion a
 * code). load_chunk's and gemv_xreg.cuh's. */
template <int DT>
static __device__ __forceinline__ void chunk_values(float *w, uint4 u) {
    uint32_t p[4] = {u.x, u.y, u.z, u.w};
    if constexpr (DT == DT_F32) {
#pragma unroll
        for (int k = 0; k < 4; k++) w[k] = __uint_as_float(p[k]);
    } else if constexpr (DT == DT_BF16 || DT == DT_F16) {
#pragma unroll
        for (int k = 0; k < 4; k++) {
            if (DT == DT_BF16) {
                w[2 * k] = __uint_as_float(p[k] << 16);
                w[2 * k + 1] = __uint_as_float(p[k] & 0xffff0000u);
            } else {
                float2 f = __half22float2(*(__half2 *)&p[k]);
                w[2 * k] = f.x;
                w[2 * k + 1] = f.y;
            }
        }
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++) {
            __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(p[k / 2] >> (16 * (k % 2))),
                                                       DT == DT_F8_E5M2 ? __NV_E5M2 : __NV_E4M3);
            float2 f = __half22float2(*(__half2 *)&h);
            w[2 * k] = f.x;
            w[2 * k + 1] = f.y;
        }
    }
}

template <int DT>
static __device__ __forceinline__ void load_chunk(float *w, const DevTensor &W, int r, int c) {
    size_t i = (size_t)r * W.cols + c;
    if (DT == DT_F32) { /* CW 8: two loads */
        chunk_values<DT>(w, ((const uint4 *)W.data)[i / 4]);
        chunk_values<DT>(w + 4, ((const uint4 *)W.data)[i / 4 + 1]);
    } else {
        chunk_values<DT>(w, ((const uint4 *)W.data)[i / Chunk<DT>::CW]);
    }
}

/* x in shared memory, padded: element c at x_padded(c), 4 floats of gap after every 16. A lane's 16
 * consecutive values (one FP8 chunk) then start 80 bytes after the previous lane's, so the eight
 * lanes of a 128-byte shared-memory wavefront hit distinct banks; unpadded (64 bytes apart) they
 * collide, and from global memory each float4 of x touches 16 cache lines a warp: at one row a
 * warp the FP8 GEMV is bound by these x reads (1.2-1.4 -> 1.9 TB/s padded; notes/cuda.md, section
 * 10, also shows it does not pay at 2 or 4 rows a warp). stage_x_padded: the block copies x [cols]. */
static __device__ __forceinline__ int x_padded(int c) { return c + (c >> 4) * 4; }
static inline size_t x_padded_bytes(int cols) { return sizeof(float) * ((size_t)cols + (size_t)(cols + 15) / 16 * 4); }
static __device__ __forceinline__ void stage_x_padded(float *xs, const float *x, int cols) {
    for (int i = threadIdx.x; i < cols; i += blockDim.x) xs[x_padded(i)] = x[i];
    __syncthreads();
}
#define GEMV_XS_MAX_BYTES (48 * 1024) /* gemv_xs: padded x up to the shared memory a block gets unasked */

/* The dot products of NR rows with x_t [cols] for t < n (n <= SMALL_BATCH), by one warp: row k is
 * row rs[k] of *Ws[k] (all of one dtype DT and width cols). Lane l takes the CW-column chunks l,
 * l+32, ... of every row: the NR chunks of a column are loaded together and share the x values
 * loaded for them (the GEMV is bound by loads in flight and x reads, not by arithmetic: notes/cuda.md,
 * section 10), then a butterfly adds each row's 32 partials. C's order is dot_f32's (8 lanes,
 * pairwise): the same products, summed in another order. FP8: each chunk's 16 code * x products are
 * summed, then times the block scale, once (matmul_e4m3.c's decode kernel sums a 128-block's
 * products before its scale, too; the exact dequant, tensor_rows_f32, rounds code * scale per
 * weight): the same real sum, other roundings. TN: the most tokens (n <= TN), 1 in the decode step
 * so that acc [NR][TN] stays in registers. XS: x is stage_x_padded's shared copy. */
template <int DT, int NR, int TN = SMALL_BATCH, bool XS = false>
static __device__ __forceinline__ void warp_dots_rows(float (*acc)[TN], const DevTensor *const *Ws, const int *rs,
                                                      const float *x, int n, int x_stride) {
    const int CW = Chunk<DT>::CW;
    const bool FP8 = DT == DT_F8_E4M3 || DT == DT_F8_E5M2;
    int lane = threadIdx.x % 32, cols = Ws[0]->cols, vec = cols % CW == 0;
#pragma unroll
    for (int k = 0; k < NR; k++) {
        vec = vec && (CW == 8 || !Ws[k]->scale || Ws[k]->block_c % CW == 0);
#pragma unroll
        for (int t = 0; t < TN; t++) acc[k][t] = 0.0f;
    }
    int c_vec = vec ? cols : 0;
#pragma unroll(4 / NR) /* 4 chunks of a lane in flight with one row, NR chunks of each of NR rows with more */
    for (int c = lane * CW; c < c_vec; c += 32 * CW) {
        float w[NR][CW], sc[NR];
#pragma unroll
        for (int k = 0; k < NR; k++) {
            load_chunk<DT>(w[k], *Ws[k], rs[k], c);
            sc[k] = FP8 ? scale_at(*Ws[k], rs[k], c) : 1.0f;
        }
#pragma unroll
        for (int t = 0; t < TN; t++) {
            if (t >= n) break;
            const float4 *xv = (const float4 *)(x + (size_t)t * x_stride + (XS ? x_padded(c) : c));
            float4 a[CW / 4];
#pragma unroll
            for (int q = 0; q < CW / 4; q++) a[q] = xv[q];
#pragma unroll
            for (int k = 0; k < NR; k++) {
                float s = 0.0f;
#pragma unroll
                for (int q = 0; q < CW / 4; q++)
                    s += w[k][4 * q] * a[q].x + w[k][4 * q + 1] * a[q].y + w[k][4 * q + 2] * a[q].z + w[k][4 * q + 3] * a[q].w;
                acc[k][t] += FP8 ? s * sc[k] : s;
            }
        }
    }
    for (int c = c_vec + lane; c < cols; c += 32) /* any shape: one element at a time */
#pragma unroll
        for (int k = 0; k < NR; k++) {
            float w = w_at(*Ws[k], rs[k], c);
            for (int t = 0; t < n; t++) acc[k][t] += w * x[(size_t)t * x_stride + (XS ? x_padded(c) : c)];
        }
#pragma unroll
    for (int k = 0; k < NR; k++)
#pragma unroll
        for (int t = 0; t < TN; t++)
            if (t < n) acc[k][t] = warp_sum(acc[k][t]); /* n is the same for the whole warp */
}

/* Rows r0 .. r0 + NR - 1 of W for warp_dots_rows, those past the end as the last row again (the
 * callers compute them and do not write them). */
template <int NR>
static __device__ __forceinline__ void rows_of(const DevTensor **Ws, int *rs, const DevTensor &W, int r0) {
#pragma unroll
    for (int k = 0; k < NR; k++) { Ws[k] = &W; rs[k] = min(r0 + k, W.rows - 1); }
}

/* ops.cu's matmul_gemv_kernel (also tests/bench_fp8_gemv.cu's): out [n, rows] (= or +=) x [n, cols]
 * . W^T, NR rows a warp (rows past the end computed again from the last row, not written). */
template <int DT, int NR, int TN, bool XS>
static __device__ __forceinline__ void gemv_rows_body(float *out, const float *x, const DevTensor &W, int n, int accumulate) {
    extern __shared__ float xs[]; /* XS: x [cols] padded (T = 1) */
    if (XS) stage_x_padded(xs, x, W.cols);
    int r0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * NR;
    if (r0 >= W.rows) return;
    const DevTensor *Ws[NR];
    int rs[NR];
    rows_of<NR>(Ws, rs, W, r0);
    float acc[NR][TN];
    warp_dots_rows<DT, NR, TN, XS>(acc, Ws, rs, XS ? xs : x, n, W.cols);
    if (threadIdx.x % 32 == 0)
#pragma unroll /* constant indices: acc stays in registers */
        for (int k = 0; k < NR; k++)
#pragma unroll
            for (int t = 0; t < TN; t++)
                if (r0 + k < W.rows && t < n) {
                    float *o = out + (size_t)t * W.rows + r0 + k;
                    *o = accumulate ? *o + acc[k][t] : acc[k][t];
                }
}

/* One row: warp_dots_rows with NR = 1. */
template <int DT>
static __device__ __forceinline__ void warp_dots(float *acc, const DevTensor &W, int r, const float *x, int n,
                                                 int x_stride) {
    const DevTensor *Ws[1] = {&W};
    warp_dots_rows<DT, 1, SMALL_BATCH>((float(*)[SMALL_BATCH])acc, Ws, &r, x, n, x_stride);
}

/* Whether the T = 1 GEMVs of dt stage x padded: FP8, x of at most 48 KB padded, DSV3_GEMV_XS not 0. */
static inline bool gemv_xs(const Dev *d, DType dt, int cols) {
    return (dt == DT_F8_E4M3 || dt == DT_F8_E5M2) && !d->xs_off && x_padded_bytes(cols) <= GEMV_XS_MAX_BYTES;
}
/* Rows per warp for a GEMV of `rows` outputs: more rows a warp (more loads in flight, x read once
 * for them) while the grid still fills the GPU's SMs twice over with warps of 8 per block.
 * DSV3_GEMV_ROWS=1|2|4 fixes it (notes/cuda.md, section 10, compares them). */
static inline int gemv_rows_per_warp(int rows, int forced) {
    if (forced) return forced;
    return rows >= 4 * 8 * 132 * 2 ? 4 : rows >= 2 * 8 * 132 ? 2 : 1;
}

/* f(dt) with dt's type carrying a stored dtype as a constant (decltype(dt)::value), for the launchers
 * that instantiate a kernel per weight dtype: one switch instead of one in each launcher. */
template <int D> struct DtypeConst { static constexpr int value = D; };
template <class F> static inline void with_dtype(DType t, F f) {
    switch (t) {
    case DT_F32: f(DtypeConst<DT_F32>()); break;
    case DT_BF16: f(DtypeConst<DT_BF16>()); break;
    case DT_F16: f(DtypeConst<DT_F16>()); break;
    case DT_F8_E4M3: f(DtypeConst<DT_F8_E4M3>()); break;
    default: f(DtypeConst<DT_F8_E5M2>()); break;
    }
}

static inline unsigned blocks_for(size_t n) { return (unsigned)((n + THREADS - 1) / THREADS); }

static inline void rmsnorm_cuda_dev(float *out, const float *x, const float *w, int n, int d, int out_stride, int x_stride,
                             float eps) {
    rmsnorm_kernel<<<n, THREADS>>>(out, x, w, d, out_stride, x_stride, eps);
}
/* ---- the steps, by the file that defines them ----------------------------------------------------- */

/* model.cu: a branch of the recorded decode step. fork: the side stream waits for the main chain so
 * far, and the launches after it (those that take d->st) go to the side; unfork: they go back to the
 * main chain, the side's work so far marked; join: the main chain waits for it. Outside a recording
 * (or DSV3_CUDA_BRANCHES=0) all three do nothing: one chain, the same kernels in the same order. */
#define DEV_MAX_BRANCHES 256
void branch_fork(Dev *d);
void branch_unfork(Dev *d);
void branch_join(Dev *d);

/* model.cu (embed_rows_kernel launched as model.cu does, <<<T, THREADS>>>) and ops.cu (argmax_cuda_dev;
 * declared here for tests/test_forward_twins.cu). argmax's scratch: ARGMAX_SCRATCH bytes, zeroed once. */
#define ARGMAX_BLOCKS 128
#define ARGMAX_SCRATCH (ARGMAX_BLOCKS * (sizeof(float) + sizeof(int)) + sizeof(unsigned))
int cuda_err(Error *e, cudaError_t err, const char *what);
int dev_status(Dev *d, Error *e);
__global__ void embed_rows_kernel(float *x, int out_stride, DevTensor W, const int *tokens);
void argmax_cuda_dev(int *out, const float *x, int n, void *scratch);
/* ops.cu */
__global__ void tensor_rows_f32_kernel(float *out, DevTensor W, int r0, int n);
void blas_check(Dev *d, cublasStatus_t st);
void matmul_cuda(Dev *d, float *out, const float *x, const DevTensor &W, int n, int accumulate);
void matmul_normed_cuda(Dev *d, float *out, float *h, const float *x, const float *norm_w, float eps, const DevTensor &W,
                        int n, int accumulate);
/* mla.cu */
void mla_query_cuda(Dev *d, const DevLayer &L, const MlaDims *m, int T, const float *in_norm, float eps);
__global__ void store_rows_kernel(float *dst, const float *src, int width, const int *pos_dev);
void mla_latent_cuda(Dev *d, float *rows, const DevLayer &L, const MlaDims *m, int T);
void mla_latent_store_cuda(Dev *d, float *cache, const DevLayer &L, const MlaDims *m, int T, const DevRope &rope);
void mla_attend_absorbed_decode_cuda(Dev *d, const float *cache, const DevLayer &L, const MlaDims *m, int T,
                                     const DevRope &rope);
void mla_absorb_cuda(Dev *d, const DevLayer &L, const MlaDims *m, int T, const DevRope &rope);
void mla_attend_latent_cuda(Dev *d, const float *cache, const DevLayer &L, const MlaDims *m, int T);
int mla_decode_prepare(const MlaDims *m);
void mla_attend_naive_cuda(Dev *d, const float *cache, const DevLayer &L, const MlaDims *m, int T, int pos);
/* moe.cu */
void ffn_swiglu_cuda(Dev *d, float *out, const float *x, int T, const DevFfn &f, int accumulate);
int moe_forward_cuda(Dev *d, float *x, float *h, int T, const DevLayer &L, int dim, const float *in_norm, float eps, Error *e);

#endif
