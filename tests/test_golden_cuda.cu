/* tests/test_golden_cuda.cu - a golden file of `run golden` (notes/golden.md) read by the CUDA side:
 * each recorded function's CUDA twin runs on the file's inputs and its outputs are held to the file's
 * own tolerance (metadata tolerance.<function>: max|gpu - want| / max|want| per F32 output; 0 means
 * bit for bit), the integer outputs (topk_idx) and FP8 codes always exactly. The twins:
 *   rmsnorm                 rmsnorm_cuda
 *   rope_table              cos, sin: rope_rotate_cuda of unit pairs at every position, from the
 *                           file's inv_freq and attn_factor (inv_freq, attn_factor, softmax_mscale
 *                           themselves are host code: rope_inv_freq and rope_softmax_mscale, whose
 *                           values the device forward uploads; "no twin")
 *   rope                    rope_rotate_cuda, token by token at the file's positions
 *   mla_query, mla_latent   mla_query_cuda, mla_latent_cuda (mla.cu), on a bare Dev (twin_dev.cuh)
 *   mla_naive               mla_attend_naive_cuda (mla.cu), sequence by sequence
 *   mla_absorbed, mla_decode  mla_attend_absorbed_cuda, sequence by sequence; for T <= 8 also the
 *                             forward's split-KV decode kernels (mla_attend_absorbed_decode_cuda_host)
 *   moe_gate                moe_gate_cuda: topk_idx exactly, topk_weight; scores: no twin (the
 *                           kernel keeps them inside, as moe_gate does)
 *   ffn_swiglu              ffn_swiglu_cuda (moe.cu)
 *   moe                     out: moe_forward_cuda_host (model.cu); logits: matmul_cuda_host with the
 *                           router; topk_idx, topk_weight: moe_gate_cuda on the file's logits (each
 *                           step on its recorded inputs, so that the indices can be held exactly)
 *   fp8_dequant_block       fp8_dequant_block_cuda, exact
 *   fp8_quant_act           fp8_quant_act_cuda, codes and scales exact
 *   fp8_dequant_act         fp8_dequant_block_cuda with 1 x 128 blocks (fp8.c's fp8_dequant_act is
 *                           fp8_dequant_block with those blocks), exact
 *   fp8_gemm                x_q, x_scale: fp8_quant_act_cuda, exact; y_fp32, y_acc14_trunc,
 *                           y_acc14_nearest: fp8_gemm_cuda on the file's codes and scales, in each
 *                           accumulation mode; y_unquantized: matmul_cuda_host (its own tolerance,
 *                           tolerance.fp8_gemm.y_unquantized); w_q, w_scale_inv: no twin
 * No twin, listed as such (not failures): fp8_quant_block (kernels.cu has no block quantizer of
 * weights), mla_kv_rows (the cache formats' encoders are C only: the device forward's cache is F32),
 * mla_paged_decode (its twin, mla_decode.cu, is its own build: build/mla_decode/test_mla_decode),
 * decoder_layer and model (the device forward's layer and whole model are static in model.cu;
 * build/cuda/test_device holds them to the C forward on every fixture instead).
 * Every output a function lists in the metadata (outputs.<function>) must be checked or declared
 * "no twin" here, else it is NOT OK: a new golden output cannot be skipped silently.
 *
 *   build/cuda/test_golden_cuda G.safetensors...   (make cuda-test writes them with build/cuda/run golden)
 * One line per output: OK / NOT OK / "no twin"; exit status 1 when any is NOT OK, 2 when a file
 * cannot be read as a golden file.
 */
#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "config.h"
#include "device.h"
#include "fp8.h"
#include "kernels.h"
#include "safetensors.h"
}
#include "tests/rel_err.h"
#include "tests/twin_dev.cuh"

static int n_ok, n_bad, n_none;

/* ---- the file and the function being checked ------------------------------------------------------ */

typedef struct {
    StFile f;
    cJSON *meta;
    Config cfg;
    const char *fn;    /* the function being checked */
    double tol;        /* its tolerance.<fn> */
    const char *done[64]; /* its outputs checked or declared no twin */
    int n_done;
    void *tmp[64];     /* host copies of its tensors, freed after it */
    int n_tmp;
} Golden;

static void done(Golden *g, const char *arg) {
    if (g->n_done < 64) g->done[g->n_done++] = arg;
}

static void line_ok(Golden *g, const char *arg, int ok, const char *detail) {
    printf("%s %s.%s: %s\n", ok ? "OK    " : "NOT OK", g->fn, arg, detail);
    if (ok) n_ok++;
    else n_bad++;
    done(g, arg);
}

static void no_twin(Golden *g, const char *arg, const char *why) {
    printf("no twin %s.%s: %s\n", g->fn, arg, why);
    n_none++;
    done(g, arg);
}

static void *g_alloc(Golden *g, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p || g->n_tmp == 64) {
        fprintf(stderr, "test_golden_cuda: out of memory\n");
        exit(2);
    }
    return g->tmp[g->n_tmp++] = p;
}

/* <fn>.<arg> of dtype dt, copied out of the mapping (which may be unaligned); shape in *t. NULL
 * (and a NOT OK line) when it is absent or of another dtype. */
static void *get(Golden *g, const char *arg, DType dt, const StTensor **t) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", g->fn, arg);
    const StTensor *s = st_find(&g->f, name);
    if (!s || s->dtype != dt) {
        printf("NOT OK %s: %s in the file (expected %s)\n", name, s ? "of another dtype" : "missing", dtype_name(dt));
        n_bad++;
        return NULL;
    }
    if (t) *t = s;
    void *p = g_alloc(g, s->nbytes);
    memcpy(p, s->data, s->nbytes);
    return p;
}
static float *getf(Golden *g, const char *arg, const StTensor **t) { return (float *)get(g, arg, DT_F32, t); }
static int has(Golden *g, const char *arg) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", g->fn, arg);
    return st_find(&g->f, name) != NULL;
}

/* got [n] (the twin's) against the file's F32 output arg, within tol (tol 0: bit for bit). */
static void compare_f32(Golden *g, const char *arg, const float *got, size_t n, double tol) {
    const StTensor *t;
    const float *want = getf(g, arg, &t);
    if (!want) return done(g, arg);
    char detail[160];
    if ((size_t)t->numel != n) {
        snprintf(detail, sizeof detail, "%zu elements in the file, the twin made %zu", (size_t)t->numel, n);
        return line_ok(g, arg, 0, detail);
    }
    if (tol == 0) {
        size_t differ = 0;
        for (size_t i = 0; i < n; i++) differ += memcmp(&got[i], &want[i], 4) != 0;
        snprintf(detail, sizeof detail, "%zu of %zu differ (tol exact)", differ, n);
        return line_ok(g, arg, differ == 0, detail);
    }
    double err = rel_err(got, want, n);
    snprintf(detail, sizeof detail, "rel err %.3g (tol %g)", err, tol);
    line_ok(g, arg, err <= tol, detail);
}

/* got [n] elements of size es (I32 indices, FP8 codes) against the file's, exactly. */
static void compare_exact(Golden *g, const char *arg, DType dt, const void *got, size_t n) {
    const StTensor *t;
    const void *want = get(g, arg, dt, &t);
    if (!want) return done(g, arg);
    size_t es = dtype_size(dt), differ = 0;
    char detail[160];
    if ((size_t)t->numel != n) {
        snprintf(detail, sizeof detail, "%zu elements in the file, the twin made %zu", (size_t)t->numel, n);
        return line_ok(g, arg, 0, detail);
    }
    for (size_t i = 0; i < n; i++) differ += memcmp((const char *)got + i * es, (const char *)want + i * es, es) != 0;
    snprintf(detail, sizeof detail, "%zu of %zu differ (tol exact)", differ, n);
    line_ok(g, arg, differ == 0, detail);
}

static float *nan_host(Golden *g, size_t n) {
    float *x = (float *)g_alloc(g, sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}
static int *neg_host(Golden *g, size_t n) {
    int *x = (int *)g_alloc(g, sizeof(int) * n);
    for (size_t i = 0; i < n; i++) x[i] = -1;
    return x;
}
static uint8_t *ff_host(Golden *g, size_t n) {
    uint8_t *x = (uint8_t *)g_alloc(g, n);
    memset(x, 0xFF, n);
    return x;
}

static Tensor f32_tensor(const float *w, int rows, int cols) {
    Tensor t;
    memset(&t, 0, sizeof t);
    t.data = w;
    t.dtype = DT_F32;
    t.rows = rows;
    t.cols = cols;
    return t;
}

/* A device step's failure (CUDA, cuBLAS): one NOT OK line for the output it was to make. */
static void step_failed(Golden *g, const char *arg, const Error *e) { line_ok(g, arg, 0, e->msg); }

/* ---- the functions ------------------------------------------------------------------------------- */

static void t_rmsnorm(Golden *g) {
    const StTensor *tx;
    float *x = getf(g, "x", &tx), *w = getf(g, "w", NULL), *eps = getf(g, "eps", NULL);
    if (!x || !w || !eps) return;
    int d = (int)tx->shape[tx->ndim - 1], rows = (int)(tx->numel / d);
    float *out = nan_host(g, tx->numel);
    rmsnorm_cuda(out, x, w, rows, d, eps[0]);
    compare_f32(g, "out", out, tx->numel, g->tol);
}

/* cos/sin [L, d_R/2] as golden_fns.c reads them off: the unit pairs (1, 0) rotated to position p. */
static void t_rope_table(Golden *g) {
    const StTensor *tc;
    float *inv = getf(g, "inv_freq", NULL), *af = getf(g, "attn_factor", NULL), *cs = getf(g, "cos", &tc);
    if (!inv || !af || !cs) return;
    int L = (int)tc->shape[0], half = (int)tc->shape[1], dR = 2 * half, il = g->cfg.rope.interleaved;
    float *v = (float *)g_alloc(g, sizeof(float) * dR), *c = nan_host(g, (size_t)L * half), *s = nan_host(g, (size_t)L * half);
    for (int p = 0; p < L; p++) {
        for (int j = 0; j < half; j++) {
            v[il ? 2 * j : j] = 1.0f;
            v[il ? 2 * j + 1 : j + half] = 0.0f;
        }
        rope_rotate_cuda(v, 1, dR, dR, p, inv, af[0], il);
        for (int j = 0; j < half; j++) {
            c[(size_t)p * half + j] = v[il ? 2 * j : j];
            s[(size_t)p * half + j] = v[il ? 2 * j + 1 : j + half];
        }
    }
    compare_f32(g, "cos", c, (size_t)L * half, g->tol);
    compare_f32(g, "sin", s, (size_t)L * half, g->tol);
    const char *host = "host code (rope.c), computed once; the device forward uploads the value";
    no_twin(g, "inv_freq", host);
    no_twin(g, "attn_factor", host);
    no_twin(g, "softmax_mscale", host);
}

static void t_rope(Golden *g) {
    const StTensor *tx;
    float *x = getf(g, "x", &tx), *inv = getf(g, "inv_freq", NULL), *af = getf(g, "attn_factor", NULL);
    int *pos = (int *)get(g, "positions", DT_I32, NULL), *il = (int *)get(g, "interleaved", DT_I32, NULL);
    if (!x || !inv || !af || !pos || !il) return;
    int B = (int)tx->shape[0], T = (int)tx->shape[1], nh = (int)tx->shape[2], dR = (int)tx->shape[3];
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) rope_rotate_cuda(x + ((size_t)b * T + t) * nh * dR, nh, dR, dR, pos[t], inv, af[0], il[0]);
    compare_f32(g, "out", x, tx->numel, g->tol);
}

static void t_mla_query(Golden *g) {
    const StTensor *tx;
    float *x = getf(g, "x", &tx), *eps = getf(g, "eps", NULL);
    if (!x || !eps) return;
    MlaDims md = model_mla_dims(&g->cfg);
    md.eps = eps[0];
    int rows = (int)(tx->numel / tx->shape[2]), d = (int)tx->shape[2], ql = md.q_lora_rank, nq = md.n_heads * (md.nope + md.rope);
    Dev *dv = twin_new();
    DevLayer L;
    memset(&L, 0, sizeof L);
    if (ql) {
        float *qa = getf(g, "q_a_proj", NULL), *qn = getf(g, "q_a_layernorm", NULL), *qb = getf(g, "q_b_proj", NULL);
        if (!qa || !qn || !qb) return twin_free(dv);
        L.q_a = twin_f32(dv, qa, ql, d);
        L.q_a_norm = twin_up(dv, qn, ql);
        L.q_b = twin_f32(dv, qb, nq, ql);
    } else {
        float *qp = getf(g, "q_proj", NULL);
        if (!qp) return twin_free(dv);
        L.q = twin_f32(dv, qp, nq, d);
    }
    dv->h = twin_up(dv, x, tx->numel);
    dv->q = twin_nan(dv, (size_t)rows * nq);
    dv->q_scratch = twin_nan(dv, (size_t)rows * (ql ? ql : 1));
    mla_query_cuda(dv, L, &md, rows, NULL, 0.0f);
    float *q = nan_host(g, (size_t)rows * nq), *cq = nan_host(g, (size_t)rows * (ql ? ql : 1));
    Error e;
    if (twin_get(dv, q, dv->q, sizeof(float) * rows * nq, &e) ||
        (ql && twin_get(dv, cq, dv->q_scratch, sizeof(float) * rows * ql, &e)))
        step_failed(g, "q", &e);
    else {
        compare_f32(g, "q", q, (size_t)rows * nq, g->tol);
        if (ql) compare_f32(g, "c_q", cq, (size_t)rows * ql, g->tol);
    }
    twin_free(dv);
}

static void t_mla_latent(Golden *g) {
    const StTensor *tx;
    float *x = getf(g, "x", &tx), *eps = getf(g, "eps", NULL), *kva = getf(g, "kv_a_proj_with_mqa", NULL);
    float *kvn = getf(g, "kv_a_layernorm", NULL);
    if (!x || !eps || !kva || !kvn) return;
    MlaDims md = model_mla_dims(&g->cfg);
    md.eps = eps[0];
    int d = (int)tx->shape[2], rows = (int)(tx->numel / d), W = mla_cache_width(&md);
    Dev *dv = twin_new();
    DevLayer L;
    memset(&L, 0, sizeof L);
    L.kv_a = twin_f32(dv, kva, W, d);
    L.kv_a_norm = twin_up(dv, kvn, md.kv_lora_rank);
    dv->h = twin_up(dv, x, tx->numel);
    float *drows = twin_nan(dv, (size_t)rows * W), *lat = nan_host(g, (size_t)rows * W);
    mla_latent_cuda(dv, drows, L, &md, rows);
    Error e;
    if (twin_get(dv, lat, drows, sizeof(float) * rows * W, &e)) step_failed(g, "latent", &e);
    else compare_f32(g, "latent", lat, (size_t)rows * W, g->tol);
    twin_free(dv);
}

/* mla_naive, mla_absorbed, mla_decode: T queries at pos0 .. of each of B sequences over its cache. */
static void t_attend(Golden *g, int naive) {
    const StTensor *tn, *tc;
    float *q_nope = getf(g, "q_nope", &tn), *q_pe = getf(g, "q_pe", NULL), *cache = getf(g, "kv_cache", &tc);
    float *kv_b = getf(g, "kv_b_proj", NULL), *scale = getf(g, "softmax_scale", NULL);
    int *pos0p = (int *)get(g, "pos0", DT_I32, NULL);
    if (!q_nope || !q_pe || !cache || !kv_b || !scale || !pos0p) return;
    MlaDims md = model_mla_dims(&g->cfg);
    md.softmax_scale = scale[0];
    int B = (int)tn->shape[0], T = (int)tn->shape[1], nh = md.n_heads, nope = md.nope, dR = md.rope, v = md.v;
    int dc = md.kv_lora_rank, W = dc + dR, qk = nope + dR, nv = nope + v, L = (int)tc->shape[1], pos0 = pos0p[0];
    size_t n_out = (size_t)B * T * nh * v;
    int split = !naive && T <= SMALL_BATCH; /* the device forward's decode path too (mla.cu's split-KV kernels) */
    float *out = nan_host(g, n_out), *out_split = split ? nan_host(g, n_out) : NULL, *q = (float *)g_alloc(g, sizeof(float) * (size_t)T * nh * qk);
    Dev *dv = naive ? twin_new() : NULL;
    DevLayer DL;
    memset(&DL, 0, sizeof DL);
    float *dcache = NULL;
    if (naive) {
        DL.kv_b_f32 = twin_up(dv, kv_b, (size_t)nh * nv * dc);
        dv->q = twin_nan(dv, (size_t)T * nh * qk);
        dv->widen_n = (size_t)(pos0 + T) * nv;
        dv->widen = twin_nan(dv, dv->widen_n);
        dv->scores = twin_nan(dv, (size_t)T * (pos0 + T));
        dv->attn = twin_nan(dv, (size_t)T * nh * v);
        dcache = twin_nan(dv, (size_t)L * W);
    }
    MlaWeights w;
    memset(&w, 0, sizeof w);
    w.kv_b = f32_tensor(kv_b, nh * nv, dc);
    Error e;
    for (int b = 0; b < B; b++) {
        for (size_t th = 0; th < (size_t)T * nh; th++) { /* q [T, n_h, nope + d_R], as golden_fns.c assembles it */
            memcpy(q + th * qk, q_nope + ((size_t)b * T * nh + th) * nope, sizeof(float) * nope);
            memcpy(q + th * qk + nope, q_pe + ((size_t)b * T * nh + th) * dR, sizeof(float) * dR);
        }
        float *ob = out + (size_t)b * T * nh * v;
        const float *cb = cache + (size_t)b * L * W;
        if (!naive) {
            mla_attend_absorbed_cuda(ob, q, cb, T, pos0, &w, &md);
            if (split && mla_attend_absorbed_decode_cuda_host(out_split + (size_t)b * T * nh * v, q, cb, T, pos0, &w, &md, &e)) {
                step_failed(g, "out", &e);
                return;
            }
            continue;
        }
        cudaCheck(cudaMemcpy(dv->q, q, sizeof(float) * (size_t)T * nh * qk, cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(dcache, cb, sizeof(float) * (size_t)L * W, cudaMemcpyHostToDevice));
        cudaCheck(cudaMemset(dv->attn, 0xFF, sizeof(float) * (size_t)T * nh * v));
        mla_attend_naive_cuda(dv, dcache, DL, &md, T, pos0);
        if (twin_get(dv, ob, dv->attn, sizeof(float) * (size_t)T * nh * v, &e)) {
            step_failed(g, "out", &e);
            return twin_free(dv);
        }
    }
    compare_f32(g, "out", out, n_out, g->tol);
    if (split) { /* the same output through the forward's decode kernels, held to the same tolerance */
        const float *want = getf(g, "out", NULL);
        if (want) {
            char detail[160];
            double err = rel_err(out_split, want, n_out);
            snprintf(detail, sizeof detail, "rel err %.3g (tol %g), mla_attend_absorbed_decode_cuda_host", err, g->tol);
            line_ok(g, "out", err <= g->tol, detail);
        }
    }
    if (dv) twin_free(dv);
}
static void t_mla_naive(Golden *g) { t_attend(g, 1); }
static void t_mla_absorbed(Golden *g) { t_attend(g, 0); }

static void t_moe_gate(Golden *g) {
    const StTensor *tl;
    float *logits = getf(g, "logits", &tl), *bias = getf(g, "bias", NULL);
    if (!logits || !bias) return;
    MoeGate gt = model_moe_gate(&g->cfg);
    int E = gt.n_experts, K = gt.top_k, rows = (int)(tl->numel / E);
    int *idx = neg_host(g, (size_t)rows * K);
    float *wts = nan_host(g, (size_t)rows * K);
    moe_gate_cuda(idx, wts, logits, bias, &gt, rows);
    compare_exact(g, "topk_idx", DT_I32, idx, (size_t)rows * K);
    compare_f32(g, "topk_weight", wts, (size_t)rows * K, g->tol);
    no_twin(g, "scores", "moe_gate_kernel keeps the scores inside, as moe_gate does");
}

static void t_ffn_swiglu(Golden *g) {
    const StTensor *tx, *tg;
    float *x = getf(g, "x", &tx), *wg = getf(g, "gate_proj", &tg), *wu = getf(g, "up_proj", NULL), *wd = getf(g, "down_proj", NULL);
    if (!x || !wg || !wu || !wd) return;
    int d = (int)tx->shape[2], rows = (int)(tx->numel / d), inter = (int)tg->shape[0];
    Dev *dv = twin_new();
    DevFfn f = {twin_f32(dv, wg, inter, d), twin_f32(dv, wu, inter, d), twin_f32(dv, wd, d, inter)};
    dv->ffn_h = twin_nan(dv, (size_t)rows * inter);
    dv->ffn_u = twin_nan(dv, (size_t)rows * inter);
    float *dx = twin_up(dv, x, tx->numel), *dout = twin_nan(dv, tx->numel), *out = nan_host(g, tx->numel);
    ffn_swiglu_cuda(dv, dout, dx, rows, f, 0);
    Error e;
    if (twin_get(dv, out, dout, sizeof(float) * tx->numel, &e)) step_failed(g, "out", &e);
    else compare_f32(g, "out", out, tx->numel, g->tol);
    twin_free(dv);
}

static void t_moe(Golden *g) {
    const StTensor *tx, *tg;
    float *x = getf(g, "x", &tx), *router = getf(g, "router", NULL), *bias = getf(g, "bias", NULL);
    float *wg = getf(g, "gate_proj", &tg), *wu = getf(g, "up_proj", NULL), *wd = getf(g, "down_proj", NULL);
    float *lg_file = getf(g, "logits", NULL);
    if (!x || !router || !bias || !wg || !wu || !wd || !lg_file) return;
    MoeGate gt = model_moe_gate(&g->cfg);
    int d = (int)tx->shape[2], rows = (int)(tx->numel / d), E = gt.n_experts, K = gt.top_k, mi = (int)tg->shape[1];
    Moe moe;
    memset(&moe, 0, sizeof moe);
    moe.gate = gt;
    moe.router = f32_tensor(router, E, d);
    moe.bias = bias;
    Ffn *ex = (Ffn *)g_alloc(g, sizeof(Ffn) * E);
    for (int k = 0; k < E; k++)
        ex[k] = Ffn{f32_tensor(wg + (size_t)k * mi * d, mi, d), f32_tensor(wu + (size_t)k * mi * d, mi, d),
                    f32_tensor(wd + (size_t)k * d * mi, d, mi)};
    moe.experts = ex;
    if (has(g, "shared_gate_proj")) {
        const StTensor *ts;
        float *sg = getf(g, "shared_gate_proj", &ts), *su = getf(g, "shared_up_proj", NULL), *sd = getf(g, "shared_down_proj", NULL);
        if (!sg || !su || !sd) return;
        int si = (int)ts->shape[0];
        moe.shared = Ffn{f32_tensor(sg, si, d), f32_tensor(su, si, d), f32_tensor(sd, d, si)};
    }
    float *out = nan_host(g, tx->numel), *lg = nan_host(g, (size_t)rows * E), *wts = nan_host(g, (size_t)rows * K);
    int *idx = neg_host(g, (size_t)rows * K);
    Error e;
    if (moe_forward_cuda_host(out, x, rows, &moe, &e)) step_failed(g, "out", &e);
    else compare_f32(g, "out", out, tx->numel, g->tol);
    if (matmul_cuda_host(lg, x, &moe.router, rows, &e)) step_failed(g, "logits", &e);
    else compare_f32(g, "logits", lg, (size_t)rows * E, g->tol);
    moe_gate_cuda(idx, wts, lg_file, bias, &gt, rows);
    compare_exact(g, "topk_idx", DT_I32, idx, (size_t)rows * K);
    compare_f32(g, "topk_weight", wts, (size_t)rows * K, g->tol);
}

static void t_fp8_quant_block(Golden *g) {
    const char *why = "kernels.cu has no block quantizer of weights (fp8_quant_block is done once, by run quantize)";
    no_twin(g, "q", why);
    no_twin(g, "scale_inv", why);
}

/* fp8_dequant_block and fp8_dequant_act (fp8.c: the latter is the former with 1 x tile blocks). */
static void dequant(Golden *g, const char *scale_arg, const char *out_arg, int block_r) {
    const StTensor *tq;
    uint8_t *q = (uint8_t *)get(g, "q", DT_F8_E4M3, &tq);
    float *s = getf(g, scale_arg, NULL);
    if (!q || !s) return;
    int rows = (int)tq->shape[0], cols = (int)tq->shape[1];
    float *w = nan_host(g, tq->numel);
    fp8_dequant_block_cuda(w, q, s, rows, cols, block_r, FP8_BLOCK);
    compare_f32(g, out_arg, w, tq->numel, g->tol);
}
static void t_fp8_dequant_block(Golden *g) { dequant(g, "scale_inv", "w", FP8_BLOCK); }
static void t_fp8_dequant_act(Golden *g) { dequant(g, "scale", "x", 1); }

/* x [M, K] -> its codes (q_arg) and 1 x 128 tile scales (s_arg), exactly. */
static void quant_act(Golden *g, const float *x, int M, int K, const char *q_arg, const char *s_arg) {
    int kb = (K + FP8_BLOCK - 1) / FP8_BLOCK;
    uint8_t *q = ff_host(g, (size_t)M * K);
    float *s = nan_host(g, (size_t)M * kb);
    fp8_quant_act_cuda(q, s, x, M, K, FP8_BLOCK, FP8_SCALE_F32);
    compare_exact(g, q_arg, DT_F8_E4M3, q, (size_t)M * K);
    compare_f32(g, s_arg, s, (size_t)M * kb, 0);
}

static void t_fp8_quant_act(Golden *g) {
    const StTensor *tx;
    float *x = getf(g, "x", &tx);
    if (x) quant_act(g, x, (int)tx->shape[0], (int)tx->shape[1], "q", "scale");
}

static void t_fp8_gemm(Golden *g) {
    const StTensor *tx, *tw;
    float *x = getf(g, "x", &tx), *w = getf(g, "w", &tw), *xs = getf(g, "x_scale", NULL), *ws = getf(g, "w_scale_inv", NULL);
    uint8_t *xq = (uint8_t *)get(g, "x_q", DT_F8_E4M3, NULL), *wq = (uint8_t *)get(g, "w_q", DT_F8_E4M3, NULL);
    if (!x || !w || !xs || !ws || !xq || !wq) return;
    int M = (int)tx->shape[0], K = (int)tx->shape[1], N = (int)tw->shape[0];
    quant_act(g, x, M, K, "x_q", "x_scale");
    const char *why = "the weights' block quantization (fp8_quant_block) has no CUDA twin";
    no_twin(g, "w_q", why);
    no_twin(g, "w_scale_inv", why);
    /* golden_fns.c's three accumulators */
    static const struct { const char *name; Fp8Accum acc; } MODES[] = {
        {"y_fp32", {0, 0, FP8_ACC_TRUNCATE}},
        {"y_acc14_trunc", {FP8_ACC_BITS, FP8_NC, FP8_ACC_TRUNCATE}},
        {"y_acc14_nearest", {FP8_ACC_BITS, FP8_NC, FP8_ACC_NEAREST}}};
    float *y = nan_host(g, (size_t)M * N);
    for (int i = 0; i < 3; i++) {
        for (size_t k = 0; k < (size_t)M * N; k++) y[k] = NAN;
        fp8_gemm_cuda(y, xq, xs, wq, ws, M, N, K, FP8_BLOCK, FP8_BLOCK, MODES[i].acc);
        compare_f32(g, MODES[i].name, y, (size_t)M * N, g->tol);
    }
    const cJSON *tu = cJSON_GetObjectItemCaseSensitive(g->meta, "tolerance.fp8_gemm.y_unquantized");
    if (!cJSON_IsString(tu)) {
        printf("NOT OK fp8_gemm.y_unquantized: no tolerance.fp8_gemm.y_unquantized in the metadata\n");
        n_bad++;
        return done(g, "y_unquantized");
    }
    Tensor wt = f32_tensor(w, N, K);
    Error e;
    for (size_t k = 0; k < (size_t)M * N; k++) y[k] = NAN;
    if (matmul_cuda_host(y, x, &wt, M, &e)) step_failed(g, "y_unquantized", &e);
    else compare_f32(g, "y_unquantized", y, (size_t)M * N, strtod(tu->valuestring, NULL));
}

/* A whole function without a twin: every output it lists. */
static void whole(Golden *g, const char *outputs, const char *why) {
    printf("no twin %s (%s): %s\n", g->fn, outputs, why);
    n_none++;
}
static void t_decoder_layer(Golden *g) {
    whole(g, "after_attn, out, kv_cache_out",
          "the device forward's layer (model.cu) is static; build/cuda/test_device holds it to the C forward");
}
static void t_model(Golden *g) {
    whole(g, "hidden.*, logits",
          "model_forward_device needs a loaded checkpoint; build/cuda/test_device holds it to the C forward");
}

static void t_mla_kv_rows(Golden *g) {
    whole(g, "each format's bytes and rows",
          "the cache formats' encoders are C only (mla_kv.c): the device forward keeps an F32 cache (run --kv bf16|fp8 "
          "is refused with --device cuda) and mla_decode.cu widens BF16 / FP8 rows in its tile loader");
}
static void t_mla_paged_decode(Golden *g) {
    whole(g, "o_lat, lse per format",
          "its twin is mla_decode.cu (build/mla_decode), held to the same C function (mla_paged.c) by "
          "build/mla_decode/test_mla_decode");
}

static const struct { const char *name; void (*run)(Golden *); int whole; } FNS[] = {
    {"rmsnorm", t_rmsnorm, 0},
    {"rope_table", t_rope_table, 0},
    {"rope", t_rope, 0},
    {"mla_query", t_mla_query, 0},
    {"mla_latent", t_mla_latent, 0},
    {"mla_naive", t_mla_naive, 0},
    {"mla_absorbed", t_mla_absorbed, 0},
    {"mla_decode", t_mla_absorbed, 0},
    {"moe_gate", t_moe_gate, 0},
    {"ffn_swiglu", t_ffn_swiglu, 0},
    {"moe", t_moe, 0},
    {"fp8_quant_block", t_fp8_quant_block, 0},
    {"fp8_dequant_block", t_fp8_dequant_block, 0},
    {"fp8_quant_act", t_fp8_quant_act, 0},
    {"fp8_dequant_act", t_fp8_dequant_act, 0},
    {"fp8_gemm", t_fp8_gemm, 0},
    {"mla_kv_rows", t_mla_kv_rows, 1},
    {"mla_paged_decode", t_mla_paged_decode, 1},
    {"decoder_layer", t_decoder_layer, 1},
    {"model", t_model, 1},
};

/* ---- one file ------------------------------------------------------------------------------------- */

static const char *meta_str(const cJSON *m, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Every output of outputs.<fn> checked or declared no twin; a NOT OK line for each that was not. */
static void all_outputs_seen(Golden *g) {
    char key[96];
    snprintf(key, sizeof key, "outputs.%s", g->fn);
    const char *list = meta_str(g->meta, key);
    if (!list) {
        printf("NOT OK %s: no %s in the metadata\n", g->fn, key);
        n_bad++;
        return;
    }
    for (const char *p = list; *p;) {
        size_t len = strcspn(p, ",");
        int seen = 0;
        for (int i = 0; i < g->n_done && !seen; i++) seen = strlen(g->done[i]) == len && !strncmp(g->done[i], p, len);
        if (!seen) {
            printf("NOT OK %s.%.*s: an output of the file this test does not check (update tests/test_golden_cuda.cu)\n",
                   g->fn, (int)len, p);
            n_bad++;
        }
        p += len + (p[len] == ',');
    }
}

/* 0, or -1 when path is not a golden file this test reads (one line on stderr). */
static int check_file(const char *path) {
    Golden g;
    memset(&g, 0, sizeof g);
    Error e;
    if (st_open(&g.f, path, &e)) {
        fprintf(stderr, "test_golden_cuda: %s\n", e.msg);
        return -1;
    }
    g.meta = g.f.metadata_json ? cJSON_Parse(g.f.metadata_json) : NULL;
    const char *fmt = meta_str(g.meta, "format"), *ver = meta_str(g.meta, "version"), *cfg = meta_str(g.meta, "config");
    const char *fns = meta_str(g.meta, "functions");
    int rc = 0;
    if (!fmt || strcmp(fmt, "dsv3.c golden") || !ver || !cfg || !fns) {
        fprintf(stderr, "test_golden_cuda: %s: not a golden file (metadata format, version, config, functions expected)\n", path);
        rc = -1;
    } else if (strcmp(ver, "1")) {
        fprintf(stderr, "test_golden_cuda: %s: golden version %s, this test reads version 1\n", path, ver);
        rc = -1;
    } else if (config_parse(&g.cfg, cfg, "the golden file's metadata config", &e)) {
        fprintf(stderr, "test_golden_cuda: %s: %s\n", path, e.msg);
        rc = -1;
    }
    if (!rc) printf("%s: %s (source %s, seed %s)\n", path, fns, meta_str(g.meta, "source") ? meta_str(g.meta, "source") : "?",
                    meta_str(g.meta, "seed") ? meta_str(g.meta, "seed") : "?");
    for (const char *p = fns; !rc && *p;) {
        size_t len = strcspn(p, ",");
        int k = -1;
        for (int i = 0; i < (int)(sizeof FNS / sizeof FNS[0]); i++)
            if (strlen(FNS[i].name) == len && !strncmp(FNS[i].name, p, len)) k = i;
        if (k < 0) {
            printf("NOT OK %.*s: a function this test does not know (update tests/test_golden_cuda.cu)\n", (int)len, p);
            n_bad++;
        } else {
            char key[96];
            snprintf(key, sizeof key, "tolerance.%s", FNS[k].name);
            const char *tol = meta_str(g.meta, key);
            g.fn = FNS[k].name;
            g.n_done = g.n_tmp = 0;
            if (!tol) {
                printf("NOT OK %s: no %s in the metadata\n", g.fn, key);
                n_bad++;
            } else {
                g.tol = strtod(tol, NULL);
                FNS[k].run(&g);
                if (!FNS[k].whole) all_outputs_seen(&g);
            }
            for (int i = 0; i < g.n_tmp; i++) free(g.tmp[i]);
        }
        p += len + (p[len] == ',');
    }
    cJSON_Delete(g.meta);
    st_close(&g.f);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help")) {
        fprintf(stderr, "usage: test_golden_cuda G.safetensors...   (files written by `run golden`)\n");
        return 2;
    }
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("test_golden_cuda: no CUDA device; nothing tested\n");
        return 1;
    }
    for (int i = 1; i < argc; i++)
        if (check_file(argv[i])) return 2;
    printf("test_golden_cuda: %d OK, %d NOT OK, %d no twin\n", n_ok, n_bad, n_none);
    printf(n_bad ? "%d NOT OK\n" : "all OK\n", n_bad);
    return n_bad ? 1 : 0;
}
