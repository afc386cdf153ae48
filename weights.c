/* weights.c - model_load: open a checkpoint directory (config.json + safetensors), check every
 * tensor's presence, shape and dtype against the config, and point Model's weights into the mapping.
 * FP8 and BF16 matrices stay as stored (matmul widens them a row block at a time); the small vectors
 * (norm weights, correction bias, FP8 block scales) are widened to FP32 arrays that Model owns.
 */
#include "model.h"
#include "manifest.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Records p for model_free; NULL (p freed) when p is NULL or the list cannot grow: out of memory. */
static void *own(Model *m, void *p) {
    void **o = p ? realloc(m->owned, sizeof(void *) * (size_t)(m->n_owned + 1)) : NULL;
    if (!o) {
        free(p);
        return NULL;
    }
    m->owned = o;
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
    float *f = own(m, st_to_f32(t));
    if (!f) error_set(e, "%s: out of memory widening %lld values to FP32", name, (long long)t->numel);
    return f;
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
    /* matmul's decode kernels record here, on their first call, whether any code is NaN */
    if (dt == DT_F8_E4M3 && !(out->nan_codes = own(m, calloc(1, 1))))
        return error_set(e, "%s: out of memory", name);
    return 0;
}

/* Where manifest entry x goes in m: *mat for a matrix, *vec for a vector. */
static void slot_of(Model *m, const ManifestEntry *x, Tensor **mat, const float ***vec) {
    Layer *L = x->layer < 0 ? NULL : x->layer < m->cfg.n_layers ? &m->layers[x->layer] : &m->mtp.layer;
    Ffn *f = NULL;
    if (x->slot == M_GATE || x->slot == M_UP || x->slot == M_DOWN)
        f = x->ffn == MANIFEST_DENSE ? &L->dense : x->ffn == MANIFEST_SHARED ? &L->moe.shared : &L->experts[x->ffn];
    *mat = NULL;
    *vec = NULL;
    switch (x->slot) {
    case M_EMBED: *mat = &m->embed; break;
    case M_FINAL_NORM: *vec = &m->final_norm; break;
    case M_LM_HEAD: *mat = &m->lm_head; break;
    case M_ATTN_NORM: *vec = &L->attn_norm; break;
    case M_FFN_NORM: *vec = &L->ffn_norm; break;
    case M_Q_A: *mat = &L->attn.q_a; break;
    case M_Q_A_NORM: *vec = &L->attn.q_a_norm; break;
    case M_Q_B: *mat = &L->attn.q_b; break;
    case M_Q: *mat = &L->attn.q; break;
    case M_KV_A: *mat = &L->attn.kv_a; break;
    case M_KV_A_NORM: *vec = &L->attn.kv_a_norm; break;
    case M_KV_B: *mat = &L->attn.kv_b; break;
    case M_O: *mat = &L->attn.o; break;
    case M_ROUTER: *mat = &L->moe.router; break;
    case M_BIAS: *vec = &L->moe.bias; break;
    case M_GATE: *mat = &f->gate; break;
    case M_UP: *mat = &f->up; break;
    case M_DOWN: *mat = &f->down; break;
    case M_ENORM: *vec = &m->mtp.enorm; break;
    case M_HNORM: *vec = &m->mtp.hnorm; break;
    case M_EH_PROJ: *mat = &m->mtp.eh_proj; break;
    case M_HEAD_NORM: *vec = &m->mtp.head_norm; break;
    case M_HEAD: *mat = &m->mtp.head; break;
    case M_N_SLOTS: break;
    }
}

static int load_entry(Model *m, const ManifestEntry *x, Error *e) {
    Tensor *mat;
    const float **vec;
    slot_of(m, x, &mat, &vec);
    int absent = (x->optional || x->slot == M_LM_HEAD) && !st_find(&m->st, x->name);
    if (absent && x->slot == M_LM_HEAD && m->cfg.tie_word_embeddings) return *mat = m->embed, 0;
    if (absent && x->optional) return *mat = m->lm_head, 0; /* the MTP's shared_head.head: lm_head */
    if (vec) return (*vec = load_vector(m, x->name, x->rows, e)) ? 0 : -1;
    return load_matrix(m, mat, x->name, x->rows, x->cols, e);
}

/* What a layer is before its tensors load: dense or MoE, the gate's settings, the experts' array. */
static int setup_layer(Model *m, Layer *L, int l, Error *e) {
    const Config *c = &m->cfg;
    if (!(L->is_moe = config_is_moe_layer(c, l))) return 0;
    L->moe.gate = model_moe_gate(c);
    L->moe.experts = L->experts = own(m, calloc((size_t)c->n_routed_experts, sizeof(Ffn)));
    return L->experts ? 0 : error_set(e, "out of memory for layer %d's %d experts", l, c->n_routed_experts);
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
    Manifest mf;
    if (manifest_model(&mf, c, 1, e)) goto fail;
    /* the MTP module (the manifest's last entries, layer index n_layers) when its eh_proj is there */
    m->has_mtp = st_find(&m->st, manifest_find(&mf, c->n_layers, M_EH_PROJ, 0)->name) != NULL;
    while (!m->has_mtp && mf.n > 0 && mf.e[mf.n - 1].layer == c->n_layers) mf.n--;
    int rc = !(m->layers = own(m, calloc((size_t)c->n_layers, sizeof(Layer))))
                 ? error_set(e, "out of memory for %d layers", c->n_layers) : 0;
    for (int l = 0; l < c->n_layers && !rc; l++) rc = setup_layer(m, &m->layers[l], l, e);
    if (!rc && m->has_mtp) rc = setup_layer(m, &m->mtp.layer, c->n_layers, e);
    for (int i = 0; i < mf.n && !rc; i++) rc = load_entry(m, &mf.e[i], e);
    manifest_free(&mf);
    if (rc) goto fail;
    m->mla = model_mla_dims(c);
    m->inv_freq = own(m, malloc(sizeof(float) * (size_t)(c->qk_rope_head_dim / 2 + 1)));
    if (!m->inv_freq) {
        rc = error_set(e, "out of memory for the RoPE table");
        goto fail;
    }
    m->rope_attn_factor = rope_inv_freq(m->inv_freq, &c->rope, c->qk_rope_head_dim);
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
