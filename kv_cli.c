/* kv_cli.c - `run kv`: the options, the table of bytes per token and per sequence with the formula
 * behind each row (kv.c), the DeepSeek-V2 report's 93.3% and the assumptions behind it, and with
 * --capacity the serving report (kv_capacity.c); --svg also writes the plot (kv_svg.c).
 */
#include "kv.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---------------------------------------------------------------------------------------------
 * The table and the V2 report's check
 */

/* "82.2% smaller (5.63x)" or "10.27x larger" relative to base. */
static void compare(char *buf, size_t n, double bytes, double base) {
    if (bytes <= base) snprintf(buf, n, "%.1f%% smaller (%.2fx)", 100.0 * (1.0 - bytes / base), base / bytes);
    else snprintf(buf, n, "%.2fx larger", bytes / base);
}

/* One row per model: key, name, kind, the formula with its numbers, elements and bytes per token, GB
 * per sequence of ctx tokens (and per batch), and how it compares with base. */
static void print_table(FILE *f, const KvModel *rows, int n, const KvModel *base, double bits,
                        long ctx, long batch) {
    char b1[32], b2[32], form[64], cmp[48];
    const char *named = kv_bits_name(bits, b2, sizeof b2);
    char with_bits[96];
    snprintf(with_bits, sizeof with_bits, named == b2 ? "%s" : "%s (%g bits)", named, bits);
    fprintf(f, "KV cache per token and per sequence of %s tokens, elements in %s, GB = 1e9 bytes.\n",
            kv_commas((double)ctx, b1, sizeof b1), with_bits);
    fprintf(f, "Baseline: %s.\n\n", base->name);
    fprintf(f, "%-10s %-24s %-4s %-30s %10s %12s %8s", "key", "model", "kind",
            "formula (elements/token)", "elements", "bytes/token", "GB/seq");
    if (batch > 1) fprintf(f, " %9s", "GB/batch");
    fprintf(f, "  vs baseline\n");
    double base_bytes = kv_bytes_per_token(base, bits);
    for (int i = 0; i < n; i++) {
        const KvModel *m = &rows[i];
        double bpt = kv_bytes_per_token(m, bits);
        kv_formula(form, sizeof form, m);
        fprintf(f, "%-10s %-24s %-4s %-30s %10s %12s", m->key, m->name, kv_kind_name(m->kind), form,
                kv_commas((double)kv_elements_per_token(m), b1, sizeof b1), kv_commas(bpt, b2, sizeof b2));
        kv_put_gb(f, 8, bpt * ctx);
        if (batch > 1) kv_put_gb(f, 9, bpt * ctx * batch);
        if (strcmp(m->key, base->key) == 0) snprintf(cmp, sizeof cmp, "baseline");
        else compare(cmp, sizeof cmp, bpt, base_bytes);
        fprintf(f, "  %s\n", cmp);
    }
}

/* The DeepSeek-V2 report's "KV cache reduced by 93.3%" (abstract), and the assumptions behind it. */
static void print_paper_check(FILE *f) {
    const KvModel *v2 = kv_find("v2"), *b67 = kv_find("67b");
    static const struct { double bits; const char *what; } CASES[] = {
        {16, "V2 in BF16 (elements only)"},
        {8, "V2 in FP8"},
        {6, "V2 at 6 bits on average (as deployed)"},
    };
    char b1[32], b2[32], form[64], cmp[48];
    double base = kv_bytes_per_token(b67, 16);
    fprintf(f, "\nDeepSeek-V2 vs DeepSeek LLM 67B (67B in BF16: %s bytes/token). Which assumption gives which number:\n",
            kv_commas(base, b1, sizeof b1));
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        double v = kv_bytes_per_token(v2, CASES[i].bits);
        compare(cmp, sizeof cmp, v, base);
        fprintf(f, "  %-40s %7s bytes/token  %s%s\n", CASES[i].what, kv_commas(v, b2, sizeof b2), cmp,
                CASES[i].bits == 6 ? "  <- the report's 93.3%, about 15x" : "");
    }
    KvModel mha = kv_variant(v2, KV_MHA, 0);
    compare(cmp, sizeof cmp, kv_bytes_per_token(v2, 16), kv_bytes_per_token(&mha, 16));
    kv_formula(form, sizeof form, &mha);
    fprintf(f, "  MLA alone: V2 vs an MHA of its own shape (%s = %s elements), both BF16: %s\n",
            form, kv_commas((double)kv_elements_per_token(&mha), b1, sizeof b1), cmp);
}

/* Each MLA row's latent cache in the formats run --kv stores (mla_kv.h): bytes per token per layer
 * and for all layers, bits per element, GB per sequence of ctx tokens. */
static void print_formats(FILE *f, const KvModel *rows, int n, long ctx) {
    char b1[32], b2[32];
    int any = 0;
    for (int i = 0; i < n; i++) any |= rows[i].kind == KV_MLA;
    if (!any) return;
    fprintf(f, "\nThe latent cache as run --kv stores it (mla_kv.h), GB per sequence of %s tokens:\n",
            kv_commas((double)ctx, b1, sizeof b1));
    fprintf(f, "%-24s %-5s %13s %12s %9s %8s\n", "model", "--kv", "bytes/tok/lyr", "bytes/token", "bits/elem", "GB/seq");
    for (int i = 0; i < n; i++) {
        if (rows[i].kind != KV_MLA) continue;
        for (int k = MLA_KV_F32; k <= MLA_KV_FP8; k++) {
            MlaKvFormat fmt = (MlaKvFormat)k;
            double bpt = kv_format_bytes_per_token(&rows[i], fmt);
            if (bpt == 0) continue;
            fprintf(f, "%-24s %-5s %13s %12s %9.2f", k == MLA_KV_F32 ? rows[i].name : "", mla_kv_format_name(fmt),
                    kv_commas(bpt / rows[i].n_layers, b1, sizeof b1), kv_commas(bpt, b2, sizeof b2),
                    kv_format_bits(&rows[i], fmt));
            kv_put_gb(f, 8, bpt * ctx);
            fputc('\n', f);
        }
    }
    fprintf(f, "fp8: FlashMLA's layout, d_c E4M3 codes + an FP32 scale per 128 of them + d_R BF16 (rope).\n");
}

/* ---------------------------------------------------------------------------------------------
 * The options
 */
static const char *HELP =
    "usage: run kv [CONFIG ...] [--ctx N] [--kv-bits B] [--batch B] [--baseline KEY] [--svg FILE]\n"
    "       run kv --capacity [CONFIG ...] [--gpus N] [--gpu-mem GB] [--bandwidth TB/s] [--tflops T]\n"
    "              [--ctx N] [--kv-bits B] [--weight-bits B] [--model KEY]\n"
    "\n"
    "KV cache bytes per token and per sequence, with the formula behind each row: MHA 2*n_h*d_h*L,\n"
    "GQA 2*n_kv*d_h*L, MLA (d_c+d_R)*L. CONFIG is a config.json, or a directory holding one, of a\n"
    "DeepSeek-V2/V3 or Kimi K2 model (counted as MLA); with none, a built-in table of well-known\n"
    "models is shown. Then the DeepSeek-V2 report's 93.3% and the assumptions behind it.\n"
    "  --ctx N          tokens per sequence (default 4096)\n"
    "  --kv-bits B      bits per cached element: 16 BF16, 8 FP8, or an average such as 6 (default 16)\n"
    "  --batch B        also show GB for B sequences\n"
    "  --baseline KEY   row the others are compared with: a built-in key or a CONFIG's directory\n"
    "                   name (default 67b)\n"
    "  --svg FILE       also write a plot of GB per sequence vs context (1K..128K tokens)\n"
    "  --capacity       the serving model instead of the table: largest batch that fits beside the\n"
    "                   weights, memory-bound decode step time, tokens/s: V2 vs 67B at the report's\n"
    "                   precisions, then MHA/GQA/MLA variants of each CONFIG (or of --model) at\n"
    "                   --kv-bits and --weight-bits. Options of --capacity only:\n"
    "  --gpus N         GPUs sharing the model (default 8)\n"
    "  --gpu-mem GB     memory per GPU, 1 GB = 1e9 bytes (default 80)\n"
    "  --bandwidth TB/s memory bandwidth per GPU (default 3.35, an H800/H100 SXM)\n"
    "  --tflops T       dense TFLOPS per GPU: adds a compute bound to the step (default 0: off)\n"
    "  --weight-bits B  bits per weight in the variants (default 8)\n"
    "  --model KEY      model for the variants when no CONFIG is given (default v2)\n"
    "built-in keys:";

typedef struct {
    const char *configs[16];
    int n_configs;
    int capacity;
    long batch;
    const char *baseline, *svg, *model;
    KvServe serve;
} KvArgs;

/* Reads the number after option argv[*i] into v; it must lie in [lo, hi] (and be whole if asked). */
static int take_number(int argc, char **argv, int *i, double lo, double hi, int whole, double *v, FILE *err) {
    const char *opt = argv[*i];
    if (*i + 1 >= argc) {
        fprintf(err, "run kv: %s needs a value\n", opt);
        return -1;
    }
    const char *s = argv[++*i];
    char *end;
    errno = 0;
    *v = strtod(s, &end);
    if (end == s || *end != '\0' || errno || !(*v >= lo && *v <= hi) || (whole && *v != floor(*v))) {
        fprintf(err, "run kv: %s expects %s in [%g, %g], got '%s'\n", opt, whole ? "a whole number" : "a number",
                lo, hi, s);
        return -1;
    }
    return 0;
}

/* Fills a from argv. Returns 0, 1 after printing the help, -1 after printing an error. */
static int parse_args(KvArgs *a, int argc, char **argv, FILE *out, FILE *err) {
    *a = (KvArgs){.batch = 1, .baseline = "67b", .model = "v2",
                  .serve = {.gpus = 8, .gpu_mem_gb = 80, .bandwidth_tbs = 3.35, .tflops = 0, .ctx = 4096,
                            .weight_bits = 8, .kv_bits = 16}};
    const char *table_only = NULL, *capacity_only = NULL; /* the last option seen of each group */
    for (int i = 0; i < argc; i++) {
        const char *o = argv[i];
        double v = 0;
        int rc = 0;
        if (!strcmp(o, "-h") || !strcmp(o, "--help")) {
            fputs(HELP, out);
            for (int k = 0; k < KV_N_BUILTIN; k++) fprintf(out, " %s", kv_builtin(k)->key);
            fputc('\n', out);
            return 1;
        }
        if (!strcmp(o, "--capacity")) {
            a->capacity = 1;
        } else if (!strcmp(o, "--ctx")) {
            rc = take_number(argc, argv, &i, 1, 1e9, 1, &v, err);
            a->serve.ctx = (long)v;
        } else if (!strcmp(o, "--kv-bits")) {
            rc = take_number(argc, argv, &i, 0.5, 64, 0, &a->serve.kv_bits, err);
        } else if (!strcmp(o, "--batch")) {
            rc = take_number(argc, argv, &i, 1, 1e9, 1, &v, err);
            a->batch = (long)v, table_only = o;
        } else if (!strcmp(o, "--gpus")) {
            rc = take_number(argc, argv, &i, 1, 1e6, 1, &v, err);
            a->serve.gpus = (int)v, capacity_only = o;
        } else if (!strcmp(o, "--gpu-mem")) {
            rc = take_number(argc, argv, &i, 1e-3, 1e6, 0, &a->serve.gpu_mem_gb, err), capacity_only = o;
        } else if (!strcmp(o, "--bandwidth")) {
            rc = take_number(argc, argv, &i, 1e-3, 1e6, 0, &a->serve.bandwidth_tbs, err), capacity_only = o;
        } else if (!strcmp(o, "--tflops")) {
            rc = take_number(argc, argv, &i, 0, 1e7, 0, &a->serve.tflops, err), capacity_only = o;
        } else if (!strcmp(o, "--weight-bits")) {
            rc = take_number(argc, argv, &i, 0.5, 64, 0, &a->serve.weight_bits, err), capacity_only = o;
        } else if (!strcmp(o, "--baseline") || !strcmp(o, "--svg") || !strcmp(o, "--model")) {
            if (i + 1 >= argc) {
                fprintf(err, "run kv: %s needs a value\n", o);
                return -1;
            }
            if (!strcmp(o, "--baseline")) a->baseline = argv[++i], table_only = o;
            else if (!strcmp(o, "--svg")) a->svg = argv[++i], table_only = o;
            else a->model = argv[++i], capacity_only = o;
        } else if (o[0] == '-') {
            fprintf(err, "run kv: unknown option '%s' (see run kv --help)\n", o);
            return -1;
        } else if (a->n_configs == (int)(sizeof a->configs / sizeof a->configs[0])) {
            fprintf(err, "run kv: at most %d configs, got more ('%s')\n", a->n_configs, o);
            return -1;
        } else {
            a->configs[a->n_configs++] = o;
        }
        if (rc) return -1;
    }
    if (a->capacity && table_only) {
        fprintf(err, "run kv: %s applies to the table, not to --capacity\n", table_only);
        return -1;
    }
    if (!a->capacity && capacity_only) {
        fprintf(err, "run kv: %s applies only with --capacity\n", capacity_only);
        return -1;
    }
    return 0;
}

/* Loads CONFIG (a config.json or a directory holding one) into an MLA row named after it: the
 * directory's name, or the file's name when that is not config.json. */
static int load_row(KvModel *m, const char *arg, Error *e) {
    char file[4096], key[4096];
    size_t n = strlen(arg);
    int is_json = n >= 5 && strcmp(arg + n - 5, ".json") == 0;
    if (is_json) snprintf(file, sizeof file, "%s", arg);
    else snprintf(file, sizeof file, "%s/config.json", arg);
    snprintf(key, sizeof key, "%s", arg);
    while (strlen(key) > 1 && key[strlen(key) - 1] == '/') key[strlen(key) - 1] = '\0';
    char *slash = strrchr(key, '/');
    if (is_json && slash && strcmp(slash + 1, "config.json") == 0) {
        *slash = '\0';
        slash = strrchr(key, '/');
    }
    Config c;
    if (config_load(&c, file, e)) return -1;
    return kv_from_config(m, &c, slash ? slash + 1 : key, e);
}

int kv_run(int argc, char **argv, FILE *out, FILE *err) {
    KvArgs a;
    int rc = parse_args(&a, argc, argv, out, err);
    if (rc) return rc > 0 ? 0 : 1;
    Error e = {{0}};
    KvModel rows[1 + 16 + KV_N_BUILTIN];
    int n = 0;
    for (int i = 0; i < a.n_configs; i++)
        if (load_row(&rows[1 + n++], a.configs[i], &e)) {
            fprintf(err, "run kv: %s\n", e.msg);
            return 1;
        }
    if (a.capacity) {
        const KvModel *m = kv_find(a.model);
        if (!m) {
            fprintf(err, "run kv: --model '%s' is not a built-in key (see run kv --help)\n", a.model);
            return 1;
        }
        if (n == 0) rows[1 + n++] = *m;
        kv_print_capacity(out, rows + 1, n, &a.serve);
        return 0;
    }
    if (n == 0)
        for (int i = 0; i < KV_N_BUILTIN; i++) rows[1 + n++] = *kv_builtin(i);
    /* The baseline: a row of the table, or a built-in row put in front of it. */
    const KvModel *base = NULL;
    for (int i = 1; i <= n && !base; i++)
        if (strcasecmp(rows[i].key, a.baseline) == 0) base = &rows[i];
    KvModel *first = rows + 1;
    if (!base) {
        const KvModel *b = kv_find(a.baseline);
        if (!b) {
            fprintf(err, "run kv: --baseline '%s' is neither a given config nor a built-in key\n", a.baseline);
            return 1;
        }
        rows[0] = *b;
        base = first = rows;
        n++;
    }
    print_table(out, first, n, base, a.serve.kv_bits, a.serve.ctx, a.batch);
    print_paper_check(out);
    print_formats(out, first, n, a.serve.ctx);
    if (a.svg) {
        if (kv_write_svg(a.svg, first, n, a.serve.kv_bits, &e)) {
            fprintf(err, "run kv: %s\n", e.msg);
            return 1;
        }
        fprintf(out, "\nwrote %s\n", a.svg);
    }
    return 0;
}

int kv_main(int argc, char **argv) { return kv_run(argc, argv, stdout, stderr); }
