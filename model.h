/* model.h - Config (from HF config.json), the checkpoint's weights, State, and the forward pass. */
#ifndef MODEL_H
#define MODEL_H

#include <stdio.h>

#include "ops.h"
#include "rope.h"
#include "moe.h"
#include "mla.h"
#include "safetensors.h"

typedef struct {
    char model_type[32];        /* deepseek_v2 | deepseek_v3 | kimi_k2 */
    int vocab_size;
    int hidden_size;            /* d */
    int intermediate_size;      /* dense FFN width */
    int moe_intermediate_size;  /* each expert's width */
    int n_layers;               /* num_hidden_layers (the MTP module is layer index n_layers) */
    int n_heads;                /* n_h */
    int q_lora_rank;            /* d_c' ; 0 when config says null (q_proj maps d -> n_h*(nope+rope)) */
    int kv_lora_rank;           /* d_c */
    int qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    int n_routed_experts;       /* 0: every layer dense */
    int n_shared_experts;
    int num_experts_per_tok;
    int n_group, topk_group;
    float routed_scaling_factor;
    char dtype[16];             /* torch_dtype / dtype as config.json states it ("" when absent) */
    int norm_topk_prob;         /* what the router does: renormalize the chosen weights */
    int norm_topk_prob_ignored; /* deepseek_v2 with "norm_topk_prob": true, which HF's V2 router
                                 * ignores (config.c) */
    ScoringFunc scoring_func;
    TopkMethod topk_method;
    int first_k_dense_replace;
    int moe_layer_freq;
    float rms_norm_eps;
    int max_position_embeddings;
    RopeConfig rope;
    int num_nextn_predict_layers;
    int tie_word_embeddings;
    int bos_token_id, eos_token_id; /* -1 when absent */
    /* quantization_config (FP8): fp8 = 1 when quant_method is "fp8" */
    int fp8;
    int fp8_block[2];           /* weight_block_size, [128, 128] */
    char fp8_fmt[8];            /* "e4m3" */
} Config;

/* Parse config.json. Missing optional fields take HF's defaults for the model_type; a missing
 * required field or a wrong type is an error naming the file and the field. */
int config_load(Config *c, const char *path, Error *e);
int config_parse(Config *c, const char *json_text, const char *source_name, Error *e);

/* Is layer l a MoE layer (else the dense FFN)? */
int config_is_moe_layer(const Config *c, int l);

/* Parameter counts from the config alone: total (main model, without the MTP module), activated
 * per token (without the input embedding table, a lookup: V3 gives 671.0B and 36.6B, the report's
 * "671B total, 37B activated"), and the MTP module's own weights (embedding and head shared). */
void config_param_counts(const Config *c, double *total, double *activated, double *mtp_extra);

/* The summary `run inspect` prints: layers, dims, experts and routing, rope (with its table and the
 * softmax scale), quantization, parameter counts; the HF rules applied to this config are named. */
void config_print(FILE *f, const Config *c);

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

typedef enum { ATTN_ABSORBED, ATTN_NAIVE } AttnForm;

/* Activations for up to max_T tokens per forward call, and the latent cache
 * [n_layers][ctx][d_c + d_R] (576 floats per token per layer in V3). */
typedef struct {
    int ctx, max_T;
    float *cache;
    float *x, *h, *q, *q_scratch, *latent, *attn, *out; /* [max_T, ...] */
    /* with an MTP module: the main model's normed final hidden state of every position [ctx, d],
     * the MTP layer's own latent cache [ctx, d_c + d_R], and its input [max_T, 2d] */
    float *hidden, *mtp_cache, *mtp_in;
    void *dev; /* on a GPU (device.h, model.cu): everything lives there and the arrays above are NULL */
} State;

int state_init(State *s, const Model *m, int ctx, int max_T, Error *e);
void state_free(State *s);

/* Run tokens [T] at positions pos .. pos+T-1 (the cache must hold positions < pos already).
 * logits: [T, vocab] for every position, or [1, vocab] for the last one if last_only. T may exceed
 * max_T (it is processed in chunks). Fails if pos + T > ctx. */
int model_forward(const Model *m, State *s, const int *tokens, int T, int pos, float *logits,
                  int last_only, AttnForm form, Error *e);

/* A random checkpoint for config.json at config_path (written to out_dir with model.safetensors,
 * F32): weights N(0, 1/fan_in), norms near 1, a small positive correction bias, embeddings N(0, 1);
 * the same seed gives the same bytes anywhere (Rng). with_mtp adds the MTP module at layer index
 * num_hidden_layers (and sets num_nextn_predict_layers to 1 in the written config). */
int model_init_random(const char *config_path, const char *out_dir, uint64_t seed, int with_mtp, Error *e);

/* MTP drafts for positions pos .. pos+T-1: next_tokens [T] are t_{i+1}; reads s->hidden (filled by
 * model_forward for those positions) and writes logits [T, vocab] for tokens i+2 (last_only: only
 * the last position's, [vocab], the one a draft needs). The MTP cache must hold positions < pos.
 * Fails if the model has no MTP module. */
int mtp_forward(const Model *m, State *s, const int *next_tokens, int T, int pos, float *logits, int last_only,
                Error *e);

#endif
