/* manifest.h - every tensor of a DeepSeek checkpoint for a Config: HF name, shape, and kind, in one
 * table (manifest.c). The loader (weights.c), `run init` (init.c), `run quantize` (which tensors are
 * FP8) and the golden files (golden_fns.c) all read their names and shapes from here. */
#ifndef MANIFEST_H
#define MANIFEST_H

#include "config.h"

/* What a tensor is, which says how run init draws it and what DeepSeek stores it as. */
typedef enum {
    MK_LINEAR, /* a Linear weight of attention or of an FFN [out, in]: E4M3 in DeepSeek's checkpoints */
    MK_MATRIX, /* another 2-D weight, kept in BF16: the router, lm_head, the MTP's eh_proj and head */
    MK_EMBED,  /* embed_tokens [vocab, d]: a lookup, not a GEMM */
    MK_NORM,   /* an RMSNorm weight [n] */
    MK_BIAS,   /* e_score_correction_bias [n_routed_experts], F32 in DeepSeek's checkpoints */
} ManifestKind;

/* Which weight of the model a tensor is (where the loader puts it). */
typedef enum {
    M_EMBED, M_FINAL_NORM, M_LM_HEAD,
    M_ATTN_NORM, M_FFN_NORM,                                 /* input_layernorm, post_attention_layernorm */
    M_Q_A, M_Q_A_NORM, M_Q_B, M_Q, M_KV_A, M_KV_A_NORM, M_KV_B, M_O, /* self_attn */
    M_ROUTER, M_BIAS,                                        /* mlp.gate */
    M_GATE, M_UP, M_DOWN,                                    /* an FFN: mlp., an expert's, the shared experts' */
    M_ENORM, M_HNORM, M_EH_PROJ, M_HEAD_NORM, M_HEAD,        /* the MTP module's own */
    M_N_SLOTS
} ManifestSlot;

#define MANIFEST_DENSE (-1)  /* ManifestEntry.ffn: the dense mlp. of a layer < first_k_dense_replace */
#define MANIFEST_SHARED (-2) /* ManifestEntry.ffn: mlp.shared_experts. */

typedef struct {
    char name[112];     /* "model.layers.3.mlp.experts.17.down_proj.weight" */
    int local;          /* name + local is the name inside its layer ("mlp.experts.17.down_proj.weight"); 0
                         * for the model's own tensors */
    int rows, cols;     /* [rows, cols]; cols = 0: a vector [rows] */
    ManifestKind kind;
    ManifestSlot slot;
    int layer;          /* -1: the model's own (embedding, final norm, lm_head); n_layers: the MTP module */
    int ffn;            /* M_GATE, M_UP, M_DOWN: the routed expert's index, MANIFEST_DENSE or MANIFEST_SHARED */
    int optional;       /* a checkpoint may leave it out (the MTP's shared_head.head: lm_head serves); run
                         * init does */
} ManifestEntry;

typedef struct {
    ManifestEntry *e;
    int n, cap;
} Manifest;

/* The whole checkpoint, in the order run init draws it: embed_tokens, each layer, model.norm, lm_head,
 * then (with_mtp) the MTP module at layer index n_layers: enorm, hnorm, eh_proj, shared_head.norm,
 * shared_head.head (optional), and its decoder layer. Each layer: input_layernorm,
 * post_attention_layernorm, self_attn (q_a_proj, q_a_layernorm, q_b_proj or q_proj;
 * kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj), then mlp.{gate,up,down}_proj (dense) or
 * mlp.gate (router), its correction bias (noaux_tc), every expert, the shared experts.
 * Returns 0, or -1 with e set when out of memory (m is then empty). */
int manifest_model(Manifest *m, const Config *c, int with_mtp, Error *e);

/* Appends layer l's tensors (named model.layers.l.*), a MoE layer's if is_moe, else a dense one's. */
int manifest_layer(Manifest *m, const Config *c, int l, int is_moe, Error *e);

/* The entry of slot (and ffn, for M_GATE/UP/DOWN; ignored otherwise) in layer (-1: the model's own),
 * or NULL. A linear search: for a layer's manifest or a small model's. */
const ManifestEntry *manifest_find(const Manifest *m, int layer, ManifestSlot slot, int ffn);

void manifest_free(Manifest *m);

/* The kind of a tensor from its name alone, for any checkpoint and layer index (the layer may be
 * the MTP module's); -1 when the name is none of the manifest's (a weight_scale_inv, say). */
int manifest_kind_of(const char *name);

#endif
