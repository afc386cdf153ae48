/* kv.c - how many bytes the attention cache holds per token: the arithmetic of `run kv`.
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
 * The other files of the story: kv_capacity.c (what the cache means for serving), kv_svg.c (the
 * plot), kv_cli.c (`run kv`: the table, the V2 report's check, the options). notes/kvcache.md
 * works these numbers by hand.
 */
#include "kv.h"

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
_Static_assert(N_BUILTIN == KV_N_BUILTIN, "kv.h counts the built-in rows");

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

double kv_format_bytes_per_token(const KvModel *m, MlaKvFormat f) {
    if (m->kind != KV_MLA) return 0;
    return (double)m->n_layers * (double)mla_kv_row_bytes(f, m->d_c, m->d_R);
}

double kv_format_bits(const KvModel *m, MlaKvFormat f) {
    long long el = kv_elements_per_token(m);
    return el > 0 ? 8.0 * kv_format_bytes_per_token(m, f) / (double)el : 0;
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
 * The numbers in words, for every printer of the story (the table, the capacity report, the plot)
 */

/* "BF16", "FP8", "FP32", or "6 bits on average" written into buf. */
const char *kv_bits_name(double bits, char *buf, size_t n) {
    if (bits == 16) return "BF16";
    if (bits == 8) return "FP8";
    if (bits == 32) return "FP32";
    snprintf(buf, n, "%g bits on average", bits);
    return buf;
}

/* 1234567 -> "1,234,567" (rounded to an integer). */
const char *kv_commas(double v, char *buf, size_t n) {
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

/* GB with 3 decimals, or in e-notation when that would print 0.000 (the tiny test models). */
void kv_put_gb(FILE *f, int width, double bytes) {
    double gb = bytes / 1e9;
    fprintf(f, gb > 0 && gb < 0.001 ? " %*.1e" : " %*.3f", width, gb);
}
