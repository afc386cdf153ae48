/* tests/copy_bandwidth.cuh - the benchmarks' denominator: device-to-device copy bandwidth, 1 GiB
 * copied 10 times after a warm-up, timed with events, bytes read + written (bytes/s; 0 when the
 * device has not 2 GiB free). Shared by bench_device.cu and bench_fp8_gemv.cu. */
#ifndef COPY_BANDWIDTH_CUH
#define COPY_BANDWIDTH_CUH
#include <cuda_runtime.h>

static double copy_bandwidth(void) {
    size_t bytes = (size_t)1 << 30;
    void *src = NULL, *dst = NULL;
    if (cudaMalloc(&src, bytes) != cudaSuccess || cudaMalloc(&dst, bytes) != cudaSuccess) {
        cudaFree(src);
        return 0.0;
    }
    cudaMemset(src, 1, bytes);
    cudaEvent_t t0, t1;
    cudaEventCreate(&t0);
    cudaEventCreate(&t1);
    cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(t0);
    for (int i = 0; i < 10; i++) cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(t1);
    cudaEventSynchronize(t1);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, t0, t1);
    cudaEventDestroy(t0);
    cudaEventDestroy(t1);
    cudaFree(src);
    cudaFree(dst);
    return 2.0 * bytes * 10 / (ms * 1e-3);
}
#endif
