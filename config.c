/* config.c - Config from a Hugging Face config.json (model_type deepseek_v2, deepseek_v3, kimi_k2).
 *
 * Both spellings of the rope settings load:
 *   DeepSeek's own files:  "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 40, ...}
 *   transformers 5:        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000, ...}
 * Absent optional fields take the defaults of HF's DeepseekV3Config / DeepseekV2Config, which
 * differ by model_type (see DEFAULTS below). `"q_lora_rank": null` (DeepSeek-V2-Lite) means no query
 * compression. A missing required field or a field of the wrong type is an error naming the file
 * and the field.
 */
#include "config.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const cJSON *root;
    const char *src;
    Error *e;
    int failed;
} Reader;

/* An integer field: absent or null -> dflt (or an error if dflt is REQUIRED). */
#define REQUIRED INT32_MIN
static int get_int(Reader *r, const cJSON *obj, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) {
        if (dflt == REQUIRED && !r->failed) {
            r->failed = 1;
            error_set(r->e, "%s: required field \"%s\" is missing", r->src, key);
        }
        return dflt == REQUIRED ? 0 : dflt;
    }
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0) v = cJSON_GetArrayItem(v, 0); /* eos lists */
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || fabs(v->valuedouble) > 2e9) {
        if (!r->failed) {
            r->failed = 1;
            error_set(r->e, "%s: field \"%s\": expected an integer, found %s", r->src, key,
                      cJSON_IsString(v) ? "a string" : !cJSON_IsNumber(v) ? "another type" : fabs(v->valuedouble) > 2e9 ? "a number out of range" : "a fraction");
        }
        return 0;
    }
    return (int)v->valuedouble;
}

static float get_float(Reader *r, const cJSON *obj, const char *key, float dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return dflt;
    if (!cJSON_IsNumber(v)) {
        if (!r->failed) {
            r->failed = 1;
            error_set(r->e, "%s: field \"%s\": expected a number, found %s", r->src, key,
                      cJSON_IsString(v) ? "a string" : cJSON_IsBool(v) ? "a boolean" : "another type");
        }
        return dflt;
    }
    return (float)v->valuedouble;
}

static int get_bool(Reader *r, const cJSON *obj, const char *key, int dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) return dflt;
    if (!cJSON_IsBool(v)) {
        if (!r->failed) {
            r->failed = 1;
            error_set(r->e, "%s: field \"%s\": expected true or false, found %s", r->src, key,
                      cJSON_IsNumber(v) ? "a number" : cJSON_IsString(v) ? "a string" : "another type");
        }
        return dflt;
    }
    return cJSON_IsTrue(v);
}

static const char *get_string(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* rope_parameters (transformers 5) or rope_scaling + rope_theta (DeepSeek's files). */
static void parse_rope(Reader *r, Config *c, int is_v2) {
    const cJSON *root = r->root;
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
    if (!cJSON_IsObject(rp)) rp = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    RopeConfig *rc = &c->rope;
    memset(rc, 0, sizeof *rc);
    rc->theta = get_float(r, root, "rope_theta", 10000.0f);
    if (cJSON_IsObject(rp)) rc->theta = get_float(r, rp, "rope_theta", rc->theta);
    const char *type = cJSON_IsObject(rp) ? get_string(rp, "rope_type") : NULL;
    if (!type && cJSON_IsObject(rp)) type = get_string(rp, "type");
    rc->type = ROPE_DEFAULT;
    if (type && strcmp(type, "yarn") == 0) {
        rc->type = ROPE_YARN;
        rc->factor = get_float(r, rp, "factor", 0.0f);
        rc->original_max_pos = get_int(r, rp, "original_max_position_embeddings", 0);
        if (rc->factor <= 0 && rc->original_max_pos > 0) /* HF: factor defaults to the length ratio */
            rc->factor = (float)c->max_position_embeddings / (float)rc->original_max_pos;
        if (rc->original_max_pos <= 0) rc->original_max_pos = c->max_position_embeddings;
        /* HF: `get("beta_fast") or 32`, so 0 (or null) means the default too */
        rc->beta_fast = get_float(r, rp, "beta_fast", 0.0f);
        rc->beta_slow = get_float(r, rp, "beta_slow", 0.0f);
        if (rc->beta_fast == 0) rc->beta_fast = 32.0f;
        if (rc->beta_slow == 0) rc->beta_slow = 1.0f;
        rc->truncate = get_bool(r, rp, "truncate", 1);
        rc->mscale = get_float(r, rp, "mscale", 0.0f);
        rc->mscale_all_dim = get_float(r, rp, "mscale_all_dim", 0.0f);
        rc->attention_factor = get_float(r, rp, "attention_factor", 0.0f);
        if (rc->factor <= 0 && !r->failed) {
            r->failed = 1;
            error_set(r->e, "%s: rope scaling \"yarn\" needs \"factor\" (or original_max_position_embeddings)", r->src);
        }
    } else if (type && strcmp(type, "default") != 0 && !r->failed) {
        r->failed = 1;
        error_set(r->e, "%s: rope type \"%s\" is not supported (expected \"yarn\" or \"default\")", r->src, type);
    }
    /* V2 in HF rotates adjacent pairs (complex multiply); V3 follows rope_interleave (default true) */
    rc->interleaved = is_v2 ? 1 : get_bool(r, root, "rope_interleave", 1);
}

int config_parse(Config *c, const char *json_text, const char *src, Error *e) {
    memset(c, 0, sizeof *c);
    cJSON *root = cJSON_Parse(json_text);
    if (!root || !cJSON_IsObject(root)) {
        /* where the parser stopped: line number, and the next few characters on one line */
        const char *at = root ? NULL : cJSON_GetErrorPtr();
        char near[24] = "";
        int line = 1;
        if (at && at >= json_text && at <= json_text + strlen(json_text)) {
            for (const char *p = json_text; p < at; p++) line += *p == '\n';
            size_t k = 0;
            for (const char *p = at; *p && k < 20; p++) near[k++] = (unsigned char)*p < 0x20 ? ' ' : *p;
            near[k] = 0;
        }
        if (at && near[0]) error_set(e, "%s: not valid JSON (line %d, near \"%s\")", src, line, near);
        else if (at) error_set(e, "%s: not valid JSON (line %d: the text ends too early)", src, line);
        else error_set(e, "%s: not a JSON object", src);
        cJSON_Delete(root);
        return -1;
    }
    Reader r = {root, src, e, 0};
    const char *mt = get_string(root, "model_type");
    if (!mt) {
        cJSON_Delete(root);
        return error_set(e, "%s: required field \"model_type\" is missing (expected deepseek_v2, deepseek_v3 or kimi_k2)", src);
    }
    int is_v2 = strcmp(mt, "deepseek_v2") == 0;
    if (!is_v2 && strcmp(mt, "deepseek_v3") != 0 && strcmp(mt, "kimi_k2") != 0) {
        error_set(e, "%s: model_type \"%s\" is not supported (expected deepseek_v2, deepseek_v3 or kimi_k2)", src, mt);
        cJSON_Delete(root);
        return -1;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", mt);
    const char *dt = get_string(root, "torch_dtype");
    if (!dt) dt = get_string(root, "dtype"); /* transformers 5's spelling */
    snprintf(c->dtype, sizeof c->dtype, "%s", dt ? dt : "");

    /* DEFAULTS: HF DeepseekV3Config (V3, Kimi K2) and DeepseekV2Config when a field is absent */
    c->vocab_size = get_int(&r, root, "vocab_size", REQUIRED);
    c->hidden_size = get_int(&r, root, "hidden_size", REQUIRED);
    c->intermediate_size = get_int(&r, root, "intermediate_size", REQUIRED);
    c->n_layers = get_int(&r, root, "num_hidden_layers", REQUIRED);
    c->n_heads = get_int(&r, root, "num_attention_heads", REQUIRED);
    c->kv_lora_rank = get_int(&r, root, "kv_lora_rank", 512);
    c->q_lora_rank = get_int(&r, root, "q_lora_rank", cJSON_IsNull(cJSON_GetObjectItem(root, "q_lora_rank")) ? 0 : 1536);
    c->qk_nope_head_dim = get_int(&r, root, "qk_nope_head_dim", 128);
    c->qk_rope_head_dim = get_int(&r, root, "qk_rope_head_dim", 64);
    c->v_head_dim = get_int(&r, root, "v_head_dim", 128);
    c->moe_intermediate_size = get_int(&r, root, "moe_intermediate_size", is_v2 ? 1407 : 2048);
    c->n_routed_experts = get_int(&r, root, "n_routed_experts", is_v2 ? 64 : 256);
    c->n_shared_experts = get_int(&r, root, "n_shared_experts", is_v2 ? 2 : 1);
    c->num_experts_per_tok = get_int(&r, root, "num_experts_per_tok", is_v2 ? 0 : 8);
    c->n_group = get_int(&r, root, "n_group", is_v2 ? 1 : 8);
    c->topk_group = get_int(&r, root, "topk_group", is_v2 ? 1 : 4);
    c->routed_scaling_factor = get_float(&r, root, "routed_scaling_factor", is_v2 ? 1.0f : 2.5f);
    c->norm_topk_prob = get_bool(&r, root, "norm_topk_prob", is_v2 ? 0 : 1);
    /* HF's DeepseekV2Moe never renormalizes, whatever the flag says (it multiplies the chosen
     * softmax scores by routed_scaling_factor and stops); DeepSeek's own V2 code renormalizes and
     * then skips the scaling. We follow HF, the oracle; every released V2 checkpoint sets the flag
     * false, where all three agree. tests/fixtures/v2_norm pins it. */
    if (is_v2 && c->norm_topk_prob) {
        c->norm_topk_prob = 0;
        c->norm_topk_prob_ignored = 1;
    }
    c->first_k_dense_replace = get_int(&r, root, "first_k_dense_replace", is_v2 ? 0 : 3);
    c->moe_layer_freq = get_int(&r, root, "moe_layer_freq", 1);
    c->rms_norm_eps = get_float(&r, root, "rms_norm_eps", 1e-6f);
    c->max_position_embeddings = get_int(&r, root, "max_position_embeddings", is_v2 ? 2048 : 4096);
    c->num_nextn_predict_layers = get_int(&r, root, "num_nextn_predict_layers", 0);
    c->tie_word_embeddings = get_bool(&r, root, "tie_word_embeddings", 0);
    c->bos_token_id = get_int(&r, root, "bos_token_id", -1);
    c->eos_token_id = get_int(&r, root, "eos_token_id", -1);

    const char *sf = get_string(root, "scoring_func");
    c->scoring_func = sf ? (strcmp(sf, "softmax") == 0 ? SCORE_SOFTMAX : SCORE_SIGMOID)
                         : (is_v2 ? SCORE_SOFTMAX : SCORE_SIGMOID);
    const char *tm = get_string(root, "topk_method");
    if (!tm) tm = is_v2 ? "greedy" : "noaux_tc";
    if (strcmp(tm, "greedy") == 0) c->topk_method = TOPK_GREEDY;
    else if (strcmp(tm, "group_limited_greedy") == 0) c->topk_method = TOPK_GROUP_LIMITED_GREEDY;
    else if (strcmp(tm, "noaux_tc") == 0) c->topk_method = TOPK_NOAUX_TC;
    else if (!r.failed) {
        r.failed = 1;
        error_set(e, "%s: topk_method \"%s\" is not supported (expected greedy, group_limited_greedy or noaux_tc)", src, tm);
    }
    if (sf && strcmp(sf, "softmax") != 0 && strcmp(sf, "sigmoid") != 0 && !r.failed) {
        r.failed = 1;
        error_set(e, "%s: scoring_func \"%s\" is not supported (expected sigmoid or softmax)", src, sf);
    }
    parse_rope(&r, c, is_v2);

    const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (cJSON_IsObject(q)) {
        const char *method = get_string(q, "quant_method");
        if (!method || strcmp(method, "fp8") != 0) {
            if (!r.failed) error_set(e, "%s: quantization_config.quant_method \"%s\" is not supported (expected fp8)", src, method ? method : "(missing)");
            r.failed = 1;
        }
        c->fp8 = 1;
        const char *fmt = get_string(q, "fmt");
        snprintf(c->fp8_fmt, sizeof c->fp8_fmt, "%s", fmt ? fmt : "e4m3");
        const cJSON *bs = cJSON_GetObjectItemCaseSensitive(q, "weight_block_size");
        c->fp8_block[0] = c->fp8_block[1] = 128;
        if (bs && (!cJSON_IsArray(bs) || cJSON_GetArraySize(bs) != 2)) {
            c->fp8_block[0] = c->fp8_block[1] = 0; /* reported below */
        } else if (bs) {
            for (int k = 0; k < 2; k++) {
                const cJSON *v = cJSON_GetArrayItem(bs, k);
                double x = cJSON_IsNumber(v) ? v->valuedouble : 0;
                c->fp8_block[k] = x == floor(x) && x > 0 && x < 1 << 20 ? (int)x : 0; /* 0: reported below */
            }
        }
    }
    cJSON_Delete(root);
    if (r.failed) return -1;

    /* consistency: things the forward pass divides by or indexes with (each message gives the values) */
    if (c->vocab_size <= 0 || c->hidden_size <= 0 || c->n_layers <= 0 || c->n_heads <= 0)
        return error_set(e, "%s: vocab_size, hidden_size, num_hidden_layers and num_attention_heads must be positive, found %d, %d, %d, %d",
                         src, c->vocab_size, c->hidden_size, c->n_layers, c->n_heads);
    if (c->qk_rope_head_dim <= 0 || c->qk_rope_head_dim % 2)
        return error_set(e, "%s: qk_rope_head_dim must be positive and even, found %d", src, c->qk_rope_head_dim);
    if (c->kv_lora_rank <= 0 || c->qk_nope_head_dim < 0 || c->v_head_dim <= 0)
        return error_set(e, "%s: kv_lora_rank and v_head_dim must be positive and qk_nope_head_dim >= 0, found %d, %d, %d",
                         src, c->kv_lora_rank, c->v_head_dim, c->qk_nope_head_dim);
    if (c->n_routed_experts > MOE_MAX_EXPERTS)
        return error_set(e, "%s: n_routed_experts must be <= %d, found %d", src, MOE_MAX_EXPERTS, c->n_routed_experts);
    if (c->n_routed_experts > 0) {
        if (c->num_experts_per_tok <= 0 || c->num_experts_per_tok > c->n_routed_experts || c->num_experts_per_tok > MOE_MAX_TOPK)
            return error_set(e, "%s: num_experts_per_tok must be in 1..n_routed_experts (and <= %d), found %d of %d",
                             src, MOE_MAX_TOPK, c->num_experts_per_tok, c->n_routed_experts);
        if (c->n_group < 1 || c->n_routed_experts % c->n_group || c->topk_group < 1 || c->topk_group > c->n_group)
            return error_set(e, "%s: n_group must divide n_routed_experts and topk_group be in 1..n_group, found n_group %d, "
                             "n_routed_experts %d, topk_group %d", src, c->n_group, c->n_routed_experts, c->topk_group);
        /* the kept groups must hold top_k experts, or experts masked to -inf would be picked */
        int grouped = c->n_group > 1 && c->topk_method != TOPK_GREEDY;
        if (grouped && c->topk_group * (c->n_routed_experts / c->n_group) < c->num_experts_per_tok)
            return error_set(e, "%s: topk_group %d groups of %d experts cannot hold num_experts_per_tok %d", src,
                             c->topk_group, c->n_routed_experts / c->n_group, c->num_experts_per_tok);
    }
    /* LIMITS: far above every released DeepSeek/Kimi config (V3: hidden 7168, vocab 129280, 61
     * layers, 128 heads), low enough that every size the program forms from two of them fits in an
     * int and no buffer is sized from an absurd value (notes/robustness.md) */
    const struct { const char *key; int value, limit; } lim[] = {
        {"vocab_size", c->vocab_size, CONFIG_MAX_VOCAB}, {"hidden_size", c->hidden_size, CONFIG_MAX_WIDTH},
        {"intermediate_size", c->intermediate_size, CONFIG_MAX_FFN}, {"moe_intermediate_size", c->moe_intermediate_size, CONFIG_MAX_FFN},
        {"num_hidden_layers", c->n_layers, CONFIG_MAX_LAYERS}, {"num_attention_heads", c->n_heads, CONFIG_MAX_HEADS},
        {"kv_lora_rank", c->kv_lora_rank, CONFIG_MAX_WIDTH}, {"q_lora_rank", c->q_lora_rank, CONFIG_MAX_WIDTH},
        {"qk_nope_head_dim", c->qk_nope_head_dim, CONFIG_MAX_HEAD_DIM}, {"qk_rope_head_dim", c->qk_rope_head_dim, CONFIG_MAX_HEAD_DIM},
        {"v_head_dim", c->v_head_dim, CONFIG_MAX_HEAD_DIM}, {"n_shared_experts", c->n_shared_experts, MOE_MAX_EXPERTS},
        {"first_k_dense_replace", c->first_k_dense_replace, CONFIG_MAX_LAYERS},
        {"num_nextn_predict_layers", c->num_nextn_predict_layers, CONFIG_MAX_LAYERS}};
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++)
        if (lim[i].value > lim[i].limit || lim[i].value < 0)
            return error_set(e, "%s: %s %d is outside the limit 0..%d", src, lim[i].key, lim[i].value, lim[i].limit);
    if (c->moe_layer_freq < 1) return error_set(e, "%s: moe_layer_freq must be >= 1, found %d", src, c->moe_layer_freq);
    if (c->fp8 && (c->fp8_block[0] <= 0 || c->fp8_block[1] <= 0))
        return error_set(e, "%s: quantization_config.weight_block_size must be two positive integers, found [%d, %d]",
                         src, c->fp8_block[0], c->fp8_block[1]);
    return 0;
}

int config_load(Config *c, const char *path, Error *e) {
    char *text = read_file(path, NULL, e);
    if (!text) return -1;
    int rc = config_parse(c, text, path, e);
    free(text);
    return rc;
}

/* HF's DeepseekV2/V3 and DeepSeek's V3 code make every layer from first_k_dense_replace on a MoE
 * layer; moe_layer_freq (from DeepSeek's V2 remote code, 1 in every released config) is read and
 * shown by `run inspect` but, as in HF, not applied. */
int config_is_moe_layer(const Config *c, int l) {
    return c->n_routed_experts > 0 && l >= c->first_k_dense_replace;
}

/* Parameters of one decoder layer: all of them, and those one token touches. */
static void layer_params(const Config *c, int l, double *all, double *active) {
    double d = c->hidden_size, nh = c->n_heads, qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    double attn = c->q_lora_rank ? d * c->q_lora_rank + c->q_lora_rank + (double)c->q_lora_rank * nh * qk
                                 : d * nh * qk;
    attn += d * (c->kv_lora_rank + c->qk_rope_head_dim) + c->kv_lora_rank;
    attn += (double)c->kv_lora_rank * nh * (c->qk_nope_head_dim + c->v_head_dim);
    attn += nh * c->v_head_dim * d + 2 * d; /* o_proj, the two layer norms */
    if (!config_is_moe_layer(c, l)) {
        *all = *active = attn + 3 * d * c->intermediate_size;
        return;
    }
    double expert = 3 * d * c->moe_intermediate_size, router = c->n_routed_experts * (d + 1);
    double shared = expert * c->n_shared_experts;
    *all = attn + router + shared + expert * c->n_routed_experts;
    *active = attn + router + shared + expert * c->num_experts_per_tok;
}

void config_param_counts(const Config *c, double *total, double *activated, double *mtp_extra) {
    double emb = (double)c->vocab_size * c->hidden_size, d = c->hidden_size;
    /* activated: what one token multiplies with; the input embedding is a row lookup, which is how
     * DeepSeek counts "37B activated" (V3) and "2.4B" (V2-Lite) */
    double all = emb + (c->tie_word_embeddings ? 0 : emb) + d, act = all - (c->tie_word_embeddings ? 0 : emb);
    for (int l = 0; l < c->n_layers; l++) {
        double a, b;
        layer_params(c, l, &a, &b);
        all += a;
        act += b;
    }
    *total = all;
    *activated = act;
    /* MTP module: enorm, hnorm, eh_proj [d, 2d], one MoE decoder layer, shared_head.norm
     * (embedding and head shared with the main model) */
    double a, b;
    layer_params(c, c->n_layers > c->first_k_dense_replace ? c->n_layers : c->first_k_dense_replace, &a, &b);
    *mtp_extra = c->num_nextn_predict_layers * (3 * d + 2 * d * d + a);
}

/* The summary `run inspect` prints: one line per idea, the derived numbers (rope table, softmax
 * scale, parameter counts) computed by the same functions the forward pass uses. */
static const char *ROPE_NAMES[] = {"default", "yarn"};
static const char *TOPK_NAMES[] = {"greedy", "group_limited_greedy", "noaux_tc"};

void config_print(FILE *f, const Config *c) {
    fprintf(f, "model_type      %s\n", c->model_type);
    fprintf(f, "dtype           %s (config.json)\n", c->dtype[0] ? c->dtype : "not stated");
    fprintf(f, "layers          %d (%d dense first, then MoE%s)\n", c->n_layers,
           c->n_routed_experts ? c->first_k_dense_replace : c->n_layers,
           c->moe_layer_freq != 1 ? "; moe_layer_freq ignored, as HF does" : "");
    fprintf(f, "hidden          d = %d, vocab %d, dense FFN %d\n", c->hidden_size, c->vocab_size, c->intermediate_size);
    char qr[32];
    snprintf(qr, sizeof qr, c->q_lora_rank ? "%d" : "none (q_proj)", c->q_lora_rank);
    fprintf(f, "attention       MLA, %d heads; q_lora_rank %s, kv_lora_rank d_c = %d, head dims nope %d + rope %d, v %d\n",
           c->n_heads, qr, c->kv_lora_rank, c->qk_nope_head_dim, c->qk_rope_head_dim, c->v_head_dim);
    fprintf(f, "latent cache    %d floats per token per layer (d_c + d_R)\n", c->kv_lora_rank + c->qk_rope_head_dim);
    if (c->n_routed_experts)
        fprintf(f, "experts         %d routed (top %d, %d groups keep %d, %s, %s, scale %.3g%s) + %d shared, width %d\n",
               c->n_routed_experts, c->num_experts_per_tok, c->n_group, c->topk_group,
               c->scoring_func == SCORE_SIGMOID ? "sigmoid" : "softmax", TOPK_NAMES[c->topk_method],
               c->routed_scaling_factor,
               c->norm_topk_prob ? ", renormalized" : c->norm_topk_prob_ignored ? ", norm_topk_prob ignored as HF's V2 does" : "",
               c->n_shared_experts,
               c->moe_intermediate_size);
    else
        fprintf(f, "experts         none (dense model)\n");
    const RopeConfig *r = &c->rope;
    fprintf(f, "rope            %s, theta %g, %s pairs", ROPE_NAMES[r->type], r->theta, r->interleaved ? "adjacent" : "half-split");
    if (r->type == ROPE_YARN)
        fprintf(f, ", factor %g over %d positions, beta %g/%g, mscale %g/%g", r->factor, r->original_max_pos,
               r->beta_fast, r->beta_slow, r->mscale, r->mscale_all_dim);
    fprintf(f, "; max positions %d\n", c->max_position_embeddings);
    int half = c->qk_rope_head_dim / 2;
    float *inv = malloc(sizeof(float) * (size_t)(half > 0 ? half : 1));
    if (!inv) { fprintf(f, "rope table      (out of memory)\n"); return; }
    float attn_factor = rope_inv_freq(inv, r, c->qk_rope_head_dim);
    fprintf(f, "rope table      inv_freq[0..%d] = %.6g %.6g %.6g ... %.6g %.6g; cos/sin factor %.6f\n", half - 1, inv[0],
           inv[half > 1], inv[half > 2 ? 2 : 0], inv[half > 1 ? half - 2 : 0], inv[half - 1], attn_factor);
    double qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    fprintf(f, "softmax scale   (%g + %d)^-0.5 * %.6f = %.7f\n", (double)c->qk_nope_head_dim, c->qk_rope_head_dim,
           rope_softmax_mscale(r), pow(qk, -0.5) * rope_softmax_mscale(r));
    free(inv);
    if (c->fp8) fprintf(f, "quantization    fp8 %s, weight blocks %dx%d\n", c->fp8_fmt, c->fp8_block[0], c->fp8_block[1]);
    double total, active, mtp;
    config_param_counts(c, &total, &active, &mtp);
    fprintf(f, "parameters      %.4g total, %.4g activated per token (%.2f%%)", total, active, 100 * active / total);
    if (c->num_nextn_predict_layers) fprintf(f, "; MTP module(s) per config: +%.4g", mtp);
    fprintf(f, "\n");
}
