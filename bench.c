/* bench.c - `run bench`: the speed figures that need no generation loop.
 *
 * One decode step of MLA attention, absorbed against naive, as the cache grows (the absorbed form
 * reads each cached latent row once for all heads; the naive form first expands every row into
 * per-head keys and values: notes/mla.md works the costs), the tokenizer's encode speed, and
 * what a decode step of 1 and of 2 tokens and an MTP draft cost (why --mtp pays or not).
 * Timings use whatever threads OpenMP and OpenBLAS are given; `make bench` sets one thread for
 * these and prints decode tok/s at 1 and all threads.
 */
#include "bench.h"
#include "model.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float *bench_rand(size_t n, Rng *r) {
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) p[i] = rng_uniform(r) * 2.0f - 1.0f;
    return p;
}

/* One decode step of MLA attention (one query over a cache of L tokens), absorbed vs naive, at
 * DeepSeek-V2-Lite's attention shape (16 heads, d_c 512, d_R 64, nope 128, v 128). */
static void bench_attention(void) {
    MlaDims m = {.n_heads = 16, .kv_lora_rank = 512, .nope = 128, .rope = 64, .v = 128, .softmax_scale = 0.07f};
    int width = mla_cache_width(&m), Lmax = 4096;
    Rng r;
    rng_seed(&r, 1);
    float *cache = bench_rand((size_t)Lmax * width, &r), *q = bench_rand((size_t)m.n_heads * (m.nope + m.rope), &r);
    float *kv_b = bench_rand((size_t)m.n_heads * (m.nope + m.v) * m.kv_lora_rank, &r);
    float *out = malloc(sizeof(float) * m.n_heads * m.v);
    MlaWeights w = {.kv_b = {.data = kv_b, .dtype = DT_F32, .rows = m.n_heads * (m.nope + m.v), .cols = m.kv_lora_rank}};
    printf("attention, one decode step (V2-Lite shape: 16 heads, cache row 576 floats)\n");
    printf("| context | absorbed ms | naive ms | naive / absorbed | cache read (absorbed) |\n|---|---|---|---|---|\n");
    for (int L = 256; L <= Lmax; L *= 4) {
        double t[2];
        for (int form = 0; form < 2; form++) {
            int reps = form ? 1 : 20;
            double t0 = now_s();
            for (int i = 0; i < reps; i++) {
                if (form) mla_attend_naive(out, q, cache, 1, L - 1, &w, &m);
                else mla_attend_absorbed(out, q, cache, 1, L - 1, &w, &m);
            }
            t[form] = (now_s() - t0) / reps * 1e3;
        }
        printf("| %7d | %11.3f | %8.3f | %15.1fx | %.2f MB |\n", L, t[0], t[1], t[1] / t[0], L * width * 4.0 / 1e6);
    }
    free(cache); free(q); free(kv_b); free(out);
}

static int bench_tokenizer(const char *dir) {
    Tokenizer *tok;
    Error e;
    if (tokenizer_load(&tok, dir, &e)) {
        printf("tokenizer: skipped (%s)\n", e.msg);
        return 0;
    }
    /* 1 MB of text: the tokenizer's own pieces decoded, in a fixed pseudo-random order */
    size_t n = 0, cap = 1 << 20;
    char *text = malloc(cap + 64);
    Rng r;
    rng_seed(&r, 2);
    int V = tokenizer_vocab_size(tok);
    while (n < cap) {
        size_t nb;
        int id = (int)(rng_next(&r) % (uint64_t)V);
        if (tokenizer_is_special(tok, id)) continue;
        const char *b = tokenizer_token_bytes(tok, id, &nb);
        if (nb > 64) continue;
        memcpy(text + n, b, nb);
        n += nb;
    }
    int *ids, n_ids;
    double t0 = now_s();
    int rc = tokenizer_encode(tok, text, n, &ids, &n_ids, &e);
    if (rc) {
        fprintf(stderr, "run bench: %s\n", e.msg);
        free(text);
        tokenizer_free(tok);
        return 1;
    }
    double dt = now_s() - t0;
    printf("tokenizer: encoded %.2f MB into %d tokens in %.3f s: %.1f MB/s\n", n / 1e6, n_ids, dt, n / 1e6 / dt);
    free(ids);
    free(text);
    tokenizer_free(tok);
    return 0;
}

/* What one step of plain and of speculative decoding costs: a forward of 1 and of 2 tokens at
 * position 100 (speculative decoding verifies two), and the MTP module on one token (its draft). */
static int bench_steps(const char *dir) {
    Model m;
    State s;
    Error e;
    if (model_load(&m, dir, &e)) {
        printf("decode steps: skipped (%s)\n", e.msg);
        return 0;
    }
    int V = m.cfg.vocab_size, toks[102], R = 200, rc = 0;
    for (int i = 0; i < 102; i++) toks[i] = (i * 37 + 5) % V;
    float *logits = malloc(sizeof(float) * 2 * V);
    int have_state = state_init(&s, &m, 128, 64, &e) == 0;
    if (!have_state || model_forward(&m, &s, toks, 100, 0, logits, 1, ATTN_ABSORBED, &e)) rc = 1;
    double t[3] = {0};
    for (int k = 0; !rc && k < 2; k++) {
        double t0 = now_s();
        for (int r = 0; r < R && !rc; r++) rc = model_forward(&m, &s, toks + 100, k + 1, 100, logits, 0, ATTN_ABSORBED, &e);
        t[k] = (now_s() - t0) / R * 1e3;
    }
    if (!rc && m.has_mtp) {
        rc = mtp_forward(&m, &s, toks + 1, 64, 0, logits, 1, &e) || mtp_forward(&m, &s, toks + 65, 35, 64, logits, 1, &e);
        double t0 = now_s();
        for (int r = 0; r < R && !rc; r++) rc = mtp_forward(&m, &s, toks + 100, 1, 99, logits, 1, &e);
        t[2] = (now_s() - t0) / R * 1e3;
    }
    if (rc) fprintf(stderr, "run bench: %s\n", e.msg);
    else {
        printf("decode step at position 100: 1 token %.3f ms, 2 tokens %.3f ms (%.2fx)", t[0], t[1], t[1] / t[0]);
        if (m.has_mtp) printf(", MTP draft %.3f ms (%.0f%% of a 1-token step)", t[2], 100 * t[2] / t[0]);
        printf("\n");
    }
    if (have_state) state_free(&s);
    free(logits);
    model_free(&m);
    return rc;
}

int bench_main(int argc, char **argv) {
    const char *dir = NULL;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: run bench [DIR]\n  one MLA decode step, absorbed vs naive, at contexts 256, 1024, 4096\n"
                   "  (V2-Lite's attention shape); with DIR, the tokenizer's encode speed on 1 MB and the cost\n"
                   "  of a decode step of 1 and 2 tokens and of an MTP draft\n");
            return 0;
        }
        if (argv[i][0] == '-' || dir) {
            fprintf(stderr, "run bench: unexpected argument \"%s\"\n(see run bench --help)\n", argv[i]);
            return 2;
        }
        dir = argv[i];
    }
    bench_attention();
    return dir ? bench_tokenizer(dir) || bench_steps(dir) : 0;
}
