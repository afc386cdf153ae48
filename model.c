/* model.c - the whole DeepSeek-V3 forward pass: embedding, pre-norm decoder layers (MLA, then MoE
 * or dense FFN), final norm, lm_head. Weights are views into the mmapped safetensors.
 *
 *   h = embed[token]
 *   for each layer:  h += o_proj(MLA(rmsnorm(h)))        (mla.c; RoPE from rope.c)
 *                    h += FFN(rmsnorm(h))                 (moe.c: MoE, or dense for l < first_k_dense)
 *   logits = lm_head(rmsnorm(h))
 *
 * One MLA step as this file wires it (T tokens at positions pos .. pos+T-1):
 *   q      = mla_query(h)                 [T, n_h*(nope+rope)]   then rotate each head's q_pe
 *   latent = mla_latent(h)                [T, d_c + d_R]         then rotate k_pe, append to cache
 *   attn   = mla_attend_absorbed(q, cache[0 .. pos+T))           or the naive form (--naive)
 * Prefill and decode are the same call: decode is T = 1.
 */
#include "model.h"
#include "device.h"

#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static void *own(Model *m, void *p) {
    m->owned = realloc(m->owned, sizeof(void *) * (size_t)(m->n_owned + 1));
    m->owned[m->n_owned++] = p;
    return p;
}

static int is_float_dtype(DType t) { return t == DT_F32 || t == DT_BF16 || t == DT_F16; }

/* A float tensor widened to FP32 (norm weights, correction bias, FP8 block scales); an integer or
 * FP8 dtype here is a broken checkpoint, not something to convert. */
static float *load_floats(Model *m, const char *name, int ndim, const int64_t *shape, Error *e) {
    const StTensor *t = st_expect(&m->st, name, ndim, shape, e);
    if (!t) return NULL;
    if (!is_float_dtype(t->dtype)) {
        error_set(e, "%s: dtype %s, expected F32, BF16 or F16", name, dtype_name(t->dtype));
        return NULL;
    }
    return own(m, st_to_f32(t));
}

/* A vector [n] widened to FP32. */
static const float *load_vector(Model *m, const char *name, int n, Error *e) {
    int64_t shape[1] = {n};
    return load_floats(m, name, 1, shape, e);
}

/* A matrix [rows, cols] as stored; FP8 brings its weight_scale_inv (block scales) along. */
static int load_matrix(Model *m, Tensor *out, const char *name, int rows, int cols, Error *e) {
    int64_t shape[2] = {rows, cols};
    const StTensor *t = st_expect(&m->st, name, 2, shape, e);
    if (!t) return -1;
    DType dt = t->dtype;
    if (dt != DT_F32 && dt != DT_BF16 && dt != DT_F16 && dt != DT_F8_E4M3 && dt != DT_F8_E5M2)
        return error_set(e, "%s: dtype %s is not a weight type (expected F32, BF16, F16 or F8)", name, dtype_name(dt));
    *out = (Tensor){.data = t->data, .dtype = dt, .rows = rows, .cols = cols};
    if (dt != DT_F8_E4M3 && dt != DT_F8_E5M2) return 0;
    int br = m->cfg.fp8 ? m->cfg.fp8_block[0] : 128, bc = m->cfg.fp8 ? m->cfg.fp8_block[1] : 128;
    char sname[256];
    snprintf(sname, sizeof sname, "%s_scale_inv", name);
    int64_t sshape[2] = {(rows + br - 1) / br, (cols + bc - 1) / bc};
    if (!(out->scale_inv = load_floats(m, sname, 2, sshape, e))) return -1;
    out->block_r = br;
    out->block_c = bc;
    return 0;
}

static int load_ffn(Model *m, Ffn *f, const char *prefix, int d, int inter, Error *e) {
    char n[256];
    snprintf(n, sizeof n, "%s.gate_proj.weight", prefix);
    if (load_matrix(m, &f->gate, n, inter, d, e)) return -1;
    snprintf(n, sizeof n, "%s.up_proj.weight", prefix);
    if (load_matrix(m, &f->up, n, inter, d, e)) return -1;
    snprintf(n, sizeof n, "%s.down_proj.weight", prefix);
    return load_matrix(m, &f->down, n, d, inter, e);
}

static int load_attention(Model *m, MlaWeights *w, const char *p, Error *e) {
    const Config *c = &m->cfg;
    int d = c->hidden_size, nh = c->n_heads, qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    char n[256];
#define NAME(s) (snprintf(n, sizeof n, "%s.self_attn.%s", p, s), n)
    if (c->q_lora_rank) {
        if (load_matrix(m, &w->q_a, NAME("q_a_proj.weight"), c->q_lora_rank, d, e)) return -1;
        if (!(w->q_a_norm = load_vector(m, NAME("q_a_layernorm.weight"), c->q_lora_rank, e))) return -1;
        if (load_matrix(m, &w->q_b, NAME("q_b_proj.weight"), nh * qk, c->q_lora_rank, e)) return -1;
    } else if (load_matrix(m, &w->q, NAME("q_proj.weight"), nh * qk, d, e)) return -1;
    if (load_matrix(m, &w->kv_a, NAME("kv_a_proj_with_mqa.weight"), c->kv_lora_rank + c->qk_rope_head_dim, d, e)) return -1;
    if (!(w->kv_a_norm = load_vector(m, NAME("kv_a_layernorm.weight"), c->kv_lora_rank, e))) return -1;
    if (load_matrix(m, &w->kv_b, NAME("kv_b_proj.weight"), nh * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank, e)) return -1;
    return load_matrix(m, &w->o, NAME("o_proj.weight"), d, nh * c->v_head_dim, e);
#undef NAME
}

static int load_layer(Model *m, Layer *L, int l, Error *e) {
    const Config *c = &m->cfg;
    int d = c->hidden_size;
    char p[64], n[256];
    snprintf(p, sizeof p, "model.layers.%d", l);
    snprintf(n, sizeof n, "%s.input_layernorm.weight", p);
    if (!(L->attn_norm = load_vector(m, n, d, e))) return -1;
    snprintf(n, sizeof n, "%s.post_attention_layernorm.weight", p);
    if (!(L->ffn_norm = load_vector(m, n, d, e))) return -1;
    if (load_attention(m, &L->attn, p, e)) return -1;
    L->is_moe = config_is_moe_layer(c, l);
    if (!L->is_moe) {
        snprintf(n, sizeof n, "%s.mlp", p);
        return load_ffn(m, &L->dense, n, d, c->intermediate_size, e);
    }
    Moe *moe = &L->moe;
    moe->gate = (MoeGate){.n_experts = c->n_routed_experts, .top_k = c->num_experts_per_tok,
                          .n_group = c->n_group, .topk_group = c->topk_group, .scoring = c->scoring_func,
                          .method = c->topk_method, .norm_topk_prob = c->norm_topk_prob,
                          .routed_scaling_factor = c->routed_scaling_factor};
    snprintf(n, sizeof n, "%s.mlp.gate.weight", p);
    if (load_matrix(m, &moe->router, n, c->n_routed_experts, d, e)) return -1;
    snprintf(n, sizeof n, "%s.mlp.gate.e_score_correction_bias", p);
    moe->bias = NULL;
    if (c->topk_method == TOPK_NOAUX_TC && !(moe->bias = load_vector(m, n, c->n_routed_experts, e))) return -1;
    L->experts = own(m, calloc((size_t)c->n_routed_experts, sizeof(Ffn)));
    for (int x = 0; x < c->n_routed_experts; x++) {
        snprintf(n, sizeof n, "%s.mlp.experts.%d", p, x);
        if (load_ffn(m, &L->experts[x], n, d, c->moe_intermediate_size, e)) return -1;
    }
    moe->experts = L->experts;
    memset(&moe->shared, 0, sizeof moe->shared);
    snprintf(n, sizeof n, "%s.mlp.shared_experts", p);
    if (c->n_shared_experts > 0 && load_ffn(m, &moe->shared, n, d, c->n_shared_experts * c->moe_intermediate_size, e)) return -1;
    return 0;
}

static int load_mtp(Model *m, Error *e) {
    const Config *c = &m->cfg;
    Mtp *t = &m->mtp;
    int d = c->hidden_size;
    char n[256];
#define MTP(s) (snprintf(n, sizeof n, "model.layers.%d.%s", c->n_layers, s), n)
    if (!(t->enorm = load_vector(m, MTP("enorm.weight"), d, e))) return -1;
    if (!(t->hnorm = load_vector(m, MTP("hnorm.weight"), d, e))) return -1;
    if (!(t->head_norm = load_vector(m, MTP("shared_head.norm.weight"), d, e))) return -1;
    if (load_matrix(m, &t->eh_proj, MTP("eh_proj.weight"), d, 2 * d, e)) return -1;
    if (!st_find(&m->st, MTP("shared_head.head.weight"))) t->head = m->lm_head;
    else if (load_matrix(m, &t->head, n, c->vocab_size, d, e)) return -1;
#undef MTP
    return load_layer(m, &t->layer, c->n_layers, e);
}

int model_load(Model *m, const char *dir, Error *e) {
    memset(m, 0, sizeof *m);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (config_load(&m->cfg, path, e)) return -1;
    if (st_open_dir(&m->st, dir, e)) return -1;
    const Config *c = &m->cfg;
    int d = c->hidden_size;
    if (load_matrix(m, &m->embed, "model.embed_tokens.weight", c->vocab_size, d, e)) goto fail;
    if (c->tie_word_embeddings && !st_find(&m->st, "lm_head.weight")) m->lm_head = m->embed;
    else if (load_matrix(m, &m->lm_head, "lm_head.weight", c->vocab_size, d, e)) goto fail;
    if (!(m->final_norm = load_vector(m, "model.norm.weight", d, e))) goto fail;
    m->layers = own(m, calloc((size_t)c->n_layers, sizeof(Layer)));
    for (int l = 0; l < c->n_layers; l++)
        if (load_layer(m, &m->layers[l], l, e)) goto fail;

    int qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    m->mla = (MlaDims){.d = d, .n_heads = c->n_heads, .q_lora_rank = c->q_lora_rank,
                       .kv_lora_rank = c->kv_lora_rank, .nope = c->qk_nope_head_dim,
                       .rope = c->qk_rope_head_dim, .v = c->v_head_dim, .eps = c->rms_norm_eps,
                       .softmax_scale = (float)(pow(qk, -0.5) * rope_softmax_mscale(&c->rope))};
    m->inv_freq = own(m, malloc(sizeof(float) * (size_t)c->qk_rope_head_dim / 2));
    m->rope_attn_factor = rope_inv_freq(m->inv_freq, &c->rope, c->qk_rope_head_dim);
    snprintf(path, sizeof path, "model.layers.%d.eh_proj.weight", c->n_layers);
    m->has_mtp = st_find(&m->st, path) != NULL;
    if (m->has_mtp && load_mtp(m, e)) goto fail;
    return 0;
fail:
    model_free(m);
    return -1;
}

void model_free(Model *m) {
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    st_close(&m->st);
    memset(m, 0, sizeof *m);
}

int state_init(State *s, const Model *m, int ctx, int max_T, Error *e) {
    const Config *c = &m->cfg;
    memset(s, 0, sizeof *s);
    if (ctx <= 0 || max_T <= 0) return error_set(e, "context length %d and chunk %d must be positive", ctx, max_T);
    size_t width = (size_t)mla_cache_width(&m->mla), d = (size_t)c->hidden_size, T = (size_t)max_T;
    size_t nh = (size_t)c->n_heads, qk = (size_t)(c->qk_nope_head_dim + c->qk_rope_head_dim);
    s->ctx = ctx;
    s->max_T = max_T;
    s->cache = calloc((size_t)c->n_layers * ctx * width, sizeof(float));
    s->x = malloc(sizeof(float) * T * d);
    s->h = malloc(sizeof(float) * T * d);
    s->out = malloc(sizeof(float) * T * d);
    s->q = malloc(sizeof(float) * T * nh * qk);
    s->q_scratch = malloc(sizeof(float) * T * (size_t)(c->q_lora_rank ? c->q_lora_rank : 1));
    s->latent = malloc(sizeof(float) * T * width);
    s->attn = malloc(sizeof(float) * T * nh * (size_t)c->v_head_dim);
    if (m->has_mtp) {
        s->hidden = malloc(sizeof(float) * (size_t)ctx * d);
        s->mtp_cache = calloc((size_t)ctx * width, sizeof(float));
        s->mtp_in = malloc(sizeof(float) * T * 2 * d);
    }
    if (!s->cache || !s->x || !s->h || !s->out || !s->q || !s->q_scratch || !s->latent || !s->attn ||
        (m->has_mtp && (!s->hidden || !s->mtp_cache || !s->mtp_in))) {
        state_free(s);
        return error_set(e, "out of memory for a %d-token latent cache (%.1f MB)", ctx,
                         (double)c->n_layers * ctx * width * 4 / 1e6);
    }
    return 0;
}

void state_free(State *s) {
    if (s->dev) state_free_device(s);
    free(s->cache); free(s->x); free(s->h); free(s->out); free(s->q); free(s->q_scratch);
    free(s->latent); free(s->attn); free(s->hidden); free(s->mtp_cache); free(s->mtp_in);
    memset(s, 0, sizeof *s);
}

/* One decoder layer on s->x [T, d] in place, positions pos .. pos+T-1, its latent cache given. */
static void layer_forward(const Model *m, State *s, const Layer *L, float *cache, int T, int pos, AttnForm form) {
    const Config *c = &m->cfg;
    const MlaDims *md = &m->mla;
    int d = c->hidden_size, width = mla_cache_width(md), d_R = md->rope;
    int qk = md->nope + md->rope, q_stride = md->n_heads * qk;
    /* attention */
    rmsnorm(s->h, s->x, L->attn_norm, T, d, c->rms_norm_eps);
    mla_query(s->q, s->q_scratch, s->h, T, &L->attn, md);
    mla_latent(s->latent, s->h, T, &L->attn, md);
    for (int t = 0; t < T; t++) {
        rope_rotate(s->q + (size_t)t * q_stride + md->nope, md->n_heads, qk, d_R, pos + t, m->inv_freq,
                    m->rope_attn_factor, c->rope.interleaved);
        rope_rotate(s->latent + (size_t)t * width + md->kv_lora_rank, 1, width, d_R, pos + t, m->inv_freq,
                    m->rope_attn_factor, c->rope.interleaved);
    }
    memcpy(cache + (size_t)pos * width, s->latent, sizeof(float) * (size_t)T * width);
    if (form == ATTN_NAIVE) mla_attend_naive(s->attn, s->q, cache, T, pos, &L->attn, md);
    else mla_attend_absorbed(s->attn, s->q, cache, T, pos, &L->attn, md);
    matmul(s->out, s->attn, &L->attn.o, T);
    for (size_t i = 0; i < (size_t)T * d; i++) s->x[i] += s->out[i];
    /* feed-forward */
    rmsnorm(s->h, s->x, L->ffn_norm, T, d, c->rms_norm_eps);
    if (L->is_moe) moe_forward(s->out, s->h, T, &L->moe);
    else ffn_swiglu(s->out, s->h, T, &L->dense);
    for (size_t i = 0; i < (size_t)T * d; i++) s->x[i] += s->out[i];
}

/* One chunk of T <= max_T tokens; the final hidden states (normed) are left in s->h, and copied to
 * s->hidden when there is an MTP module to feed. */
static void forward_chunk(const Model *m, State *s, const int *tokens, int T, int pos, AttnForm form) {
    const Config *c = &m->cfg;
    int d = c->hidden_size, width = mla_cache_width(&m->mla);
    for (int t = 0; t < T; t++) tensor_rows_f32(s->x + (size_t)t * d, &m->embed, tokens[t], 1);
    for (int l = 0; l < c->n_layers; l++)
        layer_forward(m, s, &m->layers[l], s->cache + (size_t)l * s->ctx * width, T, pos, form);
    rmsnorm(s->h, s->x, m->final_norm, T, d, c->rms_norm_eps);
    if (s->hidden) memcpy(s->hidden + (size_t)pos * d, s->h, sizeof(float) * (size_t)T * d);
}

int model_forward(const Model *m, State *s, const int *tokens, int T, int pos, float *logits,
                  int last_only, AttnForm form, Error *e) {
    const Config *c = &m->cfg;
    if (T <= 0) return error_set(e, "no tokens to run");
    if (pos < 0 || pos + T > s->ctx)
        return error_set(e, "positions %d..%d do not fit the %d-token cache (raise --ctx)", pos, pos + T - 1, s->ctx);
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= c->vocab_size)
            return error_set(e, "token id %d at index %d is outside the vocabulary [0, %d)", tokens[t], t, c->vocab_size);
    if (s->dev) return model_forward_device(m, s, tokens, T, pos, logits, last_only, form, e);
    for (int done = 0; done < T; done += s->max_T) {
        int n = T - done < s->max_T ? T - done : s->max_T;
        forward_chunk(m, s, tokens + done, n, pos + done, form);
        if (!last_only)
            matmul(logits + (size_t)done * c->vocab_size, s->h, &m->lm_head, n);
        else if (done + n == T)
            matmul(logits, s->h + (size_t)(n - 1) * c->hidden_size, &m->lm_head, 1);
    }
    return 0;
}

int mtp_forward(const Model *m, State *s, const int *next_tokens, int T, int pos, float *logits, int last_only,
                Error *e) {
    const Config *c = &m->cfg;
    const Mtp *mtp = &m->mtp;
    int d = c->hidden_size;
    if (s->dev) return mtp_forward_device(m, s, next_tokens, T, pos, logits, last_only, e);
    if (!m->has_mtp || !s->hidden) return error_set(e, "this checkpoint has no MTP module (no tensors at layer index %d)", c->n_layers);
    if (T <= 0 || T > s->max_T || pos < 0 || pos + T > s->ctx)
        return error_set(e, "MTP positions %d..%d do not fit (chunk %d, cache %d)", pos, pos + T - 1, s->max_T, s->ctx);
    for (int t = 0; t < T; t++) {
        if (next_tokens[t] < 0 || next_tokens[t] >= c->vocab_size)
            return error_set(e, "token id %d is outside the vocabulary [0, %d)", next_tokens[t], c->vocab_size);
        float *in = s->mtp_in + (size_t)t * 2 * d;                     /* [enorm(emb) ; hnorm(h)] */
        tensor_rows_f32(in, &m->embed, next_tokens[t], 1);
        rmsnorm(in, in, mtp->enorm, 1, d, c->rms_norm_eps);
        rmsnorm(in + d, s->hidden + (size_t)(pos + t) * d, mtp->hnorm, 1, d, c->rms_norm_eps);
    }
    matmul(s->x, s->mtp_in, &mtp->eh_proj, T);
    layer_forward(m, s, &mtp->layer, s->mtp_cache, T, pos, ATTN_ABSORBED);
    rmsnorm(s->h, s->x, mtp->head_norm, T, d, c->rms_norm_eps);
    if (last_only) matmul(logits, s->h + (size_t)(T - 1) * d, &mtp->head, 1);
    else matmul(logits, s->h, &mtp->head, T);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Random checkpoints (run init): the same tensor names and shapes the loader above expects.
 */
typedef struct {
    StWriteTensor *t;
    float **data;
    int n, cap;
    Rng rng;
} Manifest;

/* kind: 0 matrix N(0, 1/cols), 1 norm weight in [0.8, 1.2], 2 bias in [0.01, 0.11], 3 embedding N(0, 1) */
static void add(Manifest *f, int kind, int rows, int cols, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void add(Manifest *f, int kind, int rows, int cols, const char *fmt, ...) {
    if (f->n == f->cap) {
        f->cap = f->cap ? 2 * f->cap : 64;
        f->t = realloc(f->t, sizeof(StWriteTensor) * f->cap);
        f->data = realloc(f->data, sizeof(float *) * f->cap);
    }
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    size_t n = (size_t)rows * (cols ? cols : 1);
    float *d = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) {
        if (kind == 0 || kind == 3) {
            float gauss = rng_normal(&f->rng);
            d[i] = kind == 0 ? gauss / sqrtf((float)cols) : gauss;
        } else {
            float u = rng_uniform(&f->rng);
            rng_uniform(&f->rng); /* every value takes two draws, as a normal does */
            d[i] = kind == 1 ? 0.8f + 0.4f * u : 0.01f + 0.1f * u;
        }
    }
    f->data[f->n] = d;
    f->t[f->n] = (StWriteTensor){.name = strdup(name), .dtype = DT_F32, .ndim = cols ? 2 : 1, .shape = {rows, cols}, .data = d};
    f->n++;
}

static void add_ffn(Manifest *f, const char *p, int d, int inter) {
    add(f, 0, inter, d, "%s.gate_proj.weight", p);
    add(f, 0, inter, d, "%s.up_proj.weight", p);
    add(f, 0, d, inter, "%s.down_proj.weight", p);
}

static void add_layer(Manifest *f, const Config *c, int l) {
    int d = c->hidden_size, nh = c->n_heads, qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    char p[300];
    add(f, 1, d, 0, "model.layers.%d.input_layernorm.weight", l);
    add(f, 1, d, 0, "model.layers.%d.post_attention_layernorm.weight", l);
    if (c->q_lora_rank) {
        add(f, 0, c->q_lora_rank, d, "model.layers.%d.self_attn.q_a_proj.weight", l);
        add(f, 1, c->q_lora_rank, 0, "model.layers.%d.self_attn.q_a_layernorm.weight", l);
        add(f, 0, nh * qk, c->q_lora_rank, "model.layers.%d.self_attn.q_b_proj.weight", l);
    } else {
        add(f, 0, nh * qk, d, "model.layers.%d.self_attn.q_proj.weight", l);
    }
    add(f, 0, c->kv_lora_rank + c->qk_rope_head_dim, d, "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", l);
    add(f, 1, c->kv_lora_rank, 0, "model.layers.%d.self_attn.kv_a_layernorm.weight", l);
    add(f, 0, nh * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank, "model.layers.%d.self_attn.kv_b_proj.weight", l);
    add(f, 0, d, nh * c->v_head_dim, "model.layers.%d.self_attn.o_proj.weight", l);
    if (!config_is_moe_layer(c, l)) {
        snprintf(p, sizeof p, "model.layers.%d.mlp", l);
        add_ffn(f, p, d, c->intermediate_size);
        return;
    }
    add(f, 0, c->n_routed_experts, d, "model.layers.%d.mlp.gate.weight", l);
    if (c->topk_method == TOPK_NOAUX_TC) add(f, 2, c->n_routed_experts, 0, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
    for (int x = 0; x < c->n_routed_experts; x++) {
        snprintf(p, sizeof p, "model.layers.%d.mlp.experts.%d", l, x);
        add_ffn(f, p, d, c->moe_intermediate_size);
    }
    snprintf(p, sizeof p, "model.layers.%d.mlp.shared_experts", l);
    if (c->n_shared_experts) add_ffn(f, p, d, c->n_shared_experts * c->moe_intermediate_size);
}

int model_init_random(const char *config_path, const char *out_dir, uint64_t seed, int with_mtp, Error *e) {
    Config c;
    if (config_load(&c, config_path, e)) return -1;
    Manifest f = {0};
    rng_seed(&f.rng, seed);
    int d = c.hidden_size, L = c.n_layers;
    add(&f, 3, c.vocab_size, d, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) add_layer(&f, &c, l);
    add(&f, 1, d, 0, "model.norm.weight");
    add(&f, 0, c.vocab_size, d, "lm_head.weight");
    if (with_mtp) {
        add(&f, 1, d, 0, "model.layers.%d.enorm.weight", L);
        add(&f, 1, d, 0, "model.layers.%d.hnorm.weight", L);
        add(&f, 0, d, 2 * d, "model.layers.%d.eh_proj.weight", L);
        add(&f, 1, d, 0, "model.layers.%d.shared_head.norm.weight", L);
        add_layer(&f, &c, L);
    }
    int rc = -1;
    char path[4096];
    /* config.json: the given one, with num_nextn_predict_layers set to what was written */
    char *text = read_file(config_path, NULL, NULL);
    cJSON *root = text ? cJSON_Parse(text) : NULL;
    free(text);
    snprintf(path, sizeof path, "%s/config.json", out_dir);
    FILE *out = NULL;
    if (!root) error_set(e, "%s: cannot read", config_path);
    else if (mkdir(out_dir, 0755) && errno != EEXIST) error_set(e, "%s: cannot create the directory", out_dir);
    else if (!(out = fopen(path, "wb"))) error_set(e, "%s: cannot write", path);
    else {
        cJSON_DeleteItemFromObject(root, "num_nextn_predict_layers");
        cJSON_AddNumberToObject(root, "num_nextn_predict_layers", with_mtp ? 1 : 0);
        cJSON_DeleteItemFromObject(root, "quantization_config"); /* the weights written are F32 */
        char *json = cJSON_Print(root);
        fputs(json, out);
        fputc('\n', out);
        free(json);
        fclose(out);
        snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
        const char *keys[] = {"format", "generator"}, *vals[] = {"pt", "dsv3.c run init"};
        rc = st_write(path, f.t, f.n, keys, vals, 2, e);
    }
    cJSON_Delete(root);
    for (int i = 0; i < f.n; i++) {
        free((char *)f.t[i].name);
        free(f.data[i]);
    }
    free(f.t);
    free(f.data);
    return rc;
}
