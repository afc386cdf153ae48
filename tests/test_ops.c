/* test_ops.c - rmsnorm, matmul (every weight dtype, FP8 block scales), softmax, silu, argmax,
 * against hand-computed values and the naive reference loops. */
#include "fp8.h"
#include "ops.h"
#include "testutil.h"

static void test_rmsnorm_hand(void **st) {
    (void)st;
    /* x = [3, 4]: mean(x^2) = 12.5, rms = 3.5355339; w = [1, 2] -> [0.8485281, 2.2627417] */
    float x[2] = {3, 4}, w[2] = {1, 2}, out[2];
    rmsnorm(out, x, w, 1, 2, 0.0f);
    assert_float_equal(out[0], 0.84852814f, 1e-6);
    assert_float_equal(out[1], 2.2627417f, 1e-6);
    /* eps matters for tiny inputs: x = [1e-3, 0], eps = 1e-6 -> rms = sqrt(5e-7 + 1e-6) */
    float y[2] = {1e-3f, 0}, one[2] = {1, 1};
    rmsnorm(out, y, one, 1, 2, 1e-6f);
    assert_float_equal(out[0], 1e-3f / sqrtf(1.5e-6f), 1e-6);
}

static void test_softmax_silu_argmax(void **st) {
    (void)st;
    float x[3] = {1, 2, 3};
    softmax(x, 3); /* e^-2, e^-1, 1 over their sum 1.5032147 */
    assert_float_equal(x[0], 0.09003057f, 1e-7);
    assert_float_equal(x[1], 0.24472847f, 1e-7);
    assert_float_equal(x[2], 0.66524096f, 1e-7);
    float m[3] = {0.5f, -INFINITY, 0.5f};
    softmax(m, 3);
    assert_true(m[1] == 0.0f);
    assert_float_equal(m[0], 0.5f, 1e-7);
    float s[3] = {0, 1, -2};
    silu(s, 3); /* x / (1 + e^-x) */
    assert_float_equal(s[0], 0.0f, 0);
    assert_float_equal(s[1], 0.7310586f, 1e-7);
    assert_float_equal(s[2], -0.23840584f, 1e-7);
    float a[4] = {1, 5, 5, 2};
    assert_int_equal(argmax(a, 4), 1); /* first of ties, as torch.argmax */
}

static void test_matmul_hand(void **st) {
    (void)st;
    /* W [2, 3], x [1, 3]: y = W x */
    float W[6] = {1, 2, 3, 4, 5, 6}, x[3] = {1, 0, -1}, y[2];
    Tensor t = {.data = W, .dtype = DT_F32, .rows = 2, .cols = 3};
    matmul(y, x, &t, 1, NULL);
    assert_float_equal(y[0], -2.0f, 0);
    assert_float_equal(y[1], -2.0f, 0);
}

/* matmul against matmul_naive for every stored dtype: the widened weights are the same numbers,
 * so only FP32 summation order differs. */
static void test_matmul_dtypes(void **st) {
    (void)st;
    enum { N = 3, R = 300, C = 200 }; /* 300 rows: two tiles of the widening loop */
    Rng r;
    rng_seed(&r, 1);
    float *w = malloc(sizeof(float) * R * C), *x = malloc(sizeof(float) * N * C);
    float *ref = malloc(sizeof(float) * N * R), *got = malloc(sizeof(float) * N * R);
    float *wq = malloc(sizeof(float) * R * C);
    uint16_t *bf = malloc(2 * R * C);
    uint8_t *q8 = malloc(R * C);
    for (int i = 0; i < R * C; i++) w[i] = test_uniform(&r);
    for (int i = 0; i < N * C; i++) x[i] = test_uniform(&r);

    Tensor f32 = {.data = w, .dtype = DT_F32, .rows = R, .cols = C};
    matmul_naive(ref, x, w, N, R, C);
    matmul(got, x, &f32, N, NULL);
    check_close("matmul F32 vs naive", got, ref, N * R, 1e-6);

    for (int i = 0; i < R * C; i++) { bf[i] = f32_to_bf16(w[i]); wq[i] = bf16_to_f32(bf[i]); }
    Tensor b16 = {.data = bf, .dtype = DT_BF16, .rows = R, .cols = C};
    matmul_naive(ref, x, wq, N, R, C);
    matmul(got, x, &b16, N, NULL);
    check_close("matmul BF16 vs naive on the widened weights", got, ref, N * R, 1e-6);

    /* FP8 with 128x128 block scales; 300x200 leaves partial edge blocks in both directions */
    float scale[3 * 2];
    for (int b = 0; b < 6; b++) scale[b] = 0.01f * (b + 1);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            float s = scale[(r / 128) * 2 + c / 128];
            q8[r * C + c] = fp8_e4m3_encode(w[r * C + c] / s * 100.0f, FP8_SATURATE);
            wq[r * C + c] = fp8_e4m3_decode(q8[r * C + c]) * s;
        }
    Tensor f8 = {.data = q8, .dtype = DT_F8_E4M3, .rows = R, .cols = C, .scale_inv = scale, .block_r = 128, .block_c = 128};
    matmul_naive(ref, x, wq, N, R, C);
    matmul(got, x, &f8, N, NULL);
    check_close("matmul FP8 (block scales) vs naive on the dequantized weights", got, ref, N * R, 1e-6);

    /* an unaligned F32 view (as a safetensors tensor may be) takes the widening path */
    char *raw = malloc(4 * R * C + 1);
    memcpy(raw + 1, w, 4 * R * C);
    Tensor un = {.data = raw + 1, .dtype = DT_F32, .rows = R, .cols = C};
    matmul_naive(ref, x, w, N, R, C);
    matmul(got, x, &un, N, NULL);
    check_close("matmul unaligned F32 vs naive", got, ref, N * R, 1e-6);
    free(raw); free(w); free(x); free(ref); free(got); free(wq); free(bf); free(q8);
}

static void test_dtype_widening(void **st) {
    (void)st;
    assert_float_equal(bf16_to_f32(0x3F80), 1.0f, 0);
    assert_float_equal(bf16_to_f32(0xC040), -3.0f, 0);
    assert_int_equal(f32_to_bf16(1.0f), 0x3F80);
    assert_int_equal(f32_to_bf16(1.00390625f), 0x3F80);     /* halfway 1 + 2^-8: ties to even (down) */
    assert_int_equal(f32_to_bf16(1.01171875f), 0x3F82);     /* halfway 1 + 3*2^-8: ties to even (up) */
    assert_true(isnan(bf16_to_f32(f32_to_bf16(NAN))));
    assert_float_equal(f16_to_f32(0x3C00), 1.0f, 0);
    assert_float_equal(f16_to_f32(0x7BFF), 65504.0f, 0);
    assert_float_equal(f16_to_f32(0x0001), ldexpf(1, -24), 0);  /* smallest subnormal */
    assert_true(isinf(f16_to_f32(0xFC00)) && f16_to_f32(0xFC00) < 0);
    assert_int_equal(dtype_from_name("F8_E4M3"), DT_F8_E4M3);
    assert_int_equal(dtype_from_name("F4"), -1);
    assert_int_equal(dtype_size(DT_BF16), 2);
    /* tensor_rows_f32 applies the block scale of each row's block */
    uint8_t q[4] = {0x38, 0x38, 0x38, 0x38}; /* E4M3 1.0 */
    float s[4] = {2, 3, 5, 7}, out[2];
    Tensor t = {.data = q, .dtype = DT_F8_E4M3, .rows = 2, .cols = 2, .scale_inv = s, .block_r = 1, .block_c = 1};
    tensor_rows_f32(out, &t, 1, 1);
    assert_float_equal(out[0], 5.0f, 0);
    assert_float_equal(out[1], 7.0f, 0);
    /* the vectorized widening of every FP8 and BF16 code (aligned and not) equals the scalar decoders
     * bit for bit (NaN: the same sign; fp8.c's codecs are checked against PyTorch in test_fp8.c) */
    uint8_t codes[257];
    float wide[256];
    memset(codes, 0, sizeof codes);
    for (int off = 0; off < 2; off++) {
        for (int c = 0; c < 256; c++) codes[off + c] = (uint8_t)c;
        dtype_to_f32(wide, DT_F8_E4M3, codes + off, 0, 256);
        for (int c = 0; c < 256; c++) {
            float want = fp8_e4m3_decode((uint8_t)c);
            if (isnan(want)) assert_true(isnan(wide[c]) && signbit(wide[c]) == signbit(want));
            else assert_memory_equal(&wide[c], &want, 4);
        }
    }
    uint16_t h[65537];
    float *hw = malloc(sizeof(float) * 65536);
    for (int off = 0; off < 2; off++) {
        unsigned char *base = (unsigned char *)h + off; /* odd address: the memcpy path */
        for (int c = 0; c < 65536; c++) memcpy(base + 2 * c, &(uint16_t){(uint16_t)c}, 2);
        dtype_to_f32(hw, DT_BF16, base, 0, 65536);
        for (int c = 0; c < 65536; c++) {
            float want = bf16_to_f32((uint16_t)c);
            assert_memory_equal(&hw[c], &want, 4);
        }
    }
    free(hw);
}

static void test_error_set(void **st) {
    (void)st;
    Error e;
    assert_int_equal(error_set(&e, "%s: field \"%s\"", "config.json", "hidden_size"), -1);
    assert_string_equal(e.msg, "config.json: field \"hidden_size\"");
    assert_int_equal(error_set(NULL, "ignored"), -1);
}

static void test_rng_portable(void **st) {
    (void)st;
    Rng r;
    rng_seed(&r, 42);
    uint64_t a = rng_next(&r), b = rng_next(&r);
    Rng r2;
    rng_seed(&r2, 42);
    assert_true(rng_next(&r2) == a && rng_next(&r2) == b);
    rng_seed(&r2, 43);
    assert_true(rng_next(&r2) != a);
    for (int i = 0; i < 1000; i++) {
        float u = rng_uniform(&r);
        assert_true(u >= 0.0f && u < 1.0f);
    }
}

/* top-p keeps exactly the nucleus: the fewest most probable tokens reaching the mass */
static void test_nucleus(void **st) {
    (void)st;
    float p[6] = {0.05f, 0.4f, 0.1f, 0.3f, 0.1f, 0.05f};
    int order[6];
    assert_int_equal(nucleus(p, 6, 0.5f, order), 2); /* 0.4 + 0.3 = 0.7 >= 0.5 */
    assert_int_equal(order[0], 1);
    assert_int_equal(order[1], 3);
    assert_int_equal(nucleus(p, 6, 0.7f, order), 2); /* exactly reached */
    assert_int_equal(nucleus(p, 6, 0.75f, order), 3);
    assert_int_equal(order[2], 2); /* tie 0.1 vs 0.1: lower index first */
    assert_int_equal(nucleus(p, 6, 1.0f, order), 6);
    assert_int_equal(nucleus(p, 6, 0.01f, order), 1);
    /* sampling with top_p 0.5 never leaves {1, 3} */
    float logits[6];
    for (int i = 0; i < 6; i++) logits[i] = logf(p[i]);
    Rng r;
    rng_seed(&r, 7);
    float probs[6];
    for (int i = 0; i < 2000; i++) {
        int t = sample(logits, 6, 1.0f, 0.5f, &r, probs, order);
        assert_true(t == 1 || t == 3);
    }
    assert_int_equal(sample(logits, 6, 0.0f, 0.9f, &r, probs, order), 1); /* temp 0: argmax */
}

/* The empirical distribution of many draws matches softmax(logits / T): Pearson's chi-square over
 * the categories stays below the 0.1% critical value of chi2 with k - 1 degrees of freedom. */
static void test_sample_distribution(void **st) {
    (void)st;
    enum { K = 5, N = 200000 };
    float logits[K] = {1.0f, 0.5f, -0.3f, 2.0f, 0.0f}, probs[K], want[K];
    int order[K], count[K] = {0};
    float T = 0.8f;
    for (int i = 0; i < K; i++) want[i] = logits[i] / T;
    softmax(want, K);
    Rng r;
    rng_seed(&r, 1234);
    for (int i = 0; i < N; i++) count[sample(logits, K, T, 1.0f, &r, probs, order)]++;
    double chi2 = 0;
    for (int i = 0; i < K; i++) {
        double e = (double)N * want[i];
        chi2 += (count[i] - e) * (count[i] - e) / e;
    }
    printf("chi-square %.2f over %d categories (0.1%% critical value for 4 dof: 18.47)\n", chi2, K);
    assert_true(chi2 < 18.47);
    /* with top-p 0.8 the nucleus is {3, 0}: p = 0.634 + 0.182 = 0.815 >= 0.8, renormalized */
    memset(count, 0, sizeof count);
    int keep = nucleus(want, K, 0.8f, order);
    assert_int_equal(keep, 2);
    assert_int_equal(order[0], 3);
    assert_int_equal(order[1], 0);
    double mass = want[order[0]] + want[order[1]];
    for (int i = 0; i < N; i++) count[sample(logits, K, T, 0.8f, &r, probs, order)]++;
    chi2 = 0;
    nucleus(want, K, 0.8f, order);
    for (int j = 0; j < 2; j++) {
        double e = (double)N * want[order[j]] / mass;
        chi2 += (count[order[j]] - e) * (count[order[j]] - e) / e;
    }
    printf("top-p 0.8: chi-square %.2f over the 2 kept tokens (critical 10.83 for 1 dof)\n", chi2);
    assert_true(chi2 < 10.83);
    assert_int_equal(count[order[2]] + count[order[3]] + count[order[4]], 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm_hand),  cmocka_unit_test(test_softmax_silu_argmax),
        cmocka_unit_test(test_matmul_hand),   cmocka_unit_test(test_matmul_dtypes),
        cmocka_unit_test(test_dtype_widening), cmocka_unit_test(test_error_set),
        cmocka_unit_test(test_rng_portable),  cmocka_unit_test(test_nucleus),
        cmocka_unit_test(test_sample_distribution),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
