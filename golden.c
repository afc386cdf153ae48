/* golden.c - `run golden`: the exact inputs and outputs of every component function, for a chosen
 * config, shape and seed, in one safetensors file that a GPU kernel's PyTorch/CUDA test loads.
 * This file: the command line, the portable generator, the recorder, the file (metadata, write,
 * verify). golden_fns.c: the functions recorded. notes/golden.md: names, shapes, tolerances, example.
 *
 *   run golden --config CONFIG.json --out G.safetensors [--seed S] [--tokens N] [--functions LIST]
 *              [--shape name=value ...]
 *   run golden --model DIR --tokens 5,17,42 --out G.safetensors      (a real checkpoint, layer by layer)
 *   run golden --verify G.safetensors [--model DIR] [--exact]         (recompute a file's outputs)
 *
 * A recorded function runs one C function, or a fixed composition of them, and records each argument
 * as a tensor named <function>.<argument>: rmsnorm.x, mla_absorbed.kv_cache, moe_gate.topk_idx,
 * fp8_gemm.w_scale_inv, model.hidden.2.after_ffn. Integer outputs are I32, FP8 codes F8_E4M3 beside
 * their F32 scales. The metadata holds the effective config (HF field names), the shapes, the seed,
 * the version, and per function its tolerance, the C function(s) it calls and which of its tensors
 * are inputs and which outputs.
 *
 * Shapes: B sequences (batch) of T new tokens (tokens) whose latent cache holds L rows (cache); the
 * T tokens are the last T of the L positions, so pos0 = L - T (decode: T = 1, pos0 = L - 1). Row-wise
 * functions see B*T rows, stored as [B, T, ...]. Defaults: B = 1, T = 4, L = 2T, model dims from the
 * config; --shape overrides any of SHAPE_NAMES below. A FlashMLA-like decode (128 heads, latent 512 +
 * rope 64, cache 4096) from V3's config without building the model:
 *   run golden --config V3/config.json --functions mla_decode --shape batch=4 --shape cache=4096 ...
 *
 * Random inputs, portable (the same seed gives the same input bytes on any machine and compiler).
 * Every input tensor NAME has its own stream, so adding a function never changes another's inputs:
 *     s = seed XOR fnv1a64(NAME);  r_i = splitmix64(s), i = 0, 1, ...
 *     u_i = ((r_i >> 40) - 2^23) * 2^-23         exact: uniform on [-1, 1) in steps of 2^-23
 *     x_i = fmaf(scale, u_i, offset)             one rounding, the same with or without an FMA unit
 *     ids: (r_i >> 32) * n >> 32 in [0, n);   E4M3 codes: r_i & 0xFF, NaN codes 0x7F/0xFF -> 0x7E/0xFE
 * Weights: offset 0, scale 1/sqrt(fan_in); norm weights: 1 +- 0.25; activations and caches: +-1.
 * Outputs come from OpenBLAS on one thread: two runs on one machine give identical bytes. Another
 * machine's BLAS may change the last bits of outputs (never of inputs): that is what the stated
 * tolerances and `--verify` are for.
 *
 * Verify mode runs the same functions with every input read back from the file instead of drawn,
 * and compares each output with the stored one: max|got - want| / max|want| against the tolerance
 * (or bit for bit with --exact). Integer and FP8 outputs must always match exactly.
 */
#include "golden.h"

#include <cJSON.h>
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(int) == 4, "I32 outputs are written from int arrays");

#define GOLDEN_MAX_BYTES (8.0 * (1 << 30)) /* refuse files (and memory) beyond 8 GiB */

/* ---- the generator ----------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static float uniform(uint64_t *s) { return (float)((int32_t)(splitmix64(s) >> 40) - (1 << 23)) * 0x1p-23f; }

/* ---- shapes ------------------------------------------------------------------------------------ */

static const char *SHAPE_NAMES = "batch tokens cache gemm_m gemm_n gemm_k hidden heads q_lora_rank "
                                 "kv_lora_rank nope rope v inter moe_inter experts shared top_k n_group "
                                 "topk_group vocab layers";

static int *shape_field(const char *name, Config *c, GoldenShapes *s) {
    struct { const char *name; int *p; } f[] = {
        {"batch", &s->batch}, {"tokens", &s->tokens}, {"cache", &s->cache}, {"gemm_m", &s->gemm_m},
        {"gemm_n", &s->gemm_n}, {"gemm_k", &s->gemm_k}, {"hidden", &c->hidden_size}, {"heads", &c->n_heads},
        {"q_lora_rank", &c->q_lora_rank}, {"kv_lora_rank", &c->kv_lora_rank}, {"nope", &c->qk_nope_head_dim},
        {"rope", &c->qk_rope_head_dim}, {"v", &c->v_head_dim}, {"inter", &c->intermediate_size},
        {"moe_inter", &c->moe_intermediate_size}, {"experts", &c->n_routed_experts},
        {"shared", &c->n_shared_experts}, {"top_k", &c->num_experts_per_tok}, {"n_group", &c->n_group},
        {"topk_group", &c->topk_group}, {"vocab", &c->vocab_size}, {"layers", &c->n_layers}};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (!strcmp(name, f[i].name)) return f[i].p;
    return NULL;
}

static int check_shapes(const Config *c, const GoldenShapes *s, Error *e) {
    const char *bad = NULL;
    if (s->batch < 1 || s->tokens < 1 || s->cache < s->tokens) bad = "batch and tokens must be >= 1 and cache >= tokens";
    else if (s->gemm_m < 1 || s->gemm_n < 1 || s->gemm_k < 1) bad = "gemm_m, gemm_n and gemm_k must be >= 1";
    else if (c->hidden_size < 1 || c->n_heads < 1 || c->kv_lora_rank < 1 || c->v_head_dim < 1 || c->vocab_size < 1 ||
             c->n_layers < 1 || c->intermediate_size < 1 || c->q_lora_rank < 0 || c->qk_nope_head_dim < 0)
        bad = "hidden, heads, kv_lora_rank, v, vocab, layers and inter must be >= 1, q_lora_rank and nope >= 0";
    else if (c->qk_rope_head_dim < 2 || c->qk_rope_head_dim % 2) bad = "rope must be even and >= 2";
    else if (c->n_routed_experts < 0 || c->n_routed_experts > MOE_MAX_EXPERTS) bad = "experts must be in 0..1024";
    else if (c->n_routed_experts > 0 &&
             (c->moe_intermediate_size < 1 || c->n_shared_experts < 0 || c->num_experts_per_tok < 1 ||
              c->num_experts_per_tok > c->n_routed_experts || c->num_experts_per_tok > MOE_MAX_TOPK ||
              c->n_group < 1 || c->n_routed_experts % c->n_group || c->topk_group < 1 || c->topk_group > c->n_group))
        bad = "need moe_inter >= 1, shared >= 0, top_k in 1..min(experts, 64), n_group dividing experts, topk_group in 1..n_group";
    return bad ? error_set(e, "--shape: %s", bad) : 0;
}

/* ---- the recorder: inputs drawn (or read back when verifying), outputs kept (or compared) ------- */

void *g_tmp(Golden *g, size_t bytes) {
    void *p = malloc(bytes ? bytes : 1), **t = realloc(g->tmp, sizeof(void *) * (size_t)(g->n_tmp + 1));
    if (!p || !t) {
        free(p);
        if (t) g->tmp = t;
        g->failed = 1;
        error_set(g->e, "%s: out of memory (%.3g MB of scratch)", g->fn, bytes / 1e6);
        return NULL;
    }
    g->tmp = t;
    return g->tmp[g->n_tmp++] = p;
}

/* A new tensor <function>.<arg> [dims...]. An input is read from the file when verifying; otherwise
 * *fresh is set and the caller fills it. NULL (and g->failed) on any error. */
static void *add(Golden *g, const char *arg, DType dt, int output, int *fresh, int ndim, va_list ap) {
    *fresh = 0;
    if (g->failed) return NULL;
    if (g->n == g->cap) {
        GoldenTensor *r = realloc(g->ts, sizeof(GoldenTensor) * (size_t)(g->cap = 2 * g->cap + 16));
        if (!r) return g->failed = 1, error_set(g->e, "%s: out of memory", g->fn), NULL;
        g->ts = r;
    }
    GoldenTensor *r = &g->ts[g->n];
    memset(r, 0, sizeof *r);
    snprintf(r->name, sizeof r->name, "%s.%s", g->fn, arg);
    r->dtype = dt;
    r->ndim = ndim;
    r->output = output;
    double numel = 1;
    for (int i = 0; i < ndim; i++) numel *= (double)(r->shape[i] = va_arg(ap, int));
    if (g->bytes + numel * dtype_size(dt) > GOLDEN_MAX_BYTES) {
        g->failed = 1;
        error_set(g->e, "%s: the golden file would pass 8 GiB at this tensor (%.3g GB); leave %s out (--functions) "
                  "or shrink it (--shape)", r->name, numel * dtype_size(dt) / 1e9, g->fn);
        return NULL;
    }
    r->nbytes = (size_t)numel * dtype_size(dt);
    if (!(r->data = calloc(r->nbytes ? r->nbytes : 1, 1))) {
        g->failed = 1;
        error_set(g->e, "%s: out of memory (%.3g MB)", r->name, r->nbytes / 1e6);
        return NULL;
    }
    g->bytes += r->nbytes;
    g->n++;
    if (output) return r->data;
    if (!g->check) return *fresh = 1, r->data;
    const StTensor *t = st_find(g->check, r->name);
    int same = t && t->dtype == dt && t->ndim == ndim && t->nbytes == r->nbytes;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == r->shape[i];
    if (!same) {
        g->failed = 1;
        error_set(g->e, "%s: %s in the file, expected %s of %d dims as the metadata's config and shapes give",
                  r->name, t ? "a different dtype or shape" : "missing", dtype_name(dt), ndim);
        return NULL;
    }
    memcpy(r->data, t->data, r->nbytes);
    return r->data;
}

static const char *last_name(const Golden *g) { return g->ts[g->n - 1].name; }

/* Input: fmaf(scale, u, offset) per element (see the top). */
float *g_rand(Golden *g, const char *arg, float offset, float scale, int ndim, ...) {
    va_list ap;
    int fresh;
    va_start(ap, ndim);
    float *x = add(g, arg, DT_F32, 0, &fresh, ndim, ap);
    va_end(ap);
    if (fresh) {
        uint64_t s = g->seed ^ fnv1a64(last_name(g));
        for (size_t i = 0; i < g->ts[g->n - 1].nbytes / 4; i++) x[i] = fmaf(scale, uniform(&s), offset);
    }
    return x;
}

/* Input: ids in [0, n). */
int *g_ids(Golden *g, const char *arg, int n, int ndim, ...) {
    va_list ap;
    int fresh;
    va_start(ap, ndim);
    int *x = add(g, arg, DT_I32, 0, &fresh, ndim, ap);
    va_end(ap);
    if (fresh) {
        uint64_t s = g->seed ^ fnv1a64(last_name(g));
        for (size_t i = 0; i < g->ts[g->n - 1].nbytes / 4; i++) x[i] = (int)(((splitmix64(&s) >> 32) * (uint64_t)n) >> 32);
    }
    return x;
}

/* Input: E4M3 codes, any but NaN. */
uint8_t *g_codes(Golden *g, const char *arg, int ndim, ...) {
    va_list ap;
    int fresh;
    va_start(ap, ndim);
    uint8_t *x = add(g, arg, DT_F8_E4M3, 0, &fresh, ndim, ap);
    va_end(ap);
    if (fresh) {
        uint64_t s = g->seed ^ fnv1a64(last_name(g));
        for (size_t i = 0; i < g->ts[g->n - 1].nbytes; i++) {
            uint8_t b = (uint8_t)splitmix64(&s);
            x[i] = (b & 0x7F) == 0x7F ? b ^ 1 : b;
        }
    }
    return x;
}

/* Input with given values (a parameter: eps, pos0, softmax_scale, a prompt). When verifying, the
 * file's value must equal the one the config gives (values NULL: take the file's). */
void *g_given(Golden *g, const char *arg, DType dt, const void *values, int ndim, ...) {
    va_list ap;
    int fresh;
    va_start(ap, ndim);
    void *x = add(g, arg, dt, 0, &fresh, ndim, ap);
    va_end(ap);
    if (!x || !values) return x;
    if (fresh) memcpy(x, values, g->ts[g->n - 1].nbytes);
    else if (memcmp(x, values, g->ts[g->n - 1].nbytes)) {
        g->failed = 1;
        error_set(g->e, "%s: the file's value differs from the one its config and shapes give", last_name(g));
        return NULL;
    }
    return x;
}

void *g_out(Golden *g, const char *arg, DType dt, int ndim, ...) {
    va_list ap;
    int fresh;
    va_start(ap, ndim);
    void *x = add(g, arg, dt, 1, &fresh, ndim, ap);
    va_end(ap);
    return x;
}

static int find_fn(const char *name, size_t len) {
    for (int i = 0; i < GOLDEN_N_FNS; i++)
        if (strlen(GOLDEN_FNS[i].name) == len && !strncmp(GOLDEN_FNS[i].name, name, len)) return i;
    return -1;
}

static void end_fn(Golden *g) {
    for (int i = 0; i < g->n_tmp; i++) free(g->tmp[i]);
    g->n_tmp = 0;
}

static void free_tensors(Golden *g, int from) {
    for (int i = from; i < g->n; i++) free(g->ts[i].data);
    g->n = from;
}

/* ---- the file: metadata, writing, verifying ---------------------------------------------------- */

/* The effective config with HF's field names: config_parse reads it back to the same Config. */
static char *config_json(const Config *c) {
    static const char *TOPK[] = {"greedy", "group_limited_greedy", "noaux_tc"};
    cJSON *o = cJSON_CreateObject(), *r = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "model_type", c->model_type);
    struct { const char *k; int v; } ints[] = {
        {"vocab_size", c->vocab_size}, {"hidden_size", c->hidden_size}, {"intermediate_size", c->intermediate_size},
        {"moe_intermediate_size", c->moe_intermediate_size}, {"num_hidden_layers", c->n_layers},
        {"num_attention_heads", c->n_heads}, {"kv_lora_rank", c->kv_lora_rank}, {"qk_nope_head_dim", c->qk_nope_head_dim},
        {"qk_rope_head_dim", c->qk_rope_head_dim}, {"v_head_dim", c->v_head_dim}, {"n_routed_experts", c->n_routed_experts},
        {"n_shared_experts", c->n_shared_experts}, {"num_experts_per_tok", c->num_experts_per_tok}, {"n_group", c->n_group},
        {"topk_group", c->topk_group}, {"first_k_dense_replace", c->first_k_dense_replace},
        {"moe_layer_freq", c->moe_layer_freq}, {"max_position_embeddings", c->max_position_embeddings},
        {"num_nextn_predict_layers", c->num_nextn_predict_layers}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) cJSON_AddNumberToObject(o, ints[i].k, ints[i].v);
    if (c->q_lora_rank) cJSON_AddNumberToObject(o, "q_lora_rank", c->q_lora_rank);
    else cJSON_AddNullToObject(o, "q_lora_rank");
    cJSON_AddStringToObject(o, "scoring_func", c->scoring_func == SCORE_SOFTMAX ? "softmax" : "sigmoid");
    cJSON_AddStringToObject(o, "topk_method", TOPK[c->topk_method]);
    cJSON_AddBoolToObject(o, "norm_topk_prob", c->norm_topk_prob);
    cJSON_AddNumberToObject(o, "routed_scaling_factor", c->routed_scaling_factor);
    cJSON_AddNumberToObject(o, "rms_norm_eps", c->rms_norm_eps);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", c->tie_word_embeddings);
    cJSON_AddBoolToObject(o, "rope_interleave", c->rope.interleaved);
    if (c->bos_token_id >= 0) cJSON_AddNumberToObject(o, "bos_token_id", c->bos_token_id);
    if (c->eos_token_id >= 0) cJSON_AddNumberToObject(o, "eos_token_id", c->eos_token_id);
    const RopeConfig *rc = &c->rope;
    cJSON_AddStringToObject(r, "rope_type", rc->type == ROPE_YARN ? "yarn" : "default");
    cJSON_AddNumberToObject(r, "rope_theta", rc->theta);
    if (rc->type == ROPE_YARN) {
        cJSON_AddNumberToObject(r, "factor", rc->factor);
        cJSON_AddNumberToObject(r, "original_max_position_embeddings", rc->original_max_pos);
        cJSON_AddNumberToObject(r, "beta_fast", rc->beta_fast);
        cJSON_AddNumberToObject(r, "beta_slow", rc->beta_slow);
        cJSON_AddNumberToObject(r, "mscale", rc->mscale);
        cJSON_AddNumberToObject(r, "mscale_all_dim", rc->mscale_all_dim);
        cJSON_AddNumberToObject(r, "attention_factor", rc->attention_factor);
    }
    cJSON_AddItemToObject(o, "rope_parameters", r);
    if (c->fp8) {
        cJSON *q = cJSON_AddObjectToObject(o, "quantization_config");
        cJSON_AddStringToObject(q, "quant_method", "fp8");
        cJSON_AddStringToObject(q, "fmt", c->fp8_fmt);
        cJSON_AddItemToObject(q, "weight_block_size", cJSON_CreateIntArray(c->fp8_block, 2));
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

typedef struct {
    char **keys, **vals;
    int n;
} Meta;

static void meta_add(Meta *m, const char *key, const char *val) {
    m->keys = realloc(m->keys, sizeof(char *) * (size_t)(m->n + 1));
    m->vals = realloc(m->vals, sizeof(char *) * (size_t)(m->n + 1));
    m->keys[m->n] = strdup(key);
    m->vals[m->n++] = strdup(val);
}

static void meta_free(Meta *m) {
    for (int i = 0; i < m->n; i++) free(m->keys[i]), free(m->vals[i]);
    free(m->keys);
    free(m->vals);
}

/* "a,b,c": the argument names of the inputs (or outputs) among g->ts [from, to). */
static char *arg_list(const Golden *g, int from, int to, int outputs) {
    size_t len = 1;
    for (int i = from; i < to; i++) len += strlen(g->ts[i].name) + 1;
    char *s = calloc(len, 1);
    for (int i = from; i < to; i++)
        if (g->ts[i].output == outputs) {
            if (*s) strcat(s, ",");
            strcat(s, strchr(g->ts[i].name, '.') + 1);
        }
    return s;
}

static char *shapes_json(const GoldenShapes *s) {
    char *b = malloc(160);
    snprintf(b, 160, "{\"batch\":%d,\"tokens\":%d,\"cache\":%d,\"gemm_m\":%d,\"gemm_n\":%d,\"gemm_k\":%d}",
             s->batch, s->tokens, s->cache, s->gemm_m, s->gemm_n, s->gemm_k);
    return b;
}

/* Compare the outputs among g->ts [from, n) with the file's: one line per function. Returns 0 when all
 * are within tol (bit-identical with exact; integer and FP8 outputs always). */
static int compare_outputs(Golden *g, int from, double tol, int exact) {
    double worst = 0;
    int same = 1, ok = 1;
    const char *worst_name = "";
    for (int i = from; i < g->n; i++) {
        const GoldenTensor *r = &g->ts[i];
        if (!r->output) continue;
        const StTensor *t = st_find(g->check, r->name);
        int fits = t && t->dtype == r->dtype && t->nbytes == r->nbytes && t->ndim == r->ndim;
        for (int k = 0; fits && k < r->ndim; k++) fits = t->shape[k] == r->shape[k];
        if (!fits) {
            printf("NOT OK %s: missing from the file or of another dtype or shape\n", r->name);
            return -1;
        }
        int identical = !memcmp(t->data, r->data, r->nbytes);
        same &= identical;
        if (r->dtype != DT_F32) {
            ok &= identical;
            if (!identical) worst_name = r->name, worst = INFINITY;
            continue;
        }
        double maxd = 0, maxr = 0;
        for (size_t k = 0; k < r->nbytes / 4; k++) {
            float want;
            memcpy(&want, (const char *)t->data + 4 * k, 4);
            double dd = fabs((double)((const float *)r->data)[k] - want);
            if (!(dd <= maxd)) maxd = isnan(dd) ? INFINITY : dd;
            if (fabs(want) > maxr) maxr = fabs(want);
        }
        double err = maxr > 0 ? maxd / maxr : maxd;
        if (err > worst || (err == worst && !*worst_name)) worst = err, worst_name = r->name;
    }
    ok &= exact ? same : worst <= tol;
    if (same) printf("OK     %s: outputs bit-identical\n", g->fn);
    else printf("%s %s: worst %s, rel err %.3g (tol %.0e%s)\n", ok ? "OK    " : "NOT OK", g->fn, worst_name, worst,
                tol, exact ? ", --exact asks for identical bits" : "");
    return ok ? 0 : -1;
}

/* ---- the command line -------------------------------------------------------------------------- */

static const char *USAGE =
    "usage: run golden --config CONFIG.json --out G.safetensors [--seed S] [--tokens N]\n"
    "                  [--functions LIST] [--shape name=value]...\n"
    "       run golden --model DIR --tokens 5,17,42 --out G.safetensors [--functions LIST] [--shape ...]\n"
    "       run golden --verify G.safetensors [--model DIR] [--exact]\n"
    "Writes every listed function's inputs and outputs as tensors <function>.<argument> (notes/golden.md).\n"
    "  --seed S          inputs are drawn from S (default 0); same seed, same input bytes anywhere\n"
    "  --tokens N        T, new tokens per sequence (default 4); with --model: the prompt's ids\n"
    "  --functions LIST  comma-separated, default all (with --model: model, the only one that uses the\n"
    "                    checkpoint's weights; the others draw random weights of its shapes). Known:\n"
    "                    rmsnorm rope_table rope mla_query mla_latent mla_naive mla_absorbed mla_decode\n"
    "                    moe_gate ffn_swiglu\n"
    "                    moe fp8_quant_block fp8_dequant_block fp8_quant_act fp8_dequant_act fp8_gemm\n"
    "                    decoder_layer model\n"
    "  --shape k=v       override a shape: batch tokens cache (L, default 2T) gemm_m gemm_n gemm_k hidden\n"
    "                    heads q_lora_rank kv_lora_rank nope rope v inter moe_inter experts shared top_k\n"
    "                    n_group topk_group vocab layers\n"
    "  --verify G        recompute G's outputs from its inputs; report each function's error against\n"
    "                    its tolerance (--exact: require identical bits). --model DIR for a --model file\n";

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "run golden: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see run golden --help)\n");
    return 2;
}

/* "5,17,42" -> ids (malloc'ed), or NULL. */
static int *parse_ids(const char *s, int *n) {
    int *ids = malloc(sizeof(int) * (strlen(s) / 2 + 1));
    char *end;
    for (*n = 0; ids && *s; s = *end ? end + 1 : end) {
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > 2147483647L || (*end && *end != ',') || (*end == ',' && !end[1]))
            return free(ids), NULL;
        ids[(*n)++] = (int)v;
    }
    if (ids && !*n) free(ids), ids = NULL;
    return ids;
}

/* Runs the selected functions, writing the file (g->check NULL) or comparing with it. */
static int run_fns(Golden *g, const int *selected, const char *out_path, const char *source, int exact) {
    Meta meta = {0};
    char buf[64], *s;
    int failures = 0, rc = 0, n_run = 0;
    char fns[1024] = "";
    for (int i = 0; i < GOLDEN_N_FNS && !rc; i++) {
        if (!selected[i]) continue;
        const GoldenFn *en = &GOLDEN_FNS[i];
        g->fn = en->name;
        int from = g->n;
        rc = en->run(g) || g->failed ? -1 : 0;
        end_fn(g);
        if (rc) break;
        n_run++;
        if (g->check) {
            failures += compare_outputs(g, from, en->tol, exact) != 0;
            free_tensors(g, from);
            continue;
        }
        snprintf(fns + strlen(fns), sizeof fns - strlen(fns), "%s%s", *fns ? "," : "", en->name);
        snprintf(buf, sizeof buf, "tolerance.%s", en->name);
        char tol[32];
        snprintf(tol, sizeof tol, "%g", en->tol);
        meta_add(&meta, buf, tol);
        if (!strcmp(en->name, "fp8_gemm")) { /* its outputs are not all one kind of thing */
            meta_add(&meta, "tolerance.fp8_gemm.y_unquantized", "1e-4");
            meta_add(&meta, "tolerance_note.fp8_gemm",
                     "1e-5 holds for y_fp32 (exact K-block sums, any order) and for a twin of the 14-bit "
                     "emulations; a real tensor core is not bit-comparable with y_acc14_*: compare its error "
                     "with theirs (notes/golden.md); y_unquantized is a plain FP32 matmul, 1e-4");
        }
        snprintf(buf, sizeof buf, "calls.%s", en->name);
        meta_add(&meta, buf, en->calls);
        snprintf(buf, sizeof buf, "inputs.%s", en->name);
        meta_add(&meta, buf, s = arg_list(g, from, g->n, 0));
        free(s);
        snprintf(buf, sizeof buf, "outputs.%s", en->name);
        meta_add(&meta, buf, s = arg_list(g, from, g->n, 1));
        free(s);
    }
    if (!rc && g->check && failures) rc = error_set(g->e, "%d of %d functions outside their tolerance", failures, n_run);
    if (!rc && !g->check) {
        meta_add(&meta, "format", "dsv3.c golden");
        meta_add(&meta, "version", GOLDEN_VERSION);
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)g->seed);
        meta_add(&meta, "seed", buf);
        meta_add(&meta, "source", source);
        meta_add(&meta, "config", s = config_json(&g->cfg));
        cJSON_free(s);
        meta_add(&meta, "shapes", s = shapes_json(&g->sh));
        free(s);
        meta_add(&meta, "functions", fns);
        meta_add(&meta, "fp8_block", "128");
        meta_add(&meta, "tolerance_metric", "max|got - want| / max|want| per F32 output; integer and F8 outputs match exactly");
        meta_add(&meta, "generator", "splitmix64 per tensor from seed ^ fnv1a64(name); u = ((r >> 40) - 2^23) * 2^-23; "
                 "x = fmaf(scale, u, offset)");
        StWriteTensor *ts = calloc((size_t)g->n + 1, sizeof *ts);
        for (int i = 0; ts && i < g->n; i++) {
            ts[i] = (StWriteTensor){.name = g->ts[i].name, .dtype = g->ts[i].dtype, .ndim = g->ts[i].ndim,
                                    .data = g->ts[i].data};
            memcpy(ts[i].shape, g->ts[i].shape, sizeof ts[i].shape);
        }
        rc = ts ? st_write(out_path, ts, g->n, (const char *const *)meta.keys, (const char *const *)meta.vals, meta.n, g->e)
                : error_set(g->e, "out of memory");
        if (!rc) fprintf(stderr, "run golden: %d functions, %d tensors, %.3g MB -> %s\n", n_run, g->n, g->bytes / 1e6, out_path);
        free(ts);
    }
    meta_free(&meta);
    return rc;
}

static const char *meta_str(const cJSON *m, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* --verify: the file's own config, shapes, seed and function list, each re-run on its inputs. */
static int verify(Golden *g, const char *path, const char *model_dir, int exact, Model *ckpt) {
    StFile f;
    Error *e = g->e;
    if (st_open(&f, path, e)) return -1;
    cJSON *m = f.metadata_json ? cJSON_Parse(f.metadata_json) : NULL;
    const char *fmt = meta_str(m, "format"), *cfg = meta_str(m, "config"), *sh = meta_str(m, "shapes");
    const char *fns = meta_str(m, "functions"), *src = meta_str(m, "source");
    cJSON *shj = sh ? cJSON_Parse(sh) : NULL;
    int rc = 0, selected[GOLDEN_N_FNS] = {0};
    if (!fmt || strcmp(fmt, "dsv3.c golden") || !cfg || !shj || !fns || !src || !meta_str(m, "seed"))
        rc = error_set(e, "%s: not a golden file (metadata format, config, shapes, functions, source, seed expected)", path);
    else if (config_parse(&g->cfg, cfg, "the file's metadata config", e)) rc = -1;
    else {
        int *f6[] = {&g->sh.batch, &g->sh.tokens, &g->sh.cache, &g->sh.gemm_m, &g->sh.gemm_n, &g->sh.gemm_k};
        const char *k6[] = {"batch", "tokens", "cache", "gemm_m", "gemm_n", "gemm_k"};
        for (int i = 0; i < 6; i++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(shj, k6[i]);
            *f6[i] = cJSON_IsNumber(v) ? v->valueint : 0;
        }
        g->seed = strtoull(meta_str(m, "seed"), NULL, 10);
        g->check = &f;
        rc = check_shapes(&g->cfg, &g->sh, e);
        for (const char *p = fns; !rc && *p;) {
            size_t len = strcspn(p, ",");
            int k = find_fn(p, len);
            if (k < 0) rc = error_set(e, "%s: unknown function \"%.*s\" (a newer golden version?)", path, (int)len, p);
            else selected[k] = 1;
            p += len + (p[len] == ',');
        }
    }
    if (!rc && !strncmp(src, "checkpoint", 10) && selected[find_fn("model", 5)]) {
        if (!model_dir) {
            selected[find_fn("model", 5)] = 0;
            printf("skip   model: made from a checkpoint; give --model DIR to re-run it\n");
            int left = 0;
            for (int i = 0; i < GOLDEN_N_FNS; i++) left += selected[i];
            if (!left) rc = error_set(e, "%s: nothing to verify without the checkpoint: give --model DIR", path);
        } else if (model_load(ckpt, model_dir, e)) rc = -1;
        else g->ckpt = ckpt;
    }
    if (!rc) rc = run_fns(g, selected, NULL, NULL, exact);
    cJSON_Delete(shj);
    cJSON_Delete(m);
    st_close(&f);
    return rc;
}

int golden_main(int argc, char **argv) {
    const char *config = NULL, *model_dir = NULL, *out_path = NULL, *verify_path = NULL, *tokens = NULL, *fns = NULL;
    const char *shape_args[64];
    int n_shape = 0, exact = 0;
    unsigned long long seed = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **dst = !strcmp(a, "--config") ? &config : !strcmp(a, "--model") ? &model_dir
                         : !strcmp(a, "--out") ? &out_path : !strcmp(a, "--verify") ? &verify_path
                         : !strcmp(a, "--tokens") ? &tokens : !strcmp(a, "--functions") ? &fns : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return fputs(USAGE, stdout), 0;
        else if (!strcmp(a, "--exact")) exact = 1;
        else if (dst || !strcmp(a, "--seed") || !strcmp(a, "--shape")) {
            if (!v) return usage_error("%s needs a value", a);
            char *end;
            if (dst) *dst = v;
            else if (!strcmp(a, "--seed") && (errno = 0, seed = strtoull(v, &end, 10), *end || end == v || *v == '-' || errno))
                return usage_error("--seed: expected a decimal integer in 0..2^64-1, found \"%s\"", v);
            else if (!strcmp(a, "--shape")) {
                if (n_shape == 64) return usage_error("%s", "too many --shape options");
                shape_args[n_shape++] = v;
            }
            i++;
        } else return usage_error("unknown option \"%s\"", a);
    }
    openblas_set_num_threads(1); /* bit-for-bit reproducible outputs (see ops.c) */
    Error e = {{0}};
    Golden g = {.seed = seed, .e = &e};
    Model ckpt;
    int rc = 0, have_model = 0, *ids = NULL;
    if (verify_path) {
        if (config || out_path || tokens || fns || n_shape) return usage_error("%s", "--verify takes only --model and --exact");
        rc = verify(&g, verify_path, model_dir, exact, &ckpt);
        have_model = g.ckpt != NULL;
        goto done;
    }
    if (!config == !model_dir) return usage_error("%s", "give one of --config CONFIG.json and --model DIR");
    if (!out_path) return usage_error("%s", "--out G.safetensors is required");
    if (model_dir) {
        if (!tokens || !(ids = parse_ids(tokens, &g.sh.tokens)))
            return usage_error("--model needs --tokens as comma-separated ids like 5,17,42, found \"%s\"", tokens ? tokens : "");
        if (model_load(&ckpt, model_dir, &e)) {
            free(ids);
            fprintf(stderr, "run golden: %s\n", e.msg);
            return 1;
        }
        have_model = 1;
        g.ckpt = &ckpt;
        g.ids = ids;
        g.cfg = ckpt.cfg;
    } else {
        char *end;
        long t = tokens ? strtol(tokens, &end, 10) : 4;
        if (tokens && (*end || t < 1 || t > 1 << 20)) return usage_error("--tokens: expected a count >= 1 with --config, found \"%s\"", tokens);
        g.sh.tokens = (int)t;
        if (config_load(&g.cfg, config, &e)) {
            fprintf(stderr, "run golden: %s\n", e.msg);
            return 1;
        }
    }
    g.sh.batch = 1;
    g.sh.cache = 2 * g.sh.tokens;
    int cache_set = 0, gemm_set[3] = {0};
    for (int i = 0; i < n_shape && !rc; i++) {
        char name[32];
        const char *eq = strchr(shape_args[i], '=');
        size_t len = eq ? (size_t)(eq - shape_args[i]) : 0;
        snprintf(name, sizeof name, "%.*s", (int)(len < 31 ? len : 31), shape_args[i]);
        int *f = eq ? shape_field(name, &g.cfg, &g.sh) : NULL;
        char *end;
        long v = eq ? strtol(eq + 1, &end, 10) : 0;
        if (!f) rc = error_set(&e, "--shape \"%s\": expected name=value, name one of: %s", shape_args[i], SHAPE_NAMES);
        else if (*end || end == eq + 1 || v < 0 || v > 1 << 30) rc = error_set(&e, "--shape %s: expected a non-negative integer", shape_args[i]);
        else if (model_dir && f == &g.sh.tokens) rc = error_set(&e, "--shape tokens: with --model the prompt sets T");
        else if (model_dir && f != &g.sh.cache && f != &g.sh.gemm_m && f != &g.sh.gemm_n && f != &g.sh.gemm_k)
            rc = error_set(&e, "--shape %s: with --model the checkpoint sets the model's sizes and batch is 1; "
                           "only cache and gemm_m/n/k apply", name);
        else {
            *f = (int)v;
            cache_set |= f == &g.sh.cache;
            gemm_set[0] |= f == &g.sh.gemm_m;
            gemm_set[1] |= f == &g.sh.gemm_n;
            gemm_set[2] |= f == &g.sh.gemm_k;
        }
    }
    if (!cache_set) g.sh.cache = 2 * g.sh.tokens;
    if (!gemm_set[0]) g.sh.gemm_m = g.sh.batch * g.sh.tokens;
    if (!gemm_set[1]) g.sh.gemm_n = g.cfg.intermediate_size;
    if (!gemm_set[2]) g.sh.gemm_k = g.cfg.hidden_size;
    if (!rc) rc = check_shapes(&g.cfg, &g.sh, &e);
    int selected[GOLDEN_N_FNS] = {0};
    for (int i = 0; i < GOLDEN_N_FNS; i++)
        selected[i] = !fns && (model_dir ? !strcmp(GOLDEN_FNS[i].name, "model") : !GOLDEN_FNS[i].needs_experts || g.cfg.n_routed_experts > 0);
    if (!rc && fns && (!*fns || fns[strlen(fns) - 1] == ','))
        rc = error_set(&e, "--functions \"%s\": expected comma-separated names (see run golden --help)", fns);
    for (const char *p = fns; !rc && p && *p;) {
        size_t len = strcspn(p, ",");
        int k = find_fn(p, len);
        if (k < 0) rc = error_set(&e, "--functions: unknown function \"%.*s\" (see run golden --help)", (int)len, p);
        else if (GOLDEN_FNS[k].needs_experts && g.cfg.n_routed_experts == 0)
            rc = error_set(&e, "--functions: %s needs routed experts, and this config has none", GOLDEN_FNS[k].name);
        else selected[k] = 1;
        p += len + (p[len] == ',');
    }
    if (!rc) {
        char source[4200];
        snprintf(source, sizeof source, "%s:%s", model_dir ? "checkpoint" : "config", model_dir ? model_dir : config);
        rc = run_fns(&g, selected, out_path, source, 0);
    }
done:
    end_fn(&g);
    free_tensors(&g, 0);
    free(g.ts);
    free(g.tmp);
    free(ids);
    if (have_model) model_free(&ckpt);
    if (rc) fprintf(stderr, "run golden: %s\n", e.msg);
    return rc ? 1 : 0;
}
