/* config.h - Config, the model's shape and rules as a Hugging Face config.json states them (config.c
 * reads it). Nothing here knows about weights: model.h, the manifest and the tools build on it. */
#ifndef CONFIG_H
#define CONFIG_H

#include <stdio.h>

#include "ops.h"
#include "rope.h"
#include "moe.h"

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

/* Limits a config must keep (config.c says why): each size at most this. */
#define CONFIG_MAX_VOCAB    (1 << 22) /* tokens; V3 129280, Kimi K2 163840 */
#define CONFIG_MAX_WIDTH    (1 << 16) /* hidden_size, kv_lora_rank, q_lora_rank; V3 7168, 512, 1536 */
#define CONFIG_MAX_FFN      (1 << 18) /* intermediate_size, moe_intermediate_size; V3 18432, 2048 */
#define CONFIG_MAX_LAYERS   4096      /* V3 61 */
#define CONFIG_MAX_HEADS    4096      /* V3 128 */
#define CONFIG_MAX_HEAD_DIM 4096      /* qk_nope / qk_rope / v head dims; V3 128, 64, 128 */

/* Parse config.json. Missing optional fields take HF's defaults for the model_type; a missing
 * required field, a wrong type or a size past the limits above is an error naming the file, the
 * field, the value and the limit. */
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

#endif
