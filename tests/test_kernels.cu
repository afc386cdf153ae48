/* tests/test_kernels.cu - every CUDA twin of kernels.cu against its C function.
 *
 *   make cuda-test                       (builds, then runs ./build/cuda/test_kernels)
 *   ./build/cuda/test_kernels --quick    smaller sweeps and no timing (for compute-sanitizer)
 *
 * As llm.c's dev/cuda validate_result: random inputs from a fixed seed go through the C function
 * and its twin, and each output prints one line, "OK name max rel err X (tol Y)" or NOT OK, with
 * err = max|gpu - cpu| / max|cpu| (the metric of notes/golden.md). FP8 codes, scales and the gate's
 * indices must be equal: those lines count the elements that differ. The exit status is 1 when any
 * line is NOT OK. Then the absorbed MLA decode kernel is timed at V2-Lite's and V3's head counts.
 *
 * Not a cmocka test (the Makefile's tests/test_*.c glob does not see a .cu file). Without OpenBLAS
 * the C reference is linked with the naive cblas_sgemm / cblas_saxpy of tests/cblas_shim/.
 */
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels.h"

/* ---- checks ------------------------------------------------------------------------------------ */

static int failures = 0;

/* max_i |got_i - want_i| / max_i |want_i|; a NaN in both counts as equal, in one as infinite. */
static double rel_err(const float *got, const float *want, size_t n) {
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) && isnan(want[i])) continue;
        double d = fabs((double)got[i] - (double)want[i]);
        if (isnan(d) || d > maxdiff) maxdiff = isnan(d) ? INFINITY : d;
        if (fabs((double)want[i]) > maxref) maxref = fabs((double)want[i]);
    }
    return maxref > 0 ? maxdiff / maxref : maxdiff;
}

static void check(const char *name, double err, double tol) {
    int ok = err <= tol;
    printf("%s %s max rel err %.3g (tol %.0e)\n", ok ? "OK    " : "NOT OK", name, err, tol);
    failures += !ok;
}

static void check_exact(const char *name, size_t differ, size_t n) {
    printf("%s %s %zu of %zu differ (tol exact)\n", differ == 0 ? "OK    " : "NOT OK", name, differ, n);
    failures += differ != 0;
}

/* Elements whose bits differ; two NaNs are equal. */
static size_t count_diff_f32(const float *a, const float *b, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (!(isnan(a[i]) && isnan(b[i])) && memcmp(a + i, b + i, sizeof(float)) != 0) k++;
    return k;
}
static size_t count_diff_bytes(const void *a, const void *b, size_t n, size_t size) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += memcmp((const char *)a + i * size, (const char *)b + i * size, size) != 0;
    return k;
}

/* ---- random inputs ----------------------------------------------------------------------------- */

static Rng rng;

static float normal(void) { return rng_normal(&rng); } /* ops.c's Box-Muller */
static float *randn(size_t n, float sd) {
    float *x = (float *)malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = sd * normal();
    return x;
}
static float *floats(size_t n) { return (float *)calloc(n, sizeof(float)); }
static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* ---- the twins --------------------------------------------------------------------------------- */

static void test_rmsnorm(void) {
    const int shapes[][2] = {{4, 7168}, {3, 333}}; /* V3's hidden size; a size no warp divides */
    for (int c = 0; c < 2; c++) {
        int n = shapes[c][0], d = shapes[c][1];
        float *x = randn((size_t)n * d, 3.0f), *w = randn(d, 0.1f), *ref = floats((size_t)n * d), *got = floats((size_t)n * d);
        for (int i = 0; i < d; i++) w[i] += 1.0f;
        rmsnorm(ref, x, w, n, d, 1e-6f);
        rmsnorm_cuda(got, x, w, n, d, 1e-6f);
        char name[64];
        snprintf(name, sizeof name, "rmsnorm n=%d d=%d", n, d);
        check(name, rel_err(got, ref, (size_t)n * d), 1e-5);
        free(x); free(w); free(ref); free(got);
    }
}

static void test_rope(void) {
    enum { N = 16, STRIDE = 192, NOPE = 128, D_R = 64 }; /* 16 heads of [q_nope 128 | q_pe 64] */
    RopeConfig rc;
    memset(&rc, 0, sizeof rc);
    rc.theta = 10000.0f;
    float inv_freq[D_R / 2];
    for (int yarn = 0; yarn < 2; yarn++) {
        if (yarn) { /* DeepSeek-V3's rope_scaling */
            rc.type = ROPE_YARN; rc.factor = 40; rc.original_max_pos = 4096;
            rc.beta_fast = 32; rc.beta_slow = 1; rc.mscale = 1; rc.mscale_all_dim = 1;
        }
        float attn = rope_inv_freq(inv_freq, &rc, D_R);
        const int positions[] = {7, 4095, 100000};
        for (int inter = 0; inter < 2; inter++)
            for (int p = 0; p < 3; p++) {
                float *x = randn(N * STRIDE, 1.0f), *got = floats(N * STRIDE);
                memcpy(got, x, sizeof(float) * N * STRIDE);
                rope_rotate(x + NOPE, N, STRIDE, D_R, positions[p], inv_freq, attn, inter);
                rope_rotate_cuda(got + NOPE, N, STRIDE, D_R, positions[p], inv_freq, attn, inter);
                char name[80];
                snprintf(name, sizeof name, "rope_rotate %s %s pos=%d", yarn ? "yarn" : "plain",
                         inter ? "interleaved" : "rotate_half", positions[p]);
                check(name, rel_err(got, x, N * STRIDE), 1e-5);
                free(x); free(got);
            }
    }
}

typedef struct {
    const char *name;
    int n_h, d_c, d_R, nope, v, T, pos0, fp8;
} MlaCase;

/* Random q, cache and kv_b for a case; kv_b in FP32 or as E4M3 codes with 128 x 128 scales. */
typedef struct {
    MlaDims m;
    MlaWeights w;
    float *q, *cache, *kv_b, *kv_scale;
    uint8_t *kv_codes;
} MlaInputs;

static MlaInputs mla_inputs(const MlaCase *c) {
    MlaInputs in;
    memset(&in, 0, sizeof in);
    in.m.n_heads = c->n_h; in.m.kv_lora_rank = c->d_c; in.m.rope = c->d_R;
    in.m.nope = c->nope; in.m.v = c->v;
    in.m.softmax_scale = 1.874f / sqrtf((float)(c->nope + c->d_R)); /* V3's YaRN mscale^2 */
    int L = c->pos0 + c->T, rows = c->n_h * (c->nope + c->v);
    in.q = randn((size_t)c->T * c->n_h * (c->nope + c->d_R), 1.0f);
    in.cache = randn((size_t)L * (c->d_c + c->d_R), 1.0f);
    in.kv_b = randn((size_t)rows * c->d_c, 1.0f / sqrtf((float)c->d_c));
    Tensor *t = &in.w.kv_b;
    t->rows = rows; t->cols = c->d_c;
    if (c->fp8) {
        int nbr = (rows + 127) / 128, nbc = (c->d_c + 127) / 128;
        in.kv_codes = (uint8_t *)malloc((size_t)rows * c->d_c);
        in.kv_scale = floats((size_t)nbr * nbc);
        fp8_quant_block(in.kv_codes, in.kv_scale, in.kv_b, rows, c->d_c, 128, 128, FP8_SCALE_F32);
        t->data = in.kv_codes; t->dtype = DT_F8_E4M3; t->scale_inv = in.kv_scale;
        t->block_r = t->block_c = 128;
    } else {
        t->data = in.kv_b; t->dtype = DT_F32;
    }
    return in;
}
static void mla_free(MlaInputs *in) {
    free(in->q); free(in->cache); free(in->kv_b); free(in->kv_scale); free(in->kv_codes);
}

static void test_mla(void) {
    const MlaCase cases[] = {
        {"V2-Lite decode L=300", 16, 512, 64, 128, 128, 1, 299, 0},
        {"V2-Lite prefill T=4", 16, 512, 64, 128, 128, 4, 60, 0},
        {"V2-Lite prefill T=12 (C: the BLAS path)", 16, 512, 64, 128, 128, 12, 20, 0},
        {"odd sizes", 3, 72, 8, 20, 36, 2, 5, 0},
        {"V2-Lite decode, FP8 kv_b", 16, 512, 64, 128, 128, 1, 99, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        MlaInputs in = mla_inputs(&cases[c]);
        size_t n_out = (size_t)cases[c].T * cases[c].n_h * cases[c].v;
        float *ref = floats(n_out), *got = floats(n_out);
        mla_attend_absorbed(ref, in.q, in.cache, cases[c].T, cases[c].pos0, &in.w, &in.m, NULL);
        mla_attend_absorbed_cuda(got, in.q, in.cache, cases[c].T, cases[c].pos0, &in.w, &in.m);
        char name[96];
        snprintf(name, sizeof name, "mla_attend_absorbed %s", cases[c].name);
        check(name, rel_err(got, ref, n_out), 1e-4);
        mla_free(&in); free(ref); free(got);
    }
}

static void test_moe_gate(void) {
    const struct {
        const char *name;
        MoeGate g;
        int bias;
    } cases[] = {
        /* n_experts, top_k, n_group, topk_group, scoring, method, norm_topk_prob, scaling */
        {"V3", {256, 8, 8, 4, SCORE_SIGMOID, TOPK_NOAUX_TC, 1, 2.5f}, 1},
        {"V3 without bias", {256, 8, 8, 4, SCORE_SIGMOID, TOPK_NOAUX_TC, 1, 2.5f}, 0},
        {"V2", {160, 6, 8, 3, SCORE_SOFTMAX, TOPK_GROUP_LIMITED_GREEDY, 0, 16.0f}, 0},
        {"V2-Lite", {64, 6, 1, 1, SCORE_SOFTMAX, TOPK_GREEDY, 0, 1.0f}, 0},
        {"Kimi-K2-like", {384, 8, 1, 1, SCORE_SIGMOID, TOPK_NOAUX_TC, 1, 2.827f}, 1},
    };
    enum { T = 256 };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const MoeGate *g = &cases[c].g;
        int E = g->n_experts, K = g->top_k;
        /* Tokens 0..127: logits N(0, 2^2). Tokens 128..255: the same rounded to quarters, so many
         * experts tie exactly and the lower-index rule decides. */
        float *logits = randn((size_t)T * E, 2.0f), *bias = cases[c].bias ? randn(E, 0.1f) : NULL;
        for (size_t i = (size_t)T / 2 * E; i < (size_t)T * E; i++) logits[i] = roundf(logits[i] * 4) / 4;
        int *idx_ref = (int *)malloc(sizeof(int) * T * K), *idx_got = (int *)malloc(sizeof(int) * T * K);
        float *w_ref = floats((size_t)T * K), *w_got = floats((size_t)T * K);
        for (int t = 0; t < T; t++)
            moe_gate(idx_ref + t * K, w_ref + t * K, logits + (size_t)t * E, bias, g);
        moe_gate_cuda(idx_got, w_got, logits, bias, g, T);
        char name[80];
        snprintf(name, sizeof name, "moe_gate %s idx", cases[c].name);
        check_exact(name, count_diff_bytes(idx_got, idx_ref, (size_t)T * K, sizeof(int)), (size_t)T * K);
        snprintf(name, sizeof name, "moe_gate %s weights", cases[c].name);
        check(name, rel_err(w_got, w_ref, (size_t)T * K), 1e-5);
        free(logits); free(bias); free(idx_ref); free(idx_got); free(w_ref); free(w_got);
    }
}

/* The hardware conversion alone, without kernels.cu's NaN rule, to show what that rule is for. */
__global__ void raw_cvt_kernel(uint8_t *q, const float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) q[i] = (uint8_t)__nv_cvt_float_to_fp8(x[i], __NV_SATFINITE, __NV_E4M3);
}

/* Float bit patterns (i << 8) | low for every i < 2^24 and low in {0x00, 0x01, 0xFF}: every
 * exponent, the FP8 ties and both their neighbours, +-0, subnormals, +-inf, NaNs of both signs. */
static void test_fp8_encode(int quick) {
    const unsigned lows[] = {0x00, 0x01, 0xFF};
    int n_lows = quick ? 1 : 3;
    size_t per = (size_t)1 << 24, n = per * n_lows;
    float *x = (float *)malloc(sizeof(float) * n);
    uint8_t *ref = (uint8_t *)malloc(n), *got = (uint8_t *)malloc(n), *raw = (uint8_t *)malloc(n);
    for (int l = 0; l < n_lows; l++)
        for (size_t i = 0; i < per; i++) {
            uint32_t bits = (uint32_t)(i << 8) | lows[l];
            memcpy(x + l * per + i, &bits, 4);
        }
    for (size_t i = 0; i < n; i++) ref[i] = fp8_e4m3_encode(x[i], FP8_SATURATE);
    fp8_e4m3_encode_cuda(got, x, (int)n);
    check_exact("fp8_e4m3_encode (SATURATE) vs cvt.rn.satfinite", count_diff_bytes(got, ref, n, 1), n);

    float *d_x;
    uint8_t *d_q;
    cudaMalloc(&d_x, sizeof(float) * n);
    cudaMalloc(&d_q, n);
    cudaMemcpy(d_x, x, sizeof(float) * n, cudaMemcpyHostToDevice);
    raw_cvt_kernel<<<(unsigned)((n + 255) / 256), 256>>>(d_q, d_x, n);
    cudaMemcpy(raw, d_q, n, cudaMemcpyDeviceToHost);
    size_t nan_diff = 0, other_diff = 0;
    for (size_t i = 0; i < n; i++)
        if (raw[i] != ref[i]) (isnan(x[i]) ? nan_diff : other_diff)++;
    printf("       (the bare cvt differs from fp8.c on %zu NaNs, the sign of NaN, and on %zu others)\n",
           nan_diff, other_diff);
    check_exact("bare cvt.rn.satfinite on non-NaN floats", other_diff, n);
    cudaFree(d_x); cudaFree(d_q);
    free(x); free(ref); free(got); free(raw);
}

static void test_fp8_dequant(void) {
    enum { ROWS = 300, COLS = 200, B = 128 }; /* partial blocks in both directions */
    int nbr = (ROWS + B - 1) / B, nbc = (COLS + B - 1) / B;
    uint8_t *q = (uint8_t *)malloc(ROWS * COLS);
    float *s = floats(nbr * nbc), *ref = floats(ROWS * COLS), *got = floats(ROWS * COLS);
    for (int i = 0; i < ROWS * COLS; i++) q[i] = (uint8_t)(rng_next(&rng) & 0xFF); /* NaN codes too */
    for (int i = 0; i < nbr * nbc; i++) s[i] = ldexpf(0.5f + rng_uniform(&rng), (int)(rng_next(&rng) % 21) - 10);
    fp8_dequant_block(ref, q, s, ROWS, COLS, B, B);
    fp8_dequant_block_cuda(got, q, s, ROWS, COLS, B, B);
    check_exact("fp8_dequant_block 300x200", count_diff_f32(got, ref, ROWS * COLS), ROWS * COLS);
    free(q); free(s); free(ref); free(got);
}

static void test_fp8_quant_act(void) {
    enum { ROWS = 33, COLS = 7232 }; /* 56.5 tiles of 128 */
    float *x = randn(ROWS * COLS, 1.0f);
    for (int k = 0; k < 28; k++) { /* outlier channels, as LLM activations have them */
        int ch = (int)(rng_next(&rng) % COLS);
        for (int r = 0; r < ROWS; r++) x[r * COLS + ch] *= 100.0f;
    }
    for (int c = 0; c < COLS; c++) {
        x[c] = 0.0f;                     /* row 0: zero tiles, scale 1 */
        x[COLS + c] *= 1e-41f;           /* row 1: FP32 subnormals */
    }
    x[2 * COLS + 5] = 3.0e38f;           /* row 2: an amax near FLT_MAX */
    /* No inf or NaN: inf / inf and NaN / s are NaNs whose sign IEEE leaves open, and x86 (negative
     * default NaN) and NVIDIA GPUs (positive canonical NaN) choose differently; the encoder sweep
     * checks NaN inputs directly. */
    const struct { int tile; Fp8ScaleFmt fmt; const char *name; } cases[] = {
        {128, FP8_SCALE_F32, "tile 128, F32 scales"},
        {128, FP8_SCALE_UE8M0, "tile 128, UE8M0 scales"},
        {200, FP8_SCALE_F32, "tile 200, F32 scales"},
    };
    for (int c = 0; c < 3; c++) {
        int n_tiles = (COLS + cases[c].tile - 1) / cases[c].tile;
        uint8_t *q_ref = (uint8_t *)malloc(ROWS * COLS), *q_got = (uint8_t *)malloc(ROWS * COLS);
        float *s_ref = floats(ROWS * n_tiles), *s_got = floats(ROWS * n_tiles);
        fp8_quant_act(q_ref, s_ref, x, ROWS, COLS, cases[c].tile, cases[c].fmt);
        fp8_quant_act_cuda(q_got, s_got, x, ROWS, COLS, cases[c].tile, cases[c].fmt);
        char name[80];
        snprintf(name, sizeof name, "fp8_quant_act %s: codes", cases[c].name);
        check_exact(name, count_diff_bytes(q_got, q_ref, ROWS * COLS, 1), ROWS * COLS);
        snprintf(name, sizeof name, "fp8_quant_act %s: scales", cases[c].name);
        check_exact(name, count_diff_f32(s_got, s_ref, ROWS * n_tiles), ROWS * n_tiles);
        free(q_ref); free(q_got); free(s_ref); free(s_got);
    }
    free(x);
}

static void test_fp8_gemm(void) {
    enum { M = 5, N = 260, K = 1000, B = 128 }; /* a partial N block and a partial K block */
    int nkb = (K + B - 1) / B, nbn = (N + B - 1) / B;
    float *x = randn(M * K, 1.0f), *w = randn(N * K, 0.05f);
    for (int k = 0; k < 4; k++) {
        int ch = (int)(rng_next(&rng) % K);
        for (int m = 0; m < M; m++) x[m * K + ch] *= 100.0f;
    }
    uint8_t *qx = (uint8_t *)malloc(M * K), *qw = (uint8_t *)malloc(N * K);
    float *sx = floats(M * nkb), *sw = floats(nbn * nkb), *ref = floats(M * N), *got = floats(M * N);
    fp8_quant_act(qx, sx, x, M, K, B, FP8_SCALE_F32);
    fp8_quant_block(qw, sw, w, N, K, B, B, FP8_SCALE_F32);
    const struct { Fp8Accum acc; const char *name; } cases[] = {
        {{0, 0, FP8_ACC_TRUNCATE}, "FP32 per K-block (DeepSeek)"},
        {{0, 32, FP8_ACC_TRUNCATE}, "FP32, N_C=32"},
        {{FP8_ACC_BITS, FP8_NC, FP8_ACC_TRUNCATE}, "14-bit trunc, N_C=128"},
        {{FP8_ACC_BITS, 0, FP8_ACC_NEAREST}, "14-bit nearest"},
    };
    for (int c = 0; c < 4; c++) {
        fp8_gemm(ref, qx, sx, qw, sw, M, N, K, B, B, cases[c].acc);
        fp8_gemm_cuda(got, qx, sx, qw, sw, M, N, K, B, B, cases[c].acc);
        char name[80];
        snprintf(name, sizeof name, "fp8_gemm %dx%dx%d %s", M, N, K, cases[c].name);
        check_exact(name, count_diff_f32(got, ref, M * N), M * N);
    }
    free(x); free(w); free(qx); free(qw); free(sx); free(sw); free(ref); free(got);
}

/* ---- timing: absorbed decode, one token over a 4096-row latent cache --------------------------- */

static void bench_mla_decode(void) {
    const MlaCase cases[] = {
        {"V2-Lite (16 heads)", 16, 512, 64, 128, 128, 1, 4095, 0},
        {"V3 (128 heads)", 128, 512, 64, 128, 128, 1, 4095, 0},
    };
    for (int c = 0; c < 2; c++) {
        const MlaCase *k = &cases[c];
        MlaInputs in = mla_inputs(k);
        int L = k->pos0 + 1, n_h = k->n_h;
        size_t n_q = (size_t)n_h * (k->nope + k->d_R), n_cache = (size_t)L * (k->d_c + k->d_R);
        size_t n_out = (size_t)n_h * k->v, n_w = (size_t)n_h * (k->nope + k->v) * k->d_c;
        float *ref = floats(n_out), *got = floats(n_out);
        double t0 = now_ms();
        mla_attend_absorbed(ref, in.q, in.cache, 1, k->pos0, &in.w, &in.m, NULL);
        double cpu_ms = now_ms() - t0;
        t0 = now_ms();
        mla_attend_absorbed_cuda(got, in.q, in.cache, 1, k->pos0, &in.w, &in.m);
        double launcher_ms = now_ms() - t0;
        char name[96];
        snprintf(name, sizeof name, "mla_attend_absorbed decode %s L=%d", k->name, L);
        check(name, rel_err(got, ref, n_out), 1e-4);

        float *d_q, *d_cache, *d_w, *d_out, *d_scratch;
        cudaMalloc(&d_q, sizeof(float) * n_q);
        cudaMalloc(&d_cache, sizeof(float) * n_cache);
        cudaMalloc(&d_w, sizeof(float) * n_w);
        cudaMalloc(&d_out, sizeof(float) * n_out);
        cudaMalloc(&d_scratch, sizeof(float) * n_h * L);
        cudaMemcpy(d_q, in.q, sizeof(float) * n_q, cudaMemcpyHostToDevice);
        cudaMemcpy(d_cache, in.cache, sizeof(float) * n_cache, cudaMemcpyHostToDevice);
        cudaMemcpy(d_w, in.kv_b, sizeof(float) * n_w, cudaMemcpyHostToDevice);
        cudaEvent_t start, stop;
        cudaEventCreate(&start);
        cudaEventCreate(&stop);
        for (int i = 0; i < 3; i++) mla_attend_absorbed_cuda_dev(d_out, d_q, d_cache, d_w, d_scratch, 1, k->pos0, &in.m);
        const int reps = 20;
        cudaEventRecord(start);
        for (int i = 0; i < reps; i++) mla_attend_absorbed_cuda_dev(d_out, d_q, d_cache, d_w, d_scratch, 1, k->pos0, &in.m);
        cudaEventRecord(stop);
        cudaEventSynchronize(stop);
        float ms = 0;
        cudaEventElapsedTime(&ms, start, stop);
        ms /= reps;
        double mb = (n_cache + n_w) * sizeof(float) / 1e6; /* cache and kv_b, each read once */
        printf("       time %s L=%d: kernel %.3f ms (%.1f MB of cache + kv_b: %.0f GB/s if read once), "
               "launcher with copies %.2f ms, C (%d OpenMP threads) %.1f ms; %s\n",
               k->name, L, ms, mb, mb / ms, launcher_ms, omp_get_max_threads(), cpu_ms, cudaGetErrorString(cudaGetLastError()));
        cudaEventDestroy(start); cudaEventDestroy(stop);
        cudaFree(d_q); cudaFree(d_cache); cudaFree(d_w); cudaFree(d_out); cudaFree(d_scratch);
        mla_free(&in); free(ref); free(got);
    }
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    int n_dev = 0;
    cudaError_t err = cudaGetDeviceCount(&n_dev);
    if (err != cudaSuccess || n_dev == 0) {
        printf("test_kernels: no CUDA device (%s); nothing tested\n", cudaGetErrorString(err));
        return 1;
    }
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("device: %s, sm_%d%d, %d SMs\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
    rng_seed(&rng, 1234);
    test_rmsnorm();
    test_rope();
    test_mla();
    test_moe_gate();
    test_fp8_encode(quick);
    test_fp8_dequant();
    test_fp8_quant_act();
    test_fp8_gemm();
    if (!quick) bench_mla_decode();
    printf(failures ? "%d NOT OK\n" : "all OK\n", failures);
    return failures ? 1 : 0;
}
