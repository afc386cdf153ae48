/* test_mla.c - Multi-head Latent Attention on random inputs: the absorbed form equals the naive
 * form, and both equal attention written out plainly in double here (K and V materialized per head,
 * causal softmax); the cache holds d_c + d_R floats per token; future rows are never read; the
 * absorbed form's BLAS path (T > SMALL_BATCH) with BF16 and E4M3 kv_b writes every output. */
#include "fp8.h"
#include "mla.h"
#include "testutil.h"

static Rng rng = {88172645463325252ull}; /* testutil.h: ops.h's generator, one stream for the file */
static float *rand_buf(size_t n, float scale) { return test_rand_buf(&rng, n, scale); }

/* out [T, n_h*v], in double: the definition, one head and one query at a time. */
static void attention_reference(double *out, const float *q, const float *cache, const float *kv_b, int T,
                                int pos0, const MlaDims *m) {
    int d_c = m->kv_lora_rank, qk = m->nope + m->rope, width = d_c + m->rope, L = pos0 + T;
    double *score = malloc(sizeof(double) * L);
    for (int h = 0; h < m->n_heads; h++) {
        const float *W = kv_b + (size_t)h * (m->nope + m->v) * d_c; /* [nope + v, d_c] */
        for (int t = 0; t < T; t++) {
            const float *qh = q + (size_t)t * m->n_heads * qk + h * qk;
            int visible = pos0 + t + 1;
            double mx = -INFINITY, sum = 0;
            for (int s = 0; s < visible; s++) {
                const float *c = cache + (size_t)s * width;
                double dot = 0;
                for (int i = 0; i < m->nope; i++) {
                    double k = 0;
                    for (int j = 0; j < d_c; j++) k += (double)W[(size_t)i * d_c + j] * c[j];
                    dot += qh[i] * k;
                }
                for (int i = 0; i < m->rope; i++) dot += (double)qh[m->nope + i] * c[d_c + i];
                score[s] = dot * m->softmax_scale;
                if (score[s] > mx) mx = score[s];
            }
            for (int s = 0; s < visible; s++) sum += (score[s] = exp(score[s] - mx));
            for (int i = 0; i < m->v; i++) {
                double acc = 0;
                for (int s = 0; s < visible; s++) {
                    const float *c = cache + (size_t)s * width;
                    double v = 0;
                    for (int j = 0; j < d_c; j++) v += (double)W[(size_t)(m->nope + i) * d_c + j] * c[j];
                    acc += score[s] / sum * v;
                }
                out[(size_t)t * m->n_heads * m->v + h * m->v + i] = acc;
            }
        }
    }
    free(score);
}

static void test_absorbed_equals_naive_equals_definition(void **st) {
    (void)st;
    MlaDims m = {.n_heads = 3, .q_lora_rank = 0, .kv_lora_rank = 24, .nope = 8, .rope = 6, .v = 10,
                 .eps = 1e-6f, .softmax_scale = 0.3f};
    int width = mla_cache_width(&m), qk = m.nope + m.rope;
    /* a cache already holding 5 positions, then 4 new queries (a prefill chunk after earlier ones) */
    int pos0 = 5, T = 4, L = pos0 + T;
    float *cache = rand_buf((size_t)L * width, 1.0f);
    float *q = rand_buf((size_t)T * m.n_heads * qk, 1.0f);
    float *kv_b = rand_buf((size_t)m.n_heads * (m.nope + m.v) * m.kv_lora_rank, 0.3f);
    MlaWeights w = {.kv_b = {.data = kv_b, .dtype = DT_F32, .rows = m.n_heads * (m.nope + m.v), .cols = m.kv_lora_rank}};
    size_t n = (size_t)T * m.n_heads * m.v;
    float *absorbed = malloc(sizeof(float) * n), *naive = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n);
    double *ref64 = malloc(sizeof(double) * n);
    mla_attend_absorbed(absorbed, q, cache, T, pos0, &w, &m, NULL);
    mla_attend_naive(naive, q, cache, T, pos0, &w, &m, NULL);
    attention_reference(ref64, q, cache, kv_b, T, pos0, &m);
    for (size_t i = 0; i < n; i++) ref[i] = (float)ref64[i];
    check_close("absorbed vs naive", absorbed, naive, n, 1e-5);
    check_close("absorbed vs the definition in double", absorbed, ref, n, 1e-5);
    check_close("naive vs the definition in double", naive, ref, n, 1e-5);

    /* causal: rows past the last query's position are never read */
    float *poisoned = malloc(sizeof(float) * (size_t)(L + 3) * width);
    memcpy(poisoned, cache, sizeof(float) * (size_t)L * width);
    for (int i = L * width; i < (L + 3) * width; i++) poisoned[i] = NAN;
    mla_attend_absorbed(naive, q, poisoned, T, pos0, &w, &m, NULL);
    check_close("absorbed ignores rows beyond pos0+T", naive, absorbed, n, 0);
    /* single-token decode at the last position equals the last row of the prefill */
    mla_attend_absorbed(naive, q + (size_t)(T - 1) * m.n_heads * qk, cache, 1, L - 1, &w, &m, NULL);
    check_close("decode step == last prefill row", naive, absorbed + (size_t)(T - 1) * m.n_heads * m.v,
                (size_t)m.n_heads * m.v, 1e-6);
    free(cache); free(q); free(kv_b); free(absorbed); free(naive); free(ref); free(ref64); free(poisoned);
}

static void test_projections(void **st) {
    (void)st;
    /* latent = [rmsnorm(c_kv) | k_pe]: only the first d_c entries are normalized */
    MlaDims m = {.n_heads = 1, .q_lora_rank = 2, .kv_lora_rank = 2, .nope = 1, .rope = 2, .v = 1, .eps = 0};
    float kv_a[4 * 4] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1}; /* identity: latent = x */
    float norm[2] = {1, 1}, x[4] = {3, 4, 5, 6}, lat[4];
    MlaWeights w = {.kv_a = {.data = kv_a, .dtype = DT_F32, .rows = 4, .cols = 4}, .kv_a_norm = norm};
    mla_latent(lat, x, 1, &w, &m, NULL);
    assert_float_equal(lat[0], 3 / sqrtf(12.5f), 1e-6);
    assert_float_equal(lat[1], 4 / sqrtf(12.5f), 1e-6);
    assert_float_equal(lat[2], 5.0f, 0);
    assert_float_equal(lat[3], 6.0f, 0);
    /* query: q_b(rmsnorm(q_a x)) */
    float q_a[2 * 4] = {1, 0, 0, 0, 0, 1, 0, 0}, q_b[3 * 2] = {1, 0, 0, 1, 1, 1}, qn[2] = {2, 2}, q[3], scratch[2];
    w.q_a = (Tensor){.data = q_a, .dtype = DT_F32, .rows = 2, .cols = 4};
    w.q_b = (Tensor){.data = q_b, .dtype = DT_F32, .rows = 3, .cols = 2};
    w.q_a_norm = qn;
    mla_query(q, scratch, x, 1, &w, &m, NULL);
    assert_float_equal(q[0], 2 * 3 / sqrtf(12.5f), 1e-6);
    assert_float_equal(q[2], 2 * 7 / sqrtf(12.5f), 1e-6);
    /* V3: 512 + 64 = 576 floats per token per layer */
    MlaDims v3 = {.kv_lora_rank = 512, .rope = 64};
    assert_int_equal(mla_cache_width(&v3), 576);
}

/* mla_attend_absorbed's BLAS path (T > SMALL_BATCH: the sgemm form, not the per-query loop) with
 * kv_b stored as BF16 and as E4M3 with 128 x 128 block scales, as checkpoints hold it: against the
 * naive form and the definition in double, both on the widened weights (what matmul and
 * tensor_rows_f32 see), tolerance 1e-5 of the largest output (FP32 sums of <= d_c = 160 terms; the
 * measured gaps are ~1e-7). Every output entry must be written: out is NaN-filled before each call. */
static void test_absorbed_blas_bf16_fp8(void **st) {
    (void)st;
    MlaDims m = {.n_heads = 4, .kv_lora_rank = 160, .nope = 16, .rope = 8, .v = 24, .softmax_scale = 0.2f};
    int width = mla_cache_width(&m), qk = m.nope + m.rope, rows = m.n_heads * (m.nope + m.v), d_c = m.kv_lora_rank;
    int pos0 = 5, T = SMALL_BATCH + 4, L = pos0 + T; /* 12 new queries after 5 cached positions */
    assert_true(T > SMALL_BATCH);
    float *cache = rand_buf((size_t)L * width, 1.0f), *q = rand_buf((size_t)T * m.n_heads * qk, 1.0f);
    float *kv_b = rand_buf((size_t)rows * d_c, 0.3f), *wide = malloc(sizeof(float) * (size_t)rows * d_c);
    uint16_t *bf = malloc(sizeof(uint16_t) * (size_t)rows * d_c);
    uint8_t *codes = malloc((size_t)rows * d_c);
    float scales[2 * 2]; /* [ceil(160 / 128), ceil(160 / 128)]: partial blocks in both directions */
    for (size_t i = 0; i < (size_t)rows * d_c; i++) bf[i] = f32_to_bf16(kv_b[i]);
    fp8_quant_block(codes, scales, kv_b, rows, d_c, 128, 128, FP8_SCALE_F32);
    const Tensor stored[2] = {
        {.data = bf, .dtype = DT_BF16, .rows = rows, .cols = d_c},
        {.data = codes, .dtype = DT_F8_E4M3, .rows = rows, .cols = d_c, .scale_inv = scales, .block_r = 128, .block_c = 128},
    };
    size_t n = (size_t)T * m.n_heads * m.v;
    float *absorbed = malloc(sizeof(float) * n), *naive = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n);
    double *ref64 = malloc(sizeof(double) * n);
    for (int k = 0; k < 2; k++) {
        MlaWeights w = {.kv_b = stored[k]};
        tensor_rows_f32(wide, &stored[k], 0, rows);
        for (size_t i = 0; i < n; i++) absorbed[i] = naive[i] = NAN;
        mla_attend_absorbed(absorbed, q, cache, T, pos0, &w, &m, NULL);
        mla_attend_naive(naive, q, cache, T, pos0, &w, &m, NULL);
        attention_reference(ref64, q, cache, wide, T, pos0, &m);
        for (size_t i = 0; i < n; i++) ref[i] = (float)ref64[i];
        char what[96];
        snprintf(what, sizeof what, "%s kv_b, T = %d > SMALL_BATCH: absorbed (sgemm) vs naive", k ? "E4M3" : "BF16", T);
        check_close(what, absorbed, naive, n, 1e-5);
        snprintf(what, sizeof what, "%s kv_b, T = %d: absorbed vs the definition in double", k ? "E4M3" : "BF16", T);
        check_close(what, absorbed, ref, n, 1e-5);
    }
    free(cache); free(q); free(kv_b); free(wide); free(bf); free(codes);
    free(absorbed); free(naive); free(ref); free(ref64);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_absorbed_equals_naive_equals_definition), cmocka_unit_test(test_projections),
        cmocka_unit_test(test_absorbed_blas_bf16_fp8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
