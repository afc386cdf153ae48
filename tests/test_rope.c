/* test_rope.c - the YaRN frequency table against HF's (stored by the fixtures) and against the
 * formula written out here in double, the attention factor and softmax mscale against HF's, and
 * the rotation: hand values, relative-position property, and the two pair conventions. */
#include "model.h"
#include "testutil.h"

#include <cJSON.h>

/* What HF stored for a fixture: rope.inv_freq, rope.attention_scaling, attn.scaling. */
static void check_against_hf(const char *name) {
    Model m;
    StFile f;
    fixture_open(&m, &f, name);
    float *inv = st_to_f32(st_find(&f, "rope.inv_freq"));
    float *att = st_to_f32(st_find(&f, "rope.attention_scaling"));
    float *scale = st_to_f32(st_find(&f, "attn.scaling"));
    int half = m.cfg.qk_rope_head_dim / 2;
    printf("%s: inv_freq", name);
    for (int j = 0; j < half; j++) printf(" %.6g", m.inv_freq[j]);
    printf(" | attention factor %.7f (HF %.7f) | softmax scale %.7f (HF %.7f)\n", m.rope_attn_factor, att[0],
           m.mla.softmax_scale, scale[0]);
    char what[64];
    snprintf(what, sizeof what, "%s inv_freq vs HF", name);
    check_close(what, m.inv_freq, inv, half, 1e-7);
    assert_float_equal(m.rope_attn_factor, att[0], 1e-7);
    assert_float_equal(m.mla.softmax_scale, scale[0], 1e-7);
    free(inv); free(att); free(scale);
    st_close(&f);
    model_free(&m);
}

/* HF's tables for YaRN settings the model fixtures do not reach (tests/fixtures/make_rope_fixtures.py):
 * truncate false, beta 0 or absent, an explicit attention_factor, mscale alone. */
static void test_yarn_variants_match_hf(void **st) {
    (void)st;
    Error e;
    char *json = read_file(FIXTURES "/rope/cases.json", NULL, &e);
    if (!json) fail_msg("%s", e.msg);
    cJSON *root = cJSON_Parse(json);
    const cJSON *c;
    int n = 0;
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        int d_r = cJSON_GetObjectItem(c, "qk_rope_head_dim")->valueint;
        char *rp = cJSON_PrintUnformatted(cJSON_GetObjectItem(c, "rope_parameters")), text[2048];
        snprintf(text, sizeof text, "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 64, \"hidden_size\": 64, "
                 "\"intermediate_size\": 64, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, "
                 "\"qk_rope_head_dim\": %d, \"qk_nope_head_dim\": %d, \"max_position_embeddings\": %d, "
                 "\"rope_parameters\": %s}", d_r, cJSON_GetObjectItem(c, "qk_nope_head_dim")->valueint,
                 cJSON_GetObjectItem(c, "max_position_embeddings")->valueint, rp);
        free(rp);
        Config cfg;
        if (config_parse(&cfg, text, name, &e)) fail_msg("%s", e.msg);
        float inv[64], want[64];
        float att = rope_inv_freq(inv, &cfg.rope, d_r);
        const cJSON *hf = cJSON_GetObjectItem(c, "inv_freq");
        for (int j = 0; j < d_r / 2; j++) want[j] = (float)cJSON_GetArrayItem(hf, j)->valuedouble;
        double err = rel_err(inv, want, (size_t)d_r / 2);
        float scale = (float)(pow(cfg.qk_nope_head_dim + d_r, -0.5) * rope_softmax_mscale(&cfg.rope));
        float hf_att = (float)cJSON_GetObjectItem(c, "attention_scaling")->valuedouble;
        float hf_scale = (float)cJSON_GetObjectItem(c, "softmax_scale")->valuedouble;
        printf("%-22s inv_freq rel err %.2g, attention factor %.7f (HF %.7f), softmax scale %.7f (HF %.7f)\n", name,
               err, att, hf_att, scale, hf_scale);
        assert_true(err == 0); /* bit for bit, as for the model fixtures' tables */
        assert_float_equal(att, hf_att, 1e-7);
        assert_float_equal(scale, hf_scale, 1e-7);
        n++;
    }
    assert_true(n >= 7);
    cJSON_Delete(root);
    free(json);
}

static void test_tables_match_hf(void **st) {
    (void)st;
    check_against_hf("v3_yarn");   /* YaRN factor 4 over 16, mscale 0.707 / 1 */
    check_against_hf("v3_fp8");    /* YaRN factor 8 over 32, d_R 16, DeepSeek spelling */
    check_against_hf("v2_group");  /* V2 with YaRN, mscale = mscale_all_dim = 0.707 */
    check_against_hf("v2_lite");   /* plain RoPE */
    check_against_hf("v3_sharded"); /* plain RoPE, theta 500 */
}

/* YaRN written out independently in double (reference-spec section 3). */
static void test_yarn_formula(void **st) {
    (void)st;
    RopeConfig rc = {.type = ROPE_YARN, .theta = 10000, .factor = 40, .original_max_pos = 4096,
                     .beta_fast = 32, .beta_slow = 1, .mscale = 1, .mscale_all_dim = 1, .truncate = 1, .interleaved = 1};
    enum { D = 64 };
    float got[D / 2];
    float att = rope_inv_freq(got, &rc, D);
    double lo = floor(D * log(4096 / (32 * 2 * M_PI)) / (2 * log(10000.0)));
    double hi = ceil(D * log(4096 / (1 * 2 * M_PI)) / (2 * log(10000.0)));
    assert_true(lo == 10 && hi == 23); /* V3: pairs 0..10 keep their frequency, 23..31 divided by 40 */
    for (int j = 0; j < D / 2; j++) {
        double base = pow(10000.0, -2.0 * j / D);
        double ramp = fmin(fmax((j - lo) / (hi - lo), 0), 1);
        double want = base / 40 * ramp + base * (1 - ramp);
        assert_true(fabs(got[j] - want) <= 2e-7 * want);
    }
    assert_float_equal(att, 1.0f, 0); /* mscale == mscale_all_dim */
    /* "truncate": false (HF's option): the correction range stays fractional, 10.47 .. 22.51 */
    RopeConfig untrunc = rc;
    untrunc.truncate = 0;
    float u[D / 2];
    rope_inv_freq(u, &untrunc, D);
    double flo = D * log(4096 / (32 * 2 * M_PI)) / (2 * log(10000.0)), fhi = D * log(4096 / (2 * M_PI)) / (2 * log(10000.0));
    for (int j = 0; j < D / 2; j++) {
        double base = pow(10000.0, -2.0 * j / D), ramp = fmin(fmax((j - flo) / (fhi - flo), 0), 1);
        double want = base / 40 * ramp + base * (1 - ramp);
        /* the float ramp's rounding (~6e-8) is amplified up to 40x where the result is near base/40 */
        assert_true(fabs(u[j] - want) <= 4e-6 * want);
    }
    assert_true(u[11] != got[11]); /* pair 11 sits inside both ranges, at different ramp values */
    /* V3's softmax scale: (128 + 64)^-0.5 * (0.1 ln 40 + 1)^2 = 0.0721688 * 1.8738 */
    double m = 0.1 * log(40.0) + 1;
    assert_float_equal(rope_softmax_mscale(&rc), (float)(m * m), 1e-6);
    /* the worked example of reference-spec section 3: d_R 8, theta 1e4, factor 4, length 32 */
    RopeConfig small = {.type = ROPE_YARN, .theta = 10000, .factor = 4, .original_max_pos = 32,
                        .beta_fast = 32, .beta_slow = 1, .truncate = 1, .interleaved = 1};
    float s[4];
    float a = rope_inv_freq(s, &small, 8);
    assert_float_equal(s[0], 1.0f, 0);
    assert_float_equal(s[1], 0.025f, 1e-9);
    assert_float_equal(s[2], 0.0025f, 1e-10);
    assert_float_equal(s[3], 0.00025f, 1e-11);
    assert_float_equal(a, (float)(0.1 * log(4.0) + 1), 1e-7); /* no mscale keys: get_mscale(factor) */
    /* plain RoPE */
    RopeConfig plain = {.type = ROPE_DEFAULT, .theta = 10000, .interleaved = 1};
    assert_float_equal(rope_inv_freq(s, &plain, 8), 1.0f, 0);
    assert_float_equal(s[1], 0.1f, 1e-9);
    assert_float_equal(rope_softmax_mscale(&plain), 1.0f, 0);
}

static void test_rotation(void **st) {
    (void)st;
    float inv[2] = {1.0f, 0.5f};
    /* adjacent pairs: (x0, x1) by 3 * 1 rad, (x2, x3) by 3 * 0.5 rad; half-split pairs: (x0, x2)
     * and (x1, x3), the same angles. The two conventions differ only in which slots pair up. */
    for (int adjacent = 1; adjacent >= 0; adjacent--) {
        int p0 = adjacent ? 1 : 2, q0 = adjacent ? 2 : 1; /* x0's partner; the second pair's first */
        float x[4] = {1, 0, 0, 2};
        rope_rotate(x, 1, 4, 4, 3, inv, 1.0f, adjacent);
        assert_float_equal(x[0], cosf(3), 1e-7);
        assert_float_equal(x[p0], sinf(3), 1e-7);
        assert_float_equal(x[q0], -2 * sinf(1.5f), 1e-6);
        assert_float_equal(x[3], 2 * cosf(1.5f), 1e-6);
    }
    /* HF's rope_interleave=true permutes [x0 x1 x2 x3] -> [x0 x2 x1 x3] then rotates half-split:
     * the same numbers as adjacent rotation, in permuted order */
    float a[4] = {0.3f, -1.2f, 0.7f, 2.0f}, p[4] = {0.3f, 0.7f, -1.2f, 2.0f};
    rope_rotate(a, 1, 4, 4, 7, inv, 0.9f, 1);
    rope_rotate(p, 1, 4, 4, 7, inv, 0.9f, 0);
    assert_float_equal(a[0], p[0], 0);
    assert_float_equal(a[2], p[1], 0);
    assert_float_equal(a[1], p[2], 0);
    assert_float_equal(a[3], p[3], 0);
    /* q_p . k_s depends only on p - s (attention factor 1) */
    float inv8[4];
    RopeConfig rc = {.type = ROPE_DEFAULT, .theta = 10000, .interleaved = 1};
    rope_inv_freq(inv8, &rc, 8);
    float q0[8] = {1, 2, 3, 4, 5, 6, 7, 8}, k0[8] = {8, -7, 6, -5, 4, -3, 2, -1};
    float q[8], k[8], dots[2];
    for (int trial = 0; trial < 2; trial++) {
        memcpy(q, q0, sizeof q);
        memcpy(k, k0, sizeof k);
        rope_rotate(q, 1, 8, 8, 10 + 20 * trial, inv8, 1.0f, 1);
        rope_rotate(k, 1, 8, 8, 3 + 20 * trial, inv8, 1.0f, 1);
        dots[trial] = 0;
        for (int i = 0; i < 8; i++) dots[trial] += q[i] * k[i];
    }
    assert_float_equal(dots[0], dots[1], 1e-4);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tables_match_hf), cmocka_unit_test(test_yarn_variants_match_hf), cmocka_unit_test(test_yarn_formula), cmocka_unit_test(test_rotation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
