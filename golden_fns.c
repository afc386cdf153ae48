/* golden_fns.c - the functions `run golden` records (golden.c has the command line, the generator
 * and the file). Each draws its inputs with g_rand/g_ids/g_codes/g_given, declares its outputs with
 * g_out, and calls the C function(s) it records; verifying runs the same code on the file's inputs.
 * Argument names follow the C function's (and HF's names for weights: q_a_proj, kv_b_proj, and
 * with .weight where a whole layer or model is laid out as an HF checkpoint).
 */
#include "golden.h"
#include "fp8.h"
#include "manifest.h"
#include "mla_paged.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- helpers ----------------------------------------------------------------------------------- */

static Tensor f32_tensor(const float *w, int rows, int cols) {
    return (Tensor){.data = w, .dtype = DT_F32, .rows = rows, .cols = cols};
}
static float fan_in(int cols) { return 1.0f / sqrtf((float)cols); }
static int cdiv(int a, int b) { return (a + b - 1) / b; }

/* A weight <prefix><name> [rows, cols] and a norm weight [n], named as in HF checkpoints. */
static float *g_weight(Golden *g, const char *prefix, const char *name, int rows, int cols) {
    char a[160];
    snprintf(a, sizeof a, "%s%s", prefix, name);
    return g_rand(g, a, 0.0f, fan_in(cols), 2, rows, cols);
}
static float *g_norm(Golden *g, const char *prefix, const char *name, int n) {
    char a[160];
    snprintf(a, sizeof a, "%s%s", prefix, name);
    return g_rand(g, a, 1.0f, 0.25f, 1, n);
}

/* The manifest's tensor (slot, ffn) of layer l, drawn under its HF name (full) or its name inside the
 * layer (a lone decoder layer): matrices N-ish(0, 1/fan_in) as g_weight, norms as g_norm, the
 * correction bias in [-0.1, 0.1). *x gets the entry (its shape); NULL with g->failed when absent. */
static float *g_entry(Golden *g, const Manifest *mf, int full, int l, ManifestSlot slot, int ffn,
                      const ManifestEntry **x) {
    if (!(*x = manifest_find(mf, l, slot, ffn))) {
        if (!g->failed) error_set(g->e, "golden: no tensor of slot %d in layer %d's manifest", (int)slot, l);
        g->failed = 1;
        return NULL;
    }
    const char *name = (*x)->name + (full ? 0 : (*x)->local);
    if ((*x)->kind == MK_NORM) return g_norm(g, "", name, (*x)->rows);
    if ((*x)->kind == MK_BIAS) return g_rand(g, name, 0.0f, 0.1f, 1, (*x)->rows);
    if ((*x)->kind == MK_EMBED) return g_rand(g, name, 0.0f, 1.0f, 2, (*x)->rows, (*x)->cols);
    return g_weight(g, "", name, (*x)->rows, (*x)->cols);
}
static const float *g_vec(Golden *g, const Manifest *mf, int full, int l, ManifestSlot slot) {
    const ManifestEntry *x;
    return g_entry(g, mf, full, l, slot, 0, &x);
}
static Tensor g_mat(Golden *g, const Manifest *mf, int full, int l, ManifestSlot slot, int ffn) {
    const ManifestEntry *x;
    float *w = g_entry(g, mf, full, l, slot, ffn, &x);
    return w ? f32_tensor(w, x->rows, x->cols) : (Tensor){0};
}

static void rnd_ffn(Golden *g, const Manifest *mf, int full, int l, int ffn, Ffn *f) {
    f->gate = g_mat(g, mf, full, l, M_GATE, ffn);
    f->up = g_mat(g, mf, full, l, M_UP, ffn);
    f->down = g_mat(g, mf, full, l, M_DOWN, ffn);
}

/* Decoder layer l's weights (the manifest's names and shapes; full = 0: named inside the layer).
 * Drawn in the order the golden files record them: the attention's, post_attention_layernorm, mlp. */
static void rnd_layer(Golden *g, const Config *c, int full, int l, Layer *L, int is_moe) {
    int E = c->n_routed_experts;
    Manifest mf = {0};
    memset(L, 0, sizeof *L);
    if (manifest_layer(&mf, c, l, is_moe, g->e)) {
        g->failed = 1;
        manifest_free(&mf);
        return;
    }
    MlaWeights *w = &L->attn;
    L->attn_norm = g_vec(g, &mf, full, l, M_ATTN_NORM);
    if (c->q_lora_rank) {
        w->q_a = g_mat(g, &mf, full, l, M_Q_A, 0);
        w->q_a_norm = g_vec(g, &mf, full, l, M_Q_A_NORM);
        w->q_b = g_mat(g, &mf, full, l, M_Q_B, 0);
    } else w->q = g_mat(g, &mf, full, l, M_Q, 0);
    w->kv_a = g_mat(g, &mf, full, l, M_KV_A, 0);
    w->kv_a_norm = g_vec(g, &mf, full, l, M_KV_A_NORM);
    w->kv_b = g_mat(g, &mf, full, l, M_KV_B, 0);
    w->o = g_mat(g, &mf, full, l, M_O, 0);
    L->ffn_norm = g_vec(g, &mf, full, l, M_FFN_NORM);
    if (!(L->is_moe = is_moe)) {
        rnd_ffn(g, &mf, full, l, MANIFEST_DENSE, &L->dense);
        manifest_free(&mf);
        return;
    }
    Moe *m = &L->moe;
    m->gate = model_moe_gate(c);
    m->router = g_mat(g, &mf, full, l, M_ROUTER, 0);
    m->bias = c->topk_method == TOPK_NOAUX_TC ? g_vec(g, &mf, full, l, M_BIAS) : NULL;
    Ffn *ex = g_tmp(g, sizeof(Ffn) * (size_t)E);
    for (int x = 0; ex && x < E; x++) rnd_ffn(g, &mf, full, l, x, &ex[x]);
    m->experts = L->experts = ex;
    if (c->n_shared_experts > 0) rnd_ffn(g, &mf, full, l, MANIFEST_SHARED, &m->shared);
    manifest_free(&mf);
}

/* ---- the functions: each draws its inputs, declares its outputs, calls the C function(s) ------- */

static int e_rmsnorm(Golden *g) {
    const Config *c = &g->cfg;
    int B = g->sh.batch, T = g->sh.tokens, d = c->hidden_size;
    float *x = g_rand(g, "x", 0, 1, 3, B, T, d), *w = g_rand(g, "w", 1, 0.25f, 1, d);
    float *eps = g_given(g, "eps", DT_F32, &c->rms_norm_eps, 1, 1), *o = g_out(g, "out", DT_F32, 3, B, T, d);
    if (g->failed) return -1;
    rmsnorm(o, x, w, B * T, d, eps[0]);
    return 0;
}

/* inv_freq and the two YaRN factors from the config, and the cos/sin table [L, d_R/2] that
 * rope_rotate uses (cos(pos * inv_freq) * attn_factor), read off by rotating unit pairs. */
static int e_rope_table(Golden *g) {
    const RopeConfig *rc = &g->cfg.rope;
    int dR = g->cfg.qk_rope_head_dim, half = dR / 2, L = g->sh.cache;
    float *inv = g_out(g, "inv_freq", DT_F32, 1, half), *af = g_out(g, "attn_factor", DT_F32, 1, 1);
    float *ms = g_out(g, "softmax_mscale", DT_F32, 1, 1);
    float *cs = g_out(g, "cos", DT_F32, 2, L, half), *sn = g_out(g, "sin", DT_F32, 2, L, half), *v = g_tmp(g, sizeof(float) * dR);
    if (g->failed) return -1;
    af[0] = rope_inv_freq(inv, rc, dR);
    ms[0] = rope_softmax_mscale(rc);
    for (int p = 0; p < L; p++) {
        for (int j = 0; j < half; j++) {
            v[rc->interleaved ? 2 * j : j] = 1.0f;
            v[rc->interleaved ? 2 * j + 1 : j + half] = 0.0f;
        }
        rope_rotate(v, 1, dR, dR, p, inv, af[0], rc->interleaved);
        for (int j = 0; j < half; j++) {
            cs[(size_t)p * half + j] = v[rc->interleaved ? 2 * j : j];
            sn[(size_t)p * half + j] = v[rc->interleaved ? 2 * j + 1 : j + half];
        }
    }
    return 0;
}

/* x [B, T, n_h, d_R] (each head's q_pe), token t at position pos0 + t. */
static int e_rope(Golden *g) {
    const Config *c = &g->cfg;
    int B = g->sh.batch, T = g->sh.tokens, nh = c->n_heads, dR = c->qk_rope_head_dim, half = dR / 2;
    float *inv_v = g_tmp(g, sizeof(float) * half);
    int *pos_v = g_tmp(g, sizeof(int) * T);
    if (g->failed) return -1;
    float af_v = rope_inv_freq(inv_v, &c->rope, dR);
    for (int t = 0; t < T; t++) pos_v[t] = g->sh.cache - T + t;
    float *x = g_rand(g, "x", 0, 1, 4, B, T, nh, dR);
    int *pos = g_given(g, "positions", DT_I32, pos_v, 1, T);
    float *inv = g_given(g, "inv_freq", DT_F32, inv_v, 1, half), *af = g_given(g, "attn_factor", DT_F32, &af_v, 1, 1);
    int *il = g_given(g, "interleaved", DT_I32, &c->rope.interleaved, 1, 1);
    float *o = g_out(g, "out", DT_F32, 4, B, T, nh, dR);
    if (g->failed) return -1;
    memcpy(o, x, sizeof(float) * (size_t)B * T * nh * dR);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) rope_rotate(o + ((size_t)b * T + t) * nh * dR, nh, dR, dR, pos[t], inv, af[0], il[0]);
    return 0;
}

static int e_mla_query(Golden *g) {
    const Config *c = &g->cfg;
    MlaDims md = model_mla_dims(c);
    int B = g->sh.batch, T = g->sh.tokens, d = c->hidden_size, nh = c->n_heads, ql = c->q_lora_rank;
    int qk = md.nope + md.rope;
    float *x = g_rand(g, "x", 0, 1, 3, B, T, d);
    MlaWeights w = {0};
    if (ql) {
        w.q_a = f32_tensor(g_weight(g, "", "q_a_proj", ql, d), ql, d);
        w.q_a_norm = g_norm(g, "", "q_a_layernorm", ql);
        w.q_b = f32_tensor(g_weight(g, "", "q_b_proj", nh * qk, ql), nh * qk, ql);
    } else w.q = f32_tensor(g_weight(g, "", "q_proj", nh * qk, d), nh * qk, d);
    float *eps = g_given(g, "eps", DT_F32, &c->rms_norm_eps, 1, 1);
    float *q = g_out(g, "q", DT_F32, 4, B, T, nh, qk);
    float *c_q = ql ? g_out(g, "c_q", DT_F32, 3, B, T, ql) : NULL; /* rmsnorm(q_a(x)): the scratch argument */
    if (g->failed) return -1;
    md.eps = eps[0];
    return mla_query(q, c_q, x, B * T, &w, &md, g->e);
}

static int e_mla_latent(Golden *g) {
    const Config *c = &g->cfg;
    MlaDims md = model_mla_dims(c);
    int B = g->sh.batch, T = g->sh.tokens, d = c->hidden_size, W = mla_cache_width(&md);
    float *x = g_rand(g, "x", 0, 1, 3, B, T, d);
    MlaWeights w = {.kv_a = f32_tensor(g_weight(g, "", "kv_a_proj_with_mqa", W, d), W, d),
                    .kv_a_norm = g_norm(g, "", "kv_a_layernorm", md.kv_lora_rank)};
    float *eps = g_given(g, "eps", DT_F32, &c->rms_norm_eps, 1, 1);
    float *lat = g_out(g, "latent", DT_F32, 3, B, T, W);
    if (g->failed) return -1;
    md.eps = eps[0];
    return mla_latent(lat, x, B * T, &w, &md, g->e);
}

/* T queries at positions pos0 = L - T .. L - 1 of each of B sequences, over its cache [L, d_c + d_R]. */
static int attend(Golden *g, int T, int naive) {
    const Config *c = &g->cfg;
    MlaDims md = model_mla_dims(c);
    int B = g->sh.batch, L = g->sh.cache, nh = md.n_heads, nope = md.nope, dR = md.rope, v = md.v;
    int dc = md.kv_lora_rank, W = dc + dR, qk = nope + dR, pos0 = L - T;
    float *q_nope = g_rand(g, "q_nope", 0, 1, 4, B, T, nh, nope), *q_pe = g_rand(g, "q_pe", 0, 1, 4, B, T, nh, dR);
    float *cache = g_rand(g, "kv_cache", 0, 1, 3, B, L, W);
    float *kv_b = g_rand(g, "kv_b_proj", 0, fan_in(dc), 2, nh * (nope + v), dc);
    g_given(g, "softmax_scale", DT_F32, &md.softmax_scale, 1, 1);
    g_given(g, "pos0", DT_I32, &pos0, 1, 1);
    float *o = g_out(g, "out", DT_F32, 4, B, T, nh, v), *q = g_tmp(g, sizeof(float) * (size_t)T * nh * qk);
    if (g->failed) return -1;
    MlaWeights w = {.kv_b = f32_tensor(kv_b, nh * (nope + v), dc)};
    for (int b = 0; b < B; b++) {
        for (size_t th = 0; th < (size_t)T * nh; th++) { /* q [T, n_h, nope + d_R] as the function takes it */
            memcpy(q + th * qk, q_nope + ((size_t)b * T * nh + th) * nope, sizeof(float) * nope);
            memcpy(q + th * qk + nope, q_pe + ((size_t)b * T * nh + th) * dR, sizeof(float) * dR);
        }
        float *ob = o + (size_t)b * T * nh * v;
        const float *cb = cache + (size_t)b * L * W;
        if (naive ? mla_attend_naive(ob, q, cb, T, pos0, &w, &md, g->e) : mla_attend_absorbed(ob, q, cb, T, pos0, &w, &md, g->e))
            return -1;
    }
    return 0;
}
static int e_mla_naive(Golden *g) { return attend(g, g->sh.tokens, 1); }
static int e_mla_absorbed(Golden *g) { return attend(g, g->sh.tokens, 0); }
static int e_mla_decode(Golden *g) { return attend(g, 1, 0); }

/* Each cache format's bytes (mla_kv.h) for B sequences' L latent rows [c_kv | k_pe], and the rows
 * widened back to FP32, as the attention reads them (run --kv). */
static int e_mla_kv_rows(Golden *g) {
    MlaDims md = model_mla_dims(&g->cfg);
    int B = g->sh.batch, L = g->sh.cache, dc = md.kv_lora_rank, dR = md.rope, W = dc + dR;
    float *lat = g_rand(g, "latent", 0, 1, 3, B, L, W), *wide[3];
    uint8_t *bytes[3];
    size_t rb[3];
    for (int f = MLA_KV_F32; f <= MLA_KV_FP8; f++) {
        char n[32];
        if (!(rb[f] = mla_kv_row_bytes((MlaKvFormat)f, dc, dR)))
            return error_set(g->e, "mla_kv_rows: %s rows cannot hold d_c %d", mla_kv_format_name((MlaKvFormat)f), dc);
        snprintf(n, sizeof n, "%s", mla_kv_format_name((MlaKvFormat)f));
        bytes[f] = g_out(g, n, DT_U8, 3, B, L, (int)rb[f]);
        snprintf(n, sizeof n, "%s_widened", mla_kv_format_name((MlaKvFormat)f));
        wide[f] = g_out(g, n, DT_F32, 3, B, L, W);
    }
    if (g->failed) return -1;
    for (size_t r = 0; r < (size_t)B * L; r++)
        for (int f = MLA_KV_F32; f <= MLA_KV_FP8; f++) {
            mla_kv_encode_row(bytes[f] + r * rb[f], (MlaKvFormat)f, lat + r * W, dc, dR);
            mla_kv_decode_row(wide[f] + r * W, (MlaKvFormat)f, bytes[f] + r * rb[f], dc, dR);
        }
    return 0;
}

/* What mla_decode.cu computes (mla_paged_decode_latent), in each format: B sequences of ragged
 * lengths lens[b] = L - (61 b mod L) in pages of 64 tokens, the pages of the pool handed out in
 * reverse, interleaved between sequences (block_tables [B, ceil(L/64)]); q_abs [B, n_h, W] =
 * [q_lat | q_pe] per head. Outputs per format: the pool's bytes, o_lat [B, n_h, d_c], lse [B, n_h]. */
static int e_mla_paged_decode(Golden *g) {
    MlaDims md = model_mla_dims(&g->cfg);
    int B = g->sh.batch, L = g->sh.cache, nh = md.n_heads, dc = md.kv_lora_rank, dR = md.rope, W = dc + dR;
    int per = cdiv(L, MLA_PAGE), n_pages = B * per;
    int *lens_v = g_tmp(g, sizeof(int) * (size_t)B), *tab_v = g_tmp(g, sizeof(int) * (size_t)n_pages);
    for (int b = 0; lens_v && tab_v && b < B; b++) {
        lens_v[b] = L - (int)((61LL * b) % L);
        for (int p = 0; p < per; p++) tab_v[b * per + p] = n_pages - 1 - (p * B + b);
    }
    float *q_abs = g_rand(g, "q_abs", 0, 1, 3, B, nh, W), *lat = g_rand(g, "latent", 0, 1, 3, B, L, W);
    int *lens = lens_v ? g_given(g, "lens", DT_I32, lens_v, 1, B) : NULL;
    int *tables = tab_v ? g_given(g, "block_tables", DT_I32, tab_v, 2, B, per) : NULL;
    g_given(g, "softmax_scale", DT_F32, &md.softmax_scale, 1, 1);
    uint8_t *pool[3];
    float *o[3], *lse[3];
    for (int f = MLA_KV_F32; f <= MLA_KV_FP8; f++) {
        char n[32];
        const char *fn = mla_kv_format_name((MlaKvFormat)f);
        snprintf(n, sizeof n, "pool_%s", fn);
        pool[f] = g_out(g, n, DT_U8, 3, n_pages, MLA_PAGE, (int)mla_kv_row_bytes((MlaKvFormat)f, dc, dR));
        snprintf(n, sizeof n, "o_lat_%s", fn);
        o[f] = g_out(g, n, DT_F32, 3, B, nh, dc);
        snprintf(n, sizeof n, "lse_%s", fn);
        lse[f] = g_out(g, n, DT_F32, 2, B, nh);
    }
    if (g->failed || !lens || !tables) return -1;
    for (int f = MLA_KV_F32; f <= MLA_KV_FP8; f++) {
        MlaPagedCache c;
        if (mla_paged_init(&c, (MlaKvFormat)f, dc, dR, n_pages, g->e)) return -1;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < lens[b]; t++) mla_paged_write(&c, tables + b * per, t, lat + ((size_t)b * L + t) * W);
        memcpy(pool[f], c.data, (size_t)n_pages * MLA_PAGE * c.row_bytes);
        int rc = mla_paged_decode_latent(o[f], lse[f], q_abs, &c, tables, per, lens, B, nh, md.softmax_scale, g->e);
        mla_paged_free(&c);
        if (rc) return -1;
    }
    return 0;
}

/* The gate of B*T tokens from their router logits. scores = sigmoid/softmax(logits) as moe.c forms
 * them (moe_gate keeps them internal); bias is e_score_correction_bias (noaux_tc only uses it). */
static int e_moe_gate(Golden *g) {
    const Config *c = &g->cfg;
    MoeGate gt = model_moe_gate(c);
    int B = g->sh.batch, T = g->sh.tokens, E = gt.n_experts, K = gt.top_k;
    float *logits = g_rand(g, "logits", 0, 2, 3, B, T, E), *bias = g_rand(g, "bias", 0, 0.1f, 1, E);
    float *scores = g_out(g, "scores", DT_F32, 3, B, T, E);
    int *idx = g_out(g, "topk_idx", DT_I32, 3, B, T, K);
    float *wts = g_out(g, "topk_weight", DT_F32, 3, B, T, K);
    if (g->failed) return -1;
    for (size_t r = 0; r < (size_t)B * T; r++) {
        moe_gate(idx + r * K, wts + r * K, logits + r * E, bias, &gt);
        float *s = scores + r * E;
        memcpy(s, logits + r * E, sizeof(float) * E);
        if (gt.scoring == SCORE_SOFTMAX) softmax(s, E);
        else for (int i = 0; i < E; i++) s[i] = 1.0f / (1.0f + expf(-s[i]));
    }
    return 0;
}

/* One expert (width moe_intermediate_size; intermediate_size for a dense config). */
static int e_ffn_swiglu(Golden *g) {
    const Config *c = &g->cfg;
    int B = g->sh.batch, T = g->sh.tokens, d = c->hidden_size;
    int inter = c->n_routed_experts ? c->moe_intermediate_size : c->intermediate_size;
    float *x = g_rand(g, "x", 0, 1, 3, B, T, d);
    Ffn f = {.gate = f32_tensor(g_weight(g, "", "gate_proj", inter, d), inter, d),
             .up = f32_tensor(g_weight(g, "", "up_proj", inter, d), inter, d),
             .down = f32_tensor(g_weight(g, "", "down_proj", d, inter), d, inter)};
    float *o = g_out(g, "out", DT_F32, 3, B, T, d);
    if (g->failed) return -1;
    return ffn_swiglu(o, x, B * T, &f, g->e);
}

/* The whole MoE layer; experts stacked [E, ...] as a grouped GEMM takes them. logits, topk_idx and
 * topk_weight are the routing moe_forward computes inside (router matmul, then moe_gate). */
static int e_moe(Golden *g) {
    const Config *c = &g->cfg;
    MoeGate gt = model_moe_gate(c);
    int B = g->sh.batch, T = g->sh.tokens, d = c->hidden_size, E = gt.n_experts, K = gt.top_k;
    int mi = c->moe_intermediate_size, si = c->n_shared_experts * mi;
    float *x = g_rand(g, "x", 0, 1, 3, B, T, d);
    float *router = g_rand(g, "router", 0, fan_in(d), 2, E, d), *bias = g_rand(g, "bias", 0, 0.1f, 1, E);
    float *wg = g_rand(g, "gate_proj", 0, fan_in(d), 3, E, mi, d), *wu = g_rand(g, "up_proj", 0, fan_in(d), 3, E, mi, d);
    float *wd = g_rand(g, "down_proj", 0, fan_in(mi), 3, E, d, mi);
    Moe moe = {.gate = gt, .router = f32_tensor(router, E, d), .bias = bias};
    if (si) {
        moe.shared.gate = f32_tensor(g_weight(g, "", "shared_gate_proj", si, d), si, d);
        moe.shared.up = f32_tensor(g_weight(g, "", "shared_up_proj", si, d), si, d);
        moe.shared.down = f32_tensor(g_weight(g, "", "shared_down_proj", d, si), d, si);
    }
    float *o = g_out(g, "out", DT_F32, 3, B, T, d), *logits = g_out(g, "logits", DT_F32, 3, B, T, E);
    int *idx = g_out(g, "topk_idx", DT_I32, 3, B, T, K);
    float *wts = g_out(g, "topk_weight", DT_F32, 3, B, T, K);
    Ffn *ex = g_tmp(g, sizeof(Ffn) * (size_t)E);
    if (g->failed) return -1;
    for (int e = 0; e < E; e++)
        ex[e] = (Ffn){.gate = f32_tensor(wg + (size_t)e * mi * d, mi, d), .up = f32_tensor(wu + (size_t)e * mi * d, mi, d),
                      .down = f32_tensor(wd + (size_t)e * d * mi, d, mi)};
    moe.experts = ex;
    if (moe_forward(o, x, B * T, &moe, g->e) || matmul(logits, x, &moe.router, B * T, g->e)) return -1;
    for (size_t r = 0; r < (size_t)B * T; r++) moe_gate(idx + r * K, wts + r * K, logits + r * E, bias, &gt);
    return 0;
}

/* FP8 (E4M3, 128 x 128 weight blocks, 1 x 128 activation tiles, FP32 scales: DeepSeek-V3's layout). */
static int e_fp8_quant_block(Golden *g) {
    int N = g->sh.gemm_n, K = g->sh.gemm_k;
    float *w = g_rand(g, "w", 0, 1, 2, N, K);
    uint8_t *q = g_out(g, "q", DT_F8_E4M3, 2, N, K);
    float *s = g_out(g, "scale_inv", DT_F32, 2, cdiv(N, FP8_BLOCK), cdiv(K, FP8_BLOCK));
    if (g->failed) return -1;
    fp8_quant_block(q, s, w, N, K, FP8_BLOCK, FP8_BLOCK, FP8_SCALE_F32);
    return 0;
}

static int e_fp8_dequant_block(Golden *g) {
    int N = g->sh.gemm_n, K = g->sh.gemm_k;
    uint8_t *q = g_codes(g, "q", 2, N, K);
    float *s = g_rand(g, "scale_inv", 0.006f, 0.005f, 2, cdiv(N, FP8_BLOCK), cdiv(K, FP8_BLOCK));
    float *w = g_out(g, "w", DT_F32, 2, N, K);
    if (g->failed) return -1;
    fp8_dequant_block(w, q, s, N, K, FP8_BLOCK, FP8_BLOCK);
    return 0;
}

static int e_fp8_quant_act(Golden *g) {
    int M = g->sh.gemm_m, K = g->sh.gemm_k;
    float *x = g_rand(g, "x", 0, 1, 2, M, K);
    uint8_t *q = g_out(g, "q", DT_F8_E4M3, 2, M, K);
    float *s = g_out(g, "scale", DT_F32, 2, M, cdiv(K, FP8_BLOCK));
    if (g->failed) return -1;
    fp8_quant_act(q, s, x, M, K, FP8_BLOCK, FP8_SCALE_F32);
    return 0;
}

static int e_fp8_dequant_act(Golden *g) {
    int M = g->sh.gemm_m, K = g->sh.gemm_k;
    uint8_t *q = g_codes(g, "q", 2, M, K);
    float *s = g_rand(g, "scale", 0.006f, 0.005f, 2, M, cdiv(K, FP8_BLOCK));
    float *x = g_out(g, "x", DT_F32, 2, M, K);
    if (g->failed) return -1;
    fp8_dequant_act(x, q, s, M, K, FP8_BLOCK);
    return 0;
}

/* y = x . w^T from FP32 x [M, K] and w [N, K]: both quantized (x_q, x_scale, w_q, w_scale_inv are
 * the kernel's inputs), then fp8_gemm in each accumulation mode; y_unquantized is the FP32 matmul. */
static int e_fp8_gemm(Golden *g) {
    static const struct { const char *name; Fp8Accum acc; } MODES[] = {
        {"y_fp32", {0, 0, FP8_ACC_TRUNCATE}},                          /* DeepSeek's kernel: FP32 */
        {"y_acc14_trunc", {FP8_ACC_BITS, FP8_NC, FP8_ACC_TRUNCATE}},   /* Hopper's ~14 bits, N_C = 128 */
        {"y_acc14_nearest", {FP8_ACC_BITS, FP8_NC, FP8_ACC_NEAREST}}};
    int M = g->sh.gemm_m, N = g->sh.gemm_n, K = g->sh.gemm_k, kb = cdiv(K, FP8_BLOCK);
    float *x = g_rand(g, "x", 0, 1, 2, M, K), *w = g_rand(g, "w", 0, 1, 2, N, K);
    uint8_t *xq = g_out(g, "x_q", DT_F8_E4M3, 2, M, K), *wq = g_out(g, "w_q", DT_F8_E4M3, 2, N, K);
    float *xs = g_out(g, "x_scale", DT_F32, 2, M, kb), *ws = g_out(g, "w_scale_inv", DT_F32, 2, cdiv(N, FP8_BLOCK), kb);
    float *y[3];
    for (int i = 0; i < 3; i++) y[i] = g_out(g, MODES[i].name, DT_F32, 2, M, N);
    float *y_ref = g_out(g, "y_unquantized", DT_F32, 2, M, N);
    if (g->failed) return -1;
    fp8_quant_act(xq, xs, x, M, K, FP8_BLOCK, FP8_SCALE_F32);
    fp8_quant_block(wq, ws, w, N, K, FP8_BLOCK, FP8_BLOCK, FP8_SCALE_F32);
    for (int i = 0; i < 3; i++) fp8_gemm(y[i], xq, xs, wq, ws, M, N, K, FP8_BLOCK, FP8_BLOCK, MODES[i].acc);
    Tensor wt = f32_tensor(w, N, K);
    return matmul(y_ref, x, &wt, M, g->e);
}

/* A whole decoder layer (MoE if the config has experts) at positions pos0 = L - T .. L - 1 over a
 * cache whose rows < pos0 are the past; rows >= pos0 of the input are zero (this call writes them). */
static int e_decoder_layer(Golden *g) {
    const Config *c = &g->cfg;
    int B = g->sh.batch, T = g->sh.tokens, L = g->sh.cache, d = c->hidden_size, pos0 = L - T;
    Model m = {.cfg = *c, .mla = model_mla_dims(c)};
    m.cfg.n_layers = 1;
    int W = mla_cache_width(&m.mla);
    float *x = g_rand(g, "x", 0, 1, 3, B, T, d), *cache = g_rand(g, "kv_cache", 0, 1, 3, B, L, W);
    Layer ly;
    rnd_layer(g, c, 0, 0, &ly, c->n_routed_experts > 0);
    float *h_attn = g_out(g, "after_attn", DT_F32, 3, B, T, d), *o = g_out(g, "out", DT_F32, 3, B, T, d);
    float *cache_out = g_out(g, "kv_cache_out", DT_F32, 3, B, L, W);
    m.inv_freq = g_tmp(g, sizeof(float) * (size_t)m.mla.rope / 2);
    if (g->failed) return -1;
    m.layers = &ly;
    m.rope_attn_factor = rope_inv_freq(m.inv_freq, &c->rope, m.mla.rope);
    State s;
    if (state_init(&s, &m, L, T, g->e)) return -1;
    for (int b = 0; b < B; b++) {
        memset(cache + ((size_t)b * L + pos0) * W, 0, sizeof(float) * (size_t)T * W);
        memcpy(s.cache, cache + (size_t)b * L * W, sizeof(float) * (size_t)L * W);
        memcpy(s.x, x + (size_t)b * T * d, sizeof(float) * (size_t)T * d);
        if (model_layer_forward(&m, &s, &ly, s.cache, T, pos0, ATTN_ABSORBED, h_attn + (size_t)b * T * d, g->e))
            return state_free(&s), -1;
        memcpy(o + (size_t)b * T * d, s.x, sizeof(float) * (size_t)T * d);
        memcpy(cache_out + (size_t)b * L * W, s.cache, sizeof(float) * (size_t)L * W);
    }
    state_free(&s);
    return 0;
}

/* Random weights for the whole model, named model.<HF name> (model.model.layers.0..., model.lm_head.weight). */
static int rnd_model(Golden *g, Model *m) {
    memset(m, 0, sizeof *m);
    m->cfg = g->cfg;
    const Config *c = &m->cfg;
    Manifest mf;
    if (manifest_model(&mf, c, 0, g->e)) return g->failed = 1, -1;
    m->embed = g_mat(g, &mf, 1, -1, M_EMBED, 0);
    m->layers = g_tmp(g, sizeof(Layer) * (size_t)c->n_layers);
    for (int l = 0; m->layers && l < c->n_layers; l++) rnd_layer(g, c, 1, l, &m->layers[l], config_is_moe_layer(c, l));
    m->final_norm = g_vec(g, &mf, 1, -1, M_FINAL_NORM);
    m->lm_head = c->tie_word_embeddings ? m->embed : g_mat(g, &mf, 1, -1, M_LM_HEAD, 0);
    manifest_free(&mf);
    m->mla = model_mla_dims(c);
    if (!(m->inv_freq = g_tmp(g, sizeof(float) * (size_t)c->qk_rope_head_dim / 2))) return -1;
    m->rope_attn_factor = rope_inv_freq(m->inv_freq, &c->rope, c->qk_rope_head_dim);
    return g->failed ? -1 : 0;
}

/* The whole model on B prompts from position 0 (random weights, or --model's checkpoint with its
 * prompt): every layer's hidden state after attention and after the FFN, and the logits. */
static int e_model(Golden *g) {
    Model rnd;
    const Model *m = g->ckpt;
    if (!m && rnd_model(g, &rnd)) return -1;
    if (!m) m = &rnd;
    const Config *c = &m->cfg;
    int B = g->ckpt ? 1 : g->sh.batch, T = g->sh.tokens, d = c->hidden_size, V = c->vocab_size, nl = c->n_layers;
    int *tok = g->ckpt ? g_given(g, "tokens", DT_I32, g->ids, 2, 1, T) : g_ids(g, "tokens", V, 2, B, T);
    float *emb = g_out(g, "hidden.embed", DT_F32, 3, B, T, d), **ha = g_tmp(g, sizeof(float *) * 2 * nl), **hf = ha + nl;
    for (int l = 0; ha && l < nl; l++) {
        char n[64];
        snprintf(n, sizeof n, "hidden.%d.after_attn", l);
        ha[l] = g_out(g, n, DT_F32, 3, B, T, d);
        snprintf(n, sizeof n, "hidden.%d.after_ffn", l);
        hf[l] = g_out(g, n, DT_F32, 3, B, T, d);
    }
    float *fin = g_out(g, "hidden.final_norm", DT_F32, 3, B, T, d), *logits = g_out(g, "logits", DT_F32, 3, B, T, V);
    float *check = g_tmp(g, sizeof(float) * (size_t)T * V);
    if (g->failed) return -1;
    for (int i = 0; i < B * T; i++)
        if (tok[i] < 0 || tok[i] >= V) return error_set(g->e, "model.tokens: id %d is outside the vocabulary [0, %d)", tok[i], V);
    State s, s2;
    if (state_init(&s, m, T, T, g->e)) return -1;
    if (state_init(&s2, m, T, T, g->e)) return state_free(&s), -1;
    int rc = 0;
    for (int b = 0; b < B && !rc; b++) {
        size_t o = (size_t)b * T * d;
        for (int t = 0; t < T; t++) tensor_rows_f32(s.x + (size_t)t * d, &m->embed, tok[b * T + t], 1);
        memcpy(emb + o, s.x, sizeof(float) * (size_t)T * d);
        for (int l = 0; l < nl && !rc; l++) {
            rc = model_layer_forward(m, &s, &m->layers[l], state_layer_cache(&s, l), T, 0, ATTN_ABSORBED, ha[l] + o, g->e);
            memcpy(hf[l] + o, s.x, sizeof(float) * (size_t)T * d);
        }
        if (rc) break;
        rmsnorm(s.h, s.x, m->final_norm, T, d, c->rms_norm_eps);
        memcpy(fin + o, s.h, sizeof(float) * (size_t)T * d);
        if ((rc = matmul(logits + (size_t)b * T * V, s.h, &m->lm_head, T, g->e))) break;
        /* the loop above (embedding, layers, final norm, lm_head) must still be model_forward's:
         * the same logits, bit for bit */
        rc = model_forward(m, &s2, tok + b * T, T, 0, check, 0, ATTN_ABSORBED, g->e);
        if (!rc && memcmp(check, logits + (size_t)b * T * V, sizeof(float) * (size_t)T * V))
            rc = error_set(g->e, "model: golden_fns.c's loop over the layers no longer gives model_forward's "
                           "logits; update e_model to match model.c");
    }
    state_free(&s);
    state_free(&s2);
    return rc;
}

/* ---- the registry ------------------------------------------------------------------------------ */

/* Tolerances: 0 = bit-exact (integer, FP8 codes and the FP8 (de)quantization, which is one IEEE
 * division or multiplication per element); 1e-5 for element-wise math and short reductions (GPU
 * expf/sinf differ by an ulp or two); 1e-4 for anything holding an FP32 matmul or a softmax (other
 * summation orders: ~sqrt(K) * 2^-24 relative, K up to 16384); 1e-3 for whole-model logits, whose
 * rounding compounds over the layers. fp8_gemm: 1e-5, its inner sums are exact in any order and
 * only the per-block FP32 promotions may be reordered. Not for TF32 or BF16 GPU math (see notes). */
const GoldenFn GOLDEN_FNS[] = {
    {"rmsnorm", e_rmsnorm, 1e-5, 0, "rmsnorm"},
    {"rope_table", e_rope_table, 1e-5, 0, "rope_inv_freq, rope_softmax_mscale, rope_rotate (cos/sin)"},
    {"rope", e_rope, 1e-5, 0, "rope_rotate"},
    {"mla_query", e_mla_query, 1e-4, 0, "mla_query"},
    {"mla_latent", e_mla_latent, 1e-4, 0, "mla_latent"},
    {"mla_naive", e_mla_naive, 1e-4, 0, "mla_attend_naive"},
    {"mla_absorbed", e_mla_absorbed, 1e-4, 0, "mla_attend_absorbed"},
    {"mla_decode", e_mla_decode, 1e-4, 0, "mla_attend_absorbed (T = 1)"},
    {"mla_kv_rows", e_mla_kv_rows, 0, 0, "mla_kv_encode_row, mla_kv_decode_row (f32, bf16, fp8)"},
    {"mla_paged_decode", e_mla_paged_decode, 1e-4, 0, "mla_paged_write, mla_paged_decode_latent (f32, bf16, fp8)"},
    {"moe_gate", e_moe_gate, 1e-5, 1, "moe_gate"},
    {"ffn_swiglu", e_ffn_swiglu, 1e-4, 0, "ffn_swiglu"},
    {"moe", e_moe, 1e-4, 1, "moe_forward, matmul + moe_gate (routing)"},
    {"fp8_quant_block", e_fp8_quant_block, 0, 0, "fp8_quant_block"},
    {"fp8_dequant_block", e_fp8_dequant_block, 0, 0, "fp8_dequant_block"},
    {"fp8_quant_act", e_fp8_quant_act, 0, 0, "fp8_quant_act"},
    {"fp8_dequant_act", e_fp8_dequant_act, 0, 0, "fp8_dequant_act"},
    {"fp8_gemm", e_fp8_gemm, 1e-5, 0, "fp8_quant_act, fp8_quant_block, fp8_gemm, matmul"},
    {"decoder_layer", e_decoder_layer, 1e-4, 0, "rmsnorm, mla_*, rope_rotate, matmul, moe_forward/ffn_swiglu"},
    {"model", e_model, 1e-3, 0, "model_forward, layer by layer"},
};
_Static_assert(sizeof GOLDEN_FNS / sizeof GOLDEN_FNS[0] == GOLDEN_N_FNS, "update GOLDEN_N_FNS in golden.h");

