/* model.cu - the forward pass on a GPU: model.c's model_forward and mtp_forward, run on weights
 * uploaded once and a latent cache that lives on the device (device.h says how run reaches it).
 *
 * It reads in model.c's order, each step the device twin of a C function (name + _cuda):
 *   embed gather (tensor_rows_f32)   -> embed_rows_cuda
 *   rmsnorm                           -> rmsnorm_kernel (kernels.cu, strided rows)
 *   mla_query / mla_latent            -> mla_query_cuda / mla_latent_cuda (the latent written straight
 *                                        into the cache row, normed and rotated in place there)
 *   rope_rotate                       -> rope_rotate_kernel (kernels.cu, all T tokens in one launch)
 *   mla_attend_absorbed               -> mla_attend_absorbed_kernel (kernels.cu; kv_b widened to FP32
 *                                        once at upload, as the C code widens it per call)
 *   mla_attend_naive                  -> mla_attend_naive_cuda (cuBLAS, the C code's five products)
 *   matmul                            -> matmul_cuda: n <= SMALL_BATCH a GEMV kernel of ours reading
 *                                        the stored BF16/FP8/F32 directly, FP32 accumulation (decode is
 *                                        bandwidth-bound: this is what makes it fast); larger n widens
 *                                        the weight tile by tile to FP32 (tensor_rows_f32_kernel) and
 *                                        calls cublasSgemm in CUBLAS_DEFAULT_MATH (no TF32)
 *   moe_gate                          -> moe_gate_kernel (kernels.cu)
 *   moe_forward                       -> moe_forward_cuda: T <= SMALL_BATCH the selected experts only,
 *                                        on the device (no host round trip); larger T grouped by
 *                                        expert over the tokens as moe.c does (the routing comes back
 *                                        to the host to size the groups)
 *   ffn_swiglu                        -> ffn_swiglu_cuda
 *   final norm, lm_head, MTP module   -> in model_forward_device / mtp_forward_device
 * Activations are FP32, as in C: logits agree with the C forward to ~1e-6 relative (notes/cuda.md).
 * Where the order of a sum differs from C: GEMV dot products are 32 lane partials and a butterfly
 * (C: dot_f32's 8 lanes); cuBLAS picks its own order; the MoE sum is in expert order as in moe.c.
 * Batch invariance (ops.h) holds here too: for T <= SMALL_BATCH a token's numbers never depend on
 * the other tokens of the call, so --mtp greedy equals plain greedy on the device bit for bit.
 * Errors (CUDA, cuBLAS, out of memory) come back as -1 with Error, never an exit.
 */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <string.h>

#include "kernels.cuh"
extern "C" {
#include "device.h"
}

/* ---- the weights on the device ------------------------------------------------------------------ */

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
    float *ffn_h, *ffn_u, *scores, *logits, *router_logits, *gate_w, *widen, *moe_h, *tw, *xb, *yb;
    int *tokens, *idx, *tok, *next;
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

static int cuda_err(Error *e, cudaError_t err, const char *what) {
    return error_set(e, "cuda: %s: %s", what, cudaGetErrorString(err));
}

static void *dev_alloc(Dev *d, size_t bytes, Error *e) {
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
    if (err != cudaSuccess) {
        error_set(e, "cuda: out of device memory for %.1f MB (%s)", bytes / 1e6, cudaGetErrorString(err));
        return NULL;
    }
    if (d->n_owned == d->cap_owned) {
        d->cap_owned = d->cap_owned ? 2 * d->cap_owned : 256;
        d->owned = (void **)realloc(d->owned, sizeof(void *) * d->cap_owned);
    }
    d->owned[d->n_owned++] = p;
    return p;
}

/* A host array on the device, once per host pointer. */
static const void *upload(Dev *d, const void *host, size_t bytes, Error *e) {
    for (int i = 0; i < d->n_up; i++)
        if (d->up_host[i] == host) return d->up_dev[i];
    void *p = dev_alloc(d, bytes, e);
    if (!p) return NULL;
    cudaError_t err = cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
    if (err != cudaSuccess) return cuda_err(e, err, "upload"), (const void *)NULL;
    if (d->n_up % 256 == 0) {
        d->up_host = (const void **)realloc(d->up_host, sizeof(void *) * (d->n_up + 256));
        d->up_dev = (const void **)realloc(d->up_dev, sizeof(void *) * (d->n_up + 256));
    }
    d->up_host[d->n_up] = host;
    d->up_dev[d->n_up++] = p;
    return p;
}

static int up_tensor(Dev *d, DevTensor *t, const Tensor *w, Error *e) {
    memset(t, 0, sizeof *t);
    if (!w->data) return 0;
    if (w->fp8_gemm) return error_set(e, "--device cuda: --fp8-gemm (DeepSeek's FP8 GEMM emulation) is CPU only");
    *t = DevTensor{NULL, w->dtype, w->rows, w->cols, NULL, w->block_r, w->block_c};
    if (!(t->data = upload(d, w->data, (size_t)w->rows * w->cols * dtype_size(w->dtype), e))) return -1;
    if (w->scale_inv) {
        size_t n = (size_t)((w->rows + w->block_r - 1) / w->block_r) * ((w->cols + w->block_c - 1) / w->block_c);
        if (!(t->scale = (const float *)upload(d, w->scale_inv, sizeof(float) * n, e))) return -1;
    }
    return 0;
}

static const float *up_vec(Dev *d, const float *v, int n, Error *e) {
    return v ? (const float *)upload(d, v, sizeof(float) * n, e) : NULL;
}

static int up_ffn(Dev *d, DevFfn *f, const Ffn *w, Error *e) {
    return up_tensor(d, &f->gate, &w->gate, e) || up_tensor(d, &f->up, &w->up, e) || up_tensor(d, &f->down, &w->down, e);
}

__global__ void tensor_rows_f32_kernel(float *out, DevTensor W, int r0, int n);

/* A MoE block: gate, router, bias, shared experts, and the routed experts' table (host and device). */
static int up_moe(Dev *d, DevLayer *L, const Moe *moe, Error *e) {
    int E = moe->gate.n_experts;
    L->gate = moe->gate;
    if (up_tensor(d, &L->router, &moe->router, e)) return -1;
    if (moe->bias && !(L->bias = up_vec(d, moe->bias, E, e))) return -1;
    if (moe->shared.gate.data && up_ffn(d, &L->shared, &moe->shared, e)) return -1;
    L->experts = (DevFfn *)calloc((size_t)E, sizeof(DevFfn));
    for (int x = 0; x < E; x++)
        if (up_ffn(d, &L->experts[x], &moe->experts[x], e)) return -1;
    DevFfn *ed = (DevFfn *)dev_alloc(d, sizeof(DevFfn) * E, e);
    if (!ed) return -1;
    cudaError_t err = cudaMemcpy(ed, L->experts, sizeof(DevFfn) * E, cudaMemcpyHostToDevice);
    if (err != cudaSuccess) return cuda_err(e, err, "expert table");
    L->experts_dev = ed;
    return 0;
}

static int up_layer(Dev *d, DevLayer *L, const Layer *h, const Config *c, Error *e) {
    memset(L, 0, sizeof *L);
    const MlaWeights *a = &h->attn;
    if (!(L->attn_norm = up_vec(d, h->attn_norm, c->hidden_size, e)) || !(L->ffn_norm = up_vec(d, h->ffn_norm, c->hidden_size, e)))
        return -1;
    if (c->q_lora_rank && !(L->q_a_norm = up_vec(d, a->q_a_norm, c->q_lora_rank, e))) return -1;
    if (!(L->kv_a_norm = up_vec(d, a->kv_a_norm, c->kv_lora_rank, e))) return -1;
    if (up_tensor(d, &L->q_a, &a->q_a, e) || up_tensor(d, &L->q_b, &a->q_b, e) || up_tensor(d, &L->q, &a->q, e) ||
        up_tensor(d, &L->kv_a, &a->kv_a, e) || up_tensor(d, &L->kv_b, &a->kv_b, e) || up_tensor(d, &L->o, &a->o, e))
        return -1;
    float *wf = (float *)dev_alloc(d, sizeof(float) * (size_t)L->kv_b.rows * L->kv_b.cols, e);
    if (!wf) return -1;
    tensor_rows_f32_kernel<<<(unsigned)(((size_t)L->kv_b.rows * L->kv_b.cols + THREADS - 1) / THREADS), THREADS>>>(
        wf, L->kv_b, 0, L->kv_b.rows);
    L->kv_b_f32 = wf;
    L->is_moe = h->is_moe;
    if (!h->is_moe) return up_ffn(d, &L->dense, &h->dense, e);
    return up_moe(d, L, &h->moe, e);
}

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

/* W[r][c] as tensor_rows_f32 gives it: the stored value, times its block's scale (one rounding). */
static __device__ __forceinline__ float w_at(const DevTensor &W, int r, int c) {
    float v = load_f32(W.dtype, W.data, (size_t)r * W.cols + c);
    if (W.scale) v *= W.scale[(size_t)(r / W.block_r) * ((W.cols + W.block_c - 1) / W.block_c) + c / W.block_c];
    return v;
}

/* tensor_rows_f32 (ops.c): rows [r0, r0+n) of W into out [n, cols] as FP32. A thread per element. */
__global__ void tensor_rows_f32_kernel(float *out, DevTensor W, int r0, int n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * W.cols) return;
    int r = (int)(i / W.cols), c = (int)(i % W.cols);
    out[i] = w_at(W, r0 + r, c);
}

/* 8 consecutive weights of row r from column c (c % 8 == 0, cols % 8 == 0): one 16-byte load for
 * F32 halves, BF16 and F16, one 8-byte load for FP8; FP8 times its block's scale. */
template <int DT>
static __device__ __forceinline__ void load8(float *w, const DevTensor &W, int r, int c) {
    size_t i = (size_t)r * W.cols + c;
    if (DT == DT_F32) {
        float4 a = ((const float4 *)W.data)[i / 4], b = ((const float4 *)W.data)[i / 4 + 1];
        w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w; w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
    } else if (DT == DT_BF16 || DT == DT_F16) {
        uint4 u = ((const uint4 *)W.data)[i / 8];
        uint32_t p[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            if (DT == DT_BF16) {
                w[2 * k] = __uint_as_float(p[k] << 16);
                w[2 * k + 1] = __uint_as_float(p[k] & 0xffff0000u);
            } else {
                __half2 h2 = *(__half2 *)&p[k];
                float2 f = __half22float2(h2);
                w[2 * k] = f.x;
                w[2 * k + 1] = f.y;
            }
        }
    } else { /* FP8 */
        uint2 u = ((const uint2 *)W.data)[i / 8];
        uint32_t p[2] = {u.x, u.y};
        float s = W.scale ? W.scale[(size_t)(r / W.block_r) * ((W.cols + W.block_c - 1) / W.block_c) + c / W.block_c] : 1.0f;
#pragma unroll
        for (int k = 0; k < 8; k++) {
            __nv_fp8_storage_t b = (__nv_fp8_storage_t)((p[k / 4] >> (8 * (k % 4))) & 0xff);
            w[k] = __half2float(__half(__nv_cvt_fp8_to_halfraw(b, DT == DT_F8_E5M2 ? __NV_E5M2 : __NV_E4M3))) * s;
        }
    }
}

/* The dot products of row r of W with x_t [cols] for t < n (n <= SMALL_BATCH), by one warp: lane l
 * takes the 8-column chunks l, l+32, ... (coalesced), then a butterfly adds the 32 partials. C's
 * order is dot_f32's (8 lanes, pairwise): the same products, summed in another order. */
template <int DT>
static __device__ __forceinline__ void warp_dots(float *acc, const DevTensor &W, int r, const float *x, int n,
                                                 int x_stride) {
    int lane = threadIdx.x % 32, cols = W.cols;
#pragma unroll
    for (int t = 0; t < SMALL_BATCH; t++) acc[t] = 0.0f;
    int vec = cols % 8 == 0 && (DT == DT_F32 || DT == DT_BF16 || DT == DT_F16 || !W.scale || W.block_c % 8 == 0);
    int c_vec = vec ? cols : 0;
    for (int c = lane * 8; c < c_vec; c += 256) {
        float w[8];
        load8<DT>(w, W, r, c);
#pragma unroll
        for (int t = 0; t < SMALL_BATCH; t++) {
            if (t >= n) break;
            const float4 *xv = (const float4 *)(x + (size_t)t * x_stride + c);
            float4 a = xv[0], b = xv[1];
            acc[t] += w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w + w[4] * b.x + w[5] * b.y + w[6] * b.z + w[7] * b.w;
        }
    }
    for (int c = c_vec + lane; c < cols; c += 32) { /* any shape: one element at a time */
        float w = w_at(W, r, c);
        for (int t = 0; t < n; t++) acc[t] += w * x[(size_t)t * x_stride + c];
    }
#pragma unroll
    for (int t = 0; t < SMALL_BATCH; t++) acc[t] = warp_sum(acc[t]);
}

/* matmul for n <= SMALL_BATCH: out [n, rows] (= or +=) x [n, cols] . W^T, a warp per output row. */
template <int DT>
__global__ void matmul_gemv_kernel(float *out, const float *x, DevTensor W, int n, int accumulate) {
    int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= W.rows) return;
    float acc[SMALL_BATCH];
    warp_dots<DT>(acc, W, r, x, n, W.cols);
    if (threadIdx.x % 32 == 0)
        for (int t = 0; t < n; t++) {
            float *o = out + (size_t)t * W.rows + r;
            *o = accumulate ? *o + acc[t] : acc[t];
        }
}

/* ---- matmul (ops.c) ---------------------------------------------------------------------------- */

static void blas_check(Dev *d, cublasStatus_t st) {
    if (st != CUBLAS_STATUS_SUCCESS && d->blas_err == CUBLAS_STATUS_SUCCESS) d->blas_err = st;
}

/* out [n, rows] = x [n, cols] . W^T, or += with accumulate (the residual add, folded in). */
static void matmul_cuda(Dev *d, float *out, const float *x, const DevTensor &W, int n, int accumulate) {
    if (n <= SMALL_BATCH) {
        unsigned blocks = (unsigned)((W.rows + THREADS / 32 - 1) / (THREADS / 32));
        switch (W.dtype) {
        case DT_F32: matmul_gemv_kernel<DT_F32><<<blocks, THREADS>>>(out, x, W, n, accumulate); break;
        case DT_BF16: matmul_gemv_kernel<DT_BF16><<<blocks, THREADS>>>(out, x, W, n, accumulate); break;
        case DT_F16: matmul_gemv_kernel<DT_F16><<<blocks, THREADS>>>(out, x, W, n, accumulate); break;
        case DT_F8_E4M3: matmul_gemv_kernel<DT_F8_E4M3><<<blocks, THREADS>>>(out, x, W, n, accumulate); break;
        default: matmul_gemv_kernel<DT_F8_E5M2><<<blocks, THREADS>>>(out, x, W, n, accumulate); break;
        }
        return;
    }
    /* column-major view: out^T [rows, n] = W [rows, cols] (lda cols, transposed) . x^T [cols, n] */
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    if (W.dtype == DT_F32) {
        blas_check(d, cublasSgemm(d->blas, CUBLAS_OP_T, CUBLAS_OP_N, W.rows, n, W.cols, &one, (const float *)W.data,
                                  W.cols, x, W.cols, &beta, out, W.rows));
        return;
    }
    int tile = (int)(d->widen_n / W.cols);
    if (tile > W.rows) tile = W.rows;
    for (int r0 = 0; r0 < W.rows; r0 += tile) { /* as ops.c: widen a tile of rows, then one GEMM */
        int nr = W.rows - r0 < tile ? W.rows - r0 : tile;
        size_t ne = (size_t)nr * W.cols;
        tensor_rows_f32_kernel<<<(unsigned)((ne + THREADS - 1) / THREADS), THREADS>>>(d->widen, W, r0, nr);
        blas_check(d, cublasSgemm(d->blas, CUBLAS_OP_T, CUBLAS_OP_N, nr, n, W.cols, &one, d->widen, W.cols, x, W.cols,
                                  &beta, out + r0, W.rows));
    }
}

/* ---- small elementwise steps --------------------------------------------------------------------- */

/* x [T, d] rows = embed[tokens[t]] (model.c's gather; out_stride d, or 2d for the MTP's input). */
__global__ void embed_rows_kernel(float *x, int out_stride, DevTensor W, const int *tokens) {
    for (int c = threadIdx.x; c < W.cols; c += blockDim.x)
        x[(size_t)blockIdx.x * out_stride + c] = w_at(W, tokens[blockIdx.x], c);
}

/* h = silu(h) * u, as ffn_swiglu: silu(x) = x / (1 + expf(-x)), then the product. */
__global__ void silu_mul_kernel(float *h, const float *u, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) h[i] = h[i] / (1.0f + expf(-h[i])) * u[i];
}

__global__ void add_kernel(float *y, const float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += x[i];
}

static unsigned blocks_for(size_t n) { return (unsigned)((n + THREADS - 1) / THREADS); }

static void rmsnorm_cuda_dev(float *out, const float *x, const float *w, int n, int d, int out_stride, int x_stride,
                             float eps) {
    rmsnorm_kernel<<<n, THREADS>>>(out, x, w, d, out_stride, x_stride, eps);
}

/* ---- the feed-forward blocks (moe.c) ------------------------------------------------------------- */

/* ffn_swiglu: out [T, d] (= or +=) down(silu(gate(x)) * up(x)). */
static void ffn_swiglu_cuda(Dev *d, float *out, const float *x, int T, const DevFfn &f, int accumulate) {
    size_t n = (size_t)T * f.gate.rows;
    matmul_cuda(d, d->ffn_h, x, f.gate, T, 0);
    matmul_cuda(d, d->ffn_u, x, f.up, T, 0);
    silu_mul_kernel<<<blocks_for(n), THREADS>>>(d->ffn_h, d->ffn_u, n);
    matmul_cuda(d, out, d->ffn_h, f.down, T, accumulate);
}

/* Decode MoE, step 1: for each token t and each of its top_k experts e = idx[t][k], the rows of
 * silu(gate_e x_t) * up_e x_t, a warp per row: moe_h [T * top_k, inter]. */
template <int DT>
__global__ void moe_up_kernel(float *moe_h, const float *x, const DevFfn *experts, const int *idx, int top_k, int d) {
    int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, tk = blockIdx.y;
    const DevFfn &f = experts[idx[tk]];
    if (r >= f.gate.rows) return;
    float g[SMALL_BATCH], u[SMALL_BATCH];
    const float *xt = x + (size_t)(tk / top_k) * d;
    warp_dots<DT>(g, f.gate, r, xt, 1, d);
    warp_dots<DT>(u, f.up, r, xt, 1, d);
    if (threadIdx.x % 32 == 0) moe_h[(size_t)tk * f.gate.rows + r] = g[0] / (1.0f + expf(-g[0])) * u[0];
}

/* Decode MoE, step 2: x[t][i] += sum_k w_k (down_e moe_h[t][k])[i] + shared[t][i], the experts added
 * in ascending expert index as moe.c does (its loop over e), then the shared experts' output. */
template <int DT>
__global__ void moe_down_kernel(float *x, const float *moe_h, const float *shared, const DevFfn *experts,
                                const int *idx, const float *wts, int top_k, int d) {
    int i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, t = blockIdx.y;
    if (i >= d) return;
    float y[MOE_MAX_TOPK];
    for (int k = 0; k < top_k; k++) {
        const DevFfn &f = experts[idx[t * top_k + k]];
        float acc[SMALL_BATCH];
        warp_dots<DT>(acc, f.down, i, moe_h + (size_t)(t * top_k + k) * f.down.cols, 1, f.down.cols);
        y[k] = acc[0];
    }
    if (threadIdx.x % 32) return;
    float out = 0.0f;
    for (int done = 0, last = -1; done < top_k; done++) { /* next larger expert index */
        int best = -1;
        for (int k = 0; k < top_k; k++) {
            int e = idx[t * top_k + k];
            if (e > last && (best < 0 || e < idx[t * top_k + best])) best = k;
        }
        last = idx[t * top_k + best];
        out += wts[t * top_k + best] * y[best];
    }
    if (shared) out += shared[(size_t)t * d + i];
    x[(size_t)t * d + i] += out;
}

/* Prefill MoE helpers: gather the tokens routed to one expert, and add w * y back to their rows. */
__global__ void gather_rows_kernel(float *xb, const float *x, const int *tok, int d) {
    for (int c = threadIdx.x; c < d; c += blockDim.x) xb[(size_t)blockIdx.x * d + c] = x[(size_t)tok[blockIdx.x] * d + c];
}
__global__ void scatter_add_kernel(float *out, const float *yb, const int *tok, const float *tw, int d) {
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        out[(size_t)tok[blockIdx.x] * d + c] += tw[blockIdx.x] * yb[(size_t)blockIdx.x * d + c];
}

/* moe_forward, then x += its output. h: the normed input [T, d]. */
static int moe_forward_cuda(Dev *d, float *x, const float *h, int T, const DevLayer &L, int dim, Error *e) {
    const MoeGate &g = L.gate;
    int E = g.n_experts, K = g.top_k, inter = L.experts[0].gate.rows;
    matmul_cuda(d, d->router_logits, h, L.router, T, 0);
    moe_gate_kernel<<<T, THREADS>>>(d->idx, d->gate_w, d->router_logits, L.bias, g);
    if (L.shared.gate.data) ffn_swiglu_cuda(d, d->yb, h, T, L.shared, 0);
    if (T <= SMALL_BATCH) { /* the selected experts only, all on the device */
        dim3 up_grid((inter + THREADS / 32 - 1) / (THREADS / 32), T * K), down_grid((dim + THREADS / 32 - 1) / (THREADS / 32), T);
        const float *sh = L.shared.gate.data ? d->yb : NULL;
        switch (L.experts[0].gate.dtype) {
#define MOE_CASE(DT)                                                                                         \
    case DT:                                                                                                 \
        moe_up_kernel<DT><<<up_grid, THREADS>>>(d->moe_h, h, L.experts_dev, d->idx, K, dim);                   \
        moe_down_kernel<DT><<<down_grid, THREADS>>>(x, d->moe_h, sh, L.experts_dev, d->idx, d->gate_w, K, dim); \
        break;
        MOE_CASE(DT_F32) MOE_CASE(DT_BF16) MOE_CASE(DT_F16) MOE_CASE(DT_F8_E4M3)
        default: MOE_CASE(DT_F8_E5M2)
#undef MOE_CASE
        }
        return 0;
    }
    /* prefill: the routing comes back to size each expert's batch (moe.c's grouping) */
    size_t nk = (size_t)T * K;
    int *idx = (int *)malloc(sizeof(int) * nk), *tok = (int *)malloc(sizeof(int) * nk), *start = (int *)calloc(E + 1, sizeof(int));
    float *wts = (float *)malloc(sizeof(float) * nk), *tw = (float *)malloc(sizeof(float) * nk);
    cudaError_t err = cudaMemcpy(idx, d->idx, sizeof(int) * nk, cudaMemcpyDeviceToHost);
    if (err == cudaSuccess) err = cudaMemcpy(wts, d->gate_w, sizeof(float) * nk, cudaMemcpyDeviceToHost);
    if (err == cudaSuccess) {
        int n = 0;
        for (int x_ = 0; x_ < E; x_++) {
            start[x_] = n;
            for (int t = 0; t < T; t++)
                for (int k = 0; k < K; k++)
                    if (idx[(size_t)t * K + k] == x_) { tok[n] = t; tw[n] = wts[(size_t)t * K + k]; n++; }
        }
        start[E] = n;
        err = cudaMemcpy(d->tok, tok, sizeof(int) * n, cudaMemcpyHostToDevice);
        if (err == cudaSuccess) err = cudaMemcpy(d->tw, tw, sizeof(float) * n, cudaMemcpyHostToDevice);
    }
    if (err == cudaSuccess) {
        cudaMemsetAsync(d->out, 0, sizeof(float) * (size_t)T * dim);
        for (int x_ = 0; x_ < E; x_++) {
            int n = start[x_ + 1] - start[x_];
            if (n == 0) continue;
            gather_rows_kernel<<<n, THREADS>>>(d->xb, h, d->tok + start[x_], dim);
            ffn_swiglu_cuda(d, d->xb + (size_t)n * dim, d->xb, n, L.experts[x_], 0);
            scatter_add_kernel<<<n, THREADS>>>(d->out, d->xb + (size_t)n * dim, d->tok + start[x_], d->tw + start[x_], dim);
        }
        if (L.shared.gate.data) add_kernel<<<blocks_for((size_t)T * dim), THREADS>>>(d->out, d->yb, (size_t)T * dim);
        add_kernel<<<blocks_for((size_t)T * dim), THREADS>>>(x, d->out, (size_t)T * dim);
    }
    free(idx); free(tok); free(start); free(wts); free(tw);
    return err == cudaSuccess ? 0 : cuda_err(e, err, "MoE routing");
}

/* ---- attention (mla.c) --------------------------------------------------------------------------- */

static void mla_query_cuda(Dev *d, const DevLayer &L, const MlaDims *m, int T) {
    if (m->q_lora_rank == 0) {
        matmul_cuda(d, d->q, d->h, L.q, T, 0);
        return;
    }
    matmul_cuda(d, d->q_scratch, d->h, L.q_a, T, 0);
    rmsnorm_cuda_dev(d->q_scratch, d->q_scratch, L.q_a_norm, T, m->q_lora_rank, m->q_lora_rank, m->q_lora_rank, m->eps);
    matmul_cuda(d, d->q, d->q_scratch, L.q_b, T, 0);
}

/* latent rows [T, d_c + d_R] written straight into the cache at rows pos.., the latent part normed. */
static void mla_latent_cuda(Dev *d, float *rows, const DevLayer &L, const MlaDims *m, int T) {
    int width = mla_cache_width(m);
    matmul_cuda(d, rows, d->h, L.kv_a, T, 0);
    rmsnorm_cuda_dev(rows, rows, L.kv_a_norm, T, m->kv_lora_rank, width, width, m->eps);
}

/* The naive form (mla.c's mla_attend_naive), per head with cuBLAS: kv [L, nope+v] = C . W_h^T,
 * scores = q_nope . K^T + q_pe . K_pe^T, causal softmax, out_h = P . V. */
__global__ void causal_softmax_kernel(float *scores, int L, int pos0, float scale) {
    __shared__ float red[32];
    float *row = scores + (size_t)blockIdx.x * L;
    int visible = pos0 + blockIdx.x + 1;
    float mx = -INFINITY;
    for (int s = threadIdx.x; s < visible; s += blockDim.x) mx = fmaxf(mx, row[s] * scale);
    mx = block_max(mx, red);
    float sum = 0.0f;
    for (int s = threadIdx.x; s < L; s += blockDim.x) {
        float p = s < visible ? expf(row[s] * scale - mx) : 0.0f;
        row[s] = p;
        sum += p;
    }
    sum = block_sum(sum, red);
    for (int s = threadIdx.x; s < L; s += blockDim.x) row[s] /= sum;
}

static void mla_attend_naive_cuda(Dev *d, const float *cache, const DevLayer &L, const MlaDims *m, int T, int pos) {
    int d_c = m->kv_lora_rank, qk = m->nope + m->rope, width = mla_cache_width(m), Lk = pos + T;
    int q_stride = m->n_heads * qk, out_stride = m->n_heads * m->v, nv = m->nope + m->v;
    const float one = 1.0f, zero = 0.0f;
    float *kv = d->widen; /* [L, nope+v] */
    for (int hh = 0; hh < m->n_heads; hh++) {
        const float *w_h = L.kv_b_f32 + (size_t)hh * nv * d_c;
        /* column-major: kv^T [nv, L] = W_h [nv, d_c] . C^T */
        blas_check(d, cublasSgemm(d->blas, CUBLAS_OP_T, CUBLAS_OP_N, nv, Lk, d_c, &one, w_h, d_c, cache, width, &zero, kv, nv));
        const float *q_nope = d->q + (size_t)hh * qk, *q_pe = q_nope + m->nope;
        /* scores^T [L, T] = K_nope [L, nope] . q_nope^T, then += K_pe . q_pe^T */
        blas_check(d, cublasSgemm(d->blas, CUBLAS_OP_T, CUBLAS_OP_N, Lk, T, m->nope, &one, kv, nv, q_nope, q_stride, &zero,
                                  d->scores, Lk));
        blas_check(d, cublasSgemm(d->blas, CUBLAS_OP_T, CUBLAS_OP_N, Lk, T, m->rope, &one, cache + d_c, width, q_pe, q_stride,
                                  &one, d->scores, Lk));
        causal_softmax_kernel<<<T, THREADS>>>(d->scores, Lk, pos, m->softmax_scale);
        /* out_h^T [v, T] = V^T [v, L] . P^T [L, T] */
        blas_check(d, cublasSgemm(d->blas, CUBLAS_OP_N, CUBLAS_OP_N, m->v, T, Lk, &one, kv + m->nope, nv, d->scores, Lk, &zero,
                                  d->attn + (size_t)hh * m->v, out_stride));
    }
}

/* ---- one decoder layer and the whole forward (model.c) -------------------------------------------- */

/* layer_forward: d->x [T, d] in place, positions pos.., its latent cache given. */
static int layer_forward_cuda(Dev *d, const Model *mm, const DevLayer &L, float *cache, int T, int pos, AttnForm form,
                              Error *e) {
    const Config *c = &mm->cfg;
    const MlaDims *m = &mm->mla;
    int dim = c->hidden_size, width = mla_cache_width(m), qk = m->nope + m->rope, half = m->rope / 2;
    rmsnorm_cuda_dev(d->h, d->x, L.attn_norm, T, dim, dim, dim, c->rms_norm_eps);
    mla_query_cuda(d, L, m, T);
    float *rows = cache + (size_t)pos * width;
    mla_latent_cuda(d, rows, L, m, T);
    rope_rotate_kernel<<<dim3(blocks_for((size_t)m->n_heads * half), T), THREADS>>>(
        d->q + m->nope, m->n_heads, qk, m->n_heads * qk, m->rope, pos, d->inv_freq, mm->rope_attn_factor, c->rope.interleaved);
    rope_rotate_kernel<<<dim3(blocks_for(half), T), THREADS>>>(rows + m->kv_lora_rank, 1, width, width, m->rope, pos,
                                                                 d->inv_freq, mm->rope_attn_factor, c->rope.interleaved);
    if (form == ATTN_NAIVE) mla_attend_naive_cuda(d, cache, L, m, T, pos);
    else
        mla_attend_absorbed_kernel<<<dim3(m->n_heads, T), THREADS, sizeof(float) * (2 * (size_t)m->kv_lora_rank + 32)>>>(
            d->attn, d->q, cache, L.kv_b_f32, d->scores, T, pos, m->n_heads, m->kv_lora_rank, m->rope, m->nope, m->v,
            m->softmax_scale);
    matmul_cuda(d, d->x, d->attn, L.o, T, 1); /* x += o_proj(attn) */
    rmsnorm_cuda_dev(d->h, d->x, L.ffn_norm, T, dim, dim, dim, c->rms_norm_eps);
    if (L.is_moe) return moe_forward_cuda(d, d->x, d->h, T, L, dim, e);
    ffn_swiglu_cuda(d, d->x, d->h, T, L.dense, 1); /* x += ffn(h) */
    return 0;
}

/* Any error of the launches so far (and cuBLAS's), as one line. */
static int dev_status(Dev *d, Error *e) {
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return cuda_err(e, err, "forward");
    if (d->blas_err != CUBLAS_STATUS_SUCCESS) return error_set(e, "cublas: status %d", (int)d->blas_err);
    return 0;
}

/* forward_chunk: tokens [T] (host) at pos; the normed final hidden states are left in d->h. */
static int forward_chunk_cuda(Dev *d, const Model *m, const int *tokens, int T, int pos, AttnForm form, Error *e) {
    const Config *c = &m->cfg;
    int dim = c->hidden_size, width = mla_cache_width(&m->mla);
    cudaError_t err = cudaMemcpy(d->tokens, tokens, sizeof(int) * T, cudaMemcpyHostToDevice);
    if (err != cudaSuccess) return cuda_err(e, err, "tokens");
    embed_rows_kernel<<<T, THREADS>>>(d->x, dim, d->embed, d->tokens);
    for (int l = 0; l < c->n_layers; l++)
        if (layer_forward_cuda(d, m, d->layers[l], d->cache + (size_t)l * d->ctx * width, T, pos, form, e)) return -1;
    rmsnorm_cuda_dev(d->h, d->x, d->final_norm, T, dim, dim, dim, c->rms_norm_eps);
    if (d->hidden)
        cudaMemcpyAsync(d->hidden + (size_t)pos * dim, d->h, sizeof(float) * (size_t)T * dim, cudaMemcpyDeviceToDevice);
    return dev_status(d, e);
}

extern "C" int model_forward_device(const Model *m, State *s, const int *tokens, int T, int pos, float *logits,
                                    int last_only, AttnForm form, Error *e) {
    Dev *d = (Dev *)s->dev;
    int V = m->cfg.vocab_size, dim = m->cfg.hidden_size;
    for (int done = 0; done < T; done += d->max_T) {
        int n = T - done < d->max_T ? T - done : d->max_T, rows = last_only ? 1 : n;
        if (forward_chunk_cuda(d, m, tokens + done, n, pos + done, form, e)) return -1;
        if (last_only && done + n < T) continue;
        matmul_cuda(d, d->logits, d->h + (size_t)(n - rows) * dim, d->lm_head, rows, 0);
        float *dst = logits + (last_only ? 0 : (size_t)done * V);
        cudaError_t err = cudaMemcpy(dst, d->logits, sizeof(float) * (size_t)rows * V, cudaMemcpyDeviceToHost);
        if (err != cudaSuccess) return cuda_err(e, err, "logits");
    }
    return dev_status(d, e);
}

/* argmax (ops.c) of logits [n] by one block: the largest value, the first index on ties. */
__global__ void argmax_kernel(int *out, const float *x, int n) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    float v = -INFINITY;
    int best = -1;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        if (best < 0 || x[i] > v) { v = x[i]; best = i; }
    for (int off = 16; off > 0; off /= 2) {
        float ov = __shfl_xor_sync(FULL_MASK, v, off);
        int oi = __shfl_xor_sync(FULL_MASK, best, off);
        if (oi >= 0 && (best < 0 || ov > v || (ov == v && oi < best))) { v = ov; best = oi; }
    }
    if (threadIdx.x % 32 == 0) { bv[threadIdx.x / 32] = v; bi[threadIdx.x / 32] = best; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)blockDim.x / 32; w++)
            if (bi[w] >= 0 && (best < 0 || bv[w] > v || (bv[w] == v && bi[w] < best))) { v = bv[w]; best = bi[w]; }
        *out = best;
    }
}

extern "C" int model_forward_argmax_device(const Model *m, State *s, const int *tokens, int T, int pos, int *next,
                                           Error *e) {
    Dev *d = (Dev *)s->dev;
    int dim = m->cfg.hidden_size;
    for (int done = 0; done < T; done += d->max_T) {
        int n = T - done < d->max_T ? T - done : d->max_T;
        if (forward_chunk_cuda(d, m, tokens + done, n, pos + done, ATTN_ABSORBED, e)) return -1;
        if (done + n < T) continue;
        matmul_cuda(d, d->logits, d->h + (size_t)(n - 1) * dim, d->lm_head, 1, 0);
        argmax_kernel<<<1, 1024>>>(d->next, d->logits, m->cfg.vocab_size);
    }
    cudaError_t err = cudaMemcpy(next, d->next, sizeof(int), cudaMemcpyDeviceToHost);
    if (err != cudaSuccess) return cuda_err(e, err, "argmax");
    return dev_status(d, e);
}

extern "C" int mtp_forward_device(const Model *m, State *s, const int *next_tokens, int T, int pos, float *logits,
                                  int last_only, Error *e) {
    Dev *d = (Dev *)s->dev;
    const Config *c = &m->cfg;
    int dim = c->hidden_size, V = c->vocab_size;
    if (!m->has_mtp) return error_set(e, "this checkpoint has no MTP module (no tensors at layer index %d)", c->n_layers);
    if (T <= 0 || T > d->max_T || pos < 0 || pos + T > d->ctx)
        return error_set(e, "MTP positions %d..%d do not fit (chunk %d, cache %d)", pos, pos + T - 1, d->max_T, d->ctx);
    for (int t = 0; t < T; t++)
        if (next_tokens[t] < 0 || next_tokens[t] >= V)
            return error_set(e, "token id %d is outside the vocabulary [0, %d)", next_tokens[t], V);
    cudaError_t err = cudaMemcpy(d->tokens, next_tokens, sizeof(int) * T, cudaMemcpyHostToDevice);
    if (err != cudaSuccess) return cuda_err(e, err, "tokens");
    /* [enorm(embed(t_{i+1})) ; hnorm(h_i)] */
    embed_rows_kernel<<<T, THREADS>>>(d->mtp_in, 2 * dim, d->embed, d->tokens);
    rmsnorm_cuda_dev(d->mtp_in, d->mtp_in, d->enorm, T, dim, 2 * dim, 2 * dim, c->rms_norm_eps);
    rmsnorm_cuda_dev(d->mtp_in + dim, d->hidden + (size_t)pos * dim, d->hnorm, T, dim, 2 * dim, dim, c->rms_norm_eps);
    matmul_cuda(d, d->x, d->mtp_in, d->eh_proj, T, 0);
    if (layer_forward_cuda(d, m, d->mtp_layer, d->mtp_cache, T, pos, ATTN_ABSORBED, e)) return -1;
    rmsnorm_cuda_dev(d->h, d->x, d->head_norm, T, dim, dim, dim, c->rms_norm_eps);
    int rows = last_only ? 1 : T;
    matmul_cuda(d, d->logits, d->h + (size_t)(T - rows) * dim, d->mtp_head, rows, 0);
    err = cudaMemcpy(logits, d->logits, sizeof(float) * (size_t)rows * V, cudaMemcpyDeviceToHost);
    if (err != cudaSuccess) return cuda_err(e, err, "MTP logits");
    return dev_status(d, e);
}

/* ---- the State on the device --------------------------------------------------------------------- */

#define DEVICE_MIN_CHUNK 512
#define WIDEN_FLOATS ((size_t)1 << 25) /* the FP32 tile of a widened weight: 128 MB */

extern "C" void state_free_device(State *s) {
    Dev *d = (Dev *)s->dev;
    if (!d) return;
    for (int i = 0; i < d->n_owned; i++) cudaFree(d->owned[i]);
    if (d->blas) cublasDestroy(d->blas);
    for (int l = 0; d->layers && l < d->n_layers; l++) free(d->layers[l].experts);
    free(d->mtp_layer.experts);
    free(d->layers); free(d->owned); free(d->up_host); free(d->up_dev);
    free(d);
    s->dev = NULL;
}

extern "C" int state_init_device(State *s, const Model *m, int ctx, int max_T, const char *device, Error *e) {
    if (!device || !strcmp(device, "cpu")) return state_init(s, m, ctx, max_T, e);
    if (strcmp(device, "cuda")) return error_set(e, "--device %s: expected cpu or cuda", device);
    memset(s, 0, sizeof *s);
    if (ctx <= 0 || max_T <= 0) return error_set(e, "context length %d and chunk %d must be positive", ctx, max_T);
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) return error_set(e, "--device cuda: no CUDA device");
    const Config *c = &m->cfg;
    if (c->n_routed_experts > MOE_MAX_EXPERTS || c->num_experts_per_tok > MOE_MAX_TOPK)
        return error_set(e, "--device cuda: %d experts, top %d: beyond moe.h's limits", c->n_routed_experts, c->num_experts_per_tok);
    Dev *d = (Dev *)calloc(1, sizeof(Dev));
    s->dev = d;
    s->ctx = d->ctx = ctx;
    s->max_T = d->max_T = max_T > DEVICE_MIN_CHUNK ? max_T : DEVICE_MIN_CHUNK;
    d->layers = (DevLayer *)calloc((size_t)c->n_layers, sizeof(DevLayer));
    d->n_layers = c->n_layers;
    if (cublasCreate(&d->blas) != CUBLAS_STATUS_SUCCESS) { d->blas = NULL; state_free_device(s); return error_set(e, "cublas: cannot create a handle"); }
    cublasSetMathMode(d->blas, CUBLAS_DEFAULT_MATH); /* FP32 products, no TF32 */
    int rc = up_tensor(d, &d->embed, &m->embed, e) || up_tensor(d, &d->lm_head, &m->lm_head, e) ||
             !(d->final_norm = up_vec(d, m->final_norm, c->hidden_size, e)) ||
             !(d->inv_freq = up_vec(d, m->inv_freq, c->qk_rope_head_dim / 2, e));
    for (int l = 0; !rc && l < c->n_layers; l++) rc = up_layer(d, &d->layers[l], &m->layers[l], c, e);
    if (!rc && m->has_mtp) {
        const Mtp *t = &m->mtp;
        rc = !(d->enorm = up_vec(d, t->enorm, c->hidden_size, e)) || !(d->hnorm = up_vec(d, t->hnorm, c->hidden_size, e)) ||
             !(d->head_norm = up_vec(d, t->head_norm, c->hidden_size, e)) || up_tensor(d, &d->eh_proj, &t->eh_proj, e) ||
             up_tensor(d, &d->mtp_head, &t->head, e) || up_layer(d, &d->mtp_layer, &t->layer, c, e);
    }
    size_t T = (size_t)d->max_T, dim = (size_t)c->hidden_size, width = (size_t)mla_cache_width(&m->mla);
    size_t nh = (size_t)c->n_heads, qk = (size_t)(c->qk_nope_head_dim + c->qk_rope_head_dim), V = (size_t)c->vocab_size;
    size_t inter = (size_t)c->intermediate_size, moe_w = (size_t)c->moe_intermediate_size * (c->n_shared_experts > 1 ? c->n_shared_experts : 1);
    size_t ffn = inter > moe_w ? inter : moe_w, K = (size_t)c->num_experts_per_tok, E = (size_t)c->n_routed_experts;
    size_t nv = (size_t)(c->qk_nope_head_dim + c->v_head_dim);
    d->widen_n = WIDEN_FLOATS;
    if (d->widen_n < (size_t)ctx * nv) d->widen_n = (size_t)ctx * nv; /* the naive form's kv [L, nope+v] */
    if (d->widen_n < dim * 2) d->widen_n = dim * 2;
    struct { float **p; size_t n; } bufs[] = {
        {&d->cache, (size_t)c->n_layers * ctx * width}, {&d->x, T * dim}, {&d->h, T * dim}, {&d->out, T * dim},
        {&d->q, T * nh * qk}, {&d->q_scratch, T * (c->q_lora_rank ? c->q_lora_rank : 1)}, {&d->attn, T * nh * c->v_head_dim},
        {&d->ffn_h, T * ffn}, {&d->ffn_u, T * ffn}, {&d->scores, T * nh * ctx}, {&d->logits, T * V},
        {&d->router_logits, T * (E ? E : 1)}, {&d->gate_w, T * (K ? K : 1)}, {&d->widen, d->widen_n},
        {&d->moe_h, (size_t)SMALL_BATCH * (K ? K : 1) * c->moe_intermediate_size + 1}, {&d->tw, T * (K ? K : 1)},
        {&d->xb, 2 * T * (K ? K : 1) * dim}, {&d->yb, T * dim},
    };
    for (size_t i = 0; !rc && i < sizeof bufs / sizeof bufs[0]; i++) rc = !(*bufs[i].p = (float *)dev_alloc(d, sizeof(float) * bufs[i].n, e));
    if (!rc && m->has_mtp)
        rc = !(d->hidden = (float *)dev_alloc(d, sizeof(float) * ctx * dim, e)) ||
             !(d->mtp_cache = (float *)dev_alloc(d, sizeof(float) * ctx * width, e)) ||
             !(d->mtp_in = (float *)dev_alloc(d, sizeof(float) * T * 2 * dim, e));
    if (!rc)
        rc = !(d->tokens = (int *)dev_alloc(d, sizeof(int) * T, e)) || !(d->idx = (int *)dev_alloc(d, sizeof(int) * T * (K ? K : 1), e)) ||
             !(d->tok = (int *)dev_alloc(d, sizeof(int) * T * (K ? K : 1), e)) || !(d->next = (int *)dev_alloc(d, sizeof(int), e));
    if (!rc) { /* a fresh cache reads as zeros, as calloc's; rows past pos are never read anyway */
        cudaMemset(d->cache, 0, sizeof(float) * (size_t)c->n_layers * ctx * width);
        if (d->mtp_cache) cudaMemset(d->mtp_cache, 0, sizeof(float) * ctx * width);
        cudaError_t err = cudaDeviceSynchronize();
        if (err != cudaSuccess) rc = cuda_err(e, err, "upload");
    }
    if (rc) {
        state_free_device(s);
        return -1;
    }
    return 0;
}

/* ---- host-pointer twins, for the function-level checks (tests/test_forward_twins.cu) ------------- */

/* A Dev with a cuBLAS handle and the scratch that matmul_cuda / moe_forward_cuda of T tokens use;
 * every buffer poisoned with NaN (0xFF bytes), so an element read before it is written shows. */
static Dev *twin_dev(int T, int dim, int ffn, int E, int K, size_t widen, Error *e) {
    Dev *d = (Dev *)calloc(1, sizeof(Dev));
    if (cublasCreate(&d->blas) != CUBLAS_STATUS_SUCCESS) {
        free(d);
        error_set(e, "cublas: cannot create a handle");
        return NULL;
    }
    cublasSetMathMode(d->blas, CUBLAS_DEFAULT_MATH);
    d->widen_n = widen;
    d->max_T = T;
    size_t t = (size_t)T;
    struct { float **p; size_t n; } bufs[] = {
        {&d->widen, widen}, {&d->ffn_h, t * ffn}, {&d->ffn_u, t * ffn}, {&d->router_logits, t * E},
        {&d->gate_w, t * K}, {&d->moe_h, (size_t)SMALL_BATCH * K * ffn}, {&d->tw, t * K}, {&d->xb, 2 * t * dim},
        {&d->yb, t * dim}, {&d->out, t * dim},
    };
    int rc = 0;
    for (size_t i = 0; !rc && i < sizeof bufs / sizeof bufs[0]; i++)
        rc = !(*bufs[i].p = (float *)dev_alloc(d, sizeof(float) * bufs[i].n, e)) ||
             cudaMemset(*bufs[i].p, 0xFF, sizeof(float) * bufs[i].n) != cudaSuccess;
    if (!rc) rc = !(d->idx = (int *)dev_alloc(d, sizeof(int) * t * K, e)) || !(d->tok = (int *)dev_alloc(d, sizeof(int) * t * K, e));
    if (rc) {
        State s = {};
        s.dev = d;
        state_free_device(&s);
        if (!e->msg[0]) error_set(e, "cuda: cannot set up the twin's buffers");
        return NULL;
    }
    return d;
}

static int twin_finish(Dev *d, float *out, const float *d_out, size_t n, Error *e) {
    int rc = dev_status(d, e);
    if (!rc) {
        cudaError_t err = cudaMemcpy(out, d_out, sizeof(float) * n, cudaMemcpyDeviceToHost);
        if (err != cudaSuccess) rc = cuda_err(e, err, "twin output");
    }
    State s = {};
    s.dev = d;
    state_free_device(&s);
    return rc;
}

extern "C" int matmul_cuda_host(float *out, const float *x, const Tensor *W, int n, Error *e) {
    e->msg[0] = 0;
    /* a widening tile of about a third of the rows, so that prefill's tile loop runs several times */
    size_t tile_rows = W->rows / 3 > 0 ? W->rows / 3 : 1;
    Dev *d = twin_dev(n, W->cols, 1, 1, 1, tile_rows * W->cols, e);
    if (!d) return -1;
    DevTensor t;
    float *dx = NULL, *dout = NULL;
    int rc = up_tensor(d, &t, W, e) || !(dx = (float *)dev_alloc(d, sizeof(float) * (size_t)n * W->cols, e)) ||
             !(dout = (float *)dev_alloc(d, sizeof(float) * (size_t)n * W->rows, e));
    if (!rc) {
        cudaMemcpy(dx, x, sizeof(float) * (size_t)n * W->cols, cudaMemcpyHostToDevice);
        cudaMemset(dout, 0xFF, sizeof(float) * (size_t)n * W->rows);
        matmul_cuda(d, dout, dx, t, n, 0);
        return twin_finish(d, out, dout, (size_t)n * W->rows, e);
    }
    State s = {};
    s.dev = d;
    state_free_device(&s);
    return -1;
}

extern "C" int moe_forward_cuda_host(float *out, const float *x, int T, const Moe *moe, Error *e) {
    e->msg[0] = 0;
    int dim = moe->router.cols, E = moe->gate.n_experts, K = moe->gate.top_k, ffn = moe->experts[0].gate.rows;
    if (moe->shared.gate.data && moe->shared.gate.rows > ffn) ffn = moe->shared.gate.rows;
    Dev *d = twin_dev(T, dim, ffn, E, K, (size_t)ffn * dim, e);
    if (!d) return -1;
    float *dx = NULL, *dres = NULL;
    /* the block adds its output to a residual: here zeros, so that the result is moe_forward's out */
    int rc = up_moe(d, &d->mtp_layer, moe, e) || !(dx = (float *)dev_alloc(d, sizeof(float) * (size_t)T * dim, e)) ||
             !(dres = (float *)dev_alloc(d, sizeof(float) * (size_t)T * dim, e));
    if (!rc) {
        cudaMemcpy(dx, x, sizeof(float) * (size_t)T * dim, cudaMemcpyHostToDevice);
        cudaMemset(dres, 0, sizeof(float) * (size_t)T * dim);
        if (moe_forward_cuda(d, dres, dx, T, d->mtp_layer, dim, e)) rc = -1;
    }
    if (!rc) return twin_finish(d, out, dres, (size_t)T * dim, e);
    State s = {};
    s.dev = d;
    state_free_device(&s);
    return -1;
}
