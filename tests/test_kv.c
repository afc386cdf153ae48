/* test_kv.c - the KV-cache table pinned to the published configs, the DeepSeek-V2 report's 93.3%,
 * the capacity model against the numbers worked by hand in notes/kvcache.md, and `run kv`'s
 * command line (help, bad arguments, the plot). */
#include "testutil.h"

#include "kv.h"

/* Each built-in row against its formula, with the shape typed in again from the published
 * config.json / paper (not read from kv.c's table). */
static void test_table_matches_published_configs(void **state) {
    (void)state;
    static const struct { const char *key; long long elements; } WANT[] = {
        {"67b", 2LL * 8 * 128 * 95},         /* DeepSeek LLM 67B: GQA, 8 KV heads of 128, 95 layers */
        {"v2", (512LL + 64) * 60},           /* DeepSeek-V2: d_c 512, d_R 64, 60 layers */
        {"v2-lite", (512LL + 64) * 27},      /* DeepSeek-V2-Lite: 27 layers */
        {"v3", (512LL + 64) * 61},           /* DeepSeek-V3: 61 layers */
        {"kimi-k2", (512LL + 64) * 61},      /* Kimi K2: V3's latent, 61 layers */
        {"llama-8b", 2LL * 8 * 128 * 32},    /* Llama-3.1-8B: 8 KV heads of 128, 32 layers */
        {"llama-70b", 2LL * 8 * 128 * 80},   /* 80 layers */
        {"llama-405b", 2LL * 8 * 128 * 126}, /* 126 layers */
        {"v3-mha", 2LL * 128 * 128 * 61},    /* V3's 128 heads of 128 with plain MHA */
    };
    int n = (int)(sizeof WANT / sizeof WANT[0]);
    assert_int_equal(kv_builtin_count(), n);
    for (int i = 0; i < n; i++) {
        const KvModel *m = kv_find(WANT[i].key);
        assert_non_null(m);
        printf("%-11s %9lld elements/token (want %lld)\n", m->key, kv_elements_per_token(m), WANT[i].elements);
        assert_true(kv_elements_per_token(m) == WANT[i].elements);
        assert_true(kv_bytes_per_token(m, 16) == 2.0 * WANT[i].elements);
        assert_true(kv_bytes_per_token(m, 8) == 1.0 * WANT[i].elements);
        assert_true(kv_bytes_per_sequence(m, 16, 4096) == 2.0 * 4096 * WANT[i].elements);
    }
    assert_true(kv_elements_per_token(kv_find("67b")) == 194560);
    assert_true(kv_elements_per_token(kv_find("v2")) == 34560);
    assert_null(kv_find("no-such-model"));
    assert_non_null(kv_find("V3")); /* keys are case-insensitive */
    char buf[64];
    kv_formula(buf, sizeof buf, kv_find("v2"));
    assert_string_equal(buf, "(d_c+d_R)*L = (512+64)*60");
    kv_formula(buf, sizeof buf, kv_find("67b"));
    assert_string_equal(buf, "2*n_kv*d_h*L = 2*8*128*95");
}

/* "reduces the KV cache by 93.3%": V2 at 6 bits per element against 67B in BF16. */
static void test_v2_vs_67b_paper_numbers(void **state) {
    (void)state;
    const KvModel *v2 = kv_find("v2"), *b67 = kv_find("67b");
    double base = kv_bytes_per_token(b67, 16), deployed = kv_bytes_per_token(v2, 6);
    assert_true(base == 389120.0);
    assert_true(deployed == 25920.0);
    double reduction = 1.0 - deployed / base;
    printf("V2 at 6 bits vs 67B in BF16: %.4f%% smaller, %.3fx\n", 100 * reduction, base / deployed);
    assert_int_equal((int)lround(1000 * reduction), 933); /* 93.3% */
    assert_true(fabs(base / deployed - 15.01) < 0.01);    /* about 15x */
    /* Elements alone (both BF16) give only 82.2%, 5.63x: the 93.3% needs the 6-bit cache. */
    assert_int_equal((int)lround(1000 * (1.0 - kv_bytes_per_token(v2, 16) / base)), 822);
}

static KvServe h800_node(void) {
    return (KvServe){.gpus = 8, .gpu_mem_gb = 80, .bandwidth_tbs = 3.35, .tflops = 0, .ctx = 4096,
                     .weight_bits = 8, .kv_bits = 6};
}

/* The worked example of notes/kvcache.md, redone here by hand. */
static void test_capacity_worked_example(void **state) {
    (void)state;
    KvServe s = h800_node();
    KvCapacity r = kv_capacity(kv_find("v2"), &s);
    assert_true(r.fits);
    assert_true(r.mem_bytes == 640e9);
    assert_true(r.weight_bytes == 236e9);                /* 236B parameters in FP8 */
    assert_true(r.seq_bytes == 4096.0 * 25920);          /* 106,168,320 bytes */
    assert_int_equal(r.max_batch, 3805);                 /* 404e9 / 106,168,320 = 3805.3 */
    double step = 236e9 + 3805.0 * 106168320;            /* 639.97e9 bytes */
    assert_true(fabs(r.step_bytes - step) < 1);
    assert_true(fabs(r.mem_ms - 1e3 * step / 26.8e12) < 1e-9); /* 23.88 ms */
    assert_true(fabs(r.mem_ms - 23.88) < 0.005);
    assert_true(fabs(r.tokens_per_s - 3805 / (step / 26.8e12)) < 1e-6);
    assert_true(fabs(r.tokens_per_s - 159342) < 1);
    assert_true(r.compute_ms == 0 && r.step_ms == r.mem_ms);

    /* 67B in BF16: 134 GB of weights, 1.594 GB per sequence, 317 sequences. */
    s.weight_bits = 16, s.kv_bits = 16;
    KvCapacity d = kv_capacity(kv_find("67b"), &s);
    assert_int_equal(d.max_batch, 317);                  /* 506e9 / 1,593,835,520 = 317.5 */
    assert_true(fabs(d.tokens_per_s - 13290) < 1);
    printf("V2/67B throughput, memory-bound model: %.2fx\n", r.tokens_per_s / d.tokens_per_s);
    assert_true(fabs(r.tokens_per_s / d.tokens_per_s - 11.99) < 0.01);
}

/* With a compute peak, MLA's attention FLOPs make V2's big batch compute-bound. */
static void test_capacity_compute_bound(void **state) {
    (void)state;
    KvServe s = h800_node();
    s.tflops = 989;
    KvCapacity r = kv_capacity(kv_find("v2"), &s);
    double flops = 2 * 21e9 + 2.0 * 128 * (2 * 512 + 64) * 60 * 4096; /* 110.5 GFLOPs per token */
    assert_true(fabs(r.flops_per_token - flops) < 1);
    assert_true(fabs(r.compute_ms - 1e3 * 3805 * flops / (8 * 989e12)) < 1e-9);
    assert_true(r.compute_ms > r.mem_ms && r.step_ms == r.compute_ms);
    s.weight_bits = 16, s.kv_bits = 16;
    KvCapacity d = kv_capacity(kv_find("67b"), &s);
    double f67 = 2 * 67e9 + 4.0 * 64 * 128 * 95 * 4096;
    assert_true(fabs(d.flops_per_token - f67) < 1);
    assert_true(d.step_ms == d.mem_ms); /* the 67B stays memory-bound */
}

static void test_capacity_does_not_fit(void **state) {
    (void)state;
    KvServe s = h800_node();
    s.weight_bits = 16; /* V3 in BF16: 1,342 GB of weights on 640 GB */
    KvCapacity r = kv_capacity(kv_find("v3"), &s);
    assert_false(r.fits);
    assert_int_equal(r.max_batch, 0);
    assert_true(r.tokens_per_s == 0);
}

static void test_variants(void **state) {
    (void)state;
    const KvModel *v3 = kv_find("v3");
    KvModel mha = kv_variant(v3, KV_MHA, 0), gqa = kv_variant(v3, KV_GQA, 8), mla = kv_variant(v3, KV_MLA, 0);
    assert_true(kv_elements_per_token(&mha) == kv_elements_per_token(kv_find("v3-mha")));
    assert_true(kv_elements_per_token(&gqa) == 2LL * 8 * 128 * 61);
    assert_true(kv_elements_per_token(&mla) == kv_elements_per_token(v3));
    assert_true(mha.params_total == v3->params_total);
}

static Config v3_config(void) {
    Config c;
    memset(&c, 0, sizeof c);
    snprintf(c.model_type, sizeof c.model_type, "deepseek_v3");
    c.vocab_size = 129280, c.hidden_size = 7168, c.intermediate_size = 18432;
    c.moe_intermediate_size = 2048, c.n_layers = 61, c.n_heads = 128, c.q_lora_rank = 1536;
    c.kv_lora_rank = 512, c.qk_nope_head_dim = 128, c.qk_rope_head_dim = 64, c.v_head_dim = 128;
    c.n_routed_experts = 256, c.n_shared_experts = 1, c.num_experts_per_tok = 8;
    c.n_group = 8, c.topk_group = 4, c.first_k_dense_replace = 3, c.moe_layer_freq = 1;
    return c;
}

static void test_from_config(void **state) {
    (void)state;
    Config c = v3_config();
    KvModel m;
    Error e = {{0}};
    assert_int_equal(kv_from_config(&m, &c, "DeepSeek-V3", &e), 0);
    assert_int_equal(m.kind, KV_MLA);
    assert_true(kv_elements_per_token(&m) == kv_elements_per_token(kv_find("v3")));
    assert_string_equal(m.key, "DeepSeek-V3");
    c.kv_lora_rank = 0;
    assert_int_equal(kv_from_config(&m, &c, "x", &e), -1);
    printf("error: %s\n", e.msg);
    assert_non_null(strstr(e.msg, "kv_lora_rank"));
}

/* The 671B config.json's shape fields (reference-spec section 1), through config_load. */
static const char *V3_JSON =
    "{\"model_type\": \"deepseek_v3\", \"vocab_size\": 129280, \"hidden_size\": 7168,\n"
    " \"intermediate_size\": 18432, \"moe_intermediate_size\": 2048, \"num_hidden_layers\": 61,\n"
    " \"num_attention_heads\": 128, \"num_key_value_heads\": 128, \"q_lora_rank\": 1536,\n"
    " \"kv_lora_rank\": 512, \"qk_nope_head_dim\": 128, \"qk_rope_head_dim\": 64, \"v_head_dim\": 128,\n"
    " \"n_routed_experts\": 256, \"n_shared_experts\": 1, \"num_experts_per_tok\": 8, \"n_group\": 8,\n"
    " \"topk_group\": 4, \"first_k_dense_replace\": 3, \"num_nextn_predict_layers\": 1}\n";

static void test_from_config_file(void **state) {
    (void)state;
    char *dir = make_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, V3_JSON);
    Config c;
    Error e = {{0}};
    KvModel m;
    assert_int_equal(config_load(&c, path, &e), 0);
    assert_int_equal(kv_from_config(&m, &c, "v3-json", &e), 0);
    const KvModel *v3 = kv_find("v3");
    assert_true(kv_elements_per_token(&m) == kv_elements_per_token(v3));
    printf("V3 from config.json: %.1fB total, %.1fB active (published 671B, 37B)\n",
           m.params_total / 1e9, m.params_active / 1e9);
    assert_true(fabs(m.params_total / 671e9 - 1) < 0.01);
    assert_true(fabs(m.params_active / 37e9 - 1) < 0.02);
    rm_rf(dir);
    free(dir);
}

/* Runs `run kv ARGS...` into strings; returns its status. */
static int run_kv(char **out, char **err, int argc, char **argv) {
    size_t no, ne;
    FILE *fo = open_memstream(out, &no), *fe = open_memstream(err, &ne);
    assert_non_null(fo);
    assert_non_null(fe);
    int rc = kv_run(argc, argv, fo, fe);
    fclose(fo);
    fclose(fe);
    return rc;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static void test_cli(void **state) {
    (void)state;
    char *out, *err;
    char *table[] = {"--ctx", "4096"};
    assert_int_equal(run_kv(&out, &err, 2, table), 0);
    assert_non_null(strstr(out, "194,560"));
    assert_non_null(strstr(out, "25,920 bytes/token  93.3% smaller (15.01x)"));
    assert_string_equal(err, "");
    free(out), free(err);

    char *help[] = {"--help"};
    assert_int_equal(run_kv(&out, &err, 1, help), 0);
    assert_non_null(strstr(out, "usage: run kv"));
    assert_non_null(strstr(out, "--capacity"));
    assert_non_null(strstr(out, "llama-405b"));
    free(out), free(err);

    char *cap[] = {"--capacity", "--gpu-mem", "80", "--bandwidth", "3.35"};
    assert_int_equal(run_kv(&out, &err, 5, cap), 0);
    assert_non_null(strstr(out, "159,342"));
    assert_non_null(strstr(out, "11.99x"));
    free(out), free(err);

    char *bad[][3] = {{"--ctx", "abc", NULL}, {"--frobnicate", NULL, NULL}, {"--kv-bits", NULL, NULL},
                      {"--baseline", "nope", NULL}, {"--ctx", "0", NULL}, {"--capacity", "--model", "x"},
                      {"/nonexistent/dir", NULL, NULL}, {"--batch", "2.5", NULL},
                      {"--capacity", "--svg", "x.svg"}, {"--gpus", "4", NULL}, {"--tflops", "-1", NULL}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int argc = bad[i][1] ? bad[i][2] ? 3 : 2 : 1;
        assert_int_not_equal(run_kv(&out, &err, argc, bad[i]), 0);
        printf("%s %s -> %s", bad[i][0], argc > 1 ? bad[i][1] : "", err);
        assert_int_equal(count_lines(err), 1);
        assert_true(strncmp(err, "run kv: ", 8) == 0);
        free(out), free(err);
    }
}

/* The latent cache in run --kv's formats: mla_kv.h's bytes per token per layer times L, and what
 * they do to the capacity model's batch (V3 on 8 x 141 GB: 457 GB beside the FP8 weights). */
static void test_formats(void **state) {
    (void)state;
    const KvModel *v3 = kv_find("v3");
    assert_true(kv_format_bytes_per_token(v3, MLA_KV_F32) == 61.0 * 2304);
    assert_true(kv_format_bytes_per_token(v3, MLA_KV_BF16) == kv_bytes_per_token(v3, 16)); /* 70,272 */
    assert_true(kv_format_bytes_per_token(v3, MLA_KV_FP8) == 61.0 * 656);                   /* 40,016 */
    assert_true(fabs(kv_format_bits(v3, MLA_KV_FP8) - 656.0 * 8 / 576) < 1e-12);
    assert_true(kv_format_bytes_per_token(kv_find("llama-8b"), MLA_KV_FP8) == 0);
    KvServe s = {.gpus = 8, .gpu_mem_gb = 141, .bandwidth_tbs = 4.8, .ctx = 4096, .weight_bits = 8};
    long batch[3];
    for (int f = 0; f < 3; f++) {
        s.kv_bits = kv_format_bits(v3, (MlaKvFormat)f);
        KvCapacity r = kv_capacity(v3, &s);
        assert_true(fabs(r.seq_bytes - 4096 * kv_format_bytes_per_token(v3, (MlaKvFormat)f)) < 1e-3);
        batch[f] = r.max_batch;
    }
    /* floor(457e9 / (4096 * 140,544)) = 793, / (4096 * 70,272) = 1587, / (4096 * 40,016) = 2788 */
    assert_int_equal(batch[0], 793);
    assert_int_equal(batch[1], 1587);
    assert_int_equal(batch[2], 2788);
    char *out, *err, *table[] = {"--ctx", "4096"};
    assert_int_equal(run_kv(&out, &err, 2, table), 0);
    assert_non_null(strstr(out, "DeepSeek-V3              f32           2,304      140,544     32.00    0.576"));
    assert_non_null(strstr(out, "                         fp8             656       40,016      9.11    0.164"));
    free(out), free(err);
    char *cap[] = {"--capacity", "--model", "v3", "--gpu-mem", "141", "--bandwidth", "4.8"};
    assert_int_equal(run_kv(&out, &err, 7, cap), 0);
    assert_non_null(strstr(out, "MLA, --kv fp8 cache                 8  9.111     40,016   0.164    2788"));
    free(out), free(err);
}

/* Configs given on the command line: a directory and a config.json path (the tiny test models). */
static void test_cli_configs(void **state) {
    (void)state;
    char *out, *err;
    char *args[] = {FIXTURES "/v2_lite", FIXTURES "/v3_yarn/config.json", "--batch", "4"};
    assert_int_equal(run_kv(&out, &err, 4, args), 0);
    assert_string_equal(err, "");
    assert_non_null(strstr(out, "67b ")); /* the baseline, put in front */
    assert_non_null(strstr(out, "v2_lite"));
    assert_non_null(strstr(out, "v3_yarn"));
    assert_non_null(strstr(out, "(d_c+d_R)*L = (32+8)*3"));
    assert_non_null(strstr(out, "GB/batch"));
    free(out), free(err);
    char *cap[] = {"--capacity", FIXTURES "/v2_lite"};
    assert_int_equal(run_kv(&out, &err, 2, cap), 0);
    assert_non_null(strstr(out, "MLA, latent 32 + rope 8"));
    free(out), free(err);
}

static void test_svg(void **state) {
    (void)state;
    char *dir = make_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/kv.svg", dir);
    char *args[] = {"--svg", path}, *out, *err;
    assert_int_equal(run_kv(&out, &err, 2, args), 0);
    free(out), free(err);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    assert_true(strncmp(buf, "<svg ", 5) == 0);
    assert_non_null(strstr(buf, "</svg>\n"));
    for (int i = 0; i < kv_builtin_count(); i++) assert_non_null(strstr(buf, kv_builtin(i)->name));

    char bad[600];
    snprintf(bad, sizeof bad, "%s/no/such/dir/kv.svg", dir);
    char *args2[] = {"--svg", bad};
    assert_int_equal(run_kv(&out, &err, 2, args2), 1);
    assert_non_null(strstr(err, "cannot open"));
    free(out), free(err);
    rm_rf(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_matches_published_configs),
        cmocka_unit_test(test_v2_vs_67b_paper_numbers),
        cmocka_unit_test(test_capacity_worked_example),
        cmocka_unit_test(test_capacity_compute_bound),
        cmocka_unit_test(test_capacity_does_not_fit),
        cmocka_unit_test(test_variants),
        cmocka_unit_test(test_from_config),
        cmocka_unit_test(test_from_config_file),
        cmocka_unit_test(test_cli),
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_cli_configs),
        cmocka_unit_test(test_svg),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
