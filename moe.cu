/* moe.cu - moe.c on the GPU: ffn_swiglu, and moe_forward with the gate of kernels.cu; in decode
 * (T <= SMALL_BATCH) the selected experts only, all on the device; in prefill grouped by expert over
 * the tokens as moe.c does. */
#include "device.cuh"
#include "gemv_xreg.cuh"

/* h = silu(h) * u, as ffn_swiglu: silu(x) = x / (1 + expf(-x)), then the product. */
__global__ void silu_mul_kernel(float *h, const float *u, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) h[i] = h[i] / (1.0f + expf(-h[i])) * u[i];
}

__global__ void add_kernel(float *y, const float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += x[i];
}

/* ffn_swiglu's first half for T <= SMALL_BATCH: h [T, inter] = silu(gate x) * up x, a warp per P
 * rows taking their 2P dot products (gate and up of each) for every token at once (what
 * moe_up_kernel does for each selected expert): the same products and silu as the three launches of
 * the general path. */
template <int DT, int P, int TN, bool XS>
static __device__ __forceinline__ void swiglu_rows(float *h, const DevFfn &f, int r0, const float *x, int T, int d,
                                                   int h_stride) {
    const DevTensor *Ws[2 * P];
    int rs[2 * P];
#pragma unroll
    for (int k = 0; k < P; k++) {
        rs[2 * k] = rs[2 * k + 1] = min(r0 + k, f.gate.rows - 1);
        Ws[2 * k] = &f.gate;
        Ws[2 * k + 1] = &f.up;
    }
    float acc[2 * P][TN];
    warp_dots_rows<DT, 2 * P, TN, XS>(acc, Ws, rs, x, T, d);
    if (threadIdx.x % 32 == 0)
#pragma unroll /* constant indices: acc stays in registers */
        for (int k = 0; k < P; k++)
#pragma unroll
            for (int t = 0; t < TN; t++)
                if (r0 + k < f.gate.rows && t < T) {
                    float g = acc[2 * k][t], u = acc[2 * k + 1][t];
                    h[(size_t)t * h_stride + r0 + k] = g / (1.0f + expf(-g)) * u;
                }
}

template <int DT, int P, int TN, bool XS>
__global__ void ffn_up_kernel(float *h, const float *x, DevFfn f, int T, int d) {
    extern __shared__ float xs[]; /* XS: x [d] padded (T = 1) */
    if (XS) stage_x_padded(xs, x, d);
    int r0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * P;
    if (r0 < f.gate.rows) swiglu_rows<DT, P, TN, XS>(h, f, r0, XS ? xs : x, T, d, f.gate.rows);
}

/* Rows of gate (and up) a warp for the swiglu kernels: half the dot rows gemv_rows_per_warp gives. */
static int swiglu_pairs(const Dev *d, int rows) {
    int nr = gemv_rows_per_warp(2 * rows, d->gemv_rows);
    return nr >= 4 ? 2 : 1;
}

template <int DT>
static void ffn_up_launch(Dev *d, float *h_out, const float *x, int T, const DevFfn &f) {
    if (T == 1 && !d->xreg_off && xreg_fits(f.gate) && xreg_fits(f.up)) { /* gemv_xreg.cuh: gate and up rows in pairs */
        gemv_xreg_launch<DT>(xreg_job(f.gate, f.up, x, h_out, XREG_SWIGLU, f.gate.rows), f.gate.cols, 1, d->st);
        return;
    }
    int P = swiglu_pairs(d, f.gate.rows), per_block = THREADS / 32 * P;
    unsigned blocks = (unsigned)((f.gate.rows + per_block - 1) / per_block);
    int d_in = f.gate.cols;
    bool xs = T == 1 && gemv_xs(d, (DType)DT, d_in);
    size_t smem = xs ? x_padded_bytes(d_in) : 0;
    cudaStream_t st = d->st; /* the shared experts may run on the decode step's side branch */
    if (xs && P == 2) ffn_up_kernel<DT, 2, 1, true><<<blocks, THREADS, smem, st>>>(h_out, x, f, T, d_in);
    else if (xs) ffn_up_kernel<DT, 1, 1, true><<<blocks, THREADS, smem, st>>>(h_out, x, f, T, d_in);
    else if (T == 1 && P == 2) ffn_up_kernel<DT, 2, 1, false><<<blocks, THREADS, 0, st>>>(h_out, x, f, T, d_in);
    else if (T == 1) ffn_up_kernel<DT, 1, 1, false><<<blocks, THREADS, 0, st>>>(h_out, x, f, T, d_in);
    else ffn_up_kernel<DT, 1, SMALL_BATCH, false><<<blocks * P, THREADS, 0, st>>>(h_out, x, f, T, d_in); /* 2 rows of 8 tokens */
}

/* ffn_swiglu: out [T, d] (= or +=) down(silu(gate(x)) * up(x)). Decode (T <= SMALL_BATCH) takes
 * d->st (the shared experts run beside the routed ones in the recorded step: their rows d->ffn_h
 * are the routed path's only in prefill). */
void ffn_swiglu_cuda(Dev *d, float *out, const float *x, int T, const DevFfn &f, int accumulate) {
    if (T <= SMALL_BATCH && f.gate.dtype == f.up.dtype) { /* decode: one launch for gate, up and silu */
        float *h_mid = d->ffn_h;
        with_dtype(f.gate.dtype, [&](auto dt) { ffn_up_launch<decltype(dt)::value>(d, h_mid, x, T, f); });
        matmul_cuda(d, out, h_mid, f.down, T, accumulate);
        return;
    }
    size_t n = (size_t)T * f.gate.rows;
    matmul_cuda(d, d->ffn_h, x, f.gate, T, 0);
    matmul_cuda(d, d->ffn_u, x, f.up, T, 0);
    silu_mul_kernel<<<blocks_for(n), THREADS>>>(d->ffn_h, d->ffn_u, n);
    matmul_cuda(d, out, d->ffn_h, f.down, T, accumulate);
}

/* Decode MoE, step 1: for each token t and each of its top_k experts e = idx[t][k], the rows of
 * silu(gate_e x_t) * up_e x_t, P rows a warp: moe_h [T * top_k, inter]. */
template <int DT, int P, bool XS>
__global__ void moe_up_kernel(float *moe_h, const float *x, const DevFfn *experts, const int *idx, int top_k, int d) {
    extern __shared__ float xs[]; /* XS: the token's x [d] padded */
    int r0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * P, tk = blockIdx.y;
    const float *xt = x + (size_t)(tk / top_k) * d;
    if (XS) stage_x_padded(xs, xt, d);
    const DevFfn &f = experts[idx[tk]];
    if (r0 < f.gate.rows) swiglu_rows<DT, P, 1, XS>(moe_h + (size_t)tk * f.gate.rows, f, r0, XS ? xs : xt, 1, d, 0);
}

/* Decode MoE, step 2: y [T * top_k, d], the rows of down_e moe_h[t][k], NR rows a warp per (token and
 * pick): all top_k experts' rows are read at once (one warp per row would walk them one by one). */
template <int DT, int NR, bool XS>
__global__ void moe_down_kernel(float *y, const float *moe_h, const DevFfn *experts, const int *idx, int d) {
    extern __shared__ float xs[]; /* XS: the pick's moe_h row [inter] padded */
    int i0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * NR, tk = blockIdx.y;
    const DevFfn &f = experts[idx[tk]];
    const float *xt = moe_h + (size_t)tk * f.down.cols;
    if (XS) stage_x_padded(xs, xt, f.down.cols);
    if (i0 >= d) return;
    const DevTensor *Ws[NR];
    int rs[NR];
    rows_of<NR>(Ws, rs, f.down, i0);
    float acc[NR][1];
    warp_dots_rows<DT, NR, 1, XS>(acc, Ws, rs, XS ? xs : xt, 1, f.down.cols);
    if (threadIdx.x % 32 == 0)
#pragma unroll
        for (int k = 0; k < NR; k++)
            if (i0 + k < d) y[(size_t)tk * d + i0 + k] = acc[k][0];
}

/* The decode MoE's two expert launches: P and NR chosen over all T * top_k experts' rows. */
template <int DT, bool XS>
static void moe_experts_launch(Dev *d, const float *h, int T, const DevLayer &L, int K, int inter, int dim) {
    int P = swiglu_pairs(d, inter * T * K), NR = gemv_rows_per_warp(dim * T * K, d->gemv_rows), w = THREADS / 32;
    dim3 up_grid((inter + w * P - 1) / (w * P), T * K), down_grid((dim + w * NR - 1) / (w * NR), T * K);
    size_t up_smem = XS ? x_padded_bytes(dim) : 0, down_smem = XS ? x_padded_bytes(inter) : 0;
    if (P == 2) moe_up_kernel<DT, 2, XS><<<up_grid, THREADS, up_smem>>>(d->moe_h, h, L.experts_dev, d->idx, K, dim);
    else moe_up_kernel<DT, 1, XS><<<up_grid, THREADS, up_smem>>>(d->moe_h, h, L.experts_dev, d->idx, K, dim);
    if (NR == 4) moe_down_kernel<DT, 4, XS><<<down_grid, THREADS, down_smem>>>(d->moe_y, d->moe_h, L.experts_dev, d->idx, dim);
    else if (NR == 2) moe_down_kernel<DT, 2, XS><<<down_grid, THREADS, down_smem>>>(d->moe_y, d->moe_h, L.experts_dev, d->idx, dim);
    else moe_down_kernel<DT, 1, XS><<<down_grid, THREADS, down_smem>>>(d->moe_y, d->moe_h, L.experts_dev, d->idx, dim);
}
template <int DT>
static void moe_experts_launch(Dev *d, const float *h, int T, const DevLayer &L, int K, int inter, int dim) {
    if (!d->xreg_off && xreg_fits(L.experts[0].gate) && xreg_fits(L.experts[0].up) && xreg_fits(L.experts[0].down)) {
        /* gemv_xreg.cuh, one GEMV a pick: up (gate and up rows in pairs) of the pick's token, then down */
        const DevFfn &f0 = L.experts[0]; /* the shapes; each pick's tensors come from experts_dev */
        XregJob up = xreg_job(f0.gate, f0.up, h, d->moe_h, XREG_SWIGLU, inter);
        up.experts = L.experts_dev;
        up.idx = d->idx;
        up.x_stride = dim;
        up.x_div = K; /* pick p is token p / K's */
        up.out_stride = inter;
        gemv_xreg_launch<DT>(up, dim, T * K, 0);
        XregJob down = xreg_job(f0.down, f0.down, d->moe_h, d->moe_y, XREG_STORE, dim);
        down.experts = L.experts_dev;
        down.idx = d->idx;
        down.x_stride = inter;
        down.out_stride = dim;
        gemv_xreg_launch<DT>(down, inter, T * K, 0);
        return;
    }
    if (gemv_xs(d, (DType)DT, dim) && gemv_xs(d, (DType)DT, inter)) moe_experts_launch<DT, true>(d, h, T, L, K, inter, dim);
    else moe_experts_launch<DT, false>(d, h, T, L, K, inter, dim);
}

/* Decode MoE, step 3: x[t][i] += sum_k w_k y[t][k][i] + shared[t][i], the experts added in ascending
 * expert index as moe.c does (its loop over e), then the shared experts' output. A thread per (t, i);
 * the block's first thread sorts token t's picks once, and each thread issues its top_k loads of y
 * together (8 at a time) before it adds them in that order: one memory latency, not top_k. */
__global__ void moe_combine_kernel(float *x, const float *y, const float *shared, const int *idx, const float *wts,
                                   int top_k, int d) {
    __shared__ int order[MOE_MAX_TOPK];
    int i = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (threadIdx.x == 0)
        for (int done = 0, last = -1; done < top_k; done++) { /* next larger expert index */
            int best = -1;
            for (int k = 0; k < top_k; k++) {
                int e = idx[t * top_k + k];
                if (e > last && (best < 0 || e < idx[t * top_k + best])) best = k;
            }
            last = idx[t * top_k + best];
            order[done] = best;
        }
    __syncthreads();
    if (i >= d) return;
    float out = 0.0f;
    for (int k0 = 0; k0 < top_k; k0 += 8) {
        float yk[8], wk[8];
#pragma unroll
        for (int k = 0; k < 8; k++)
            if (k0 + k < top_k) {
                int p = t * top_k + order[k0 + k];
                yk[k] = y[(size_t)p * d + i];
                wk[k] = wts[p];
            }
#pragma unroll
        for (int k = 0; k < 8; k++)
            if (k0 + k < top_k) out += wk[k] * yk[k];
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

/* moe_forward, then x += its output. h: the normed input [T, d]; with in_norm, h = rmsnorm(x; in_norm)
 * first, fused into the router's GEMV (the layer's FFN norm; the twin passes NULL and a normed h). */
int moe_forward_cuda(Dev *d, float *x, float *h, int T, const DevLayer &L, int dim, const float *in_norm, float eps,
                     Error *e) {
    const MoeGate &g = L.gate;
    int E = g.n_experts, K = g.top_k, inter = L.experts[0].gate.rows;
    if (in_norm) matmul_normed_cuda(d, d->router_logits, h, x, in_norm, eps, L.router, T, 0);
    else matmul_cuda(d, d->router_logits, h, L.router, T, 0);
    if (L.shared.gate.data) { /* in the recorded step, beside the gate and the routed experts */
        branch_fork(d);
        ffn_swiglu_cuda(d, d->yb, h, T, L.shared, 0);
        branch_unfork(d);
    }
    moe_gate_kernel<<<T, THREADS>>>(d->idx, d->gate_w, d->router_logits, L.bias, g);
    if (T <= SMALL_BATCH) { /* the selected experts only, all on the device */
        const float *sh = L.shared.gate.data ? d->yb : NULL;
        with_dtype(L.experts[0].gate.dtype,
                   [&](auto dt) { moe_experts_launch<decltype(dt)::value>(d, h, T, L, K, inter, dim); });
        if (L.shared.gate.data) branch_join(d);
        moe_combine_kernel<<<dim3(blocks_for(dim), T), THREADS>>>(x, d->moe_y, sh, d->idx, d->gate_w, K, dim);
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
