/* test_model.c - the whole forward pass against HF transformers (fixtures made by
 * tests/fixtures/make_fixtures.py): logits of every position from one prefill, from token-by-token
 * decode through the latent cache, and from the naive attention form, each within 1e-4 relative
 * (max abs difference over max abs logit); and HF's greedy continuation reproduced exactly.
 * Also the load errors: missing tensors, wrong shapes, FP8 weights without their scales. */
#include "model.h"
#include "testutil.h"

#include <unistd.h>

#define TOL_LOGITS 1e-4

static void check_fixture(const char *name) {
    Expected x;
    Model m;
    State s;
    Error e;
    char what[256];
    fixture_load(&m, &x, name);
    assert_int_equal(m.cfg.vocab_size, x.V);
    float *logits = malloc(sizeof(float) * (size_t)x.T * x.V);

    /* prefill, absorbed; chunked at 16 tokens so the chunk boundary is crossed too */
    assert_int_equal(state_init(&s, &m, x.T + x.n_greedy, 16, &e), 0);
    assert_int_equal(model_forward(&m, &s, x.prompt, x.T, 0, logits, 0, ATTN_ABSORBED, &e), 0);
    snprintf(what, sizeof what, "%s prefill logits [%d, %d]", name, x.T, x.V);
    check_close(what, logits, x.logits, (size_t)x.T * x.V, TOL_LOGITS);

    /* naive attention form */
    State sn;
    assert_int_equal(state_init(&sn, &m, x.T, 64, &e), 0);
    assert_int_equal(model_forward(&m, &sn, x.prompt, x.T, 0, logits, 0, ATTN_NAIVE, &e), 0);
    snprintf(what, sizeof what, "%s naive-attention logits", name);
    check_close(what, logits, x.logits, (size_t)x.T * x.V, TOL_LOGITS);
    state_free(&sn);

    /* decode: one token at a time through the latent cache */
    State sd;
    assert_int_equal(state_init(&sd, &m, x.T, 1, &e), 0);
    for (int t = 0; t < x.T; t++)
        assert_int_equal(model_forward(&m, &sd, x.prompt + t, 1, t, logits + (size_t)t * x.V, 1, ATTN_ABSORBED, &e), 0);
    snprintf(what, sizeof what, "%s decode logits", name);
    check_close(what, logits, x.logits, (size_t)x.T * x.V, TOL_LOGITS);
    state_free(&sd);

    /* greedy continuation with our cache: identical ids */
    float *last = malloc(sizeof(float) * x.V);
    assert_int_equal(model_forward(&m, &s, x.prompt, x.T, 0, last, 1, ATTN_ABSORBED, &e), 0);
    int ok = 1;
    printf("%s greedy:", name);
    for (int i = 0; i < x.n_greedy; i++) {
        int next = argmax(last, x.V);
        printf(" %d", next);
        ok &= next == x.greedy[i];
        if (i + 1 < x.n_greedy)
            assert_int_equal(model_forward(&m, &s, &next, 1, x.T + i, last, 1, ATTN_ABSORBED, &e), 0);
    }
    printf(ok ? "  (= HF)\n" : "  (HF differs)\n");
    assert_true(ok);
    free(last);
    free(logits);
    state_free(&s);
    model_free(&m);
    expected_free(&x);
}

static void test_v3_yarn(void **st) { (void)st; check_fixture("v3_yarn"); }
static void test_v3_fp8(void **st) { (void)st; check_fixture("v3_fp8"); }
static void test_v2_lite(void **st) { (void)st; check_fixture("v2_lite"); }
static void test_v2_group(void **st) { (void)st; check_fixture("v2_group"); }
/* norm_topk_prob true in a V2 config: HF does not renormalize (config.c). The fixture must tell
 * the two readings apart: with V3's rule (renormalize, then scale) the logits are far from HF's. */
static void test_v2_norm(void **st) {
    (void)st;
    check_fixture("v2_norm");
    Expected x;
    Model m;
    State s;
    Error e;
    expected_load(&x, "v2_norm");
    assert_int_equal(model_load(&m, FIXTURES "/v2_norm", &e), 0);
    assert_int_equal(m.cfg.norm_topk_prob, 0);
    assert_int_equal(m.cfg.norm_topk_prob_ignored, 1);
    for (int l = 0; l < m.cfg.n_layers; l++) m.layers[l].moe.gate.norm_topk_prob = 1;
    float *logits = malloc(sizeof(float) * (size_t)x.T * x.V);
    assert_int_equal(state_init(&s, &m, x.T, 64, &e), 0);
    assert_int_equal(model_forward(&m, &s, x.prompt, x.T, 0, logits, 0, ATTN_ABSORBED, &e), 0);
    double err = rel_err(logits, x.logits, (size_t)x.T * x.V);
    printf("v2_norm read with V3's rule (renormalized): rel err %.3g, must be > 1e-2\n", err);
    assert_true(err > 1e-2);
    free(logits);
    state_free(&s);
    model_free(&m);
    expected_free(&x);
}
static void test_v3_sharded(void **st) { (void)st; check_fixture("v3_sharded"); }

/* A checkpoint directory whose config.json is the fixture's with one substitution, and whose
 * weights are the fixture's (symlinked). */
static char *variant(const char *fixture, const char *from, const char *to) {
    char *dir = make_tmpdir(), path[512], src[512];
    snprintf(src, sizeof src, FIXTURES "/%s/config.json", fixture);
    FILE *f = fopen(src, "rb");
    assert_non_null(f);
    char text[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    char *at = strstr(text, from), out[8192];
    assert_non_null(at);
    snprintf(out, sizeof out, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, out);
    char cwd[1024], cmd[2048];
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(cmd, sizeof cmd, "for f in %s/" FIXTURES "/%s/*.safetensors*; do ln -s \"$f\" %s/; done", cwd, fixture, dir);
    assert_int_equal(system(cmd), 0);
    return dir;
}

/* A copy of a fixture whose safetensors header says `to` where it said `from` (same length, so the
 * offsets stay valid): a tensor with another dtype of the same size. */
static char *patched_weights(const char *fixture, const char *from, const char *to) {
    char *dir = make_tmpdir(), path[512], cmd[1024];
    snprintf(cmd, sizeof cmd, "cp " FIXTURES "/%s/config.json " FIXTURES "/%s/model.safetensors %s/", fixture, fixture, dir);
    assert_int_equal(system(cmd), 0);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    size_t n;
    Error e;
    char *bytes = read_file(path, &n, &e);
    assert_non_null(bytes);
    assert_int_equal(strlen(from), strlen(to));
    char *at = memmem(bytes, n, from, strlen(from));
    assert_non_null(at);
    memcpy(at, to, strlen(to));
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    fclose(f);
    free(bytes);
    return dir;
}

static void expect_load_error(char *dir, const char *needle) {
    Model m;
    Error e = {{0}};
    assert_int_equal(model_load(&m, dir, &e), -1);
    printf("error: %s\n", e.msg);
    assert_non_null(strstr(e.msg, needle));
    rm_rf(dir);
    free(dir);
}

/* One checkpoint that model_load must refuse: a fixture with one string of its config.json
 * (weights = 0) or of its safetensors header (weights = 1) replaced, and what the error must say. */
typedef struct {
    int weights;
    const char *fixture, *from, *to, *needle;
} BadCheckpoint;

static const BadCheckpoint bad_checkpoints[] = {
    /* a tensor the model needs that no shard holds: one layer more than the checkpoint has */
    {0, "v3_yarn", "\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4", "model.layers.3.input_layernorm.weight"},
    /* a tensor whose shape disagrees with the config */
    {0, "v3_yarn", "\"kv_lora_rank\": 32", "\"kv_lora_rank\": 30", "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"},
    {0, "v2_lite", "\"vocab_size\": 256", "\"vocab_size\": 300", "[300, 64]"},
    /* sharded: the same through the index */
    {0, "v3_sharded", "\"moe_intermediate_size\": 32", "\"moe_intermediate_size\": 16", "mlp.experts.0.gate_proj.weight"},
    /* an FP8 weight without its block scales */
    {0, "v3_fp8", "\"weight_block_size\": [\n      128,\n      128\n    ]", "\"weight_block_size\": [64, 128]", "weight_scale_inv"},
    /* a norm weight or block scale stored as integers is refused, not converted */
    {1, "v3_yarn", "\"model.norm.weight\":{\"dtype\":\"F32\"", "\"model.norm.weight\":{\"dtype\":\"I32\"",
     "model.norm.weight: dtype I32, expected F32, BF16 or F16"},
    {1, "v3_fp8", "down_proj.weight_scale_inv\":{\"dtype\":\"F32\"", "down_proj.weight_scale_inv\":{\"dtype\":\"I32\"",
     "weight_scale_inv: dtype I32"},
};

static void test_load_errors(void **st) {
    (void)st;
    for (size_t i = 0; i < sizeof bad_checkpoints / sizeof *bad_checkpoints; i++) {
        const BadCheckpoint *b = &bad_checkpoints[i];
        expect_load_error(b->weights ? patched_weights(b->fixture, b->from, b->to) : variant(b->fixture, b->from, b->to),
                          b->needle);
    }
    Model m;
    Error e;
    assert_int_equal(model_load(&m, "/nonexistent/ckpt", &e), -1);
    assert_non_null(strstr(e.msg, "/nonexistent/ckpt/config.json"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v3_yarn),   cmocka_unit_test(test_v3_fp8),    cmocka_unit_test(test_v2_lite),
        cmocka_unit_test(test_v2_group),  cmocka_unit_test(test_v2_norm),   cmocka_unit_test(test_v3_sharded), cmocka_unit_test(test_load_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
