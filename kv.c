/* kv.c - how many bytes the attention cache holds per token, and what that means for serving.
 *
 * Decoding a token attends to the keys and values of every earlier token in every layer; they are
 * kept, not recomputed. Per token, summed over the L layers, the cache holds
 *     MHA   2 * n_h  * d_h * L     a key and a value of d_h for each of the n_h heads
 *     GQA   2 * n_kv * d_h * L     the heads share n_kv key/value heads (n_kv = 1 is MQA)
 *     MLA   (d_c + d_R) * L        one latent c_kv (d_c = kv_lora_rank) and one rotary key k_pe
 *                                  (d_R = qk_rope_head_dim), both shared by all heads
 * elements, each stored in b bits (16 BF16, 8 FP8, or an average such as DeepSeek-V2's 6):
 *     bytes/token = elements * b / 8,     bytes/sequence = T * bytes/token.
 * DeepSeek-V3: (512 + 64) * 61 = 35,136 elements = 70,272 bytes in BF16. An MHA of the same shape
 * (128 heads of 128) would hold 2 * 128 * 128 * 61 = 1,998,848 elements, 57x more.
 *
 * The serving model (decode on one node, memory-bound):
 *     M = gpus * mem     W = params_total * w_bits / 8     S = T * bytes/token (every sequence at T)
 *     largest batch    B = floor((M - W) / S)
 *     bytes per step   W + B * S     (a large batch touches every expert, so all weights are read)
 *     step time        (W + B * S) / (gpus * bandwidth),       tokens/s = B / step time.
 * With a compute peak P (--tflops), step time = max(that, B * F / (gpus * P)), where a token costs
 *     F = 2 * params_active + attention over its T cached tokens:
 *     MHA, GQA  4 * n_h * d_h * T * L         (q.k and p.v for every head)
 *     MLA       2 * n_h * (2 d_c + d_R) * T * L (absorbed: q_lat.c_kv + q_pe.k_pe, then p.c_kv)
 * When the cache fills memory, W + B * S ~ M, so every model's step takes about mem / bandwidth
 * (80 GB / 3.35 TB/s = 23.9 ms) and throughput is proportional to the batch that fits.
 * notes/kvcache.md works these numbers by hand.
 */
#include "kv.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---------------------------------------------------------------------------------------------
 * The built-in table. Shapes from each model's published config.json / paper.
 */
static const KvModel BUILTIN[] = {
    /* DeepSeek LLM paper (arXiv:2401.02954) Table 2 and deepseek-llm-67b-base config.json:
     * 95 layers, 64 heads, num_key_value_heads 8, head dim 8192/64 = 128; 67B dense. */
    {"67b", "DeepSeek LLM 67B", KV_GQA, 95, 64, 8, 128, 0, 0, 67e9, 67e9},
    /* DeepSeek-V2 report (arXiv:2405.04434) sec. 3.1 and config.json: 60 layers, 128 heads,
     * kv_lora_rank 512, qk_rope_head_dim 64, qk_nope_head_dim 128; 236B total, 21B activated. */
    {"v2", "DeepSeek-V2", KV_MLA, 60, 128, 0, 128, 512, 64, 236e9, 21e9},
    /* DeepSeek-V2 report appendix B / DeepSeek-V2-Lite config.json: 27 layers, 16 heads,
     * kv_lora_rank 512, rope 64; 15.7B total, 2.4B activated. */
    {"v2-lite", "DeepSeek-V2-Lite", KV_MLA, 27, 16, 0, 128, 512, 64, 15.7e9, 2.4e9},
    /* DeepSeek-V3 report (arXiv:2412.19437) sec. 4.2 and config.json: 61 layers, 128 heads,
     * kv_lora_rank 512, rope 64; 671B total, 37B activated (MTP module not counted). */
    {"v3", "DeepSeek-V3", KV_MLA, 61, 128, 0, 128, 512, 64, 671e9, 37e9},
    /* Kimi K2 report (arXiv:2507.20534) and moonshotai/Kimi-K2-Instruct config.json: the V3
     * layout with 64 heads, 61 layers, kv_lora_rank 512, rope 64; 1.04T total, 32B activated. */
    {"kimi-k2", "Kimi K2", KV_MLA, 61, 64, 0, 128, 512, 64, 1.04e12, 32e9},
    /* Llama 3.1 (arXiv:2407.21783 Table 3, meta-llama config.json): 8 KV heads of 128 in all
     * three; 32 / 80 / 126 layers, 32 / 64 / 128 query heads. Parameter counts from the configs. */
    {"llama-8b", "Llama-3.1-8B", KV_GQA, 32, 32, 8, 128, 0, 0, 8.03e9, 8.03e9},
    {"llama-70b", "Llama-3.1-70B", KV_GQA, 80, 64, 8, 128, 0, 0, 70.6e9, 70.6e9},
    {"llama-405b", "Llama-3.1-405B", KV_GQA, 126, 128, 8, 128, 0, 0, 405e9, 405e9},
    /* Not a real model: V3 with plain MHA, 128 heads of d_h = 128 (the V2 report's Table 1
     * convention), same weights. The saving MLA alone buys. */
    {"v3-mha", "V3 as plain MHA", KV_MHA, 61, 128, 128, 128, 0, 0, 671e9, 37e9},
};
#define N_BUILTIN ((int)(sizeof BUILTIN / sizeof BUILTIN[0]))

int kv_builtin_count(void) { return N_BUILTIN; }
const KvModel *kv_builtin(int i) { return i >= 0 && i < N_BUILTIN ? &BUILTIN[i] : NULL; }

const KvModel *kv_find(const char *key) {
    for (int i = 0; i < N_BUILTIN; i++)
        if (strcasecmp(BUILTIN[i].key, key) == 0) return &BUILTIN[i];
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Cache sizes
 */
const char *kv_kind_name(KvKind k) { return k == KV_MHA ? "MHA" : k == KV_GQA ? "GQA" : "MLA"; }

long long kv_elements_per_token(const KvModel *m) {
    switch (m->kind) {
    case KV_MHA: return 2LL * m->n_heads * m->d_h * m->n_layers;
    case KV_GQA: return 2LL * m->n_kv_heads * m->d_h * m->n_layers;
    case KV_MLA: return (long long)(m->d_c + m->d_R) * m->n_layers;
    }
    return 0;
}

double kv_bytes_per_token(const KvModel *m, double bits) {
    return (double)kv_elements_per_token(m) * bits / 8.0;
}

double kv_bytes_per_sequence(const KvModel *m, double bits, long ctx) {
    return kv_bytes_per_token(m, bits) * (double)ctx;
}

void kv_formula(char *buf, size_t n, const KvModel *m) {
    if (m->kind == KV_MHA)
        snprintf(buf, n, "2*n_h*d_h*L = 2*%d*%d*%d", m->n_heads, m->d_h, m->n_layers);
    else if (m->kind == KV_GQA)
        snprintf(buf, n, "2*n_kv*d_h*L = 2*%d*%d*%d", m->n_kv_heads, m->d_h, m->n_layers);
    else
        snprintf(buf, n, "(d_c+d_R)*L = (%d+%d)*%d", m->d_c, m->d_R, m->n_layers);
}

KvModel kv_variant(const KvModel *m, KvKind kind, int n_kv_heads) {
    KvModel v = *m;
    v.kind = kind;
    v.n_kv_heads = kind == KV_MHA ? m->n_heads : kind == KV_GQA ? n_kv_heads : 0;
    if (kind != KV_MLA) v.d_c = v.d_R = 0;
    if (kind == KV_MHA) snprintf(v.name, sizeof v.name, "MHA, %d heads of %d", m->n_heads, m->d_h);
    if (kind == KV_GQA) snprintf(v.name, sizeof v.name, "GQA, %d KV heads of %d", n_kv_heads, m->d_h);
    if (kind == KV_MLA) snprintf(v.name, sizeof v.name, "MLA, latent %d + rope %d", m->d_c, m->d_R);
    return v;
}

int kv_from_config(KvModel *m, const Config *c, const char *key, Error *e) {
    if (c->n_layers <= 0 || c->n_heads <= 0)
        return error_set(e, "%s: num_hidden_layers %d, num_attention_heads %d: expected both > 0",
                         key, c->n_layers, c->n_heads);
    if (c->kv_lora_rank <= 0 || c->qk_rope_head_dim < 0)
        return error_set(e, "%s: kv_lora_rank %d: expected > 0 (an MLA model: deepseek_v2, "
                         "deepseek_v3, kimi_k2)", key, c->kv_lora_rank);
    memset(m, 0, sizeof *m);
    snprintf(m->key, sizeof m->key, "%s", key);
    snprintf(m->name, sizeof m->name, "%s (%s)", key, c->model_type);
    m->kind = KV_MLA;
    m->n_layers = c->n_layers;
    m->n_heads = c->n_heads;
    m->d_h = c->qk_nope_head_dim;
    m->d_c = c->kv_lora_rank;
    m->d_R = c->qk_rope_head_dim;
    double mtp = 0;
    config_param_counts(c, &m->params_total, &m->params_active, &mtp);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The capacity model
 */

/* Attention FLOPs for one new token per cached token, all layers (see the header comment). */
static double attn_flops_per_cached_token(const KvModel *m) {
    if (m->kind == KV_MLA) return 2.0 * m->n_heads * (2.0 * m->d_c + m->d_R) * m->n_layers;
    return 4.0 * m->n_heads * m->d_h * m->n_layers;
}

KvCapacity kv_capacity(const KvModel *m, const KvServe *s) {
    KvCapacity r = {0};
    r.mem_bytes = s->gpus * s->gpu_mem_gb * 1e9;
    r.weight_bytes = m->params_total * s->weight_bits / 8.0;
    r.seq_bytes = kv_bytes_per_sequence(m, s->kv_bits, s->ctx);
    r.flops_per_token = 2.0 * m->params_active + attn_flops_per_cached_token(m) * (double)s->ctx;
    double room = r.mem_bytes - r.weight_bytes;
    r.max_batch = room > 0 && r.seq_bytes > 0 ? (long)fmin(floor(room / r.seq_bytes), 1e15) : 0;
    r.fits = r.max_batch >= 1;
    if (!r.fits) return r;
    double B = (double)r.max_batch;
    r.step_bytes = r.weight_bytes + B * r.seq_bytes;
    r.mem_ms = 1e3 * r.step_bytes / (s->gpus * s->bandwidth_tbs * 1e12);
    r.compute_ms = s->tflops > 0 ? 1e3 * B * r.flops_per_token / (s->gpus * s->tflops * 1e12) : 0;
    r.step_ms = r.mem_ms > r.compute_ms ? r.mem_ms : r.compute_ms;
    r.tokens_per_s = B / (r.step_ms / 1e3);
    return r;
}

/* ---------------------------------------------------------------------------------------------
 * Printing
 */
static const char *bits_name(double bits, char *buf, size_t n) {
    if (bits == 16) return "BF16";
    if (bits == 8) return "FP8";
    if (bits == 32) return "FP32";
    snprintf(buf, n, "%g bits on average", bits);
    return buf;
}

/* 1234567 -> "1,234,567" (rounded to an integer). */
static const char *commas(double v, char *buf, size_t n) {
    char digits[32];
    snprintf(digits, sizeof digits, "%.0f", v);
    size_t len = strlen(digits), o = 0;
    for (size_t i = 0; i < len && o + 2 < n; i++) {
        if (i > 0 && digits[i - 1] != '-' && (len - i) % 3 == 0) buf[o++] = ',';
        buf[o++] = digits[i];
    }
    buf[o] = '\0';
    return buf;
}

/* "82.2% smaller (5.63x)" or "10.27x larger" relative to base. */
static void compare(char *buf, size_t n, double bytes, double base) {
    if (bytes <= base) snprintf(buf, n, "%.1f%% smaller (%.2fx)", 100.0 * (1.0 - bytes / base), base / bytes);
    else snprintf(buf, n, "%.2fx larger", bytes / base);
}

/* GB with 3 decimals, or in e-notation when that would print 0.000 (the tiny test models). */
static void put_gb(FILE *f, int width, double bytes) {
    double gb = bytes / 1e9;
    fprintf(f, gb > 0 && gb < 0.001 ? " %*.1e" : " %*.3f", width, gb);
}

static void print_table(FILE *f, const KvModel *rows, int n, const KvModel *base, double bits,
                        long ctx, long batch) {
    char b1[32], b2[32], form[64], cmp[48];
    const char *named = bits_name(bits, b2, sizeof b2);
    char with_bits[96];
    snprintf(with_bits, sizeof with_bits, named == b2 ? "%s" : "%s (%g bits)", named, bits);
    fprintf(f, "KV cache per token and per sequence of %s tokens, elements in %s, GB = 1e9 bytes.\n",
            commas((double)ctx, b1, sizeof b1), with_bits);
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
                commas((double)kv_elements_per_token(m), b1, sizeof b1), commas(bpt, b2, sizeof b2));
        put_gb(f, 8, bpt * ctx);
        if (batch > 1) put_gb(f, 9, bpt * ctx * batch);
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
            commas(base, b1, sizeof b1));
    for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) {
        double v = kv_bytes_per_token(v2, CASES[i].bits);
        compare(cmp, sizeof cmp, v, base);
        fprintf(f, "  %-40s %7s bytes/token  %s%s\n", CASES[i].what, commas(v, b2, sizeof b2), cmp,
                CASES[i].bits == 6 ? "  <- the report's 93.3%, about 15x" : "");
    }
    KvModel mha = kv_variant(v2, KV_MHA, 0);
    compare(cmp, sizeof cmp, kv_bytes_per_token(v2, 16), kv_bytes_per_token(&mha, 16));
    kv_formula(form, sizeof form, &mha);
    fprintf(f, "  MLA alone: V2 vs an MHA of its own shape (%s = %s elements), both BF16: %s\n",
            form, commas((double)kv_elements_per_token(&mha), b1, sizeof b1), cmp);
}

static void print_capacity_rows(FILE *f, const KvModel *const *ms, const double *wbits,
                                const double *kbits, int n, const KvServe *s0) {
    char b1[32], b2[32];
    fprintf(f, "%-30s %6s %6s %10s %7s %7s %8s", "model", "w bits", "kv bits", "kv B/tok",
            "GB/seq", "batch", "mem ms");
    if (s0->tflops > 0) fprintf(f, " %8s", "flop ms");
    fprintf(f, " %10s %8s\n", "tokens/s", "vs first");
    double first = 0;
    for (int i = 0; i < n; i++) {
        KvServe s = *s0;
        s.weight_bits = wbits[i];
        s.kv_bits = kbits[i];
        KvCapacity r = kv_capacity(ms[i], &s);
        fprintf(f, "%-30s %6g %6g %10s", ms[i]->name, s.weight_bits, s.kv_bits,
                commas(kv_bytes_per_token(ms[i], s.kv_bits), b1, sizeof b1));
        put_gb(f, 7, r.seq_bytes);
        fputc(' ', f);
        if (!r.fits) {
            fprintf(f, "does not fit: weights %.0f GB, memory %.0f GB\n", r.weight_bytes / 1e9, r.mem_bytes / 1e9);
            continue;
        }
        if (i == 0) first = r.tokens_per_s;
        fprintf(f, "%7ld %8.2f", r.max_batch, r.mem_ms);
        if (s.tflops > 0) fprintf(f, " %8.2f", r.compute_ms);
        fprintf(f, " %10s", commas(r.tokens_per_s, b2, sizeof b2));
        if (first > 0) fprintf(f, " %7.2fx", r.tokens_per_s / first);
        fprintf(f, "\n");
    }
}

static void print_capacity(FILE *f, const KvModel *models, int n, const KvServe *s) {
    fprintf(f, "Serving model: %d GPUs x %g GB, %g TB/s each", s->gpus, s->gpu_mem_gb, s->bandwidth_tbs);
    if (s->tflops > 0) fprintf(f, ", %g dense TFLOPS each", s->tflops);
    fprintf(f, "; every sequence holds %ld tokens.\n", s->ctx);
    fprintf(f, "  batch = floor((memory - weights) / (ctx * kv bytes/token))\n"
               "  mem ms = (weights + batch * ctx * kv bytes/token) / bandwidth   (all weights and caches read once per step)\n");
    if (s->tflops > 0)
        fprintf(f, "  flop ms = batch * (2 * active params + attention FLOPs over ctx) / peak; step = the larger\n");
    fprintf(f, "  tokens/s = batch / step time\n\n");

    fprintf(f, "1. DeepSeek-V2 vs DeepSeek LLM 67B as the V2 report deployed them (sec. 3.2.3):\n"
               "   67B in BF16 (weights and cache, assumed); V2 with FP8 weights and a 6-bit cache.\n");
    const KvModel *pair[2] = {kv_find("67b"), kv_find("v2")};
    const double pw[2] = {16, 8}, pk[2] = {16, 6};
    print_capacity_rows(f, pair, pw, pk, 2, s);
    fprintf(f, "   reported: 5.76x the maximum generation throughput (8 H800, the 67B service's\n"
               "   prompt and generation lengths; V2 over 50K tokens/s).\n");

    for (int i = 0; i < n; i++) {
        const KvModel *m = &models[i];
        KvModel v[3];
        int nv = 0;
        v[nv++] = kv_variant(m, KV_MHA, 0);
        int n_kv = m->n_heads / 2 < 8 ? m->n_heads / 2 : 8; /* Llama's 8, fewer for tiny models */
        v[nv++] = kv_variant(m, KV_GQA, m->kind == KV_GQA ? m->n_kv_heads : n_kv > 0 ? n_kv : 1);
        if (m->kind == KV_MLA) v[nv++] = kv_variant(m, KV_MLA, 0);
        const KvModel *vp[3] = {&v[0], &v[1], &v[2]};
        double wb[3] = {s->weight_bits, s->weight_bits, s->weight_bits};
        double kb[3] = {s->kv_bits, s->kv_bits, s->kv_bits};
        fprintf(f, "\n%d. %s with each attention, same weights (%.4g billion parameters, %.4g billion active):\n",
                i + 2, m->name, m->params_total / 1e9, m->params_active / 1e9);
        print_capacity_rows(f, vp, wb, kb, nv, s);
    }
    /* H800 SXM: 989 dense BF16 TFLOPS, 3.35 TB/s (NVIDIA's H100 SXM figures; the H800 cuts NVLink). */
    const KvModel *v2 = kv_find("v2");
    double per_elem = attn_flops_per_cached_token(v2) / (double)kv_elements_per_token(v2);
    if (s->tflops > 0)
        fprintf(f, "\nLeft out: kernels below peak FLOPs and bandwidth, activations and workspace for a batch\n"
                   "of thousands, paging waste, sequences of mixed lengths, prefill sharing the GPUs,\n"
                   "tensor/expert-parallel communication.\n");
    else
        fprintf(f, "\nLeft out: compute (add --tflops: V2's absorbed attention does %.0f FLOPs per cached element,\n"
                   "%.0f per byte at 6 bits, more than the %.0f FLOPs per byte at which an H800 stops being\n"
                   "memory-bound), activations and workspace for a batch of thousands, paging waste, sequences\n"
                   "of mixed lengths, prefill sharing the GPUs, parallel communication, kernels below peak.\n",
                per_elem, per_elem / 0.75, 989e12 / 3.35e12);
}

/* ---------------------------------------------------------------------------------------------
 * The plot: cache GB per sequence vs context, log-log, so every model is a straight line of slope 1
 * and the vertical gaps are the ratios of bytes per token.
 */
typedef struct { double left, right, top, bottom, x0, x1, y0, y1; } Axes; /* pixels; log2 x, log10 y */
static double px(const Axes *a, double lx) { return a->left + (lx - a->x0) / (a->x1 - a->x0) * (a->right - a->left); }
static double py(const Axes *a, double ly) { return a->bottom - (ly - a->y0) / (a->y1 - a->y0) * (a->bottom - a->top); }

int kv_write_svg(const char *path, const KvModel *rows, int n, double bits, Error *e) {
    static const char *COLORS[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
    enum { MAX_ROWS = 64 };
    if (n < 1 || n > MAX_ROWS) return error_set(e, "%s: %d rows to plot, expected 1..%d", path, n, MAX_ROWS);
    Axes a = {70, 600, 50, 440, 10, 17, 0, 0}; /* x: 2^10 = 1K .. 2^17 = 128K tokens */
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        double g = kv_bytes_per_token(&rows[i], bits) / 1e9;
        if (!(g > 0)) return error_set(e, "%s: row %s has no cache to plot", path, rows[i].key);
        lo = fmin(lo, log10(g * 1024));
        hi = fmax(hi, log10(g * 131072));
    }
    a.y0 = floor(lo);
    a.y1 = ceil(hi);
    FILE *f = fopen(path, "w");
    if (!f) return error_set(e, "%s: cannot open for writing (%s)", path, strerror(errno));
    char b[32];
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"490\" font-family=\"sans-serif\" "
               "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
               "<text x=\"%.0f\" y=\"25\" font-size=\"15\">KV cache per sequence vs context, %s elements "
               "(written by ./run kv --svg)</text>\n", a.left, bits_name(bits, b, sizeof b));
    for (int k = (int)a.x0; k <= (int)a.x1; k++)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"#ddd\"/>"
                   "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%dK</text>\n",
                px(&a, k), a.top, px(&a, k), a.bottom, px(&a, k), a.bottom + 18, 1 << (k - 10));
    for (int k = (int)a.y0; k <= (int)a.y1; k++)
        fprintf(f, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                   "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n",
                a.left, py(&a, k), a.right, py(&a, k), a.left - 6, py(&a, k) + 4, pow(10, k));
    fprintf(f, "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#444\"/>\n"
               "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">context length (tokens)</text>\n"
               "<text transform=\"translate(18,%.0f) rotate(-90)\" text-anchor=\"middle\">GB per sequence "
               "(1 GB = 1e9 bytes)</text>\n<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"end\" fill=\"#444\">"
               "solid: MLA, dashed: GQA, dotted: MHA</text>\n", a.left, a.top, a.right - a.left, a.bottom - a.top,
            (a.left + a.right) / 2, a.bottom + 40, (a.top + a.bottom) / 2, a.right, a.top - 8);
    /* The lines; then a label per line at its right end, sorted top to bottom and pushed apart. */
    double yend[MAX_ROWS];
    int order[MAX_ROWS];
    for (int i = 0; i < n; i++) {
        const char *dash = rows[i].kind == KV_MLA ? "none" : rows[i].kind == KV_GQA ? "8,4" : "2,3";
        double g = kv_bytes_per_token(&rows[i], bits) / 1e9;
        yend[i] = py(&a, log10(g * 131072));
        order[i] = i;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\" "
                   "stroke-dasharray=\"%s\"/>\n", px(&a, a.x0), py(&a, log10(g * 1024)), px(&a, a.x1), yend[i],
                COLORS[i % 10], dash);
    }
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && yend[order[j]] < yend[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    double prev = -1e9;
    for (int i = 0; i < n; i++) {
        int r = order[i];
        double y = fmax(yend[r] + 4, prev + 14);
        prev = y;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>"
                   "<text x=\"%.1f\" y=\"%.1f\" fill=\"%s\">",
                a.right, yend[r], a.right + 8, y - 4, COLORS[r % 10], a.right + 10, y, COLORS[r % 10]);
        for (const char *c = rows[r].name; *c; c++) { /* names from config paths may hold & or < */
            if (*c == '&') fputs("&amp;", f);
            else if (*c == '<') fputs("&lt;", f);
            else fputc(*c, f);
        }
        fprintf(f, ", %s B/token</text>\n", commas(kv_bytes_per_token(&rows[r], bits), b, sizeof b));
    }
    fprintf(f, "</svg>\n");
    if (ferror(f) | fclose(f)) return error_set(e, "%s: write failed (%s)", path, strerror(errno));
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * `run kv`: argument parsing and output.
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
            for (int k = 0; k < N_BUILTIN; k++) fprintf(out, " %s", BUILTIN[k].key);
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
    KvModel rows[1 + 16 + N_BUILTIN];
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
        print_capacity(out, rows + 1, n, &a.serve);
        return 0;
    }
    if (n == 0)
        for (int i = 0; i < N_BUILTIN; i++) rows[1 + n++] = BUILTIN[i];
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
