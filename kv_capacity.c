/* kv_capacity.c - what the cache size means for serving: the capacity model of `run kv --capacity`
 * and its printed report (kv.c has the bytes per token it starts from).
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

#include <math.h>

/* ---------------------------------------------------------------------------------------------
 * The model
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
 * The report
 */

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
        fprintf(f, "%-30s %6g %6.4g %10s", ms[i]->name, s.weight_bits, s.kv_bits,
                kv_commas(kv_bytes_per_token(ms[i], s.kv_bits), b1, sizeof b1));
        kv_put_gb(f, 7, r.seq_bytes);
        fputc(' ', f);
        if (!r.fits) {
            fprintf(f, "does not fit: weights %.0f GB, memory %.0f GB\n", r.weight_bytes / 1e9, r.mem_bytes / 1e9);
            continue;
        }
        if (i == 0) first = r.tokens_per_s;
        fprintf(f, "%7ld %8.2f", r.max_batch, r.mem_ms);
        if (s.tflops > 0) fprintf(f, " %8.2f", r.compute_ms);
        fprintf(f, " %10s", kv_commas(r.tokens_per_s, b2, sizeof b2));
        if (first > 0) fprintf(f, " %7.2fx", r.tokens_per_s / first);
        fprintf(f, "\n");
    }
}

void kv_print_capacity(FILE *f, const KvModel *models, int n, const KvServe *s) {
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
    /* each MLA model's latent cache in the formats run --kv stores: the bytes of mla_kv.h as bits */
    for (int i = 0, sec = n + 2; i < n; i++) {
        const KvModel *m = &models[i];
        if (m->kind != KV_MLA) continue;
        KvModel v[3];
        const KvModel *vp[3];
        double wb[3], kb[3];
        int nv = 0;
        for (int k = MLA_KV_F32; k <= MLA_KV_FP8; k++) {
            if (kv_format_bits(m, (MlaKvFormat)k) == 0) continue;
            v[nv] = *m;
            snprintf(v[nv].name, sizeof v[nv].name, "MLA, --kv %s cache", mla_kv_format_name((MlaKvFormat)k));
            vp[nv] = &v[nv];
            wb[nv] = s->weight_bits;
            kb[nv] = kv_format_bits(m, (MlaKvFormat)k);
            nv++;
        }
        fprintf(f, "\n%d. %s's latent cache as run --kv stores it (fp8: FlashMLA's 656-byte layout in V3):\n",
                sec++, m->name);
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
