/* weights.c - model_load: open a checkpoint directory (config.json + safetensors), check every
 * tensor's presence, shape and dtype against the config, and point Model's weights into the mapping.
 * FP8 and BF16 matrices stay as stored (matmul widens them a row block at a time); the small vectors
 * (norm weights, correction bias, FP8 block scales) are widened to FP32 arrays that Model owns.
 */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    moe->gate = model_moe_gate(c);
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

MlaDims model_mla_dims(const Config *c) {
    int qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    return (MlaDims){.n_heads = c->n_heads, .q_lora_rank = c->q_lora_rank, .kv_lora_rank = c->kv_lora_rank,
                     .nope = c->qk_nope_head_dim, .rope = c->qk_rope_head_dim, .v = c->v_head_dim,
                     .eps = c->rms_norm_eps, .softmax_scale = (float)(pow(qk, -0.5) * rope_softmax_mscale(&c->rope))};
}

MoeGate model_moe_gate(const Config *c) {
    return (MoeGate){.n_experts = c->n_routed_experts, .top_k = c->num_experts_per_tok, .n_group = c->n_group,
                     .topk_group = c->topk_group, .scoring = c->scoring_func, .method = c->topk_method,
                     .norm_topk_prob = c->norm_topk_prob, .routed_scaling_factor = c->routed_scaling_factor};
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

    m->mla = model_mla_dims(c);
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
