/* manifest.c - the tensors of a DeepSeek-V2/V3 checkpoint, named as Hugging Face names them.
 *
 * Shapes, with the 671B sizes (d = 7168, n_h = 128, d_c' = 1536, d_c = 512, d_R = 64, nope = v = 128,
 * 256 experts of width 2048, dense width 18432, vocab 129280):
 *   model.embed_tokens.weight                 [vocab, d]
 *   model.layers.L.input_layernorm.weight     [d]          post_attention_layernorm.weight [d]
 *     self_attn.q_a_proj.weight               [d_c', d]    (q_lora_rank null: q_proj [n_h*(nope+d_R), d])
 *     self_attn.q_a_layernorm.weight          [d_c']
 *     self_attn.q_b_proj.weight               [n_h*(nope+d_R), d_c']
 *     self_attn.kv_a_proj_with_mqa.weight     [d_c + d_R, d]
 *     self_attn.kv_a_layernorm.weight         [d_c]
 *     self_attn.kv_b_proj.weight              [n_h*(nope+v), d_c]
 *     self_attn.o_proj.weight                 [d, n_h*v]
 *     mlp.{gate,up}_proj.weight [inter, d], mlp.down_proj.weight [d, inter]       (layers < first_k_dense)
 *     mlp.gate.weight [E, d], mlp.gate.e_score_correction_bias [E] (noaux_tc), and the same three FFN
 *     weights under mlp.experts.X. (width moe_intermediate_size) and mlp.shared_experts. (width
 *     n_shared_experts * moe_intermediate_size)
 *   model.norm.weight [d], lm_head.weight [vocab, d]
 *   the MTP module, model.layers.N (N = num_hidden_layers): enorm, hnorm [d], eh_proj [d, 2d],
 *     shared_head.norm [d], shared_head.head [vocab, d] (optional), and a decoder layer as above.
 */
#include "manifest.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Each slot's name (inside its layer for a layer's, after the FFN's prefix for M_GATE/UP/DOWN). */
static const struct {
    const char *name;
    ManifestKind kind;
} NAMES[M_N_SLOTS] = {
    [M_EMBED] = {"model.embed_tokens.weight", MK_EMBED},
    [M_FINAL_NORM] = {"model.norm.weight", MK_NORM},
    [M_LM_HEAD] = {"lm_head.weight", MK_MATRIX},
    [M_ATTN_NORM] = {"input_layernorm.weight", MK_NORM},
    [M_FFN_NORM] = {"post_attention_layernorm.weight", MK_NORM},
    [M_Q_A] = {"self_attn.q_a_proj.weight", MK_LINEAR},
    [M_Q_A_NORM] = {"self_attn.q_a_layernorm.weight", MK_NORM},
    [M_Q_B] = {"self_attn.q_b_proj.weight", MK_LINEAR},
    [M_Q] = {"self_attn.q_proj.weight", MK_LINEAR},
    [M_KV_A] = {"self_attn.kv_a_proj_with_mqa.weight", MK_LINEAR},
    [M_KV_A_NORM] = {"self_attn.kv_a_layernorm.weight", MK_NORM},
    [M_KV_B] = {"self_attn.kv_b_proj.weight", MK_LINEAR},
    [M_O] = {"self_attn.o_proj.weight", MK_LINEAR},
    [M_ROUTER] = {"mlp.gate.weight", MK_MATRIX},
    [M_BIAS] = {"mlp.gate.e_score_correction_bias", MK_BIAS},
    [M_GATE] = {"gate_proj.weight", MK_LINEAR},
    [M_UP] = {"up_proj.weight", MK_LINEAR},
    [M_DOWN] = {"down_proj.weight", MK_LINEAR},
    [M_ENORM] = {"enorm.weight", MK_NORM},
    [M_HNORM] = {"hnorm.weight", MK_NORM},
    [M_EH_PROJ] = {"eh_proj.weight", MK_MATRIX},
    [M_HEAD_NORM] = {"shared_head.norm.weight", MK_NORM},
    [M_HEAD] = {"shared_head.head.weight", MK_MATRIX},
};

static int is_ffn_slot(ManifestSlot s) { return s == M_GATE || s == M_UP || s == M_DOWN; }

static int add(Manifest *m, ManifestSlot slot, int layer, int ffn, int rows, int cols, Error *e) {
    if (m->n == m->cap) {
        int cap = m->cap ? 2 * m->cap : 64;
        ManifestEntry *p = realloc(m->e, sizeof(ManifestEntry) * (size_t)cap);
        if (!p) return error_set(e, "out of memory for the tensor manifest (%d entries)", cap);
        m->e = p;
        m->cap = cap;
    }
    ManifestEntry *x = &m->e[m->n++];
    *x = (ManifestEntry){.rows = rows, .cols = cols, .kind = NAMES[slot].kind, .slot = slot, .layer = layer,
                         .ffn = is_ffn_slot(slot) ? ffn : 0, .optional = slot == M_HEAD};
    char ffn_prefix[48] = "";
    if (is_ffn_slot(slot) && ffn == MANIFEST_DENSE) snprintf(ffn_prefix, sizeof ffn_prefix, "mlp.");
    else if (is_ffn_slot(slot) && ffn == MANIFEST_SHARED) snprintf(ffn_prefix, sizeof ffn_prefix, "mlp.shared_experts.");
    else if (is_ffn_slot(slot)) snprintf(ffn_prefix, sizeof ffn_prefix, "mlp.experts.%d.", ffn);
    if (layer >= 0) x->local = snprintf(x->name, sizeof x->name, "model.layers.%d.", layer);
    snprintf(x->name + x->local, sizeof x->name - (size_t)x->local, "%s%s", ffn_prefix, NAMES[slot].name);
    return 0;
}

static int add_ffn(Manifest *m, int l, int ffn, int d, int inter, Error *e) {
    return add(m, M_GATE, l, ffn, inter, d, e) || add(m, M_UP, l, ffn, inter, d, e) || add(m, M_DOWN, l, ffn, d, inter, e)
               ? -1 : 0;
}

int manifest_layer(Manifest *m, const Config *c, int l, int is_moe, Error *e) {
    int d = c->hidden_size, nh = c->n_heads, qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    int ql = c->q_lora_rank, dc = c->kv_lora_rank, E = c->n_routed_experts;
    int rc = add(m, M_ATTN_NORM, l, 0, d, 0, e) || add(m, M_FFN_NORM, l, 0, d, 0, e);
    if (ql) rc = rc || add(m, M_Q_A, l, 0, ql, d, e) || add(m, M_Q_A_NORM, l, 0, ql, 0, e) || add(m, M_Q_B, l, 0, nh * qk, ql, e);
    else rc = rc || add(m, M_Q, l, 0, nh * qk, d, e);
    rc = rc || add(m, M_KV_A, l, 0, dc + c->qk_rope_head_dim, d, e) || add(m, M_KV_A_NORM, l, 0, dc, 0, e) ||
         add(m, M_KV_B, l, 0, nh * (c->qk_nope_head_dim + c->v_head_dim), dc, e) ||
         add(m, M_O, l, 0, d, nh * c->v_head_dim, e);
    if (!is_moe) return rc || add_ffn(m, l, MANIFEST_DENSE, d, c->intermediate_size, e) ? -1 : 0;
    rc = rc || add(m, M_ROUTER, l, 0, E, d, e) || (c->topk_method == TOPK_NOAUX_TC && add(m, M_BIAS, l, 0, E, 0, e));
    for (int x = 0; x < E && !rc; x++) rc = add_ffn(m, l, x, d, c->moe_intermediate_size, e);
    if (c->n_shared_experts > 0) rc = rc || add_ffn(m, l, MANIFEST_SHARED, d, c->n_shared_experts * c->moe_intermediate_size, e);
    return rc ? -1 : 0;
}

int manifest_model(Manifest *m, const Config *c, int with_mtp, Error *e) {
    memset(m, 0, sizeof *m);
    int d = c->hidden_size, V = c->vocab_size, N = c->n_layers;
    int rc = add(m, M_EMBED, -1, 0, V, d, e);
    for (int l = 0; l < N && !rc; l++) rc = manifest_layer(m, c, l, config_is_moe_layer(c, l), e);
    rc = rc || add(m, M_FINAL_NORM, -1, 0, d, 0, e) || add(m, M_LM_HEAD, -1, 0, V, d, e);
    if (with_mtp)
        rc = rc || add(m, M_ENORM, N, 0, d, 0, e) || add(m, M_HNORM, N, 0, d, 0, e) || add(m, M_EH_PROJ, N, 0, d, 2 * d, e) ||
             add(m, M_HEAD_NORM, N, 0, d, 0, e) || add(m, M_HEAD, N, 0, V, d, e) ||
             manifest_layer(m, c, N, config_is_moe_layer(c, N), e);
    if (rc) manifest_free(m);
    return rc ? -1 : 0;
}

const ManifestEntry *manifest_find(const Manifest *m, int layer, ManifestSlot slot, int ffn) {
    for (int i = 0; i < m->n; i++) {
        const ManifestEntry *x = &m->e[i];
        if (x->layer == layer && x->slot == slot && (!is_ffn_slot(slot) || x->ffn == ffn)) return x;
    }
    return NULL;
}

void manifest_free(Manifest *m) {
    free(m->e);
    memset(m, 0, sizeof *m);
}

/* The slot whose name is p among slots [lo, hi), or -1. */
static int slot_named(const char *p, ManifestSlot lo, ManifestSlot hi) {
    for (int s = lo; s < (int)hi; s++)
        if (strcmp(p, NAMES[s].name) == 0) return s;
    return -1;
}

int manifest_kind_of(const char *name) {
    int s = slot_named(name, M_EMBED, M_ATTN_NORM), k = 0, x = 0;
    if (s >= 0) return NAMES[s].kind;
    sscanf(name, "model.layers.%*[0-9].%n", &k); /* k: characters matched, 0 when not a layer's */
    if (!k) return -1;
    const char *p = name + k;
    sscanf(p, "mlp.experts.%*[0-9].%n", &x);
    const char *f = x ? p + x : !strncmp(p, "mlp.shared_experts.", 19) ? p + 19 : !strncmp(p, "mlp.", 4) ? p + 4 : NULL;
    if (f && (s = slot_named(f, M_GATE, M_ENORM)) >= 0) return NAMES[s].kind; /* an FFN's weight */
    s = slot_named(p, M_ATTN_NORM, M_GATE);
    if (s < 0) s = slot_named(p, M_ENORM, M_N_SLOTS);
    return s < 0 ? -1 : (int)NAMES[s].kind;
}
