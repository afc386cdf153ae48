/* test_bundled.c - the bundled model (models/kjv-v3, trained by train/train.py) against what HF
 * transformers computed from the same files on the GPU machine (tests/fixtures/bundled):
 * held-out perplexity (all 111 windows; DSV3_QUICK=1, set for the sanitizer pass, checks the first
 * two windows only), HF's greedy samples, the MTP module's logits, --mtp acceptance with tokens
 * identical to plain greedy, and the FP8 variant made by `run quantize`. */
#include "model.h"
#include "testutil.h"


#define BF16_DIR "models/kjv-v3"
#define FP8_DIR "models/kjv-v3-fp8"
#define BUNDLED FIXTURES "/bundled"


/* A number after `key": ` in a small JSON file (the fixtures' own fields). */
static double json_number(const char *path, const char *key) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *at = strstr(buf, pat);
    assert_non_null(at);
    return strtod(at + strlen(pat), NULL);
}

static double run_ppl(const char *dir, int windows, double *nll) {
    char cmd[512], out[512];
    snprintf(cmd, sizeof cmd, "OPENBLAS_NUM_THREADS=1 ./run ppl %s --ids-file " BUNDLED "/heldout_ids.safetensors %s%.0d 2>/dev/null",
             dir, windows ? "--windows " : "", windows);
    assert_int_equal(sh_buf(cmd, out, sizeof out), 0);
    printf("%s: %s", dir, out);
    const char *at = strstr(out, "mean NLL ");
    assert_non_null(at);
    double ppl;
    assert_int_equal(sscanf(at, "mean NLL %lf, perplexity %lf", nll, &ppl), 2);
    return ppl;
}

static int quick(void) { return getenv("DSV3_QUICK") != NULL; }

/* Issue 7: our perplexity equals HF's on the same checkpoint (HF: 28.13080, the test asks 1e-5
 * relative of the mean NLL, far inside the 3 significant digits). */
static void test_heldout_perplexity(void **st) {
    (void)st;
    double nll;
    if (quick()) {
        double want = json_number(BUNDLED "/heldout_ppl.json", "first2_mean_nll");
        run_ppl(BF16_DIR, 2, &nll);
        printf("first 2 windows: mean NLL %.6f, HF %.6f\n", nll, want);
        assert_true(fabs(nll - want) <= 1e-5 * want);
        return;
    }
    double want = json_number(BUNDLED "/heldout_ppl.json", "mean_nll");
    double ppl = run_ppl(BF16_DIR, 0, &nll);
    printf("held-out perplexity %.4f, HF %.4f (mean NLL %.6f vs %.6f)\n", ppl, exp(want), nll, want);
    assert_true(fabs(nll - want) <= 1e-5 * want);
}

/* The FP8 variant (our run quantize of the BF16 files): E4M3 weights with 128x128 block scales
 * move the held-out perplexity by -0.016% (28.1262 vs 28.1308). notes/fp8.md section 7: the change
 * of the mean NLL is, to second order in the logit change delta, mean(E_p delta - delta_y) +
 * mean(Var_p delta) / 2, both computed by `run ppl --compare` from the two models' logits. Asserted:
 * that expansion gives the measured change (so the note's account of it is the right one), and the
 * change is no larger than the second-order term, the size unbiased rounding noise would give. */
static void test_fp8_variant(void **st) {
    (void)st;
    char cmd[512], out[2048];
    snprintf(cmd, sizeof cmd, "OPENBLAS_NUM_THREADS=1 ./run ppl " BF16_DIR " --ids-file " BUNDLED "/heldout_ids.safetensors"
             " --compare " FP8_DIR " %s 2>/dev/null", quick() ? "--windows 2" : "");
    assert_int_equal(sh_buf(cmd, out, sizeof out), 0);
    printf("%s", out);
    double change, first, se, second, sum, p8;
    const char *at = strstr(out, FP8_DIR ": mean NLL");
    assert_non_null(at);
    assert_int_equal(sscanf(at, FP8_DIR ": mean NLL %*f, perplexity %lf; change %lf", &p8, &change), 2);
    at = strstr(out, "first order");
    assert_non_null(at);
    assert_int_equal(sscanf(at, "first order %lf (standard error %lf), second order %lf, sum %lf", &first, &se, &second, &sum), 4);
    printf("FP8 - BF16 mean NLL %+.6f; expansion %+.6f = first order %+.6f + second order %+.6f\n", change, sum, first, second);
    assert_true(fabs(change - sum) <= 5e-6 + 0.05 * second);
    assert_true(second > 0 && fabs(change) <= second);
    double p16 = exp(json_number(BUNDLED "/heldout_ppl.json", quick() ? "first2_mean_nll" : "mean_nll"));
    printf("FP8 vs HF's BF16 perplexity: %.4f vs %.4f (%+.3f%%)\n", p8, p16, 100 * (p8 / p16 - 1));
    assert_int_equal(sh_buf("./run inspect " FP8_DIR, out, sizeof out), 0);
    assert_non_null(strstr(out, "fp8 e4m3, weight blocks 128x128"));
    assert_non_null(strstr(out, "mtp             present"));
}

/* HF's greedy continuations of samples.json. Sample 0 is skipped: its top-2 logit margin is 5e-5,
 * below what FP32 summation order guarantees. */
static void test_greedy_samples(void **st) {
    (void)st;
    /* the ids of samples 1 and 2 (prompt with BOS, then HF's greedy ids), from samples.json */
    const char *prompts[] = {"0,301,679,897,272,392,326,345,16", "0,453,346,338,382,3913,31"};
    const char *greedy[] = {
        "2161 466 402 349 1494 373 523 301 313 392 326 345 16 3628 16 2570 16 310 448 326 369 16 2744 402 317 1440 337 16 272 317 349 1494 283 301 440 313 376 499 482 263 1147 16 313 376 292 263 1147 16",
        "310 397 349 300 1938 16 728 397 310 659 359 326 399 283 453 346 462 1198 359 16 272 313 462 349 1198 30 313 462 544 264 1163 342 399 16 272 342 264 1930 630 16 272 342 264 1930 630 16 272 342"};
    for (int i = 0; i < 2; i++) {
        char cmd[1024], out[2048];
        snprintf(cmd, sizeof cmd, "./run generate " BF16_DIR " --tokens %s -n 48 --ids --ignore-eos 2>/dev/null", prompts[i]);
        assert_int_equal(sh_buf(cmd, out, sizeof out), 0);
        out[strcspn(out, "\n")] = 0;
        printf("sample %d: %s\n", i + 1, strcmp(out, greedy[i]) ? "DIFFERS from HF" : "48 tokens equal to HF's greedy");
        assert_string_equal(out, greedy[i]);
    }
}

/* The MTP module against train.py's PyTorch computation on a 64-token held-out sequence. */
static void test_mtp_logits(void **st) {
    (void)st;
    Model m;
    State s;
    Error e;
    StFile f;
    assert_int_equal(model_load(&m, BF16_DIR, &e), 0);
    assert_true(m.has_mtp);
    assert_int_equal(st_open(&f, BUNDLED "/mtp_fixture.safetensors", &e), 0);
    const StTensor *ti = st_find(&f, "input_ids");
    int T = (int)ti->numel, V = m.cfg.vocab_size, d = m.cfg.hidden_size;
    int *ids = malloc(sizeof(int) * T);
    for (int i = 0; i < T; i++) ids[i] = (int)dtype_load_f32(ti->dtype, ti->data, i);
    float *main_want = st_to_f32(st_find(&f, "main.logits")), *mtp_want = st_to_f32(st_find(&f, "mtp.logits"));
    float *hidden_want = st_to_f32(st_find(&f, "main.hidden_postnorm"));
    float *logits = malloc(sizeof(float) * (size_t)T * V);
    assert_int_equal(state_init(&s, &m, T, T, &e), 0);
    assert_int_equal(model_forward(&m, &s, ids, T, 0, logits, 0, ATTN_ABSORBED, &e), 0);
    check_close("main logits", logits, main_want, (size_t)T * V, 1e-4);
    check_close("main hidden state after the final norm (what the MTP reads)", s.hidden, hidden_want, (size_t)T * d, 1e-4);
    assert_int_equal(mtp_forward(&m, &s, ids + 1, T - 1, 0, logits, 0, &e), 0);
    check_close("MTP logits (token i+2 from h_i and t_{i+1})", logits, mtp_want, (size_t)(T - 1) * V, 1e-4);
    int agree = 0;
    for (int i = 0; i < T - 1; i++) agree += argmax(logits + (size_t)i * V, V) == argmax(mtp_want + (size_t)i * V, V);
    printf("MTP argmax equal to PyTorch's at %d of %d positions\n", agree, T - 1);
    assert_int_equal(agree, T - 1);
    free(ids); free(main_want); free(mtp_want); free(hidden_want); free(logits);
    st_close(&f);
    state_free(&s);
    model_free(&m);
}

/* Issue 8: --mtp on the bundled model keeps greedy's tokens and accepts most drafts. */
static void test_mtp_speculative(void **st) {
    (void)st;
    const char *prompts[] = {"And God said", "The LORD is my shepherd;", "In the beginning"};
    for (int i = 0; i < 3; i++) {
        char cmd[512], out[4096];
        snprintf(cmd, sizeof cmd, "./run generate " BF16_DIR " -p \"%s\" -n 96 --temp 0 --ignore-eos --mtp 2>&1 >/dev/null", prompts[i]);
        assert_int_equal(sh_buf(cmd, out, sizeof out), 0);
        int acc, drafted;
        const char *at = strstr(out, "mtp accepted");
        assert_non_null(at);
        assert_int_equal(sscanf(at, "mtp accepted %d of %d", &acc, &drafted), 2);
        printf("\"%s\": %d of %d drafts accepted (%.0f%%)\n", prompts[i], acc, drafted, 100.0 * acc / drafted);
        assert_non_null(strstr(out, "tokens identical to plain greedy"));
        assert_true(acc * 2 > drafted);
    }
    /* other lengths (1, 2, 3: no room for a draft, one draft, ...), the FP8 variant, and prompts
     * whose continuation fills the cache exactly (--ctx = prompt + n): still plain greedy's tokens */
    struct { const char *dir, *prompt; int n, ctx; } cases[] = {
        {BF16_DIR, "And God said", 1, 0},       {BF16_DIR, "And God said", 2, 0},
        {BF16_DIR, "And God said", 3, 0},       {BF16_DIR, "Jesus wept.", 17, 0},
        {FP8_DIR, "The LORD is my shepherd;", 64, 0},
        {BF16_DIR, "And God said", 60, 64},     /* BOS + 3 + 60 = 64 */
        {FP8_DIR, "In the beginning", 60, 64},  /* BOS + 3 + 60 = 64 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char cmd[512], out[4096], ctx[32] = "";
        if (cases[i].ctx) snprintf(ctx, sizeof ctx, "--ctx %d", cases[i].ctx);
        snprintf(cmd, sizeof cmd, "./run generate %s -p \"%s\" -n %d %s --temp 0 --ignore-eos --mtp 2>&1 >/dev/null",
                 cases[i].dir, cases[i].prompt, cases[i].n, ctx);
        assert_int_equal(sh_buf(cmd, out, sizeof out), 0);
        if (cases[i].n == 1) continue; /* one token: nothing to draft, no comparison printed */
        if (!strstr(out, "tokens identical to plain greedy")) fail_msg("%s\n%s", cmd, out);
        printf("%s -n %d %s: identical to plain greedy\n", cases[i].dir, cases[i].n, ctx);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heldout_perplexity), cmocka_unit_test(test_fp8_variant),
        cmocka_unit_test(test_greedy_samples),     cmocka_unit_test(test_mtp_logits),
        cmocka_unit_test(test_mtp_speculative),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
