/* ops.cu - ops.c's matmul on the GPU: a stored weight widened exactly (tensor_rows_f32), the GEMV
 * of decode (n <= SMALL_BATCH) reading BF16 / FP8 / F32 directly with FP32 accumulation, and for
 * larger n the tile-wise widening to FP32 and cublasSgemm (CUBLAS_DEFAULT_MATH: no TF32). */
#include "device.cuh"

/* tensor_rows_f32 (ops.c): rows [r0, r0+n) of W into out [n, cols] as FP32. A thread per element. */
__global__ void tensor_rows_f32_kernel(float *out, DevTensor W, int r0, int n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * W.cols) return;
    int r = (int)(i / W.cols), c = (int)(i % W.cols);
    out[i] = w_at(W, r0 + r, c);
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

void blas_check(Dev *d, cublasStatus_t st) {
    if (st != CUBLAS_STATUS_SUCCESS && d->blas_err == CUBLAS_STATUS_SUCCESS) d->blas_err = st;
}

/* out [n, rows] = x [n, cols] . W^T, or += with accumulate (the residual add, folded in). */
void matmul_cuda(Dev *d, float *out, const float *x, const DevTensor &W, int n, int accumulate) {
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
