/* tests/test_forward_twins.cu - the device forward's own twins (model.cu) against their C functions,
 * one by one, as test_kernels.cu checks kernels.cu's:
 *   matmul       F32, BF16 and FP8 E4M3 (128 x 128 block scales) weights; columns a multiple of 8
 *                (the GEMV's vector loads) and not (its scalar loop); n = 1, 3, 8 (GEMV) and 9, 40
 *                (widen + cuBLAS in tiles of a third of the rows)
 *   mla_attend_absorbed  the split-KV decode kernels (mla.cu), tol 1e-4 (test_attn_decode)
 *   moe_forward  a V3-like gate (sigmoid, bias, groups) and a V2-Lite-like one (softmax, greedy),
 *                BF16 and FP8 experts, shared experts; T = 1, 2, 8 (the decode kernels) and 9, 33
 *                (grouped by expert)
 * Random inputs (ops.c's rng_normal, fixed seed), every device buffer and the host output poisoned
 * with NaN first; max|gpu - cpu| / max|cpu| <= 1e-5 (FP32 sums in another order; moe_forward's
 * expert choice must agree, else the error is of order 1). Exit status 1 when any line is NOT OK.
 *
 *   build/cuda/test_forward_twins     (make cuda builds it, make cuda-test runs it)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "device.h"
#include "fp8.h"
}
#include "tests/rel_err.h"

#define TOL 1e-5

static int failures = 0;
static Rng rng;

static void check(const char *name, double err) {
    int ok = err <= TOL;
    printf("%s %s: max rel err %.3g (tol %.0e)\n", ok ? "OK    " : "NOT OK", name, err, TOL);
    failures += !ok;
}

static float *randn(size_t n, float sd) {
    float *x = (float *)malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = sd * rng_normal(&rng);
    return x;
}
static float *nans(size_t n) {
    float *x = (float *)malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

/* A random weight [rows, cols] N(0, 1/cols) stored as dt (F32, BF16, or E4M3 with 128 x 128 scales);
 * the arrays it owns are appended to keep (freed by the caller). */
static Tensor weight(DType dt, int rows, int cols, void **keep, int *n_keep) {
    size_t n = (size_t)rows * cols;
    float *w = randn(n, 1.0f / sqrtf((float)cols));
    Tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dt;
    t.rows = rows;
    t.cols = cols;
    if (dt == DT_F32) {
        t.data = w;
        keep[(*n_keep)++] = w;
        return t;
    }
    if (dt == DT_BF16) {
        uint16_t *h = (uint16_t *)malloc(2 * n);
        for (size_t i = 0; i < n; i++) h[i] = f32_to_bf16(w[i]);
        t.data = h;
        keep[(*n_keep)++] = h;
    } else {
        int nbr = (rows + 127) / 128, nbc = (cols + 127) / 128;
        uint8_t *q = (uint8_t *)malloc(n);
        float *s = (float *)malloc(sizeof(float) * nbr * nbc);
        fp8_quant_block(q, s, w, rows, cols, 128, 128, FP8_SCALE_F32);
        t.data = q;
        t.scale_inv = s;
        t.block_r = t.block_c = 128;
        keep[(*n_keep)++] = q;
        keep[(*n_keep)++] = s;
    }
    free(w);
    return t;
}

static void test_matmul(void) {
    const DType dts[] = {DT_F32, DT_BF16, DT_F8_E4M3};
    const int shapes[][2] = {{300, 256}, {77, 203}, {1000, 2048}}, ns[] = {1, 3, 8, 9, 40};
    for (int di = 0; di < 3; di++)
        for (int si = 0; si < 3; si++) {
            void *keep[4];
            int n_keep = 0, rows = shapes[si][0], cols = shapes[si][1];
            Tensor W = weight(dts[di], rows, cols, keep, &n_keep);
            for (int ni = 0; ni < 5; ni++) {
                int n = ns[ni];
                float *x = randn((size_t)n * cols, 1.0f), *ref = nans((size_t)n * rows), *got = nans((size_t)n * rows);
                Error e;
                matmul(ref, x, &W, n, NULL);
                char name[160];
                snprintf(name, sizeof name, "matmul %s [%d, %d] n=%d (%s)", dtype_name(W.dtype), rows, cols, n,
                         n <= SMALL_BATCH ? "GEMV" : "widen + cuBLAS");
                if (matmul_cuda_host(got, x, &W, n, &e)) { printf("NOT OK %s: %s\n", name, e.msg); failures++; }
                else check(name, rel_err(got, ref, (size_t)n * rows));
                free(x); free(ref); free(got);
            }
            for (int k = 0; k < n_keep; k++) free(keep[k]);
        }
}

static void test_moe(void) {
    struct { const char *name; int d, inter, E, K, n_group, topk_group, shared; ScoringFunc sc; TopkMethod m; int norm; float scale; } cases[] = {
        {"V3-like (sigmoid, bias, 4 groups keep 2)", 256, 160, 16, 4, 4, 2, 1, SCORE_SIGMOID, TOPK_NOAUX_TC, 1, 2.5f},
        {"V2-Lite-like (softmax, greedy)", 512, 176, 64, 6, 1, 1, 2, SCORE_SOFTMAX, TOPK_GREEDY, 0, 1.0f},
    };
    const DType dts[] = {DT_BF16, DT_F8_E4M3};
    const int Ts[] = {1, 2, 8, 9, 33};
    for (int ci = 0; ci < 2; ci++)
        for (int di = 0; di < 2; di++) {
            int d = cases[ci].d, inter = cases[ci].inter, E = cases[ci].E;
            void **keep = (void **)malloc(sizeof(void *) * (size_t)(E + 2) * 6 + 8);
            int n_keep = 0;
            Moe moe;
            memset(&moe, 0, sizeof moe);
            moe.gate = MoeGate{E, cases[ci].K, cases[ci].n_group, cases[ci].topk_group, cases[ci].sc, cases[ci].m,
                               cases[ci].norm, cases[ci].scale};
            moe.router = weight(DT_F32, E, d, keep, &n_keep);
            float *bias = NULL;
            if (cases[ci].m == TOPK_NOAUX_TC) {
                bias = randn(E, 0.05f);
                moe.bias = bias;
            }
            Ffn *experts = (Ffn *)calloc(E, sizeof(Ffn));
            for (int x = 0; x < E; x++)
                experts[x] = Ffn{weight(dts[di], inter, d, keep, &n_keep), weight(dts[di], inter, d, keep, &n_keep),
                                 weight(dts[di], d, inter, keep, &n_keep)};
            moe.experts = experts;
            int sw = cases[ci].shared * inter;
            moe.shared = Ffn{weight(dts[di], sw, d, keep, &n_keep), weight(dts[di], sw, d, keep, &n_keep),
                             weight(dts[di], d, sw, keep, &n_keep)};
            for (int ti = 0; ti < 5; ti++) {
                int T = Ts[ti];
                float *x = randn((size_t)T * d, 1.0f), *ref = nans((size_t)T * d), *got = nans((size_t)T * d);
                Error e;
                moe_forward(ref, x, T, &moe, NULL);
                char name[200];
                snprintf(name, sizeof name, "moe_forward %s, %s experts, T=%d (%s)", cases[ci].name, dtype_name(dts[di]), T,
                         T <= SMALL_BATCH ? "decode kernels" : "grouped by expert");
                if (moe_forward_cuda_host(got, x, T, &moe, &e)) { printf("NOT OK %s: %s\n", name, e.msg); failures++; }
                else check(name, rel_err(got, ref, (size_t)T * d));
                free(x); free(ref); free(got);
            }
            for (int k = 0; k < n_keep; k++) free(keep[k]);
            free(keep); free(experts); free(bias);
        }
}

/* mla_attend_absorbed against the device's split-KV decode (mla.cu): V2-Lite's and V3's head counts
 * and odd sizes (a latent not a multiple of 8: the scalar loops; heads not a multiple of 16: a
 * partial head group), cache lengths inside one tile, on tile and chunk boundaries and over 64
 * chunks, T = 1, 2 and 8 (causal within the call), kv_b in F32, BF16 and FP8. Tol 1e-4, the absorbed
 * twin's (notes/golden.md): online softmax and chunk merging reorder its sums. */
static void test_attn_decode(void) {
    struct { const char *name; int n_h, d_c, d_R, nope, v; } shapes[] = {
        {"V2-Lite heads", 16, 512, 64, 128, 128}, {"V3 heads", 128, 512, 64, 128, 128}, {"odd sizes", 19, 70, 6, 20, 36},
    };
    const int pos0s[] = {0, 15, 16, 300, 1039, 4095}, Ts[] = {1, 2, 8};
    const DType dts[] = {DT_F32, DT_BF16, DT_F8_E4M3};
    for (int si = 0; si < 3; si++)
        for (int di = 0; di < 3; di++)
            for (int pi = 0; pi < 6; pi++)
                for (int ti = 0; ti < 3; ti++) {
                    int pos0 = pos0s[pi], T = Ts[ti];
                    if (si == 1 && (pi % 2 || ti == 1)) continue; /* V3's 128 heads: a few lengths are enough */
                    if (di != 2 && pos0 > 300 && T > 1) continue;
                    MlaDims m = {shapes[si].n_h, 0, shapes[si].d_c, shapes[si].nope, shapes[si].d_R, shapes[si].v, 1e-6f, 0.0f};
                    m.softmax_scale = 1.0f / sqrtf((float)(m.nope + m.rope));
                    int L = pos0 + T, width = m.kv_lora_rank + m.rope, qk = m.nope + m.rope;
                    void *keep[4];
                    int n_keep = 0;
                    MlaWeights w;
                    memset(&w, 0, sizeof w);
                    w.kv_b = weight(dts[di], m.n_heads * (m.nope + m.v), m.kv_lora_rank, keep, &n_keep);
                    size_t n_q = (size_t)T * m.n_heads * qk, n_out = (size_t)T * m.n_heads * m.v;
                    float *q = randn(n_q, 1.0f), *cache = randn((size_t)L * width, 1.0f);
                    float *ref = nans(n_out), *got = nans(n_out);
                    Error e;
                    char name[160];
                    snprintf(name, sizeof name, "mla_attend_absorbed decode, %s, kv_b %s, pos0 %d, T %d", shapes[si].name,
                             dtype_name(dts[di]), pos0, T);
                    if (mla_attend_absorbed(ref, q, cache, T, pos0, &w, &m, &e)) { printf("NOT OK %s: C: %s\n", name, e.msg); failures++; }
                    else if (mla_attend_absorbed_decode_cuda_host(got, q, cache, T, pos0, &w, &m, &e)) { printf("NOT OK %s: %s\n", name, e.msg); failures++; }
                    else {
                        double err = rel_err(got, ref, n_out);
                        int ok = err <= 1e-4;
                        printf("%s %s: max rel err %.3g (tol 1e-4)\n", ok ? "OK    " : "NOT OK", name, err);
                        failures += !ok;
                    }
                    free(q); free(cache); free(ref); free(got);
                    for (int k = 0; k < n_keep; k++) free(keep[k]);
                }
}

int main(void) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("test_forward_twins: no CUDA device; nothing tested\n");
        return 1;
    }
    rng_seed(&rng, 4321);
    test_matmul();
    test_moe();
    test_attn_decode();
    printf(failures ? "%d NOT OK\n" : "all OK\n", failures);
    return failures ? 1 : 0;
}
