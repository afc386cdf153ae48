/* tests/bench_fp8_gemv.cu - how fast the decode GEMV reads an FP8 weight (a benchmark that prints
 * figures, not a test): one warp per output row, out [rows] = W [rows, cols] . x [cols], T = 1, the
 * weight E4M3 with one F32 scale per 128 x 128 block, against the copy bandwidth measured in the
 * same run. The variants differ only in how a 16-byte chunk of 16 codes becomes FP32 products:
 *
 *   exact    each code converted alone (cvt e4m3x2 -> f16x2 on one byte, f16 -> f32), times its
 *            block scale, then the FMA: the weight tensor_rows_f32 gives (the GEMV until session 4)
 *   pairs    device.cuh's warp_dots: the codes converted two at a time (one cvt e4m3x2 per pair),
 *            the 16 products summed, then one multiply by the block scale (block-sum order)
 *   bits     no conversion instruction: code c -> float bits (c & 0x80) << 24 | (c & 0x7f) << 20
 *            is c * 2^-120 (normals and subnormals alike); times 2^48 (exact) so the products stay
 *            normal; the chunk's sum times 2^72, then the block scale (NaN codes become finite:
 *            valid only for a tensor without NaN codes)
 *   bf16     the same rows stored BF16 (twice the bytes), device.cuh's path, for reference
 *   r2, r4   pairs / bf16 with 2 or 4 rows a warp (warp_dots_rows: the rows' loads in flight
 *            together, x read once for them), as ops.cu's matmul_gemv_kernel
 *   xs       pairs with x staged in shared memory, padded (device.cuh's stage_x_padded), 1, 2, 4
 *            rows a warp: ops.cu's decode GEMV for FP8 until session 5
 *   xreg     gemv_xreg.cuh: a block's warps split the columns, x in registers, 8 rows a batch
 *
 *   build: make cuda (build/cuda/bench_fp8_gemv); make cuda-bench runs it first
 *   run:   build/cuda/bench_fp8_gemv [ROWS COLS]...   (default: V2-Lite's decode shapes, 22016 x 2048 .. 576 x 2048)
 */
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "copy_bandwidth.cuh"
#include "device.cuh"
#include "gemv_xreg.cuh"

enum { V_EXACT, V_PAIRS, V_BITS, V_BF16, V_PAIRS2, V_PAIRS4, V_BF16_2, V_BF16_4, V_XS1, V_XS2, V_XS4, V_XREG, N_VARIANTS };
static const char *variant_name[N_VARIANTS] = {"exact", "pairs", "bits", "bf16", "pairs r2", "pairs r4", "bf16 r2", "bf16 r4",
                                               "xs r1", "xs r2", "xs r4", "xreg"};
static const int variant_rows[N_VARIANTS] = {1, 1, 1, 1, 2, 4, 2, 4, 1, 2, 4, 1};

/* ops.cu's matmul_gemv_kernel at T = 1 (device.cuh's gemv_rows_body), NR rows a warp */
template <int DT, int NR, bool XS = false>
__global__ void gemv_rows_kernel(float *out, const float *x, DevTensor W) {
    gemv_rows_body<DT, NR, 1, XS>(out, x, W, 1, 0);
}

template <int V>
__global__ void gemv_kernel(float *out, const float *x, DevTensor W) {
    int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (r >= W.rows) return;
    float acc = 0.0f;
    if (V == V_PAIRS || V == V_BF16) {
        float a[SMALL_BATCH];
        warp_dots<V == V_PAIRS ? DT_F8_E4M3 : DT_BF16>(a, W, r, x, 1, W.cols);
        if (lane == 0) out[r] = a[0];
        return;
    }
    const uint4 *row = (const uint4 *)((const uint8_t *)W.data + (size_t)r * W.cols);
#pragma unroll 4
    for (int c = lane * 16; c < W.cols; c += 32 * 16) {
        uint4 u = row[c / 16];
        uint32_t p[4] = {u.x, u.y, u.z, u.w};
        const float4 *xv = (const float4 *)(x + c);
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            float4 a = xv[k];
            float w0, w1, w2, w3;
            if (V == V_EXACT) {
                float sc = scale_at(W, r, c), w4[4];
                for (int b = 0; b < 4; b++)
                    w4[b] = __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)(p[k] >> (8 * b)), __NV_E4M3))) * sc;
                w0 = w4[0]; w1 = w4[1]; w2 = w4[2]; w3 = w4[3];
            } else {
                const float up = 281474976710656.0f; /* 2^48 */
                uint32_t q = p[k];
                w0 = __int_as_float(((int)(q << 24) >> 4) & 0x87f00000) * up;
                w1 = __int_as_float(((int)(q << 16) >> 4) & 0x87f00000) * up;
                w2 = __int_as_float(((int)(q << 8) >> 4) & 0x87f00000) * up;
                w3 = __int_as_float(((int)q >> 4) & 0x87f00000) * up;
            }
            s += w0 * a.x + w1 * a.y + w2 * a.z + w3 * a.w;
        }
        if (V == V_BITS) s *= 4722366482869645213696.0f; /* 2^72 */
        acc += V == V_EXACT ? s : s * scale_at(W, r, c);
    }
    acc = warp_sum(acc);
    if (lane == 0) out[r] = acc;
}

template <int V>
static float time_variant(float *out, const float *x, DevTensor *W, int copies, int reps) {
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    const int NR = variant_rows[V];
    unsigned blocks = (unsigned)((W[0].rows + 8 * NR - 1) / (8 * NR));
    for (int i = 0; i < copies + reps; i++) {
        if (i == copies) cudaEventRecord(a);
        const DevTensor &w = W[i % copies];
        if (V == V_PAIRS2) gemv_rows_kernel<DT_F8_E4M3, 2><<<blocks, 256>>>(out, x, w);
        else if (V == V_PAIRS4) gemv_rows_kernel<DT_F8_E4M3, 4><<<blocks, 256>>>(out, x, w);
        else if (V == V_BF16_2) gemv_rows_kernel<DT_BF16, 2><<<blocks, 256>>>(out, x, w);
        else if (V == V_BF16_4) gemv_rows_kernel<DT_BF16, 4><<<blocks, 256>>>(out, x, w);
        else if (V == V_XS1) gemv_rows_kernel<DT_F8_E4M3, 1, true><<<blocks, 256, x_padded_bytes(w.cols)>>>(out, x, w);
        else if (V == V_XS2) gemv_rows_kernel<DT_F8_E4M3, 2, true><<<blocks, 256, x_padded_bytes(w.cols)>>>(out, x, w);
        else if (V == V_XREG) gemv_xreg_matmul(out, x, w, 0, 0);
        else if (V == V_XS4) gemv_rows_kernel<DT_F8_E4M3, 4, true><<<blocks, 256, x_padded_bytes(w.cols)>>>(out, x, w);
        else gemv_kernel<V><<<blocks, 256>>>(out, x, w);
    }
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms;
    cudaEventElapsedTime(&ms, a, b);
    return ms * 1000.0f / reps;
}

int main(int argc, char **argv) {
    int shapes[8][2] = {{22016, 2048}, {2048, 10944}, {3072, 2048}, {2048, 2048}, {576, 2048}, {2816, 2048}, {2048, 1408}},
        n_shapes = 7;
    if (argc >= 3) {
        n_shapes = 0;
        for (int i = 1; i + 1 < argc && n_shapes < 8; i += 2, n_shapes++) {
            shapes[n_shapes][0] = atoi(argv[i]);
            shapes[n_shapes][1] = atoi(argv[i + 1]);
        }
    }
    double copy_bw = copy_bandwidth();
    if (copy_bw <= 0.0) { fprintf(stderr, "bench_fp8_gemv: no device memory\n"); return 1; }
    printf("copy bandwidth %.0f GB/s\n", copy_bw / 1e9);
    for (int si = 0; si < n_shapes; si++) {
        int rows = shapes[si][0], cols = shapes[si][1], copies = 6;
        size_t n = (size_t)rows * cols;
        int sr = (rows + 127) / 128, sc = (cols + 127) / 128;
        uint8_t *codes = (uint8_t *)malloc(n);
        uint16_t *bf = (uint16_t *)malloc(2 * n);
        float *scales = (float *)malloc(sizeof(float) * sr * sc), *xh = (float *)malloc(sizeof(float) * cols);
        uint64_t st = 88172645463325252ull;
        for (size_t i = 0; i < n; i++) {
            st ^= st << 13; st ^= st >> 7; st ^= st << 17;
            uint8_t c = (uint8_t)(st >> 24);
            if ((c & 0x7f) == 0x7f) c ^= 1; /* no NaN codes */
            codes[i] = c;
            bf[i] = (uint16_t)(st >> 40);
        }
        for (int i = 0; i < sr * sc; i++) scales[i] = 1e-3f * (1 + i % 7);
        for (int i = 0; i < cols; i++) xh[i] = 0.5f - (float)((i * 37) % 101) / 101.0f;
        DevTensor W8[6], W16[6];
        for (int k = 0; k < copies; k++) {
            W8[k] = {device_copy(codes, n), DT_F8_E4M3, rows, cols, (const float *)device_copy(scales, sizeof(float) * sr * sc), 128, 128};
            W16[k] = {device_copy(bf, 2 * n), DT_BF16, rows, cols, NULL, 0, 0};
        }
        float *x = (float *)device_copy(xh, sizeof(float) * cols), *out = (float *)device_copy(NULL, sizeof(float) * rows);
        float *ref = (float *)malloc(sizeof(float) * rows), *got = (float *)malloc(sizeof(float) * rows);
        float us[N_VARIANTS];
        us[V_EXACT] = time_variant<V_EXACT>(out, x, W8, copies, 60);
        host_copy(ref, out, sizeof(float) * rows);
        us[V_PAIRS] = time_variant<V_PAIRS>(out, x, W8, copies, 60);
        host_copy(got, out, sizeof(float) * rows);
        double e_pairs = 0, e_bits = 0, mx = 0;
        for (int i = 0; i < rows; i++) { mx = fmax(mx, fabs(ref[i])); e_pairs = fmax(e_pairs, fabs(got[i] - ref[i])); }
        us[V_BITS] = time_variant<V_BITS>(out, x, W8, copies, 60);
        host_copy(got, out, sizeof(float) * rows);
        for (int i = 0; i < rows; i++) e_bits = fmax(e_bits, fabs(got[i] - ref[i]));
        us[V_BF16] = time_variant<V_BF16>(out, x, W16, copies, 60);
        us[V_PAIRS2] = time_variant<V_PAIRS2>(out, x, W8, copies, 60);
        host_copy(got, out, sizeof(float) * rows);
        double e_r2 = 0;
        for (int i = 0; i < rows; i++) e_r2 = fmax(e_r2, fabs(got[i] - ref[i]));
        us[V_PAIRS4] = time_variant<V_PAIRS4>(out, x, W8, copies, 60);
        host_copy(got, out, sizeof(float) * rows);
        for (int i = 0; i < rows; i++) e_r2 = fmax(e_r2, fabs(got[i] - ref[i]));
        for (int v = V_XS1; v <= V_XS4; v++) {
            if (x_padded_bytes(cols) > GEMV_XS_MAX_BYTES) { us[v] = NAN; continue; }
            us[v] = v == V_XS1 ? time_variant<V_XS1>(out, x, W8, copies, 60) : v == V_XS2 ? time_variant<V_XS2>(out, x, W8, copies, 60)
                                                                                  : time_variant<V_XS4>(out, x, W8, copies, 60);
            host_copy(got, out, sizeof(float) * rows);
            for (int i = 0; i < rows; i++) e_r2 = fmax(e_r2, fabs(got[i] - ref[i]));
        }
        us[V_XREG] = time_variant<V_XREG>(out, x, W8, copies, 60);
        host_copy(got, out, sizeof(float) * rows);
        double e_xreg = 0;
        for (int i = 0; i < rows; i++) e_xreg = fmax(e_xreg, fabs(got[i] - ref[i]));
        us[V_BF16_2] = time_variant<V_BF16_2>(out, x, W16, copies, 60);
        us[V_BF16_4] = time_variant<V_BF16_4>(out, x, W16, copies, 60);
        printf("W [%d, %d]: FP8 %.1f MB, BF16 %.1f MB; max|y| %.3g, |pairs - exact| %.2g, |bits - exact| %.2g, |r2, r4, xs - exact| %.2g, |xreg - exact| %.2g\n",
               rows, cols, n / 1e6, 2 * n / 1e6, mx, e_pairs, e_bits, e_r2, e_xreg);
        for (int v = 0; v < N_VARIANTS; v++) {
            double bytes = v == V_BF16 || v == V_BF16_2 || v == V_BF16_4 ? 2.0 * n : (double)n + sizeof(float) * sr * sc;
            printf("  %-6s %8.1f us  %6.0f GB/s  %5.1f%% of copy\n", variant_name[v], us[v], bytes / (us[v] * 1e-6) / 1e9,
                   100.0 * bytes / (us[v] * 1e-6) / copy_bw);
        }
        for (int k = 0; k < copies; k++) {
            cudaFree((void *)W8[k].data); cudaFree((void *)W8[k].scale); cudaFree((void *)W16[k].data);
        }
        cudaFree(x); cudaFree(out);
        free(codes); free(bf); free(scales); free(xh); free(ref); free(got);
    }
    return 0;
}
