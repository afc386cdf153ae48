/* tests/bench_device.cu - speed of the device forward (model.cu) on one checkpoint: a benchmark that
 * prints figures, not a test.
 *
 *   build/cuda/bench_device DIR [DECODE_TOKENS [PREFILL_TOKENS]]      (defaults 256 and 512)
 *
 * Prints, for DIR: the device-to-device copy bandwidth measured now (bytes read + written), the
 * bytes a decode step must read at stored precision (the activated weights: embedding row, every
 * layer's attention and norms, router, shared experts and top_k routed experts, final norm,
 * lm_head; and the latent cache at the mean context), the floor those bytes give at that bandwidth,
 * then prefill tok/s (PREFILL_TOKENS random ids, last position's logits, median of 3 after a
 * warm-up) and decode tok/s (batch 1, DECODE_TOKENS greedy steps after a 16-token prompt, each step
 * one forward whose token alone comes back; median of 3) and the decode's fraction of the floor.
 */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#include "copy_bandwidth.cuh"

extern "C" {
#include "bench.h"
#include "device.h"
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median3(double *v) { qsort(v, 3, sizeof(double), cmp_double); return v[1]; }

static void die_on(int rc, const Error *e) {
    if (rc) { fprintf(stderr, "bench_device: %s\n", e->msg); exit(1); }
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: bench_device DIR [DECODE_TOKENS [PREFILL_TOKENS]]\n"); return 2; }
    const char *dir = argv[1];
    int n_dec = argc > 2 ? atoi(argv[2]) : 256, n_pre = argc > 3 ? atoi(argv[3]) : 512, P = 16;
    Model m;
    Error e;
    die_on(model_load(&m, dir, &e), &e);
    int V = m.cfg.vocab_size;

    double bw = copy_bandwidth(); /* 1 GiB device to device, bytes read + written */
    if (bw <= 0.0) { fprintf(stderr, "bench_device: no device memory\n"); return 1; }

    Rng rng;
    rng_seed(&rng, 7);
    int n_ids = n_pre > P + 1 ? n_pre : P + 1, *ids = (int *)malloc(sizeof(int) * n_ids);
    for (int i = 0; i < n_ids; i++) ids[i] = 1 + (int)(rng_next(&rng) % (uint64_t)(V - 1));
    float *logits = (float *)malloc(sizeof(float) * V);
    State s;
    die_on(state_init_device(&s, &m, P + n_dec + n_pre + 8, 64, "cuda", &e), &e);

    double pre[3], dec[3];
    die_on(model_forward(&m, &s, ids, n_pre, 0, logits, 1, ATTN_ABSORBED, &e), &e); /* warm-up */
    for (int r = 0; r < 3; r++) {
        double a = now_s();
        die_on(model_forward(&m, &s, ids, n_pre, 0, logits, 1, ATTN_ABSORBED, &e), &e);
        pre[r] = n_pre / (now_s() - a);
    }
    for (int r = -1; r < 3; r++) { /* r = -1: warm-up */
        int next;
        die_on(model_forward_argmax(&m, &s, ids, P, 0, &next, &e), &e);
        double a = now_s();
        for (int i = 0; i < n_dec; i++) die_on(model_forward_argmax(&m, &s, &next, 1, P + i, &next, &e), &e);
        if (r >= 0) dec[r] = n_dec / (now_s() - a);
    }
    double wbytes = bench_activated_bytes(&m); /* bench.c */
    double cbytes = (double)m.cfg.n_layers * (P + n_dec / 2.0) * mla_cache_width(&m.mla) * 4;
    double floor_s = (wbytes + cbytes) / bw, d_med = median3(dec);
    printf("%s: copy bandwidth %.0f GB/s; a decode step reads %.1f MB of weights at stored precision + %.2f MB of "
           "latent cache (mean context %d): floor %.1f us = %.0f tok/s\n",
           dir, bw / 1e9, wbytes / 1e6, cbytes / 1e6, P + n_dec / 2, floor_s * 1e6, 1 / floor_s);
    printf("%s: prefill %d tokens: %.0f tok/s (median of 3: %.0f %.0f %.0f)\n", dir, n_pre, median3(pre), pre[0], pre[1], pre[2]);
    printf("%s: decode %d tokens (batch 1): %.0f tok/s (median of 3: %.0f %.0f %.0f), %.1f us per token, %.1f%% of the "
           "bandwidth floor\n",
           dir, n_dec, d_med, dec[0], dec[1], dec[2], 1e6 / d_med, 100 * d_med * floor_s);
    state_free(&s);
    model_free(&m);
    free(ids);
    free(logits);
    return 0;
}
