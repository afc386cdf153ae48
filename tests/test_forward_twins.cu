/* tests/test_forward_twins.cu - the device forward's own twins (model.cu) against their C functions,
 * one by one, as test_kernels.cu checks kernels.cu's:
 *   matmul       F32, BF16 and FP8 E4M3 (128 x 128 block scales) weights; columns a multiple of 8
 *                (the GEMV's vector loads) and not (its scalar loop); n = 1, 3, 8 (GEMV) and 9, 40
 *                (widen + cuBLAS in tiles of a third of the rows); FP8 at n = 1 and >= 1024 columns
 *                through gemv_xreg.cuh (one to four chunks a warp, a partial last chunk)
 *   mla_attend_absorbed  the split-KV decode kernels (mla.cu), tol 1e-4 (test_attn_decode)
 *   moe_forward  a V3-like gate (sigmoid, bias, groups), a V2-Lite-like one (softmax, greedy) and a
 *                wide one (1024 x 1408: gemv_xreg.cuh at T = 1), BF16 and FP8 experts, shared experts;
 *                T = 1, 2, 8 (the decode kernels) and 9, 33 (grouped by expert)
 *   embed_rows_kernel  the embedding gather against tensor_rows_f32: F32, BF16, F16 and FP8 E4M3
 *                (128 x 128 scales) tables, ids 0 and V - 1 and repeats, rows of stride d and 2d (the
 *                MTP's [e ; h] input: the other half must stay untouched). Exact: the widening is
 *                exact and FP8's scale is one multiplication on both sides
 *   mla_attend_naive_cuda  against mla_attend_naive: V3 / V2-Lite head dims (d_c 512, nope 128,
 *                rope 64, v 128) and odd ones; decode (T = 1) and prefill chunks from position 0
 *                and past it
 *   argmax_kernel  against argmax, exact: random logits of V3's and V2-Lite's vocabulary sizes, ties
 *                (the lower index wins, also across threads, warps and blocks), infinities, and NaN as C
 *                defines it (argmax's `x[i] > x[best]`: a NaN at index 0 is the answer, any other
 *                NaN is passed over)
 * Random inputs (ops.c's rng_normal, fixed seed), every device buffer and the host output poisoned
 * with NaN first; max|gpu - cpu| / max|cpu| <= 1e-5 (FP32 sums in another order; moe_forward's
 * expert choice must agree, else the error is of order 1), or exact where said. Exit status 1 when
 * any line is NOT OK.
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
#include "tests/twin_dev.cuh"

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
    /* FP8 at n = 1 goes through gemv_xreg.cuh: 256 and 2048 columns one chunk a warp (1 and 4 warps),
     * 1408 a partial last chunk, 10944 two chunks a warp, 24576 three, 32768 four (16 warps) */
    const int shapes[][2] = {{300, 256}, {77, 203}, {1000, 2048}, {129, 1408}, {130, 10944}, {40, 24576}, {24, 32768}},
              ns[] = {1, 3, 8, 9, 40};
    for (int di = 0; di < 3; di++)
        for (int si = 0; si < 7; si++) {
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
        /* wide enough for gemv_xreg.cuh (>= 1024 columns): FP8 experts' up and down and the shared experts at
         * T = 1 through it, a partial last chunk (1408 = 2.75 chunks of 512) */
        {"wide (softmax, greedy, 1024 x 1408)", 1024, 1408, 8, 2, 1, 1, 1, SCORE_SOFTMAX, TOPK_GREEDY, 1, 1.0f},
    };
    const DType dts[] = {DT_BF16, DT_F8_E4M3};
    const int Ts[] = {1, 2, 8, 9, 33};
    for (int ci = 0; ci < 3; ci++)
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

/* Exact checks: how many of n elements differ in their bits. */
static void check_exact(const char *name, size_t differ, size_t n) {
    printf("%s %s: %zu of %zu differ (tol exact)\n", differ == 0 ? "OK    " : "NOT OK", name, differ, n);
    failures += differ != 0;
}

/* A table [rows, cols] of random finite F16 codes (every exponent but the all-ones one: subnormals
 * included), for the gather's F16 path; ops.h has no FP32 -> F16 rounding to draw it through. */
static Tensor f16_table(int rows, int cols, void **keep, int *n_keep) {
    size_t n = (size_t)rows * cols;
    uint16_t *h = (uint16_t *)malloc(2 * n);
    for (size_t i = 0; i < n; i++) {
        uint16_t b = (uint16_t)rng_next(&rng);
        h[i] = (b & 0x7c00) == 0x7c00 ? (uint16_t)(b ^ 0x4000) : b;
    }
    keep[(*n_keep)++] = h;
    Tensor t;
    memset(&t, 0, sizeof t);
    t.data = h;
    t.dtype = DT_F16;
    t.rows = rows;
    t.cols = cols;
    return t;
}

/* embed_rows_kernel (model.cu): x [T, stride] rows t = W[tokens[t]] widened; tensor_rows_f32 is C's. */
static void test_embed(void) {
    const DType dts[] = {DT_F32, DT_BF16, DT_F16, DT_F8_E4M3};
    const int shapes[][2] = {{300, 200}, {1000, 2048}}; /* FP8: partial 128-blocks in both dims, and whole */
    for (int di = 0; di < 4; di++)
        for (int si = 0; si < 2; si++)
            for (int wide = 1; wide <= 2; wide++) {
                void *keep[4];
                int n_keep = 0, V = shapes[si][0], d = shapes[si][1], stride = wide * d;
                Tensor W = dts[di] == DT_F16 ? f16_table(V, d, keep, &n_keep) : weight(dts[di], V, d, keep, &n_keep);
                enum { T = 9 };
                int tok[T] = {0, V - 1, 17, 17, 0, V / 2, 0, 0, 0};
                for (int t = 6; t < T; t++) tok[t] = (int)(rng_next(&rng) % (uint64_t)V);
                float *ref = nans((size_t)T * stride), *got = nans((size_t)T * stride);
                for (int t = 0; t < T; t++) tensor_rows_f32(ref + (size_t)t * stride, &W, tok[t], 1);
                Dev *dv = twin_new();
                DevTensor dw = twin_tensor(dv, &W);
                int *dtok = (int *)twin_alloc(dv, tok, sizeof tok);
                float *dx = twin_nan(dv, (size_t)T * stride);
                embed_rows_kernel<<<T, THREADS>>>(dx, stride, dw, dtok);
                Error e;
                char name[160];
                snprintf(name, sizeof name, "embed_rows_kernel %s [%d, %d], %d ids, row stride %s", dtype_name(W.dtype), V, d,
                         (int)T, wide == 1 ? "d" : "2d (the MTP's input)");
                if (twin_get(dv, got, dx, sizeof(float) * (size_t)T * stride, &e)) {
                    printf("NOT OK %s: %s\n", name, e.msg);
                    failures++;
                } else {
                    size_t differ = 0; /* the gathered halves bit for bit; the rest must still be the poison */
                    for (size_t i = 0; i < (size_t)T * stride; i++)
                        differ += (int)(i % stride) < d ? memcmp(&got[i], &ref[i], 4) != 0 : !isnan(got[i]);
                    check_exact(name, differ, (size_t)T * stride);
                }
                twin_free(dv);
                free(ref); free(got);
                for (int k = 0; k < n_keep; k++) free(keep[k]);
            }
}

/* mla_attend_naive_cuda (mla.cu) on a Dev holding q [T, n_h (nope + rope)] in d->q: out in d->attn
 * [T, n_h v], scratch d->widen [pos0 + T, nope + v] and d->scores [T, pos0 + T]. */
static void test_mla_naive(void) {
    struct { const char *name; int n_h, d_c, nope, rope, v, T, pos0; } cases[] = {
        {"V3 / V2-Lite head dims, 16 heads, decode", 16, 512, 128, 64, 128, 1, 63},
        {"V3 / V2-Lite head dims, 16 heads, prefill from 0", 16, 512, 128, 64, 128, 6, 0},
        {"V3 / V2-Lite head dims, 16 heads, prefill past 40", 16, 512, 128, 64, 128, 9, 40},
        {"odd dims (3 heads, d_c 96, nope 24, rope 16, v 40)", 3, 96, 24, 16, 40, 5, 11},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        int nh = cases[ci].n_h, dc = cases[ci].d_c, nope = cases[ci].nope, dR = cases[ci].rope, v = cases[ci].v;
        int T = cases[ci].T, pos0 = cases[ci].pos0, Lk = pos0 + T, W = dc + dR, qk = nope + dR, nv = nope + v;
        MlaDims md;
        memset(&md, 0, sizeof md);
        md.n_heads = nh;
        md.kv_lora_rank = dc;
        md.nope = nope;
        md.rope = dR;
        md.v = v;
        md.eps = 1e-6f;
        md.softmax_scale = 1.0f / sqrtf((float)qk);
        void *keep[2];
        int n_keep = 0;
        MlaWeights w;
        memset(&w, 0, sizeof w);
        w.kv_b = weight(DT_F32, nh * nv, dc, keep, &n_keep);
        float *q = randn((size_t)T * nh * qk, 1.0f), *cache = randn((size_t)Lk * W, 1.0f);
        float *ref = nans((size_t)T * nh * v), *got = nans((size_t)T * nh * v);
        Error e;
        char name[200];
        snprintf(name, sizeof name, "mla_attend_naive_cuda %s: T=%d at pos %d", cases[ci].name, T, pos0);
        if (mla_attend_naive(ref, q, cache, T, pos0, &w, &md, &e)) {
            printf("NOT OK %s: the C function failed: %s\n", name, e.msg);
            failures++;
        } else {
            Dev *dv = twin_new();
            DevLayer L;
            memset(&L, 0, sizeof L);
            L.kv_b_f32 = twin_up(dv, (const float *)w.kv_b.data, (size_t)nh * nv * dc);
            dv->q = twin_up(dv, q, (size_t)T * nh * qk);
            dv->widen_n = (size_t)Lk * nv;
            dv->widen = twin_nan(dv, dv->widen_n);
            dv->scores = twin_nan(dv, (size_t)T * Lk);
            dv->attn = twin_nan(dv, (size_t)T * nh * v);
            const float *dcache = twin_up(dv, cache, (size_t)Lk * W);
            mla_attend_naive_cuda(dv, dcache, L, &md, T, pos0);
            if (twin_get(dv, got, dv->attn, sizeof(float) * (size_t)T * nh * v, &e)) {
                printf("NOT OK %s: %s\n", name, e.msg);
                failures++;
            } else check(name, rel_err(got, ref, (size_t)T * nh * v));
            twin_free(dv);
        }
        free(q); free(cache); free(ref); free(got);
        for (int k = 0; k < n_keep; k++) free(keep[k]);
    }
}

/* argmax_kernel (ops.cu) on x [n], launched as the forward does (argmax_cuda_dev). */
static void argmax_case(Dev *dv, const char *what, const float *x, int n) {
    const float *dx = twin_up(dv, x, (size_t)n);
    int *dout = (int *)twin_alloc(dv, NULL, sizeof(int)); /* -1 until written */
    static const char zero[ARGMAX_SCRATCH] = {0};
    void *scratch = twin_alloc(dv, zero, ARGMAX_SCRATCH);
    argmax_cuda_dev(dout, dx, n, scratch);
    argmax_cuda_dev(dout, dx, n, scratch); /* twice: the first call leaves the scratch ready for the next */
    int want = argmax(x, n), got = -1;
    Error e;
    if (twin_get(dv, &got, dout, sizeof(int), &e)) {
        printf("NOT OK argmax_kernel n=%d, %s: %s\n", n, what, e.msg);
        failures++;
        return;
    }
    printf("%s argmax_kernel n=%d, %s: C %d, cuda %d (tol exact)\n", got == want ? "OK    " : "NOT OK", n, what, want, got);
    failures += got != want;
}

static void test_argmax(void) {
    Dev *dv = twin_new();
    const int ns[] = {1, 5, 33, 1000, 1025, 4097, 102400, 129280}; /* 102400: V2-Lite's vocabulary, 129280: V3's */
    for (int i = 0; i < 8; i++) {
        int n = ns[i];
        float *x = randn((size_t)n, 3.0f);
        argmax_case(dv, "random normal", x, n);
        for (int k = 0; k < n; k++) x[k] = (float)(rng_next(&rng) % 3); /* 0, 1, 2: ties everywhere */
        argmax_case(dv, "values 0, 1, 2 (many ties)", x, n);
        free(x);
    }
    /* n = 5000 (about five elements per thread of the 1024), zeros but for up to four entries */
    enum { N = 5000 };
    struct { const char *what; int n_set, at[4]; float val[4]; } cases[] = {
        {"all zero", 0, {0}, {0}},
        {"a tie within one thread (5 and 1029)", 2, {1029, 5}, {3, 3}},
        {"a tie within one warp (33 and 40)", 2, {40, 33}, {3, 3}},
        {"a tie across warps (4999 and 700)", 2, {4999, 700}, {3, 3}},
        {"a tie with the last index (1 and 4999)", 2, {4999, 1}, {7, 7}},
        {"+inf at 3001, -inf at 0", 2, {3001, 0}, {INFINITY, -INFINITY}},
        {"NaN at 0 (C: index 0)", 2, {0, 9}, {NAN, 5}},
        {"NaN at 2000, max at 7", 2, {2000, 7}, {NAN, 5}},
        {"NaN at 5 (a thread's first element), max at 1029 (the same thread's second)", 2, {5, 1029}, {NAN, 5}},
        {"NaN at 32 (lane 0 of warp 1), max at 33", 2, {32, 33}, {NAN, 5}},
        {"NaN at 1 and 4000, a tie at 3000 and 2", 4, {1, 4000, 3000, 2}, {NAN, NAN, 4, 4}},
    };
    float *x = (float *)malloc(sizeof(float) * N);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (int k = 0; k < N; k++) x[k] = 0.0f;
        for (int j = 0; j < cases[c].n_set; j++) x[cases[c].at[j]] = cases[c].val[j];
        argmax_case(dv, cases[c].what, x, N);
    }
    for (int k = 0; k < N; k++) x[k] = -INFINITY;
    argmax_case(dv, "all -inf", x, N);
    for (int k = 0; k < N; k++) x[k] = NAN;
    argmax_case(dv, "all NaN", x, N);
    free(x);
    twin_free(dv);
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
    test_embed();
    test_mla_naive();
    test_argmax();
    printf(failures ? "%d NOT OK\n" : "all OK\n", failures);
    return failures ? 1 : 0;
}
