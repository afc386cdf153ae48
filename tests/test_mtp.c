/* test_mtp.c - multi-token prediction: speculative decoding with the MTP module gives exactly the
 * tokens of plain greedy decoding (many prompts and lengths, a prompt that fills the cache), its
 * sampled output has plain decoding's distribution, and the batch-invariance it rests on: the
 * forward of two tokens at once equals two single-token steps bit for bit. */
#include "model.h"
#include "testutil.h"



static char *random_model(const char *config, int mtp, int seed) {
    char *dir = make_tmpdir(), cmd[1024], out[512];
    snprintf(cmd, sizeof cmd, "./run init --config %s --out %s/m --seed %d %s 2>&1", config, dir, seed, mtp ? "--mtp" : "");
    assert_int_equal(sh_buf(cmd, out, sizeof out), 0);
    return dir;
}

/* Greedy with --mtp equals greedy without, for many prompts and lengths; the drafts are accepted
 * often enough (6-token vocabulary) that both branches of the loop run. */
static void test_greedy_identical(void **st) {
    (void)st;
    const char *configs[] = {FIXTURES "/configs/tiny_vocab/config.json", FIXTURES "/v3_yarn/config.json"};
    int total_accepted = 0, runs = 0;
    for (int c = 0; c < 2; c++) {
        char *dir = random_model(configs[c], 1, 7 + c);
        for (int len = 1; len <= 9; len += 4)
            for (int n = 1; n <= 33; n += 8) {
                char prompt[256] = "", cmd[1024], plain[4096], mtp[4096];
                for (int i = 0; i < len; i++) sprintf(prompt + strlen(prompt), "%s%d", i ? "," : "", (i * 7 + len) % 6);
                snprintf(cmd, sizeof cmd, "./run generate %s/m --tokens %s -n %d --ids --ignore-eos 2>/dev/null", dir, prompt, n);
                assert_int_equal(sh_buf(cmd, plain, sizeof plain), 0);
                snprintf(cmd, sizeof cmd, "./run generate %s/m --tokens %s -n %d --ids --ignore-eos --mtp 2>&1 >/dev/null", dir, prompt, n);
                char err[1024];
                assert_int_equal(sh_buf(cmd, err, sizeof err), 0);
                int acc = 0, drafted = 0;
                const char *at = strstr(err, "mtp accepted");
                if (n > 1) {
                    assert_non_null(at);
                    assert_int_equal(sscanf(at, "mtp accepted %d of %d", &acc, &drafted), 2);
                    assert_non_null(strstr(err, "tokens identical to plain greedy"));
                }
                snprintf(cmd, sizeof cmd, "./run generate %s/m --tokens %s -n %d --ids --ignore-eos --mtp 2>/dev/null", dir, prompt, n);
                assert_int_equal(sh_buf(cmd, mtp, sizeof mtp), 0);
                assert_string_equal(mtp, plain);
                total_accepted += acc;
                runs++;
            }
        rm_rf(dir);
        free(dir);
    }
    printf("%d prompt/length pairs identical with and without --mtp; %d drafts accepted in all\n", runs, total_accepted);
    assert_true(total_accepted > 10);
}

/* A prompt plus continuation that fills the cache exactly: the verify step must not write past it. */
static void test_fills_cache(void **st) {
    (void)st;
    char *dir = random_model(FIXTURES "/configs/tiny_vocab/config.json", 1, 3);
    char cmd[1024], plain[1024], mtp[1024];
    snprintf(cmd, sizeof cmd, "./run generate %s/m --tokens 2,3,4,5 -n 12 --ctx 16 --ids --ignore-eos 2>/dev/null", dir);
    assert_int_equal(sh_buf(cmd, plain, sizeof plain), 0);
    snprintf(cmd, sizeof cmd, "./run generate %s/m --tokens 2,3,4,5 -n 12 --ctx 16 --ids --ignore-eos --mtp 2>/dev/null", dir);
    assert_int_equal(sh_buf(cmd, mtp, sizeof mtp), 0);
    assert_string_equal(mtp, plain);
    snprintf(cmd, sizeof cmd, "./run generate %s/m --tokens 2,3,4,5 -n 13 --ctx 16 --ids --mtp 2>&1", dir);
    assert_int_equal(sh_buf(cmd, mtp, sizeof mtp), 1);
    assert_non_null(strstr(mtp, "do not fit a 16-token context"));
    rm_rf(dir);
    free(dir);
}

/* Sampling: the second generated token's distribution over many seeds is the same with and without
 * the draft (speculative sampling's rejection rule keeps it exact). Two-sample chi-square over the
 * 6 tokens, 0.1% critical value for 5 degrees of freedom: 20.52. */
static void test_sampling_distribution(void **st) {
    (void)st;
    char *dir = random_model(FIXTURES "/configs/tiny_vocab/config.json", 1, 11);
    enum { RUNS = 300 };
    int count[2][6] = {{0}};
    char cmd[1024], out[256];
    for (int mtp = 0; mtp < 2; mtp++)
        for (int seed = 0; seed < RUNS; seed++) {
            snprintf(cmd, sizeof cmd, "./run generate %s/m --tokens 2,3 -n 2 --temp 1.5 --top-p 1 --seed %d --ids --ignore-eos %s 2>/dev/null",
                     dir, seed, mtp ? "--mtp" : "");
            assert_int_equal(sh_buf(cmd, out, sizeof out), 0);
            int a, b;
            assert_int_equal(sscanf(out, "%d %d", &a, &b), 2);
            count[mtp][b]++;
        }
    double chi2 = 0;
    for (int t = 0; t < 6; t++) {
        double sum = count[0][t] + count[1][t];
        if (sum == 0) continue;
        double e = sum / 2;
        chi2 += (count[0][t] - e) * (count[0][t] - e) / e + (count[1][t] - e) * (count[1][t] - e) / e;
    }
    printf("second token, plain vs --mtp over %d seeds each:", RUNS);
    for (int t = 0; t < 6; t++) printf(" %d:%d/%d", t, count[0][t], count[1][t]);
    printf("  chi-square %.2f (critical 20.52)\n", chi2);
    assert_true(chi2 < 20.52);
    rm_rf(dir);
    free(dir);
}

/* Two tokens in one forward == two single-token forwards, bit for bit (the basis of the above). */
static void test_batch_invariance(void **st) {
    (void)st;
    const char *names[] = {"v3_yarn", "v3_fp8", "v2_lite", "v3_sharded"};
    for (int i = 0; i < 4; i++) {
        char dir[256];
        Model m;
        State a, b;
        Error e;
        snprintf(dir, sizeof dir, FIXTURES "/%s", names[i]);
        assert_int_equal(model_load(&m, dir, &e), 0);
        int V = m.cfg.vocab_size, prompt[5] = {3, 1, 4, 1, 5}, two[2] = {9, 2};
        float *l2 = malloc(sizeof(float) * 2 * V), *l1 = malloc(sizeof(float) * 2 * V), *tmp = malloc(sizeof(float) * V);
        assert_int_equal(state_init(&a, &m, 16, 8, &e), 0);
        assert_int_equal(state_init(&b, &m, 16, 8, &e), 0);
        assert_int_equal(model_forward(&m, &a, prompt, 5, 0, tmp, 1, ATTN_ABSORBED, &e), 0);
        assert_int_equal(model_forward(&m, &b, prompt, 5, 0, tmp, 1, ATTN_ABSORBED, &e), 0);
        assert_int_equal(model_forward(&m, &a, two, 2, 5, l2, 0, ATTN_ABSORBED, &e), 0);
        assert_int_equal(model_forward(&m, &b, two, 1, 5, l1, 1, ATTN_ABSORBED, &e), 0);
        assert_int_equal(model_forward(&m, &b, two + 1, 1, 6, l1 + V, 1, ATTN_ABSORBED, &e), 0);
        printf("%s: 2-token forward %s two 1-token forwards\n", names[i], memcmp(l1, l2, sizeof(float) * 2 * V) ? "DIFFERS FROM" : "bit-identical to");
        assert_memory_equal(l1, l2, sizeof(float) * 2 * V);
        free(l1); free(l2); free(tmp);
        state_free(&a);
        state_free(&b);
        model_free(&m);
    }
}

static void test_no_mtp_module(void **st) {
    (void)st;
    Model m;
    State s;
    Error e;
    assert_int_equal(model_load(&m, FIXTURES "/v3_yarn", &e), 0);
    assert_int_equal(m.has_mtp, 0);
    assert_int_equal(state_init(&s, &m, 8, 4, &e), 0);
    float logits[256];
    int t = 1;
    assert_int_equal(mtp_forward(&m, &s, &t, 1, 0, logits, 1, &e), -1);
    assert_non_null(strstr(e.msg, "no MTP module"));
    state_free(&s);
    model_free(&m);
    char out[1024];
    assert_int_equal(sh_buf("./run generate " FIXTURES "/v3_yarn --tokens 1,2 -n 3 --ids --mtp 2>&1", out, sizeof out), 0);
    assert_non_null(strstr(out, "has no MTP module"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_invariance), cmocka_unit_test(test_greedy_identical),
        cmocka_unit_test(test_fills_cache),      cmocka_unit_test(test_sampling_distribution),
        cmocka_unit_test(test_no_mtp_module),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
