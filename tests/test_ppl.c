/* test_ppl.c - ppl.c's arithmetic against closed forms: -log softmax of uniform logits is log V,
 * a constant logit shift changes nothing, the expansion's residual is third order in the logit
 * change, and the report's figures. (The bundled model's perplexity against HF's is test_bundled's.) */
#include "ppl.h"
#include "testutil.h"

/* W = 3 window, V = 4: rows 0 and 1 predict win[1] and win[2]; row 2 predicts nothing. */
static void test_uniform_and_shift(void **st) {
    (void)st;
    enum { W = 3, V = 4 };
    float l[W * V] = {0}, l2[W * V];
    l[1 * V + 2] = 1.0f;             /* row 1: [0, 0, 1, 0] */
    l[2 * V + 0] = 1e30f;            /* row 2 is not a prediction: must not be read into the sums */
    int win[W] = {0, 3, 2};
    PplSums s = {0};
    ppl_add_window(&s, l, NULL, win, W, V);
    /* row 0: log 4; row 1: log(3 + e) - 1 for its target (index 2, the logit 1) */
    double want = log(4.0) + log(3.0 + exp(1.0)) - 1.0;
    printf("nll %.17g, closed form %.17g\n", s.nll, want);
    assert_true(fabs(s.nll - want) < 1e-15);
    assert_true(s.nll2 == 0 && s.first == 0 && s.first_sq == 0 && s.second == 0); /* no second checkpoint */
    /* l2 = l + 3 on every logit: softmax is unchanged, so d = 0 and both terms vanish */
    for (int i = 0; i < W * V; i++) l2[i] = l[i] + 3.0f;
    PplSums c = {0};
    ppl_add_window(&c, l, l2, win, W, V);
    printf("shift: nll2 - nll %.3g, first %.3g, second %.3g\n", c.nll2 - c.nll, c.first, c.second);
    assert_true(fabs(c.nll2 - c.nll) < 1e-12 && fabs(c.first) < 1e-12 && fabs(c.second) < 1e-12);
    assert_true(c.nll == s.nll); /* the first checkpoint's sum does not depend on the second */
}

/* d - (first + second) over a window of random logits and a change eps * r: O(eps^3), so halving
 * eps divides it by about 8 (and the first two terms carry almost all of d). */
static double residual(double eps, double *d_out) {
    enum { W = 9, V = 50 };
    static float l[W * V], l2[W * V];
    int win[W];
    Rng r;
    rng_seed(&r, 7);
    for (int i = 0; i < W * V; i++) l[i] = 2.0f * rng_normal(&r);
    for (int i = 0; i < W * V; i++) l2[i] = l[i] + (float)(eps * rng_normal(&r));
    for (int t = 0; t < W; t++) win[t] = (int)(rng_next(&r) % V);
    PplSums s = {0};
    ppl_add_window(&s, l, l2, win, W, V);
    *d_out = s.nll2 - s.nll;
    return fabs(s.nll2 - s.nll - (s.first + s.second));
}

static void test_expansion_third_order(void **st) {
    (void)st;
    double d1, d2, r1 = residual(0.04, &d1), r2 = residual(0.02, &d2);
    printf("eps 0.04: d %+.6g, residual %.3g; eps 0.02: d %+.6g, residual %.3g; ratio %.2f (third order: 8)\n",
           d1, r1, d2, r2, r1 / r2);
    assert_true(r1 / r2 > 6.5 && r1 / r2 < 9.5);
    assert_true(r1 < 0.05 * fabs(d1));
}

/* The report from sums with closed-form means: nll = N log 2 (perplexity 2), nll2 = N log 4, first
 * and second chosen so the printed means are round numbers. */
static void test_print(void **st) {
    (void)st;
    int n_win = 2, W = 3;
    double N = 4;
    PplSums s = {.nll = N * log(2.0), .nll2 = N * log(4.0), .first = N * 0.25, .first_sq = N * (0.25 * 0.25 + 4),
                 .second = N * 0.5};
    char *buf;
    size_t n;
    FILE *f = open_memstream(&buf, &n);
    assert_non_null(f);
    ppl_print(f, &s, n_win, W, NULL);
    ppl_print(f, &s, n_win, W, "B");
    fclose(f);
    printf("%s", buf);
    /* mean NLL log 2 = 0.693147, log 4 = 1.386294, change log 2; first 0.25 with variance 4 over 4
     * predictions: standard error sqrt(4 / 4) = 1 */
    const char *line1 = "2 windows of 3 tokens ([BOS] + 2), 4 predictions: mean NLL 0.693147, perplexity 2.0000\n";
    const char *want_tail = "B: mean NLL 1.386294, perplexity 4.0000; change +0.693147 (+100.0000% perplexity)\n"
                            "expansion in the logit change: first order +0.250000 (standard error 1.000000), "
                            "second order +0.500000, sum +0.750000\n"
                            "predicted change: +0.500000 +- 2.000000 (second order +- 2 standard errors of the first)\n";
    size_t n1 = strlen(line1);
    assert_true(n == 2 * n1 + strlen(want_tail));
    assert_memory_equal(buf, line1, n1);
    assert_memory_equal(buf + n1, line1, n1);
    assert_string_equal(buf + 2 * n1, want_tail);
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uniform_and_shift),
        cmocka_unit_test(test_expansion_third_order),
        cmocka_unit_test(test_print),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
