/* test_fuzz.c - the parsers of untrusted input on mutated input: safetensors headers, config.json,
 * tokenizer.json. Each mutated input must load or fail with a message; never crash, hang, leak
 * or read out of bounds (the sanitizer pass of `make test` runs this file too). Mutations are
 * seeded (rng_next), so a failing case reproduces: the test prints the seed and the iteration.
 *
 *   make test          DSV3_FUZZ_ITERS unset: a few thousand inputs per parser
 *   make fuzz          the sanitizer build for longer (DSV3_FUZZ_ITERS=200000 by default)
 */
#include "model.h"
#include "tokenizer.h"
#include "testutil.h"

#include <unistd.h>

static long iters(long dflt) {
    const char *s = getenv("DSV3_FUZZ_ITERS");
    return s ? strtol(s, NULL, 10) : dflt;
}

/* One random edit of buf [*n] (cap bytes room): flip a bit, overwrite a byte with a byte that
 * matters to JSON or safetensors, duplicate or delete a span, or truncate. Edits fall into the
 * first `hot` bytes (the header) three times out of four. */
static void mutate(unsigned char *buf, size_t *n, size_t cap, size_t hot, Rng *r) {
    static const unsigned char special[] = "{}[]\":,-0123456789e.\\ \n\x00\xff\x80";
    size_t len = *n;
    if (len == 0) return;
    size_t span = hot && hot < len && rng_next(r) % 4 ? hot : len;
    size_t at = (size_t)(rng_next(r) % span);
    switch (rng_next(r) % 6) {
    case 0: buf[at] ^= (unsigned char)(1u << (rng_next(r) % 8)); break;
    case 1: buf[at] = special[rng_next(r) % (sizeof special - 1)]; break;
    case 2: buf[at] = (unsigned char)rng_next(r); break;
    case 3: { /* duplicate a span */
        size_t k = 1 + (size_t)(rng_next(r) % 16);
        if (at + k > len) k = len - at;
        if (len + k > cap) break;
        memmove(buf + at + k, buf + at, len - at);
        *n = len + k;
        break;
    }
    case 4: { /* delete a span */
        size_t k = 1 + (size_t)(rng_next(r) % 16);
        if (at + k > len) k = len - at;
        memmove(buf + at, buf + at + k, len - at - k);
        *n = len - k;
        break;
    }
    default: *n = at; break; /* truncate */
    }
}

static void write_bytes(const char *path, const unsigned char *b, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (n) assert_int_equal(fwrite(b, 1, n, f), n);
    fclose(f);
}

/* A small safetensors file with every dtype the loader widens, and metadata. */
/* buf = seed [n0] with 1 .. max_k mutations (the hot region first), its new length returned. */
static size_t mutated_copy(unsigned char *buf, const void *seed, size_t n0, size_t cap, int max_k, size_t hot, Rng *r) {
    size_t n = n0;
    memcpy(buf, seed, n0);
    for (int k = 1 + (int)(rng_next(r) % (uint64_t)max_k); k > 0; k--) mutate(buf, &n, cap, hot, r);
    return n;
}

/* A refusal must say why, in one line. */
static void check_refusal(long i, const char *what, const Error *e) {
    if (!e->msg[0]) fail_msg("iteration %ld: %s failed without a message", i, what);
    if (strchr(e->msg, '\n')) fail_msg("iteration %ld: a message of more than one line: %s", i, e->msg);
}

static unsigned char *seed_safetensors(const char *dir, size_t *n) {
    float f32[6] = {1, -2, 3.5f, 0, 1e-3f, 7};
    uint16_t bf16[4] = {0x3F80, 0xC000, 0x0001, 0x7F80};
    uint8_t f8[8] = {0x38, 0xB8, 0x7E, 0x01, 0, 0x80, 0x40, 0x7F};
    int32_t i32[2] = {5, -7};
    StWriteTensor ts[] = {
        {.name = "a.weight", .dtype = DT_F32, .ndim = 2, .shape = {2, 3}, .data = f32},
        {.name = "b", .dtype = DT_BF16, .ndim = 1, .shape = {4}, .data = bf16},
        {.name = "c.weight", .dtype = DT_F8_E4M3, .ndim = 2, .shape = {2, 4}, .data = f8},
        {.name = "c.weight_scale_inv", .dtype = DT_F32, .ndim = 2, .shape = {1, 1}, .data = f32},
        {.name = "d", .dtype = DT_I32, .ndim = 1, .shape = {2}, .data = i32},
    };
    const char *k[] = {"format"}, *v[] = {"pt"};
    char path[512];
    Error e;
    snprintf(path, sizeof path, "%s/seed.safetensors", dir);
    assert_int_equal(st_write(path, ts, 5, k, v, 1, &e), 0);
    unsigned char *b = (unsigned char *)read_file(path, n, &e);
    assert_non_null(b);
    return b;
}

static void test_fuzz_safetensors(void **st) {
    (void)st;
    char *dir = make_tmpdir(), path[512];
    size_t n0;
    unsigned char *seed = seed_safetensors(dir, &n0);
    uint64_t header = 0;
    memcpy(&header, seed, 8);
    size_t cap = n0 + 4096;
    unsigned char *buf = malloc(cap);
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    Rng r;
    rng_seed(&r, 11);
    long N = iters(3000), opened = 0;
    for (long i = 0; i < N; i++) {
        size_t n = mutated_copy(buf, seed, n0, cap, 3, 8 + (size_t)header, &r);
        write_bytes(path, buf, n);
        StFile f;
        Error e = {{0}};
        if (st_open(&f, path, &e) == 0) {
            for (int t = 0; t < f.n_tensors; t++) free(st_to_f32(&f.tensors[t])); /* touch every byte */
            st_close(&f);
            opened++;
        } else {
            check_refusal(i, "st_open", &e);
        }
    }
    printf("safetensors: %ld mutated files, %ld still valid, the rest refused with a message\n", N, opened);
    free(buf); free(seed);
    rm_rf(dir);
    free(dir);
}

static void test_fuzz_config(void **st) {
    (void)st;
    Error e;
    size_t n0;
    char *seed = read_file(FIXTURES "/v3_fp8/config.json", &n0, &e); /* DeepSeek's spelling, FP8 */
    assert_non_null(seed);
    size_t cap = n0 + 4096;
    char *buf = malloc(cap + 1);
    Rng r;
    rng_seed(&r, 12);
    long N = iters(5000), parsed = 0;
    for (long i = 0; i < N; i++) {
        size_t n = mutated_copy((unsigned char *)buf, seed, n0, cap, 4, 0, &r);
        buf[n] = 0;
        Config c;
        Error ce = {{0}};
        if (config_parse(&c, buf, "fuzz.json", &ce) == 0) {
            parsed++;
            double total, active, mtp;
            config_param_counts(&c, &total, &active, &mtp);
            float inv[1024];
            if (c.qk_rope_head_dim <= 2048) rope_inv_freq(inv, &c.rope, c.qk_rope_head_dim); /* table of its config */
        } else {
            check_refusal(i, "config_parse", &ce);
        }
    }
    printf("config.json: %ld mutated texts, %ld still parse\n", N, parsed);
    free(buf); free(seed);
}

static void test_fuzz_tokenizer_json(void **st) {
    (void)st;
    Error e;
    size_t n0;
    char *seed = read_file(FIXTURES "/tokenizer/tokenizer.json", &n0, &e);
    assert_non_null(seed);
    char *dir = make_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    size_t cap = n0 + 4096;
    unsigned char *buf = malloc(cap);
    Rng r;
    rng_seed(&r, 13);
    long N = iters(300), loaded = 0;
    for (long i = 0; i < N; i++) {
        /* the pre-tokenizer, model type and added tokens sit in the first few kB */
        size_t n = mutated_copy(buf, seed, n0, cap, 3, 4096, &r);
        write_bytes(path, buf, n);
        Tokenizer *t;
        Error te = {{0}};
        if (tokenizer_load(&t, dir, &te) == 0) {
            loaded++;
            const char *text = "In the beginning, 1234 \xe4\xb8\xad\xe6\x96\x87 \xff<｜User｜>";
            int *ids, n_ids;
            if (tokenizer_encode(t, text, strlen(text), &ids, &n_ids, &te) == 0) {
                char *back;
                size_t nb;
                if (tokenizer_decode(t, ids, n_ids, &back, &nb, &te) == 0) free(back);
                free(ids);
            }
            tokenizer_free(t);
        } else {
            check_refusal(i, "tokenizer_load", &te);
        }
    }
    printf("tokenizer.json: %ld mutated files, %ld still load (and encode and decode)\n", N, loaded);
    free(buf); free(seed);
    rm_rf(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fuzz_safetensors),
        cmocka_unit_test(test_fuzz_config),
        cmocka_unit_test(test_fuzz_tokenizer_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
