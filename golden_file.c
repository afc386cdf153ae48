/* golden_file.c - the golden file of `run golden` (golden.h): running the selected functions
 * through the recorder (golden_record.c), then writing their tensors and metadata to one
 * safetensors file, or, verifying, comparing each function's outputs with the file's.
 *
 * The metadata holds the effective config (HF field names, so config_parse reads it back), the
 * shapes, the seed, the version, the generator, and per function its tolerance, the C function(s)
 * it calls and which of its tensors are inputs and which outputs. Outputs come from OpenBLAS on one
 * thread: two runs on one machine give identical bytes. Another machine's BLAS may change the last
 * bits of outputs (never of inputs): that is what the stated tolerances and `--verify` are for.
 *
 * Verify mode takes the config, shapes, seed and function list from the file's metadata, runs the
 * same functions with every input read back from the file instead of drawn, and compares each
 * output with the stored one: max|got - want| / max|want| against the tolerance (or bit for bit
 * with --exact). Integer and FP8 outputs must always match exactly.
 */
#include "golden.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the shapes a file is made for ------------------------------------------------------------- */

int golden_check_shapes(const Config *c, const GoldenShapes *s, Error *e) {
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

int golden_find_fn(const char *name, size_t len) {
    for (int i = 0; i < GOLDEN_N_FNS; i++)
        if (strlen(GOLDEN_FNS[i].name) == len && !strncmp(GOLDEN_FNS[i].name, name, len)) return i;
    return -1;
}

/* ---- metadata ---------------------------------------------------------------------------------- */

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
    int oom; /* an entry could not be added: the writer refuses the file */
} Meta;

/* Appends key = val. A failed allocation, or a NULL val (a failed one upstream: arg_list,
 * shapes_json, config_json), adds nothing and sets oom, checked once before the file is written. */
static void meta_add(Meta *m, const char *key, const char *val) {
    char **k = val ? realloc(m->keys, sizeof(char *) * (size_t)(m->n + 1)) : NULL;
    if (k) m->keys = k;
    char **v = k ? realloc(m->vals, sizeof(char *) * (size_t)(m->n + 1)) : NULL;
    if (v) m->vals = v;
    char *ks = v ? strdup(key) : NULL, *vs = ks ? strdup(val) : NULL;
    if (!vs) {
        free(ks);
        m->oom = 1;
        return;
    }
    m->keys[m->n] = ks;
    m->vals[m->n++] = vs;
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
    for (int i = from; s && i < to; i++)
        if (g->ts[i].output == outputs) {
            if (*s) strcat(s, ",");
            strcat(s, strchr(g->ts[i].name, '.') + 1);
        }
    return s;
}

static char *shapes_json(const GoldenShapes *s) {
    char *b = malloc(160);
    if (b) snprintf(b, 160, "{\"batch\":%d,\"tokens\":%d,\"cache\":%d,\"gemm_m\":%d,\"gemm_n\":%d,\"gemm_k\":%d}",
             s->batch, s->tokens, s->cache, s->gemm_m, s->gemm_n, s->gemm_k);
    return b;
}

/* ---- comparing (--verify) ---------------------------------------------------------------------- */

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

/* ---- running the functions: the file written or compared ---------------------------------------- */

/* Runs the selected functions, writing the file (g->check NULL) or comparing with it. */
int golden_run(Golden *g, const int *selected, const char *out_path, const char *source, int exact) {
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
        golden_end_fn(g);
        if (rc) break;
        n_run++;
        if (g->check) {
            failures += compare_outputs(g, from, en->tol, exact) != 0;
            golden_free_tensors(g, from);
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
        StWriteTensor *ts = meta.oom ? NULL : calloc((size_t)g->n + 1, sizeof *ts);
        for (int i = 0; ts && i < g->n; i++) {
            ts[i] = (StWriteTensor){.name = g->ts[i].name, .dtype = g->ts[i].dtype, .ndim = g->ts[i].ndim,
                                    .data = g->ts[i].data};
            memcpy(ts[i].shape, g->ts[i].shape, sizeof ts[i].shape);
        }
        rc = ts ? st_write(out_path, ts, g->n, (const char *const *)meta.keys, (const char *const *)meta.vals, meta.n, g->e)
                : error_set(g->e, "golden: out of memory for the file's %s (%d tensors, %d metadata entries)",
                            meta.oom ? "metadata" : "tensor list", g->n, meta.n);
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
int golden_verify(Golden *g, const char *path, const char *model_dir, int exact, Model *ckpt) {
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
        rc = golden_check_shapes(&g->cfg, &g->sh, e);
        for (const char *p = fns; !rc && *p;) {
            size_t len = strcspn(p, ",");
            int k = golden_find_fn(p, len);
            if (k < 0) rc = error_set(e, "%s: unknown function \"%.*s\" (a newer golden version?)", path, (int)len, p);
            else selected[k] = 1;
            p += len + (p[len] == ',');
        }
    }
    if (!rc && !strncmp(src, "checkpoint", 10) && selected[golden_find_fn("model", 5)]) {
        if (!model_dir) {
            selected[golden_find_fn("model", 5)] = 0;
            printf("skip   model: made from a checkpoint; give --model DIR to re-run it\n");
            int left = 0;
            for (int i = 0; i < GOLDEN_N_FNS; i++) left += selected[i];
            if (!left) rc = error_set(e, "%s: nothing to verify without the checkpoint: give --model DIR", path);
        } else if (model_load(ckpt, model_dir, e)) rc = -1;
        else g->ckpt = ckpt;
    }
    if (!rc) rc = golden_run(g, selected, NULL, NULL, exact);
    cJSON_Delete(shj);
    cJSON_Delete(m);
    st_close(&f);
    return rc;
}
