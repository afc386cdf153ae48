/* bench.c - `run bench`: the speed figures that need no generation loop.
 *
 * With DIR, first the figures that say how far from the machine's limits a checkpoint runs
 * (notes/performance.md records them):
 *   decode   tok/s of one-token steps, the bytes a token activates at stored precision (embedding
 *            row, attention, router, shared and top_k routed experts, lm_head, and the norms and
 *            scales, which are noise: bench_activated_bytes, the figure bench_device.cu uses too),
 *            so bytes/s, against the read and copy bandwidth measured in the same run
 *            over a buffer larger than the last-level cache: decode is memory-bound, the ratio
 *            says how close to the floor it is.
 *   prefill  tok/s of a 512-token prefill (logits of the last position only, as generate asks),
 *            in the CLI's chunks of 512 tokens (one chunk) and in chunks of 64 (where each expert
 *            sees ~6 tokens and takes the decode kernels), against cblas_sgemm timed in the
 *            same run on F32 data at the GEMM shapes of a one-chunk prefill (tokens spread evenly
 *            over the experts): the ratio says how close to BLAS it is.
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

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float *bench_rand(size_t n, Rng *r) {
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) p[i] = rng_uniform(r) * 2.0f - 1.0f;
    return p;
}

/* One decode step of MLA attention (one query over a cache of L tokens), absorbed vs naive, at
 * DeepSeek-V3's attention shape (128 heads, d_c 512, d_R 64, nope 128, v 128). */
static void bench_attention(void) {
    MlaDims m = {.n_heads = 128, .kv_lora_rank = 512, .nope = 128, .rope = 64, .v = 128, .softmax_scale = 0.07f};
    int width = mla_cache_width(&m), Lmax = 16384;
    Rng r;
    rng_seed(&r, 1);
    float *cache = bench_rand((size_t)Lmax * width, &r), *q = bench_rand((size_t)m.n_heads * (m.nope + m.rope), &r);
    float *kv_b = bench_rand((size_t)m.n_heads * (m.nope + m.v) * m.kv_lora_rank, &r);
    float *out = malloc(sizeof(float) * m.n_heads * m.v);
    MlaWeights w = {.kv_b = {.data = kv_b, .dtype = DT_F32, .rows = m.n_heads * (m.nope + m.v), .cols = m.kv_lora_rank}};
    printf("attention, one decode step (V3 shape: 128 heads, cache row 576 floats), %d thread(s)\n", omp_get_max_threads());
    printf("| context | absorbed ms | naive ms | naive / absorbed | cache read (absorbed) |\n|---|---|---|---|---|\n");
    for (int L = 1024; L <= Lmax; L *= 4) {
        double t[2];
        for (int form = 0; form < 2; form++) {
            int reps = form ? 1 : 5;
            double t0 = now_s();
            for (int i = 0; i < reps; i++) {
                Error err;
                if (form ? mla_attend_naive(out, q, cache, 1, L - 1, &w, &m, &err)
                         : mla_attend_absorbed(out, q, cache, 1, L - 1, &w, &m, &err)) {
                    fprintf(stderr, "bench: %s\n", err.msg);
                    goto done;
                }
            }
            t[form] = (now_s() - t0) / reps * 1e3;
        }
        printf("| %7d | %11.3f | %8.1f | %15.1fx | %.2f MB |\n", L, t[0], t[1], t[1] / t[0], L * width * 4.0 / 1e6);
    }
done:
    free(cache); free(q); free(kv_b); free(out);
}

/* Sum of a [n] read as S streams (the S parts, in step), each prefetched 4 KiB ahead: more than
 * one stream, and the prefetch, get a core more of the memory bandwidth than a plain loop. */
static uint64_t read_streams(const uint64_t *a, size_t n, int S) {
    size_t part = n / S / 8 * 8;
    uint64_t acc[8] = {0}, sum = 0;
    for (size_t i = 0; i < part; i += 8)
        for (int s = 0; s < S; s++) {
            const uint64_t *p = a + (size_t)s * part + i;
            __builtin_prefetch(p + 512);
            for (int k = 0; k < 8; k++) acc[k] += p[k];
        }
    for (size_t i = (size_t)S * part; i < n; i++) sum += a[i];
    for (int k = 0; k < 8; k++) sum += acc[k];
    return sum;
}

/* The same with AVX2 loads (4 x 256-bit integer sums per 128 bytes), prefetched 8 KiB ahead into
 * L2: on AMD Zen 4 at 2 threads the scalar loop above read 17-18 GB/s while the decode kernels
 * streamed 28 (a read figure below what the model reaches says nothing about the floor). */
__attribute__((target("avx2"))) static uint64_t read_streams_avx2(const uint64_t *a, size_t n, int S) {
    size_t part = n / S / 16 * 16;
    __m256i acc[4];
    for (int k = 0; k < 4; k++) acc[k] = _mm256_setzero_si256();
    for (size_t i = 0; i < part; i += 16)
        for (int s = 0; s < S; s++) {
            const uint64_t *p = a + (size_t)s * part + i;
            _mm_prefetch((const char *)(p + 1024), _MM_HINT_T1);
            for (int k = 0; k < 4; k++)
                acc[k] = _mm256_add_epi64(acc[k], _mm256_loadu_si256((const __m256i *)(const void *)(p + 4 * k)));
        }
    uint64_t sum = 0, v[4];
    for (size_t i = (size_t)S * part; i < n; i++) sum += a[i];
    for (int k = 0; k < 4; k++) {
        _mm256_storeu_si256((__m256i *)(void *)v, acc[k]);
        sum += v[0] + v[1] + v[2] + v[3];
    }
    return sum;
}

/* Read and copy bandwidth over 1 GiB buffers (twice the 480 MiB last-level cache of the machine
 * notes/performance.md measures), threads splitting the buffer. Read: 64-bit integer sums (integer
 * loads keep up with memory), 1 or 2 streams per thread, scalar or (where the CPU has it) AVX2, the
 * best of 2 runs each. Copy: memcpy, counted as bytes read + bytes written, best of 8. GB/s in
 * *read, *copy. */
static int bench_bandwidth(double *read, double *copy) {
    size_t n = (size_t)1 << 27; /* 64-bit words: 1 GiB */
    uint64_t *a = malloc(8 * n), *b = malloc(8 * n), sink = 0;
    if (!a || !b) { free(a); free(b); return -1; }
    memset(a, 1, 8 * n);
    memset(b, 2, 8 * n);
    double best_r = 1e9, best_c = 1e9;
    for (int rep = 0; rep < 8; rep++) {
        double t0 = now_s();
#pragma omp parallel reduction(+ : sink)
        {
            int th = omp_get_thread_num(), nth = omp_get_num_threads();
            size_t lo = n / nth * th, hi = th == nth - 1 ? n : n / nth * (th + 1);
            int S = 1 + rep % 2;
            sink += rep % 4 >= 2 && __builtin_cpu_supports("avx2") ? read_streams_avx2(a + lo, hi - lo, S)
                                                                    : read_streams(a + lo, hi - lo, S);
        }
        double t1 = now_s();
#pragma omp parallel
        {
            int th = omp_get_thread_num(), nth = omp_get_num_threads();
            size_t lo = n / nth * th, hi = th == nth - 1 ? n : n / nth * (th + 1);
            memcpy(b + lo, a + lo, 8 * (hi - lo));
        }
        double t2 = now_s();
        if (t1 - t0 < best_r) best_r = t1 - t0;
        if (t2 - t1 < best_c) best_c = t2 - t1;
    }
    *read = 8.0 * n / best_r / 1e9;
    *copy = 16.0 * n / best_c / 1e9 + (sink == 42 ? 1e-12 : 0); /* sink: the sums are used */
    free(a);
    free(b);
    return 0;
}

static double tensor_bytes(const Tensor *t) {
    if (!t->data) return 0;
    double b = (double)t->rows * t->cols * dtype_size(t->dtype);
    if (t->scale_inv) b += 4.0 * ((t->rows + t->block_r - 1) / t->block_r) * ((t->cols + t->block_c - 1) / t->block_c);
    return b;
}

static double ffn_bytes(const Ffn *f) { return tensor_bytes(&f->gate) + tensor_bytes(&f->up) + tensor_bytes(&f->down); }

/* Bytes of weights one decode token reads at stored precision: the embedding's one row, every
 * layer's projections, its FP32 norm weights (and the router's correction bias), routed experts as
 * top_k of the first one's size (all experts of a layer have the same shapes and dtypes), the final
 * norm and lm_head. bench_device.cu prints the same figure for the device forward. */
double bench_activated_bytes(const Model *m) {
    const Config *c = &m->cfg;
    double d = c->hidden_size, b = d * dtype_size(m->embed.dtype) + 4 * d + tensor_bytes(&m->lm_head);
    for (int l = 0; l < c->n_layers; l++) {
        const Layer *L = &m->layers[l];
        const MlaWeights *a = &L->attn;
        b += 8 * d + 4.0 * (c->q_lora_rank + c->kv_lora_rank);
        b += tensor_bytes(&a->q_a) + tensor_bytes(&a->q_b) + tensor_bytes(&a->q) + tensor_bytes(&a->kv_a) +
             tensor_bytes(&a->kv_b) + tensor_bytes(&a->o);
        if (!L->is_moe) { b += ffn_bytes(&L->dense); continue; }
        b += tensor_bytes(&L->moe.router) + (L->moe.bias ? 4.0 * c->n_routed_experts : 0) + ffn_bytes(&L->moe.shared);
        b += c->num_experts_per_tok * ffn_bytes(&L->experts[0]);
    }
    return b;
}

/* One sgemm shape and how many times a prefill runs it. */
typedef struct { int m, n, k, count; } Gemm;

/* The GEMMs of a prefill of T tokens (absorbed attention, context T, logits of the last position
 * only), tokens spread evenly over the routed experts; returns how many were written to g. */
static int prefill_gemms(Gemm *g, const Config *c, int T) {
    int n = 0, d = c->hidden_size, nh = c->n_heads, qk = c->qk_nope_head_dim + c->qk_rope_head_dim;
    int d_c = c->kv_lora_rank, w = d_c + c->qk_rope_head_dim, dense = c->first_k_dense_replace < c->n_layers ? c->first_k_dense_replace : c->n_layers;
    int moe = c->n_routed_experts ? c->n_layers - dense : 0, Le = c->n_layers;
    if (!c->n_routed_experts) dense = c->n_layers;
    if (c->q_lora_rank) { g[n++] = (Gemm){T, c->q_lora_rank, d, Le}; g[n++] = (Gemm){T, nh * qk, c->q_lora_rank, Le}; }
    else g[n++] = (Gemm){T, nh * qk, d, Le};
    g[n++] = (Gemm){T, w, d, Le};
    g[n++] = (Gemm){T, d_c, c->qk_nope_head_dim, Le * nh};          /* q_lat */
    g[n++] = (Gemm){T, T, d_c, Le * nh};                             /* scores (latent part) */
    g[n++] = (Gemm){T, T, c->qk_rope_head_dim, Le * nh};             /* scores (rope part) */
    g[n++] = (Gemm){T, d_c, T, Le * nh};                             /* o_lat */
    g[n++] = (Gemm){T, c->v_head_dim, d_c, Le * nh};                 /* out_h */
    g[n++] = (Gemm){T, d, nh * c->v_head_dim, Le};                   /* o_proj */
    if (dense) { g[n++] = (Gemm){T, c->intermediate_size, d, 2 * dense}; g[n++] = (Gemm){T, d, c->intermediate_size, dense}; }
    if (moe) {
        int te = T * c->num_experts_per_tok / c->n_routed_experts, mi = c->moe_intermediate_size;
        g[n++] = (Gemm){T, c->n_routed_experts, d, moe};
        g[n++] = (Gemm){te > 0 ? te : 1, mi, d, 2 * moe * c->n_routed_experts};
        g[n++] = (Gemm){te > 0 ? te : 1, d, mi, moe * c->n_routed_experts};
        if (c->n_shared_experts) {
            g[n++] = (Gemm){T, c->n_shared_experts * mi, d, 2 * moe};
            g[n++] = (Gemm){T, d, c->n_shared_experts * mi, moe};
        }
    }
    g[n++] = (Gemm){1, c->vocab_size, d, 1};                         /* lm_head, last position */
    return n;
}

/* Seconds cblas_sgemm takes for g (each shape timed once after a warm-up call, times its count),
 * and its FLOPs in *flops. C = A B^T as matmul calls it. */
static double sgemm_seconds(const Gemm *g, int n, double *flops) {
    size_t big = 0;
    for (int i = 0; i < n; i++) {
        size_t a = (size_t)g[i].m * g[i].k, b = (size_t)g[i].n * g[i].k, c = (size_t)g[i].m * g[i].n;
        if (a > big) big = a;
        if (b > big) big = b;
        if (c > big) big = c;
    }
    Rng r;
    rng_seed(&r, 4);
    float *A = bench_rand(big, &r), *B = bench_rand(big, &r), *C = malloc(sizeof(float) * big);
    double t = 0;
    *flops = 0;
    for (int i = 0; i < n; i++) {
        const Gemm *s = &g[i];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->m, s->n, s->k, 1.0f, A, s->k, B, s->k, 0.0f, C, s->n);
        int reps = s->count < 3 ? s->count : 3;
        double t0 = now_s();
        for (int k = 0; k < reps; k++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->m, s->n, s->k, 1.0f, A, s->k, B, s->k, 0.0f, C, s->n);
        t += (now_s() - t0) / reps * s->count;
        *flops += 2.0 * s->m * s->n * s->k * s->count;
    }
    free(A); free(B); free(C);
    return t;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Loads checkpoint dir into m: 1, or 0 after printing "WHAT: skipped (why)" (a benchmark whose
 * checkpoint is not there is skipped, not failed). */
static int load_or_skip(Model *m, const char *dir, const char *what) {
    Error e;
    if (model_load(m, dir, &e) == 0) return 1;
    printf("%s: skipped (%s)\n", what, e.msg);
    return 0;
}

/* Decode tok/s against bandwidth, prefill tok/s against sgemm, for checkpoint DIR. */
#define BENCH_CLI_CHUNK 512 /* the chunk run.c's commands prefill in (state_init's max_T) */
#define BENCH_SMALL_CHUNK 64 /* for comparison: the CLI's chunk before */
static int bench_limits(const char *dir) {
    Model m;
    State s;
    Error e;
    if (!load_or_skip(&m, dir, "limits")) return 0;
    const Config *c = &m.cfg;
    int V = c->vocab_size, P = 512, steps = 16, rc = 0;
    int *toks = malloc(sizeof(int) * (P + steps));
    Rng r;
    rng_seed(&r, 5);
    for (int i = 0; i < P + steps; i++) toks[i] = (int)(rng_next(&r) % (uint64_t)V);
    float *logits = malloc(sizeof(float) * V);
    if (state_init(&s, &m, P + steps + 1, P, &e)) {
        fprintf(stderr, "run bench: %s\n", e.msg);
        free(toks); free(logits); model_free(&m);
        return 1;
    }
    double rd, cp;
    if (bench_bandwidth(&rd, &cp)) rd = cp = 0;
    double bytes = bench_activated_bytes(&m);
    /* prefill first (it also fills the cache decode reads): once to page the checkpoint in, then
     * timed in chunks of 512 tokens (what run generate, logits and ppl use: run.c's state; each
     * expert sees all its tokens of the prompt in one call) and in chunks of 64 */
    double tp = 0, tp1 = 0;
    rc = model_forward(&m, &s, toks, P, 0, logits, 1, ATTN_ABSORBED, &e);
    for (int k = 0; k < 2 && !rc; k++) {
        s.max_T = k ? BENCH_SMALL_CHUNK : BENCH_CLI_CHUNK;
        double t0 = now_s();
        rc = model_forward(&m, &s, toks, P, 0, logits, 1, ATTN_ABSORBED, &e);
        *(k ? &tp1 : &tp) = now_s() - t0;
    }
    /* decode: 3 runs of `steps` one-token steps at positions P.., each a different token (so
     * different experts); the median run's tok/s */
    double run_s[3];
    for (int k = 0; k < 3 && !rc; k++) {
        double t0 = now_s();
        for (int i = 0; i < steps && !rc; i++) rc = model_forward(&m, &s, toks + P + i, 1, P + i, logits, 1, ATTN_ABSORBED, &e);
        run_s[k] = now_s() - t0;
    }
    if (rc) fprintf(stderr, "run bench: %s\n", e.msg);
    else {
        qsort(run_s, 3, sizeof(double), cmp_double);
        double tok_s = steps / run_s[1], flops;
        Gemm g[32];
        double t_blas = sgemm_seconds(g, prefill_gemms(g, c, P), &flops);
        const char *blas_th = getenv("OPENBLAS_NUM_THREADS"); /* not openblas_get_num_threads: any CBLAS links */
        printf("limits of %s, %d thread(s) (OpenMP; OPENBLAS_NUM_THREADS %s), decode kernel %s\n", dir, omp_get_max_threads(),
               blas_th ? blas_th : "unset", matmul_kernel_name(matmul_kernel_best()));
        printf("  bandwidth    read %.1f GB/s, copy %.1f GB/s (1 GiB buffers)\n", rd, cp);
        printf("  decode       %.2f tok/s (median of 3 runs of %d steps at position %d), %.3f GB activated per token\n",
               tok_s, steps, P, bytes / 1e9);
        printf("               = %.1f GB/s, %.0f%% of read bandwidth\n", bytes * tok_s / 1e9, 100 * bytes * tok_s / 1e9 / rd);
        printf("  sgemm        the GEMMs of a %d-token prefill on F32: %.2f s, %.1f GFLOP/s\n", P, t_blas, flops / t_blas / 1e9);
        printf("  prefill      %d tokens in chunks of %d (as run generate): %.2f s, %.1f tok/s, %.0f%% of sgemm\n", P,
               BENCH_CLI_CHUNK, tp, P / tp, 100 * t_blas / tp);
        printf("               in chunks of %d: %.2f s, %.1f tok/s, %.0f%% of sgemm\n", BENCH_SMALL_CHUNK, tp1, P / tp1,
               100 * t_blas / tp1);
    }
    state_free(&s);
    free(toks); free(logits);
    model_free(&m);
    return rc;
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
    if (!load_or_skip(&m, dir, "decode steps")) return 0;
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
    int only_limits = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--limits")) {
            only_limits = 1;
            continue;
        }
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: run bench [DIR [--limits]]\n"
                   "  with DIR: decode tok/s, bytes activated per token and the read/copy bandwidth measured\n"
                   "  in the same run; prefill tok/s of 512 tokens against cblas_sgemm at the same shapes;\n"
                   "  then one MLA decode step, absorbed vs naive, at contexts 1k, 4k, 16k (V3's attention\n"
                   "  shape); with DIR, the tokenizer's encode speed on 1 MB and the cost of a decode step of\n"
                   "  1 and 2 tokens and of an MTP draft. --limits: only the first part.\n"
                   "  Threads: OMP_NUM_THREADS (decode), OPENBLAS_NUM_THREADS (prefill)\n");
            return 0;
        }
        if (argv[i][0] == '-' || dir) {
            fprintf(stderr, "run bench: unexpected argument \"%s\"\n(see run bench --help)\n", argv[i]);
            return 2;
        }
        dir = argv[i];
    }
    if (dir && bench_limits(dir)) return 1;
    if (only_limits) return 0;
    bench_attention();
    return dir ? bench_tokenizer(dir) || bench_steps(dir) : 0;
}
