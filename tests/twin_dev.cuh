/* tests/twin_dev.cuh - a bare Dev (device.cuh) for calling the device forward's steps on host arrays,
 * in the function-level checks (tests/test_forward_twins.cu, tests/test_golden_cuda.cu).
 *
 * twin_new makes the cuBLAS handle as state_init_device does (CUBLAS_DEFAULT_MATH: no TF32); the test
 * then sets only the buffers the step it calls reads and writes (d->q, d->widen, ...). Every buffer
 * the step writes starts poisoned with 0xFF bytes (a NaN as float, -1 as int), so an element it
 * should write and does not shows up in the comparison. twin_free gives it all back through
 * state_free_device (d->owned). A CUDA runtime failure here ends the test (cudaCheck, kernels.cuh):
 * this is a test harness; the step's own launch and cuBLAS errors come back through twin_get.
 */
#ifndef TWIN_DEV_CUH
#define TWIN_DEV_CUH

#include "device.cuh"

static Dev *twin_new(void) {
    Dev *d = (Dev *)calloc(1, sizeof(Dev));
    if (!d || cublasCreate(&d->blas) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "twin: cannot create a cuBLAS handle\n");
        exit(EXIT_FAILURE);
    }
    cublasSetMathMode(d->blas, CUBLAS_DEFAULT_MATH); /* FP32 products, no TF32 */
    return d;
}

/* bytes on the device, owned by d: a copy of host, or 0xFF bytes (NaN) when host is NULL. */
static void *twin_alloc(Dev *d, const void *host, size_t bytes) {
    void *p = device_copy(host, bytes);
    if (!host) cudaCheck(cudaMemset(p, 0xFF, bytes > 0 ? bytes : 1));
    if (d->n_owned == d->cap_owned) {
        d->cap_owned = d->cap_owned ? 2 * d->cap_owned : 64;
        d->owned = (void **)realloc(d->owned, sizeof(void *) * d->cap_owned);
        if (!d->owned) {
            fprintf(stderr, "twin: out of memory\n");
            exit(EXIT_FAILURE);
        }
    }
    d->owned[d->n_owned++] = p;
    return p;
}
static float *twin_nan(Dev *d, size_t n) { return (float *)twin_alloc(d, NULL, sizeof(float) * n); }
static float *twin_up(Dev *d, const float *host, size_t n) { return (float *)twin_alloc(d, host, sizeof(float) * n); }

/* A host Tensor (ops.h) on the device as stored: its data, and for FP8 its block scales. */
static DevTensor twin_tensor(Dev *d, const Tensor *w) {
    DevTensor t;
    memset(&t, 0, sizeof t);
    t.dtype = w->dtype;
    t.rows = w->rows;
    t.cols = w->cols;
    t.block_r = w->block_r;
    t.block_c = w->block_c;
    t.data = twin_alloc(d, w->data, (size_t)w->rows * w->cols * dtype_size(w->dtype));
    if (w->scale_inv) {
        size_t n = (size_t)((w->rows + w->block_r - 1) / w->block_r) * ((w->cols + w->block_c - 1) / w->block_c);
        t.scale = twin_up(d, w->scale_inv, n);
    }
    return t;
}

/* An F32 matrix [rows, cols] on the device. */
static DevTensor twin_f32(Dev *d, const float *w, int rows, int cols) {
    Tensor h;
    memset(&h, 0, sizeof h);
    h.data = w;
    h.dtype = DT_F32;
    h.rows = rows;
    h.cols = cols;
    return twin_tensor(d, &h);
}

/* Waits for the launches, then copies bytes of dev back to host: 0, or -1 with the launch's or
 * cuBLAS's error in e (dev_status, model.cu). */
static int twin_get(Dev *d, void *host, const void *dev, size_t bytes, Error *e) {
    cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) return cuda_err(e, err, "twin");
    if (dev_status(d, e)) return -1;
    err = cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost);
    return err == cudaSuccess ? 0 : cuda_err(e, err, "twin output");
}

static void twin_free(Dev *d) {
    State s;
    memset(&s, 0, sizeof s);
    s.dev = d;
    state_free_device(&s);
}

#endif
