/* test_moe.c - the DeepSeekMoE gate on hand-worked routing cases (the bias changes the selection
 * but not the weights, group limits, ties, -inf versus HF's 0.0 for excluded experts, V2 softmax),
 * HF's router decisions recorded in every fixture, and the SwiGLU expert against a hand value. */
#include "model.h"
#include "testutil.h"

static float logit_of(float s) { return logf(s / (1 - s)); } /* inverse sigmoid */

static void set_scores(float *logits, const float *s, int n) {
    for (int i = 0; i < n; i++) logits[i] = logit_of(s[i]);
}

/* A DeepSeek-V3 gate (sigmoid scores, noaux_tc top-k, weights renormalized, then scaled) over n
 * experts in n_group groups, picking top_k from the best topk_group groups. */
static MoeGate v3_gate(int n, int top_k, int n_group, int topk_group, float scaling) {
    return (MoeGate){.n_experts = n, .top_k = top_k, .n_group = n_group, .topk_group = topk_group, .scoring = SCORE_SIGMOID,
                     .method = TOPK_NOAUX_TC, .norm_topk_prob = 1, .routed_scaling_factor = scaling};
}

/* idx [k] holds the experts want [k], in that order. */
static void assert_picks(const int *idx, const int *want, int k) {
    for (int i = 0; i < k; i++) assert_int_equal(idx[i], want[i]);
}

/* The bias decides WHICH experts; the weights are the unbiased scores. */
static void test_bias_selects_but_does_not_weigh(void **st) {
    (void)st;
    float s[4] = {0.5f, 0.6f, 0.7f, 0.4f}, logits[4], w[2];
    int idx[2];
    set_scores(logits, s, 4);
    MoeGate g = v3_gate(4, 2, 1, 1, 2.5f);
    moe_gate(idx, w, logits, NULL, &g);
    assert_picks(idx, (int[]){2, 1}, 2);
    float bias[4] = {0.3f, 0, 0, 0}; /* biased: 0.8, 0.6, 0.7, 0.4 -> experts 0 and 2 */
    moe_gate(idx, w, logits, bias, &g);
    assert_picks(idx, (int[]){0, 2}, 2);
    /* weights: 0.5 / (0.5 + 0.7) * 2.5 and 0.7 / 1.2 * 2.5, not the biased 0.8 */
    assert_float_equal(w[0], 0.5f / 1.2f * 2.5f, 1e-6);
    assert_float_equal(w[1], 0.7f / 1.2f * 2.5f, 1e-6);
    g.norm_topk_prob = 0;
    moe_gate(idx, w, logits, bias, &g);
    assert_float_equal(w[0], 0.5f * 2.5f, 1e-6);
}

/* 8 experts in 4 groups of 2, keep 2 groups, pick 3. Group scores (sum of the top-2 scores):
 * g0 = 0.1 + 0.2, g1 = 0.95 + 0.05, g2 = 0.6 + 0.5, g3 = 0.9 + 0.01 -> keep g2 (1.1) and g1 (1.0).
 * Ungrouped, the top 3 are experts 2 (0.95), 6 (0.9), 4 (0.6); grouped, expert 6's group loses and
 * the picks are 2, 4, 5. */
static void test_group_limit(void **st) {
    (void)st;
    float s[8] = {0.1f, 0.2f, 0.95f, 0.05f, 0.6f, 0.5f, 0.9f, 0.01f}, logits[8], w[3];
    int idx[3];
    set_scores(logits, s, 8);
    MoeGate g = v3_gate(8, 3, 4, 2, 1.0f);
    moe_gate(idx, w, logits, NULL, &g);
    assert_picks(idx, (int[]){2, 4, 5}, 3); /* not 6 (0.9): its group scores 0.91 < 1.0 and 1.1 */
    assert_float_equal(w[0] + w[1] + w[2], 1.0f, 1e-6);
    /* without the group limit expert 6 is second */
    g.n_group = 1;
    g.topk_group = 1;
    moe_gate(idx, w, logits, NULL, &g);
    assert_int_equal(idx[1], 6);
    /* V2 group_limited_greedy: a group scores its max unbiased score: g1 0.95, g3 0.9 kept */
    g.n_group = 4;
    g.topk_group = 2;
    g.method = TOPK_GROUP_LIMITED_GREEDY;
    moe_gate(idx, w, logits, NULL, &g);
    assert_picks(idx, (int[]){2, 6, 3}, 3);
}

static void test_ties_go_to_lower_index(void **st) {
    (void)st;
    float logits[6] = {0, 1, 1, 0, 1, 0}, w[2];
    int idx[2];
    MoeGate g = v3_gate(6, 2, 1, 1, 1);
    moe_gate(idx, w, logits, NULL, &g);
    assert_picks(idx, (int[]){1, 2}, 2);
    /* tied groups: [0,1] [1,0] [1,0] all score 1.5 biased-sum of sigmoids; keep groups 0 and 1 */
    g.n_group = 3;
    g.topk_group = 2;
    moe_gate(idx, w, logits, NULL, &g);
    assert_picks(idx, (int[]){1, 2}, 2);
}

/* DeepSeek's code masks excluded experts with -inf, HF with 0.0: they differ when every eligible
 * biased score is negative. Here groups {0,1} and {2,3}: group 1 wins, its biased scores are
 * negative, and HF (0.0 > -0.2) would pick excluded expert 0 or 1; we never do. */
static void test_excluded_experts_minus_inf(void **st) {
    (void)st;
    float s[4] = {0.3f, 0.1f, 0.5f, 0.4f}, logits[4], w[2];
    float bias[4] = {-0.9f, -0.9f, -0.7f, -0.6f}; /* biased: -0.6 -0.8 | -0.2 -0.2 */
    int idx[2];
    set_scores(logits, s, 4);
    MoeGate g = v3_gate(4, 2, 2, 1, 1);
    moe_gate(idx, w, logits, bias, &g);
    assert_true((idx[0] == 2 && idx[1] == 3) || (idx[0] == 3 && idx[1] == 2));
    assert_float_equal(w[0] + w[1], 1.0f, 1e-6);
}

static void test_softmax_greedy_v2(void **st) {
    (void)st;
    float logits[4] = {1, 2, 3, 0}, w[2];
    int idx[2];
    MoeGate g = {.n_experts = 4, .top_k = 2, .n_group = 1, .topk_group = 1, .scoring = SCORE_SOFTMAX,
                 .method = TOPK_GREEDY, .norm_topk_prob = 0, .routed_scaling_factor = 2};
    moe_gate(idx, w, logits, NULL, &g);
    double z = exp(1) + exp(2) + exp(3) + 1;
    assert_picks(idx, (int[]){2, 1}, 2);
    assert_float_equal(w[0], (float)(2 * exp(3) / z), 1e-6);
    assert_float_equal(w[1], (float)(2 * exp(2) / z), 1e-6);
}

/* Every fixture stored, per MoE layer, the router input x, HF's logits, weights and indices. */
static void check_router(const char *name) {
    char key[64];
    Model m;
    StFile f;
    fixture_open(&m, &f, name);
    int checked = 0;
    for (int l = 0; l < m.cfg.n_layers; l++) {
        snprintf(key, sizeof key, "gate.%d.x", l);
        const StTensor *tx = st_find(&f, key);
        if (!tx) continue;
        const Moe *moe = &m.layers[l].moe;
        int N = (int)tx->shape[0], E = moe->gate.n_experts, K = moe->gate.top_k;
        float *x = st_to_f32(tx), *logits = malloc(sizeof(float) * N * E);
        snprintf(key, sizeof key, "gate.%d.gate.0", l);
        float *hf_logits = st_to_f32(st_find(&f, key));
        snprintf(key, sizeof key, "gate.%d.gate.1", l);
        float *hf_w = st_to_f32(st_find(&f, key));
        snprintf(key, sizeof key, "gate.%d.gate.2", l);
        float *hf_idx = st_to_f32(st_find(&f, key));
        matmul(logits, x, &moe->router, N, NULL);
        snprintf(key, sizeof key, "%s layer %d router logits", name, l);
        check_close(key, logits, hf_logits, (size_t)N * E, 1e-5);
        int same = 0;
        for (int t = 0; t < N; t++) {
            int idx[MOE_MAX_TOPK];
            float w[MOE_MAX_TOPK];
            moe_gate(idx, w, hf_logits + (size_t)t * E, moe->bias, &moe->gate);
            for (int k = 0; k < K; k++) { /* HF's order is unspecified: match by expert */
                int j = 0;
                while (j < K && (int)hf_idx[t * K + j] != idx[k]) j++;
                assert_true(j < K);
                assert_float_equal(w[k], hf_w[t * K + j], 2e-6 * fabsf(hf_w[t * K + j]) + 1e-7);
                same++;
            }
        }
        printf("%s layer %d: %d tokens, all %d choices and weights equal HF's\n", name, l, N, same);
        checked++;
        free(x); free(logits); free(hf_logits); free(hf_w); free(hf_idx);
    }
    assert_true(checked > 0);
    st_close(&f);
    model_free(&m);
}

static void test_router_matches_hf(void **st) {
    (void)st;
    check_router("v3_yarn");    /* noaux_tc, 4 groups keep 2, bias */
    check_router("v3_fp8");     /* noaux_tc, 2 groups keep 1 */
    check_router("v2_lite");    /* softmax greedy */
    check_router("v2_group");   /* softmax group_limited_greedy */
    check_router("v2_norm");    /* the same with norm_topk_prob true, which HF's V2 ignores */
    check_router("v3_sharded"); /* BF16 router, no group limit */
}

static void test_swiglu_hand(void **st) {
    (void)st;
    /* d = 2, inter = 1: gate [1,0], up [0,1], down [[2],[3]]: out = [2, 3] * silu(x0) * x1 */
    float gw[2] = {1, 0}, uw[2] = {0, 1}, dw[2] = {2, 3}, x[2] = {1, 4}, out[2];
    Ffn f = {.gate = {.data = gw, .dtype = DT_F32, .rows = 1, .cols = 2},
             .up = {.data = uw, .dtype = DT_F32, .rows = 1, .cols = 2},
             .down = {.data = dw, .dtype = DT_F32, .rows = 2, .cols = 1}};
    ffn_swiglu(out, x, 1, &f, NULL);
    float silu1 = 1 / (1 + expf(-1));
    assert_float_equal(out[0], 2 * silu1 * 4, 1e-6);
    assert_float_equal(out[1], 3 * silu1 * 4, 1e-6);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bias_selects_but_does_not_weigh), cmocka_unit_test(test_group_limit),
        cmocka_unit_test(test_ties_go_to_lower_index),          cmocka_unit_test(test_excluded_experts_minus_inf),
        cmocka_unit_test(test_softmax_greedy_v2),               cmocka_unit_test(test_router_matches_hf),
        cmocka_unit_test(test_swiglu_hand),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
