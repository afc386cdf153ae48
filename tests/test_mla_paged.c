/* test_mla_paged.c - the paged latent cache: each storage format's bytes, and batched decode over
 * random paged batches (ragged lengths, page boundaries, length 1, pages shuffled in the pool)
 * against mla_attend_absorbed on each sequence's rows laid out contiguously. */
#include "fp8.h"
#include "mla_paged.h"
#include "testutil.h"

static Rng rng;

static float *randn(size_t n, float sd) {
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) p[i] = sd * rng_normal(&rng);
    return p;
}

/* ---- formats --------------------------------------------------------------------------------- */

static void test_row_bytes(void **st) {
    (void)st;
    assert_int_equal(mla_kv_row_bytes(MLA_KV_F32, 512, 64), 2304);
    assert_int_equal(mla_kv_row_bytes(MLA_KV_BF16, 512, 64), 1152);
    assert_int_equal(mla_kv_row_bytes(MLA_KV_FP8, 512, 64), 656); /* FlashMLA's 512 + 16 + 128 */
    /* a c_kv not a multiple of 128 long: its last group shorter (one group of 100: one scale) */
    assert_int_equal(mla_kv_row_bytes(MLA_KV_FP8, 100, 64), 100 + 4 + 128);
    assert_int_equal(mla_kv_row_bytes(MLA_KV_FP8, 200, 8), 200 + 8 + 16);
    assert_int_equal(mla_kv_row_bytes(MLA_KV_FP8, 2048, 64), 2048 + 64 + 128);
    assert_int_equal(mla_kv_row_bytes(MLA_KV_FP8, 2049, 64), 0);  /* 17 groups: more than 16 */
    assert_int_equal(mla_kv_format_from_name("BF16"), MLA_KV_BF16);
    assert_int_equal(mla_kv_format_from_name("fp8"), MLA_KV_FP8);
    assert_int_equal(mla_kv_format_from_name("int4"), -1);
    MlaPagedCache c;
    Error e = {{0}};
    assert_int_equal(mla_paged_init(&c, MLA_KV_FP8, 4096, 64, 4, &e), -1);
    printf("error as expected: %s\n", e.msg);
    assert_non_null(strstr(e.msg, "up to 2048"));
    assert_int_equal(mla_paged_init(&c, MLA_KV_BF16, 512, 64, 0, &e), -1);
}

/* Each format's bytes, written out here from the definition, and their widening. */
static void test_row_codecs(void **st) {
    (void)st;
    enum { DC = 512, DR = 64, W = DC + DR };
    float *x = randn(W, 2.0f), out[W];
    for (int i = 128; i < 256; i++) x[i] = 0.0f;       /* an all-zero group: scale 1, codes 0 */
    x[300] = 1e-6f;                                    /* far below its group's max: a subnormal code */
    x[400] = -7e3f;                                    /* its group's amax */
    uint8_t row[2304];

    mla_kv_encode_row(row, MLA_KV_F32, x, DC, DR);
    mla_kv_decode_row(out, MLA_KV_F32, row, DC, DR);
    assert_memory_equal(out, x, sizeof out);
    assert_memory_equal(row, x, sizeof out);           /* F32: the floats, in order */

    mla_kv_encode_row(row, MLA_KV_BF16, x, DC, DR);
    mla_kv_decode_row(out, MLA_KV_BF16, row, DC, DR);
    for (int i = 0; i < W; i++) {
        uint16_t h;
        memcpy(&h, row + 2 * i, 2);
        assert_int_equal(h, f32_to_bf16(x[i]));
        assert_true(out[i] == bf16_to_f32(h));
    }

    mla_kv_encode_row(row, MLA_KV_FP8, x, DC, DR);
    mla_kv_decode_row(out, MLA_KV_FP8, row, DC, DR);
    double worst = 0;
    for (int g = 0; g < 4; g++) {
        float amax = 0, scale;
        for (int i = 0; i < 128; i++) amax = fmaxf(amax, fabsf(x[g * 128 + i]));
        memcpy(&scale, row + DC + 4 * g, 4);           /* the scales at bytes 512 .. 527 */
        assert_true(scale == (amax > 0 ? amax / 448.0f : 1.0f));
        for (int i = g * 128; i < (g + 1) * 128; i++) {
            assert_int_equal(row[i], fp8_e4m3_encode(x[i] / scale, FP8_SATURATE));
            assert_true(out[i] == fp8_e4m3_decode(row[i]) * scale);
            /* 2^-4 relative for normal codes, 2^-10 * scale absolute for subnormal ones */
            double err = fabs((double)out[i] - x[i]), bound = fmax(fabs(x[i]) / 16, scale / 1024.0);
            assert_true(err <= bound);
            if (fabs(x[i]) > 64 * scale) worst = fmax(worst, err / fabs(x[i]));
        }
    }
    assert_int_equal(row[300], 0);                     /* 1e-6 / (7e3/448): below half of 2^-9 */
    for (int i = 0; i < DR; i++) {                     /* k_pe: BF16 at bytes 528 .. 655 */
        uint16_t h;
        memcpy(&h, row + DC + 16 + 2 * i, 2);
        assert_int_equal(h, f32_to_bf16(x[DC + i]));
        assert_true(out[DC + i] == bf16_to_f32(h));
    }
    printf("fp8 row: worst relative error of normal codes %.4f (bound 0.0625)\n", worst);
    free(x);
}

/* FP8 with a c_kv not a multiple of 128 (the small test models): groups of 128, the last shorter,
 * each with its own scale; the layout stays [codes | scales | BF16 k_pe]. */
static void test_row_short_group(void **st) {
    (void)st;
    enum { DC = 200, DR = 8, W = DC + DR };
    float *x = randn(W, 1.0f), out[W];
    x[150] = 9.0f;                                     /* the second group's amax, not the first's */
    uint8_t row[DC + 8 + 2 * DR];
    assert_int_equal(mla_kv_row_bytes(MLA_KV_FP8, DC, DR), sizeof row);
    mla_kv_encode_row(row, MLA_KV_FP8, x, DC, DR);
    mla_kv_decode_row(out, MLA_KV_FP8, row, DC, DR);
    for (int g = 0; g < 2; g++) {
        int g0 = g * 128, g1 = g ? DC : 128;
        float amax = 0, scale;
        for (int i = g0; i < g1; i++) amax = fmaxf(amax, fabsf(x[i]));
        memcpy(&scale, row + DC + 4 * g, 4);
        assert_true(scale == amax / 448.0f);
        for (int i = g0; i < g1; i++) {
            assert_int_equal(row[i], fp8_e4m3_encode(x[i] / scale, FP8_SATURATE));
            assert_true(out[i] == fp8_e4m3_decode(row[i]) * scale);
        }
    }
    assert_int_equal(row[150], 0x7e);                  /* 9 / (9 / 448) = 448: the largest code */
    for (int i = 0; i < DR; i++) {
        uint16_t h;
        memcpy(&h, row + DC + 8 + 2 * i, 2);
        assert_int_equal(h, f32_to_bf16(x[DC + i]));
    }
    free(x);
}

/* ---- batched decode -------------------------------------------------------------------------- */

enum { N_H = 4, DC = 128, DR = 16, NOPE = 16, V = 24, QK = NOPE + DR, WIDTH = DC + DR };
static const int LENS[] = {1, 63, 64, 65, 128, 200, 2, 129};
#define BATCH ((int)(sizeof LENS / sizeof LENS[0]))
#define MAX_PAGES 4

typedef struct {
    MlaDims m;
    MlaWeights w;
    float *kv_b, *latents[BATCH], *q;
    int32_t tables[BATCH * MAX_PAGES];
    int n_pages;
} Batch;

/* Random latents per sequence, random q, random kv_b; pages handed out in a shuffled order. */
static void make_batch(Batch *t) {
    memset(t, 0, sizeof *t);
    t->m = (MlaDims){.n_heads = N_H, .q_lora_rank = 0, .kv_lora_rank = DC, .nope = NOPE, .rope = DR,
                     .v = V, .eps = 1e-6f, .softmax_scale = 1.0f / sqrtf((float)QK)};
    t->kv_b = randn((size_t)N_H * (NOPE + V) * DC, 0.2f);
    t->w.kv_b = (Tensor){.data = t->kv_b, .dtype = DT_F32, .rows = N_H * (NOPE + V), .cols = DC};
    for (int b = 0; b < BATCH; b++) t->latents[b] = randn((size_t)LENS[b] * WIDTH, 1.0f);
    t->q = randn((size_t)BATCH * N_H * QK, 1.0f);
    int order[BATCH * MAX_PAGES];
    for (int b = 0; b < BATCH; b++)
        for (int p = 0; p < MAX_PAGES; p++) t->tables[b * MAX_PAGES + p] = -1;
    for (int b = 0; b < BATCH; b++)
        for (int p = 0; p < (LENS[b] + MLA_PAGE - 1) / MLA_PAGE; p++) order[t->n_pages++] = b * MAX_PAGES + p;
    for (int i = t->n_pages - 1; i > 0; i--) { /* Fisher-Yates: page k goes to slot order[k] */
        int j = (int)(rng_next(&rng) % (uint64_t)(i + 1)), tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    for (int k = 0; k < t->n_pages; k++) t->tables[order[k]] = k;
}

static void fill_cache(MlaPagedCache *c, const Batch *t, MlaKvFormat f) {
    assert_int_equal(mla_paged_init(c, f, DC, DR, t->n_pages, NULL), 0);
    for (int b = 0; b < BATCH; b++)
        for (int s = 0; s < LENS[b]; s++)
            mla_paged_write(c, t->tables + b * MAX_PAGES, s, t->latents[b] + (size_t)s * WIDTH);
}

static void free_batch(Batch *t) {
    free(t->kv_b);
    free(t->q);
    for (int b = 0; b < BATCH; b++) free(t->latents[b]);
}

/* For each format: the paged batch equals mla_attend_absorbed, bit for bit, on the rows the format
 * widens to; and the widened rows' outputs are within the format's tolerance of the F32 ones. */
static void test_decode_matches_absorbed(void **st) {
    (void)st;
    Batch t;
    make_batch(&t);
    size_t n_out = (size_t)BATCH * N_H * V;
    float *got = malloc(sizeof(float) * n_out), *want = malloc(sizeof(float) * n_out);
    float *exact = malloc(sizeof(float) * n_out), *rows = malloc(sizeof(float) * 256 * WIDTH);
    const double tol[] = {0, 5e-3, 6.25e-2}; /* vs F32: BF16 2^-9 per value (seen 1.8e-3), FP8 2^-4 (3.0e-2) */
    for (int f = MLA_KV_F32; f <= MLA_KV_FP8; f++) {
        MlaPagedCache c;
        fill_cache(&c, &t, (MlaKvFormat)f);
        Error e = {{0}};
        assert_int_equal(mla_paged_decode(got, t.q, &c, t.tables, MAX_PAGES, LENS, BATCH, &t.w, &t.m, &e), 0);
        for (int b = 0; b < BATCH; b++) {
            for (int s = 0; s < LENS[b]; s++)
                mla_kv_decode_row(rows + (size_t)s * WIDTH, c.format, mla_paged_row(&c, t.tables + b * MAX_PAGES, s),
                                  DC, DR);
            mla_attend_absorbed(want + (size_t)b * N_H * V, t.q + (size_t)b * N_H * QK, rows, 1, LENS[b] - 1, &t.w, &t.m, NULL);
            mla_attend_absorbed(exact + (size_t)b * N_H * V, t.q + (size_t)b * N_H * QK, t.latents[b], 1,
                                LENS[b] - 1, &t.w, &t.m, NULL);
        }
        size_t differ = 0;
        for (size_t i = 0; i < n_out; i++) differ += memcmp(got + i, want + i, sizeof(float)) != 0;
        printf("%s paged batch of %d (lengths 1 .. 200) vs mla_attend_absorbed on its rows: %zu of %zu differ\n",
               mla_kv_format_name(c.format), BATCH, differ, n_out);
        assert_int_equal(differ, 0);
        char what[96];
        snprintf(what, sizeof what, "%s cache vs the F32 latents", mla_kv_format_name(c.format));
        check_close(what, got, exact, n_out, tol[f]);
        mla_paged_free(&c);
    }
    MlaPagedCache c;
    fill_cache(&c, &t, MLA_KV_F32);
    int bad[BATCH];
    memcpy(bad, LENS, sizeof bad);
    bad[3] = 0;
    Error e = {{0}};
    assert_int_equal(mla_paged_decode(got, t.q, &c, t.tables, MAX_PAGES, bad, BATCH, &t.w, &t.m, &e), -1);
    assert_non_null(strstr(e.msg, "sequence 3 has length 0"));
    bad[3] = MAX_PAGES * MLA_PAGE + 1;
    assert_int_equal(mla_paged_decode(got, t.q, &c, t.tables, MAX_PAGES, bad, BATCH, &t.w, &t.m, &e), -1);
    mla_paged_free(&c);
    free(got); free(want); free(exact); free(rows);
    free_batch(&t);
}

/* o_lat and lse against the definition in double, per (sequence, head). */
static void test_latent_and_lse(void **st) {
    (void)st;
    Batch t;
    make_batch(&t);
    MlaPagedCache c;
    fill_cache(&c, &t, MLA_KV_F32);
    float *q_abs = randn((size_t)BATCH * N_H * WIDTH, 0.5f), scale = 0.1f;
    float *o = malloc(sizeof(float) * BATCH * N_H * DC), *lse = malloc(sizeof(float) * BATCH * N_H);
    float *o_ref = malloc(sizeof(float) * BATCH * N_H * DC), lse_ref[BATCH * N_H];
    assert_int_equal(mla_paged_decode_latent(o, lse, q_abs, &c, t.tables, MAX_PAGES, LENS, BATCH, N_H, scale, NULL), 0);
    double sc[256];
    for (int b = 0; b < BATCH; b++)
        for (int h = 0; h < N_H; h++) {
            const float *qa = q_abs + ((size_t)b * N_H + h) * WIDTH;
            double mx = -INFINITY, sum = 0;
            for (int s = 0; s < LENS[b]; s++) {
                const float *row = t.latents[b] + (size_t)s * WIDTH;
                double d = 0;
                for (int i = 0; i < WIDTH; i++) d += (double)qa[i] * row[i];
                sc[s] = d * scale;
                mx = fmax(mx, sc[s]);
            }
            for (int s = 0; s < LENS[b]; s++) sum += exp(sc[s] - mx);
            lse_ref[b * N_H + h] = (float)(mx + log(sum));
            for (int i = 0; i < DC; i++) {
                double acc = 0;
                for (int s = 0; s < LENS[b]; s++) acc += exp(sc[s] - mx) / sum * t.latents[b][(size_t)s * WIDTH + i];
                o_ref[((size_t)b * N_H + h) * DC + i] = (float)acc;
            }
        }
    check_close("o_lat vs double", o, o_ref, (size_t)BATCH * N_H * DC, 1e-5);
    check_close("lse vs double", lse, lse_ref, (size_t)BATCH * N_H, 1e-5);
    mla_paged_free(&c);
    free(q_abs); free(o); free(lse); free(o_ref);
    free_batch(&t);
}

int main(void) {
    rng_seed(&rng, 16);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_row_bytes),
        cmocka_unit_test(test_row_short_group),
        cmocka_unit_test(test_row_codecs),
        cmocka_unit_test(test_decode_matches_absorbed),
        cmocka_unit_test(test_latent_and_lse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
