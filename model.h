/* model.h - the checkpoint's weights (Model), the activations and latent cache (State), and the
 * forward pass (model.c); the loader is weights.c, random checkpoints init.h. */
#ifndef MODEL_H
#define MODEL_H

#include <stdio.h>

#include "config.h"
#include "mla.h"
#include "safetensors.h"

/* ---------------------------------------------------------------------------------------------
 * Weights: views into the mmapped checkpoint (FP8 and BF16 stay as stored); only the small vectors
 * (norm weights, correction bias, FP8 block scales) are widened into owned FP32 arrays.
 */
typedef struct {
    const float *attn_norm, *ffn_norm; /* input_layernorm, post_attention_layernorm [d] */
    MlaWeights attn;
    int is_moe;
    Ffn dense;                         /* layers < first_k_dense_replace */
    Moe moe;
    Ffn *experts;                      /* [n_routed_experts], owned */
} Layer;

/* The multi-token-prediction module (V3 report 2.2), stored at layer index num_hidden_layers.
 * For position i it predicts token i+2 from the main model's final hidden state h_i (after the
 * final norm, as vLLM and SGLang feed DeepSeek's weights) and the embedding of token i+1:
 *   x = eh_proj([enorm(embed(t_{i+1})) ; hnorm(h_i)]),  x = decoder_layer(x),
 *   logits = head(head_norm(x))       (its own latent cache; embedding and head shared) */
typedef struct {
    const float *enorm, *hnorm, *head_norm; /* [d] */
    Tensor eh_proj;                         /* [d, 2d] */
    Tensor head;                            /* shared_head.head, or lm_head when absent */
    Layer layer;
} Mtp;

typedef struct {
    Config cfg;
    StFile st;
    Tensor embed;            /* [vocab, d] */
    Tensor lm_head;          /* [vocab, d] */
    const float *final_norm; /* [d] */
    Layer *layers;           /* [n_layers] */
    MlaDims mla;
    float *inv_freq;         /* [d_R / 2] */
    float rope_attn_factor;
    int has_mtp;             /* tensors at layer index n_layers are present */
    Mtp mtp;
    void **owned;            /* every malloc'ed widened array, freed by model_free */
    int n_owned;
} Model;

/* Open DIR (config.json + safetensors), check every tensor's presence and shape against the
 * config. Errors name the file and tensor, expected vs found shape. */
int model_load(Model *m, const char *dir, Error *e);
void model_free(Model *m);

/* What model_load derives from the config: the attention's dims (softmax scale with YaRN's mscale^2)
 * and every MoE layer's gate settings. */
MlaDims model_mla_dims(const Config *c);
MoeGate model_moe_gate(const Config *c);

/* Activations for up to max_T tokens per forward call, and the latent caches: [n_layers][ctx] rows
 * of kv_row bytes, each token [c_kv | k_pe] stored in format kv (mla_kv.h; 576 values per token per
 * layer in V3: 2304 bytes in F32, 1152 in BF16, 656 in FP8). */
typedef struct {
    int ctx, max_T;
    MlaKvFormat kv;
    size_t kv_row;  /* mla_kv_row_bytes(kv, d_c, d_R) */
    uint8_t *cache;
    float *x, *h, *q, *q_scratch, *attn, *out; /* [max_T, ...]: x the residual stream; h, out, and mla_forward's scratch */
    float *latent;  /* [max_T, d_c + d_R]: mla_forward's new rows before they are stored */
    float *rows;    /* [ctx, d_c + d_R]: a cache widened for the attention; NULL with an F32 cache */
    /* with an MTP module: the main model's normed final hidden state of every position [ctx, d],
     * the MTP layer's own latent cache [ctx, kv_row] (the same format), and its input [max_T, 2d] */
    float *hidden, *mtp_in;
    uint8_t *mtp_cache;
    void *dev; /* on a GPU (device.h, model.cu): everything lives there and the arrays above are NULL */
} State;

/* state_init: an F32 cache (every result as without formats; exact agreement with HF).
 * state_init_kv: the cache in format kv. 0, or -1 with e set: sizes not positive, a format that
 * cannot hold the model's latent (mla_kv_row_bytes 0), no memory. */
int state_init(State *s, const Model *m, int ctx, int max_T, Error *e);
int state_init_kv(State *s, const Model *m, int ctx, int max_T, MlaKvFormat kv, Error *e);
void state_free(State *s);

/* Layer l's latent cache [ctx, kv_row]. */
static inline uint8_t *state_layer_cache(const State *s, int l) { return s->cache + (size_t)l * s->ctx * s->kv_row; }

/* Run tokens [T] at positions pos .. pos+T-1 (the cache must hold positions < pos already).
 * logits: [T, vocab] for every position, or [1, vocab] for the last one if last_only. T may exceed
 * max_T (it is processed in chunks). Fails if pos + T > ctx. */
int model_forward(const Model *m, State *s, const int *tokens, int T, int pos, float *logits,
                  int last_only, AttnForm form, Error *e);
/* The greedy next token after tokens [T] at pos (argmax of the last position's logits) for a State on
 * a device (state_init_device), where only the token id comes back; the same checks as model_forward.
 * On the CPU, take model_forward's logits and argmax. */
int model_forward_argmax(const Model *m, State *s, const int *tokens, int T, int pos, int *next, Error *e);

/* One decoder layer on s->x [T, d] in place at positions pos .. pos+T-1, with its own latent cache
 * [ctx, kv_row] in format s->kv: x += mla_forward(rmsnorm(x)), then x += FFN(rmsnorm(x)). after_attn [T, d] (or
 * NULL) gets x after the attention residual (the golden files record it). 0, or -1 with e set when
 * a scratch buffer of the attention, the FFN or a matmul cannot be allocated. */
int model_layer_forward(const Model *m, State *s, const Layer *L, uint8_t *cache, int T, int pos, AttnForm form,
                        float *after_attn, Error *e);

/* MTP drafts for positions pos .. pos+T-1: next_tokens [T] are t_{i+1}; reads s->hidden (filled by
 * model_forward for those positions) and writes logits [T, vocab] for tokens i+2 (last_only: only
 * the last position's, [vocab], the one a draft needs). The MTP cache must hold positions < pos.
 * Fails if the model has no MTP module. */
int mtp_forward(const Model *m, State *s, const int *next_tokens, int T, int pos, float *logits, int last_only,
                Error *e);

#endif
