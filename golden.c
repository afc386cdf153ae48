/* golden.c - `run golden`: the exact inputs and outputs of every component function, for a chosen
 * config, shape and seed, in one safetensors file that a GPU kernel's PyTorch/CUDA test loads.
 * This file: the command line. golden_record.c: the portable generator and the recorder.
 * golden_file.c: running the functions, the file (metadata, write, verify). golden_fns.c: the
 * functions recorded. notes/golden.md: names, shapes, tolerances, example.
 *
 *   run golden --config CONFIG.json --out G.safetensors [--seed S] [--tokens N] [--functions LIST]
 *              [--shape name=value ...]
 *   run golden --model DIR --tokens 5,17,42 --out G.safetensors      (a real checkpoint, layer by layer)
 *   run golden --verify G.safetensors [--model DIR] [--exact]         (recompute a file's outputs)
 *
 * A recorded function runs one C function, or a fixed composition of them, and records each argument
 * as a tensor named <function>.<argument>: rmsnorm.x, mla_absorbed.kv_cache, moe_gate.topk_idx,
 * fp8_gemm.w_scale_inv, model.hidden.2.after_ffn. Integer outputs are I32, FP8 codes F8_E4M3 beside
 * their F32 scales.
 *
 * Shapes: B sequences (batch) of T new tokens (tokens) whose latent cache holds L rows (cache); the
 * T tokens are the last T of the L positions, so pos0 = L - T (decode: T = 1, pos0 = L - 1). Row-wise
 * functions see B*T rows, stored as [B, T, ...]. Defaults: B = 1, T = 4, L = 2T, model dims from the
 * config; --shape overrides any of SHAPE_NAMES below. A FlashMLA-like decode (128 heads, latent 512 +
 * rope 64, cache 4096) from V3's config without building the model:
 *   run golden --config V3/config.json --functions mla_decode --shape batch=4 --shape cache=4096 ...
 *
 * OpenBLAS runs on one thread here, so two runs on one machine write identical bytes.
 */
#include "golden.h"
#include "outfile.h"

#include <cblas.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the command line -------------------------------------------------------------------------- */

static const char *USAGE =
    "usage: run golden --config CONFIG.json --out G.safetensors [--force] [--seed S] [--tokens N]\n"
    "                  [--functions LIST] [--shape name=value]...\n"
    "       run golden --model DIR --tokens 5,17,42 --out G.safetensors [--functions LIST] [--shape ...]\n"
    "       run golden --verify G.safetensors [--model DIR] [--exact]\n"
    "Writes every listed function's inputs and outputs as tensors <function>.<argument> (notes/golden.md).\n"
    "  --seed S          inputs are drawn from S (default 0); same seed, same input bytes anywhere\n"
    "  --tokens N        T, new tokens per sequence (default 4); with --model: the prompt's ids\n"
    "  --functions LIST  comma-separated, default all (with --model: model, the only one that uses the\n"
    "                    checkpoint's weights; the others draw random weights of its shapes). Known:\n"
    "                    rmsnorm rope_table rope mla_query mla_latent mla_naive mla_absorbed mla_decode\n"
    "                    mla_kv_rows mla_paged_decode moe_gate ffn_swiglu\n"
    "                    moe fp8_quant_block fp8_dequant_block fp8_quant_act fp8_dequant_act fp8_gemm\n"
    "                    decoder_layer model\n"
    "  --shape k=v       override a shape: batch tokens cache (L, default 2T) gemm_m gemm_n gemm_k hidden\n"
    "                    heads q_lora_rank kv_lora_rank nope rope v inter moe_inter experts shared top_k\n"
    "                    n_group topk_group vocab layers\n"
    "  --verify G        recompute G's outputs from its inputs; report each function's error against\n"
    "                    its tolerance (--exact: require identical bits). --model DIR for a --model file\n"
    "  --force           replace an existing --out file (without it one is refused). The file is written\n"
    "                    under a temporary name and renamed when complete: never half a golden file\n";

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

/* ---- --shape ----------------------------------------------------------------------------------- */

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

int golden_main(int argc, char **argv) {
    const char *config = NULL, *model_dir = NULL, *out_path = NULL, *verify_path = NULL, *tokens = NULL, *fns = NULL;
    const char *shape_args[64];
    int n_shape = 0, exact = 0, force = 0;
    unsigned long long seed = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        const char **dst = !strcmp(a, "--config") ? &config : !strcmp(a, "--model") ? &model_dir
                         : !strcmp(a, "--out") ? &out_path : !strcmp(a, "--verify") ? &verify_path
                         : !strcmp(a, "--tokens") ? &tokens : !strcmp(a, "--functions") ? &fns : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return fputs(USAGE, stdout), 0;
        else if (!strcmp(a, "--exact")) exact = 1;
        else if (!strcmp(a, "--force")) force = 1;
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
        rc = golden_verify(&g, verify_path, model_dir, exact, &ckpt);
        have_model = g.ckpt != NULL;
        goto done;
    }
    if (!config == !model_dir) return usage_error("%s", "give one of --config CONFIG.json and --model DIR");
    if (!out_path) return usage_error("%s", "--out G.safetensors is required");
    if (outfile_check_clobber(out_path, force, &e)) {
        fprintf(stderr, "run golden: %s\n", e.msg);
        return 1;
    }
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
    if (!rc) rc = golden_check_shapes(&g.cfg, &g.sh, &e);
    int selected[GOLDEN_N_FNS] = {0};
    for (int i = 0; i < GOLDEN_N_FNS; i++)
        selected[i] = !fns && (model_dir ? !strcmp(GOLDEN_FNS[i].name, "model") : !GOLDEN_FNS[i].needs_experts || g.cfg.n_routed_experts > 0);
    if (!rc && fns && (!*fns || fns[strlen(fns) - 1] == ','))
        rc = error_set(&e, "--functions \"%s\": expected comma-separated names (see run golden --help)", fns);
    for (const char *p = fns; !rc && p && *p;) {
        size_t len = strcspn(p, ",");
        int k = golden_find_fn(p, len);
        if (k < 0) rc = error_set(&e, "--functions: unknown function \"%.*s\" (see run golden --help)", (int)len, p);
        else if (GOLDEN_FNS[k].needs_experts && g.cfg.n_routed_experts == 0)
            rc = error_set(&e, "--functions: %s needs routed experts, and this config has none", GOLDEN_FNS[k].name);
        else selected[k] = 1;
        p += len + (p[len] == ',');
    }
    if (!rc) {
        char source[4200];
        snprintf(source, sizeof source, "%s:%s", model_dir ? "checkpoint" : "config", model_dir ? model_dir : config);
        rc = golden_run(&g, selected, out_path, source, 0);
    }
done:
    golden_end_fn(&g);
    golden_free_tensors(&g, 0);
    free(g.ts);
    free(g.tmp);
    free(ids);
    if (have_model) model_free(&ckpt);
    if (rc) fprintf(stderr, "run golden: %s\n", e.msg);
    return rc ? 1 : 0;
}
