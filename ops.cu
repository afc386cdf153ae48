/* ops.cu - ops.c's matmul on the GPU: a stored weight widened exactly (tensor_rows_f32), the GEMV
 * of decode (n <= SMALL_BATCH) reading BF16 / FP8 / F32 directly with FP32 accumulation, and for
 * larger n the tile-wise widening to FP32 and cublasSgemm (CUBLAS_DEFAULT_MATH: no TF32); the decode
 * GEMV with its input norm fused (small GEMVs of the decode step); and ops.c's argmax over blocks. */
#include "device.cuh"
#include "gemv_xreg.cuh"

/* tensor_rows_f32 (ops.c): rows [r0, r0+n) of W into out [n, cols] as FP32. A thread per element. */
__global__ void tensor_rows_f32_kernel(float *out, DevTensor W, int r0, int n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * W.cols) return;
    int r = (int)(i / W.cols), c = (int)(i % W.cols);
    out[i] = w_at(W, r0 + r, c);
}

/* matmul for n <= SMALL_BATCH, NR rows a warp: device.cuh's gemv_rows_body. */
template <int DT, int NR, int TN, bool XS>
__global__ void matmul_gemv_kernel(float *out, const float *x, DevTensor W, int n, int accumulate) {
    gemv_rows_body<DT, NR, TN, XS>(out, x, W, n, accumulate);
}

template <int DT, int TN, bool XS>
static void gemv_launch(Dev *d, float *out, const float *x, const DevTensor &W, int n, int accumulate) {
    int nr = gemv_rows_per_warp(W.rows, d->gemv_rows);
    if (TN > 1 && nr > 2) nr = 2; /* 4 rows of 8 tokens' sums would leave the registers */
    int per_block = THREADS / 32 * nr;
    unsigned blocks = (unsigned)((W.rows + per_block - 1) / per_block);
    size_t smem = XS ? x_padded_bytes(W.cols) : 0;
    if (nr == 4) matmul_gemv_kernel<DT, 4, TN, XS><<<blocks, THREADS, smem, d->st>>>(out, x, W, n, accumulate);
    else if (nr == 2) matmul_gemv_kernel<DT, 2, TN, XS><<<blocks, THREADS, smem, d->st>>>(out, x, W, n, accumulate);
    else matmul_gemv_kernel<DT, 1, TN, XS><<<blocks, THREADS, smem, d->st>>>(out, x, W, n, accumulate);
}
template <int DT>
static void gemv_launch(Dev *d, float *out, const float *x, const DevTensor &W, int n, int accumulate) {
    if (n == 1 && !d->xreg_off && xreg_fits(W)) gemv_xreg_matmul(out, x, W, accumulate, d->st); /* FP8, x in registers */
    else if (n == 1 && gemv_xs(d, (DType)DT, W.cols)) gemv_launch<DT, 1, true>(d, out, x, W, n, accumulate); /* the decode step */
    else if (n == 1) gemv_launch<DT, 1, false>(d, out, x, W, n, accumulate);
    else gemv_launch<DT, SMALL_BATCH, false>(d, out, x, W, n, accumulate);
}

/* The decode step's matmul of a normed input, fused (T = 1): h = rmsnorm(x; norm_w) (ops.c), out (= or +=)
 * h . W^T. Every block norms x into shared memory itself (kernels.cuh's rmsnorm_row: rmsnorm_kernel's
 * bits), block 0 also leaves h in memory for the kernels after it; the rows then read the shared copy.
 * The same values as rmsnorm_kernel then matmul_gemv_kernel, one launch less (notes/cuda.md, section 10). */
template <int DT, int NR>
__global__ void matmul_normed_gemv_kernel(float *out, float *h, const float *x, const float *norm_w, float eps, DevTensor W,
                                          int accumulate) {
    extern __shared__ float xs[]; /* [W.cols] */
    __shared__ float red[32];
    rmsnorm_row(xs, x, norm_w, W.cols, eps, red);
    __syncthreads();
    if (blockIdx.x == 0)
        for (int i = threadIdx.x; i < W.cols; i += blockDim.x) h[i] = xs[i];
    int r0 = (blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32) * NR;
    if (r0 >= W.rows) return;
    const DevTensor *Ws[NR];
    int rs[NR];
    rows_of<NR>(Ws, rs, W, r0);
    float acc[NR][1];
    warp_dots_rows<DT, NR, 1>(acc, Ws, rs, xs, 1, W.cols);
    if (threadIdx.x % 32 == 0)
#pragma unroll
        for (int k = 0; k < NR; k++)
            if (r0 + k < W.rows) out[r0 + k] = accumulate ? out[r0 + k] + acc[k][0] : acc[k][0];
}

template <int DT>
static void normed_gemv_launch(Dev *d, float *out, float *h, const float *x, const float *norm_w, float eps,
                               const DevTensor &W, int accumulate) {
    int nr = gemv_rows_per_warp(W.rows, d->gemv_rows), per_block = THREADS / 32 * nr;
    unsigned blocks = (unsigned)((W.rows + per_block - 1) / per_block);
    size_t smem = sizeof(float) * W.cols;
    if (nr == 4) matmul_normed_gemv_kernel<DT, 4><<<blocks, THREADS, smem>>>(out, h, x, norm_w, eps, W, accumulate);
    else if (nr == 2) matmul_normed_gemv_kernel<DT, 2><<<blocks, THREADS, smem>>>(out, h, x, norm_w, eps, W, accumulate);
    else matmul_normed_gemv_kernel<DT, 1><<<blocks, THREADS, smem>>>(out, h, x, norm_w, eps, W, accumulate);
}

/* h [n, cols] = rmsnorm(x [n, cols]; norm_w), then out [n, rows] (= or +=) h . W^T: fused for n = 1
 * and a GEMV of at most 2 blocks an SM (unless DSV3_FUSED_NORM=0), else rmsnorm_kernel and matmul_cuda. */
void matmul_normed_cuda(Dev *d, float *out, float *h, const float *x, const float *norm_w, float eps, const DevTensor &W,
                        int n, int accumulate) {
    if (n == 1 && !d->norm_unfused && !d->xreg_off && xreg_fits(W)) { /* gemv_xreg.cuh, every block norming x */
        gemv_xreg_matmul(out, x, W, accumulate, d->st, norm_w, eps, h);
        return;
    }
    int nr = gemv_rows_per_warp(W.rows, d->gemv_rows), blocks = (W.rows + THREADS / 32 * nr - 1) / (THREADS / 32 * nr);
    /* every block norms x again: worth a launch for the layers' q and router GEMVs (a few hundred
     * blocks), not for lm_head's thousands (measured: notes/cuda.md, section 10); 48 KB of shared
     * memory without asking */
    if (n != 1 || d->norm_unfused || blocks > 2 * 132 || W.cols > 12288) {
        rmsnorm_cuda_dev(h, x, norm_w, n, W.cols, W.cols, W.cols, eps);
        matmul_cuda(d, out, h, W, n, accumulate);
        return;
    }
    with_dtype(W.dtype,
               [&](auto dt) { normed_gemv_launch<decltype(dt)::value>(d, out, h, x, norm_w, eps, W, accumulate); });
}

/* ---- matmul (ops.c) ---------------------------------------------------------------------------- */

void blas_check(Dev *d, cublasStatus_t st) {
    if (st != CUBLAS_STATUS_SUCCESS && d->blas_err == CUBLAS_STATUS_SUCCESS) d->blas_err = st;
}

/* out [n, rows] = x [n, cols] . W^T, or += with accumulate (the residual add, folded in). */
void matmul_cuda(Dev *d, float *out, const float *x, const DevTensor &W, int n, int accumulate) {
    if (n <= SMALL_BATCH) {
        with_dtype(W.dtype, [&](auto dt) { gemv_launch<decltype(dt)::value>(d, out, x, W, n, accumulate); });
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

/* ---- argmax (ops.c) ----------------------------------------------------------------------------- */

/* argmax (ops.c) of logits [n]: the largest value, the first index on ties; NaN as argmax compares
 * (x[i] > x[best] never holds for a NaN: a NaN at index 0 wins, any other loses). ARGMAX_BLOCKS
 * blocks each take a contiguous slice and leave their (value, index) in scratch; the last block to
 * finish (a ticket counter, zero between calls: that block resets it) reduces the partials. The rule
 * (larger value, else smaller index) is a total order on the candidates, so the answer is the
 * one-block kernel's whatever the order the partials meet in. */
static __device__ __forceinline__ bool argmax_better(float ov, int oi, float v, int best) {
    return oi >= 0 && (best < 0 || ov > v || (ov == v && oi < best));
}

__global__ void argmax_kernel(int *out, const float *x, int n, void *scratch) {
    float *part_v = (float *)scratch;
    int *part_i = (int *)(part_v + ARGMAX_BLOCKS);
    unsigned *ticket = (unsigned *)(part_i + ARGMAX_BLOCKS);
    __shared__ float bv[32];
    __shared__ int bi[32];
    __shared__ int is_last;
    int per = (n + gridDim.x - 1) / gridDim.x, lo = blockIdx.x * per, hi = min(lo + per, n);
    float v = -INFINITY;
    int best = -1;
#pragma unroll 4 /* loads in flight; each thread still compares its elements in index order */
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x)
        if (!isnan(x[i]) && (best < 0 || x[i] > v)) { v = x[i]; best = i; } /* argmax passes over NaN */
    for (int off = 16; off > 0; off /= 2) {
        float ov = __shfl_xor_sync(FULL_MASK, v, off);
        int oi = __shfl_xor_sync(FULL_MASK, best, off);
        if (argmax_better(ov, oi, v, best)) { v = ov; best = oi; }
    }
    if (threadIdx.x % 32 == 0) { bv[threadIdx.x / 32] = v; bi[threadIdx.x / 32] = best; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)blockDim.x / 32; w++)
            if (argmax_better(bv[w], bi[w], v, best)) { v = bv[w]; best = bi[w]; }
        part_v[blockIdx.x] = v;
        part_i[blockIdx.x] = best;
        __threadfence(); /* the partial is visible before the ticket says so */
        is_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last || threadIdx.x >= 32) return;
    v = -INFINITY;
    best = -1;
    for (int b = threadIdx.x; b < (int)gridDim.x; b += 32) {
        float ov = __ldcg(part_v + b); /* from L2: another SM wrote it */
        int oi = __ldcg(part_i + b);
        if (argmax_better(ov, oi, v, best)) { v = ov; best = oi; }
    }
    for (int off = 16; off > 0; off /= 2) {
        float ov = __shfl_xor_sync(FULL_MASK, v, off);
        int oi = __shfl_xor_sync(FULL_MASK, best, off);
        if (argmax_better(ov, oi, v, best)) { v = ov; best = oi; }
    }
    if (threadIdx.x == 0) {
        *out = best < 0 || isnan(x[0]) ? 0 : best; /* as argmax: a NaN at index 0 is never beaten; all NaN: 0 */
        *ticket = 0;
    }
}

void argmax_cuda_dev(int *out, const float *x, int n, void *scratch) {
    argmax_kernel<<<ARGMAX_BLOCKS, THREADS>>>(out, x, n, scratch);
}
