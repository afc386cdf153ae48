/* test_config.c - Config from config.json: DeepSeek's own spelling (rope_scaling, rope_theta at the
 * top), transformers 5's (rope_parameters), V2-Lite's q_lora_rank null, HF defaults per model_type,
 * parameter counts against the published totals, and every bad-input error. */
#include "model.h"
#include "testutil.h"

static void test_deepseek_v3_671b(void **st) {
    (void)st;
    Config c;
    Error e;
    assert_int_equal(config_load(&c, FIXTURES "/configs/deepseek_v3/config.json", &e), 0);
    assert_string_equal(c.model_type, "deepseek_v3");
    assert_int_equal(c.hidden_size, 7168);
    assert_int_equal(c.n_layers, 61);
    assert_int_equal(c.q_lora_rank, 1536);
    assert_int_equal(c.kv_lora_rank, 512);
    assert_int_equal(c.n_routed_experts, 256);
    assert_int_equal(c.num_experts_per_tok, 8);
    assert_int_equal(c.n_group, 8);
    assert_int_equal(c.topk_group, 4);
    assert_int_equal(c.topk_method, TOPK_NOAUX_TC);
    assert_int_equal(c.scoring_func, SCORE_SIGMOID);
    assert_float_equal(c.routed_scaling_factor, 2.5f, 0);
    assert_int_equal(c.rope.type, ROPE_YARN);
    assert_float_equal(c.rope.factor, 40.0f, 0);
    assert_int_equal(c.rope.original_max_pos, 4096);
    assert_int_equal(c.rope.truncate, 1);
    assert_float_equal(c.rope.beta_fast, 32.0f, 0);
    assert_float_equal(c.rope.theta, 10000.0f, 0);
    assert_int_equal(c.rope.interleaved, 1);
    assert_int_equal(c.fp8, 1);
    assert_int_equal(c.fp8_block[0], 128);
    assert_int_equal(c.num_nextn_predict_layers, 1);
    /* "671B total parameters, of which 37B are activated for each token" (V3 report, abstract);
     * 685B on the hub including the 14B MTP module with its own embedding and head copies */
    double total, active, mtp;
    config_param_counts(&c, &total, &active, &mtp);
    printf("V3: %.4g total, %.4g activated, MTP +%.4g\n", total, active, mtp);
    assert_true(fabs(total - 671.0e9) < 0.5e9);
    assert_true(fabs(active - 37e9) < 0.5e9);
    assert_true(fabs(total + mtp + 2.0 * 129280 * 7168 - 685e9) < 1e9);
}

static void test_deepseek_v2_lite(void **st) {
    (void)st;
    Config c;
    Error e;
    assert_int_equal(config_load(&c, FIXTURES "/configs/deepseek_v2_lite/config.json", &e), 0);
    assert_int_equal(c.q_lora_rank, 0); /* null: q_proj */
    assert_int_equal(c.scoring_func, SCORE_SOFTMAX);
    assert_int_equal(c.topk_method, TOPK_GREEDY);
    assert_int_equal(c.n_shared_experts, 2);
    assert_float_equal(c.rope.mscale_all_dim, 0.707f, 0);
    /* DeepSeek-V2-Lite: "15.7B total parameters, 2.4B activated" (model card) */
    double total, active, mtp;
    config_param_counts(&c, &total, &active, &mtp);
    printf("V2-Lite: %.4g total, %.4g activated\n", total, active);
    assert_true(fabs(total - 15.7e9) < 0.1e9);
    assert_true(fabs(active - 2.4e9) < 0.1e9);
    assert_true(mtp == 0);
}

/* transformers 5 spelling, as save_pretrained wrote it for the v3_yarn fixture */
static void test_transformers5_spelling(void **st) {
    (void)st;
    Config c;
    Error e;
    assert_int_equal(config_load(&c, FIXTURES "/v3_yarn/config.json", &e), 0);
    assert_int_equal(c.rope.type, ROPE_YARN);
    assert_float_equal(c.rope.factor, 4.0f, 0);
    assert_int_equal(c.rope.original_max_pos, 16);
    assert_float_equal(c.rope.mscale, 0.707f, 0);
    assert_float_equal(c.rope.mscale_all_dim, 1.0f, 0);
    assert_int_equal(c.q_lora_rank, 48);
    assert_int_equal(config_load(&c, FIXTURES "/v3_sharded/config.json", &e), 0);
    assert_int_equal(c.rope.type, ROPE_DEFAULT);
    assert_float_equal(c.rope.theta, 500.0f, 0);
    assert_int_equal(c.rope.interleaved, 0); /* rope_interleave: false */
    assert_int_equal(config_load(&c, FIXTURES "/v2_lite/config.json", &e), 0);
    assert_int_equal(c.q_lora_rank, 0);
    assert_int_equal(c.n_group, 1); /* "n_group": null -> HF default */
}

/* The smallest config that parses: the required sizes, 2 layers of width 64. */
#define BASE "\"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 2"

static void test_defaults(void **st) {
    (void)st;
    Config c;
    Error e;
    const char *v3 = "{\"model_type\": \"deepseek_v3\", " BASE "}";
    assert_int_equal(config_parse(&c, v3, "mem", &e), 0);
    assert_int_equal(c.q_lora_rank, 1536);        /* DeepseekV3Config defaults */
    assert_int_equal(c.n_routed_experts, 256);
    assert_int_equal(c.n_group, 8);
    assert_int_equal(c.first_k_dense_replace, 3);
    assert_int_equal(c.norm_topk_prob, 1);
    assert_float_equal(c.routed_scaling_factor, 2.5f, 0);
    assert_int_equal(c.rope.type, ROPE_DEFAULT);
    assert_int_equal(c.rope.interleaved, 1);
    const char *v2 = "{\"model_type\": \"deepseek_v2\", " BASE ","
                     " \"num_experts_per_tok\": 6}";
    assert_int_equal(config_parse(&c, v2, "mem", &e), 0);
    assert_int_equal(c.n_routed_experts, 64);     /* DeepseekV2Config defaults */
    assert_int_equal(c.n_shared_experts, 2);
    assert_int_equal(c.norm_topk_prob, 0);
    assert_int_equal(c.norm_topk_prob_ignored, 0);
    assert_float_equal(c.routed_scaling_factor, 1.0f, 0);
    assert_int_equal(c.scoring_func, SCORE_SOFTMAX);
    assert_int_equal(c.topk_method, TOPK_GREEDY);
    /* eos_token_id may be a list (generation configs); the first is taken */
    const char *k2 = "{\"model_type\": \"kimi_k2\", " BASE ","
                     " \"eos_token_id\": [7, 8]}";
    assert_int_equal(config_parse(&c, k2, "mem", &e), 0);
    assert_int_equal(c.eos_token_id, 7);
    /* norm_topk_prob: V3 and Kimi K2 follow it; deepseek_v2 ignores it, as HF's V2 router does */
    const char *v3_off = "{\"model_type\": \"deepseek_v3\", " BASE ","
                         " \"norm_topk_prob\": false}";
    assert_int_equal(config_parse(&c, v3_off, "mem", &e), 0);
    assert_int_equal(c.norm_topk_prob, 0);
    assert_int_equal(c.norm_topk_prob_ignored, 0);
    const char *v2_on = "{\"model_type\": \"deepseek_v2\", " BASE ","
                        " \"num_experts_per_tok\": 6, \"norm_topk_prob\": true}";
    assert_int_equal(config_parse(&c, v2_on, "mem", &e), 0);
    assert_int_equal(c.norm_topk_prob, 0);
    assert_int_equal(c.norm_topk_prob_ignored, 1);
}

static void expect_error(const char *json, const char *needle) {
    Config c;
    Error e = {{0}};
    assert_int_equal(config_parse(&c, json, "cfg.json", &e), -1);
    printf("error: %s\n", e.msg);
    assert_non_null(strstr(e.msg, "cfg.json"));
    assert_non_null(strstr(e.msg, needle));
    assert_null(strchr(e.msg, '\n'));
}

static void test_bad_input(void **st) {
    (void)st;
    expect_error("{\"model_type\": \"deepseek_v3\", ", "not valid JSON (line 1");
    /* a trailing comma: one line naming the line, with the newline in the snippet replaced */
    expect_error("{\n  \"model_type\": \"deepseek_v3\",\n}\n", "not valid JSON (line 3");
    expect_error("[1, 2]", "not a JSON object");
    expect_error("{\"vocab_size\": 3}", "model_type");
    expect_error("{\"model_type\": \"llama\", " BASE "}", "\"llama\" is not supported");
    expect_error("{\"model_type\": \"deepseek_v3\", \"vocab_size\": 100}", "\"hidden_size\" is missing");
    expect_error("{\"model_type\": \"deepseek_v3\", " BASE ", \"kv_lora_rank\": \"512\"}", "kv_lora_rank\": expected an integer, found a string");
    expect_error("{\"model_type\": \"deepseek_v3\", " BASE ", \"kv_lora_rank\": 1.5}", "found a fraction");
    expect_error("{\"model_type\": \"deepseek_v3\", " BASE ", \"norm_topk_prob\": 1}", "norm_topk_prob\": expected true or false");
    expect_error("{\"model_type\": \"deepseek_v3\", " BASE ", \"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2}}", "\"dynamic\" is not supported");
    expect_error("{\"model_type\": \"deepseek_v3\", " BASE ", \"rope_parameters\": {\"rope_type\": \"yarn\"}}", "needs \"factor\"");
    expect_error("{\"model_type\": \"deepseek_v3\", " BASE ", \"n_routed_experts\": 10, \"n_group\": 4}", "n_group must divide");
    expect_error("{\"model_type\": \"deepseek_v3\", " BASE ", \"num_experts_per_tok\": 300}", "num_experts_per_tok");
    expect_error("{\"model_type\": \"deepseek_v3\", " BASE ", \"qk_rope_head_dim\": 7}", "even");
    expect_error("{\"model_type\": \"deepseek_v3\", " BASE ", \"topk_method\": \"sinkhorn\"}", "\"sinkhorn\" is not supported");
    expect_error("{\"model_type\": \"deepseek_v3\", " BASE ", \"quantization_config\": {\"quant_method\": \"gptq\"}}", "\"gptq\" is not supported");
    Config c;
    Error e;
    assert_int_equal(config_load(&c, "tests/fixtures/no_such_dir/config.json", &e), -1);
    assert_non_null(strstr(e.msg, "no_such_dir/config.json: cannot open"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deepseek_v3_671b),       cmocka_unit_test(test_deepseek_v2_lite),
        cmocka_unit_test(test_transformers5_spelling), cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
