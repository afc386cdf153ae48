/* test_cli.c - the command line as scripts use it: `run logits` and `run generate --ids` against
 * the HF fixtures, `run inspect`, and the errors a user meets (exit status and one-line message). */
#include "safetensors.h"
#include <cJSON.h>
#include "testutil.h"


/* Reads the fixture's prompt as "5,17,42" and its greedy ids as "1 2 3". */
static void fixture_ids(const char *name, char *prompt, char *greedy, float **logits, int *T, int *V) {
    char path[256];
    StFile f;
    Error e;
    snprintf(path, sizeof path, FIXTURES "/%s/expected.safetensors", name);
    assert_int_equal(st_open(&f, path, &e), 0);
    const StTensor *p = st_find(&f, "prompt"), *g = st_find(&f, "greedy"), *l = st_find(&f, "logits");
    prompt[0] = greedy[0] = 0;
    for (int i = 0; i < p->numel; i++)
        sprintf(prompt + strlen(prompt), "%s%d", i ? "," : "", (int)dtype_load_f32(p->dtype, p->data, i));
    for (int i = 0; i < g->numel; i++)
        sprintf(greedy + strlen(greedy), "%s%d", i ? " " : "", (int)dtype_load_f32(g->dtype, g->data, i));
    *logits = st_to_f32(l);
    *T = (int)l->shape[0];
    *V = (int)l->shape[1];
    st_close(&f);
}

static void test_logits_modes(void **st) {
    (void)st;
    char prompt[4096], greedy[1024], cmd[8192], *out;
    float *want;
    int T, V;
    fixture_ids("v3_fp8", prompt, greedy, &want, &T, &V);
    char *dir = make_tmpdir();
    const char *modes[] = {"", "--decode", "--naive"};
    for (int i = 0; i < 3; i++) {
        snprintf(cmd, sizeof cmd, "./run logits " FIXTURES "/v3_fp8 --tokens %s --out %s/l.safetensors %s", prompt, dir, modes[i]);
        int rc = sh(cmd, &out);
        printf("%s", out);
        assert_int_equal(rc, 0);
        free(out);
        StFile f;
        Error e;
        snprintf(cmd, sizeof cmd, "%s/l.safetensors", dir);
        assert_int_equal(st_open(&f, cmd, &e), 0);
        const StTensor *l = st_find(&f, "logits");
        assert_non_null(l);
        assert_int_equal(l->shape[0], T);
        assert_int_equal(l->shape[1], V);
        float *got = st_to_f32(l);
        check_close(i == 0 ? "run logits (prefill)" : modes[i], got, want, (size_t)T * V, 1e-4);
        free(got);
        st_close(&f);
    }
    rm_rf(dir);
    free(dir);
    free(want);
}

/* Threads split outputs (rows of W, attention heads), never a sum: the same logits bit for bit at
 * any OMP_NUM_THREADS, for one-token decode (our loops) and a prefill (OpenBLAS on one thread). */
static void test_threads_bit_identical(void **st) {
    (void)st;
    char *dir = make_tmpdir(), cmd[1024], *out;
    const char *tokens = "0,11,42,99,7,300,1200,5,5,77,3000,12";
    const char *modes[] = {"--decode", ""};
    for (int m = 0; m < 2; m++) {
        char first[600] = "";
        for (int threads = 1; threads <= 5; threads += 2) {
            snprintf(cmd, sizeof cmd, "OMP_NUM_THREADS=%d OPENBLAS_NUM_THREADS=1 ./run logits models/kjv-v3 --tokens %s"
                     " --out %s/t%d.safetensors %s", threads, tokens, dir, threads, modes[m]);
            assert_int_equal(sh(cmd, &out), 0);
            free(out);
            if (threads == 1) {
                snprintf(first, sizeof first, "%s/t1.safetensors", dir);
                continue;
            }
            snprintf(cmd, sizeof cmd, "cmp %s %s/t%d.safetensors", first, dir, threads);
            assert_int_equal(sh(cmd, &out), 0);
            free(out);
            printf("%s logits: 1 and %d threads give identical bytes\n", m ? "prefill" : "decode", threads);
        }
    }
    rm_rf(dir);
    free(dir);
}

static void test_generate_ids(void **st) {
    (void)st;
    const char *names[] = {"v3_yarn", "v2_lite", "v3_sharded"};
    for (int i = 0; i < 3; i++) {
        char prompt[4096], greedy[1024], cmd[8192], *out;
        float *want;
        int T, V;
        fixture_ids(names[i], prompt, greedy, &want, &T, &V);
        snprintf(cmd, sizeof cmd, "./run generate " FIXTURES "/%s --tokens %s -n 16 --temp 0 --ids --ignore-eos 2>/dev/null",
                 names[i], prompt);
        assert_int_equal(sh(cmd, &out), 0);
        printf("%s: %s", names[i], out);
        assert_int_equal(strncmp(out, greedy, strlen(greedy)), 0);
        assert_int_equal(out[strlen(greedy)], '\n');
        free(out);
        free(want);
    }
}

static void test_inspect(void **st) {
    (void)st;
    char *out;
    assert_int_equal(sh("./run inspect " FIXTURES "/v3_sharded", &out), 0);
    printf("%s", out);
    assert_non_null(strstr(out, "in 3 file(s)"));
    assert_non_null(strstr(out, "BF16 79"));
    assert_non_null(strstr(out, "mtp             absent"));
    assert_non_null(strstr(out, "half-split pairs"));
    free(out);
    assert_int_equal(sh("./run inspect " FIXTURES "/v3_fp8", &out), 0);
    assert_non_null(strstr(out, "fp8 e4m3, weight blocks 128x128"));
    assert_non_null(strstr(out, "F8_E4M3 28"));
    free(out);
    assert_int_equal(sh("./run inspect " FIXTURES "/configs/deepseek_v3", &out), 0);
    assert_non_null(strstr(out, "6.71e+11 total"));
    free(out);
}


static void test_errors(void **st) {
    (void)st;
    expect_run("./run", 2, "usage: run");
    expect_run("./run frobnicate", 2, "unknown command \"frobnicate\"");
    expect_run("./run logits /nonexistent --tokens 1 --out build/refused.safetensors", 1, "/nonexistent/config.json: cannot open");
    expect_run("./run logits " FIXTURES "/v3_yarn --tokens 1,x --out build/refused.safetensors", 2, "--tokens");
    expect_run("./run logits " FIXTURES "/v3_yarn --tokens 1,2", 2, "--out is required");
    expect_run("./run logits " FIXTURES "/v3_yarn --tokens 1,999 --out build/refused.safetensors", 1, "token id 999 at index 1 is outside the vocabulary [0, 256)");
    expect_run("./run generate " FIXTURES "/v3_yarn --tokens 1,2 -n 100 --ids", 1, "do not fit a 64-token context");
    expect_run("./run generate " FIXTURES "/v3_yarn --tokens 1,2 -n x --ids", 2, "-n: expected a non-negative integer");
    expect_run("./run inspect " FIXTURES "/v3_yarn --bogus", 2, "unknown option \"--bogus\"");
    expect_run("./run generate " FIXTURES "/v3_yarn --tokens 1 --threads 0 --ids", 2, "--threads: expected a count");
    /* a plain build has no GPU forward (device_none.c): one line, exit 1; --device cpu is the default */
    expect_run("./run generate " FIXTURES "/v3_yarn --tokens 1 --ids --device cuda", 1, "built without CUDA");
    expect_run("./run generate " FIXTURES "/v3_yarn --tokens 1 --ids --device tpu", 2, "--device: expected cpu or cuda");
    /* inspect: a config.json alone is a summary (exit 0); a broken safetensors is an error (exit 1) */
    char *dir = make_tmpdir(), cmd[1024], *out;
    snprintf(cmd, sizeof cmd, "cp " FIXTURES "/v3_yarn/config.json %s/ && ./run inspect %s", dir, dir);
    assert_int_equal(sh(cmd, &out), 0);
    assert_non_null(strstr(out, "no weights"));
    free(out);
    snprintf(cmd, sizeof cmd, "head -c 5000 " FIXTURES "/v3_yarn/model.safetensors > %s/model.safetensors && ./run inspect %s", dir, dir);
    assert_int_equal(sh(cmd, &out), 1);
    printf("%s", out);
    assert_non_null(strstr(out, "model.safetensors"));
    free(out);
    rm_rf(dir);
    free(dir);
    assert_int_equal(sh("./run --help", &out), 0);
    assert_non_null(strstr(out, "logits DIR --tokens IDS --out F.safetensors"));
    free(out);
}

/* --kv: the cache format for logits, generate (and --mtp), ppl, chat; its errors. */
static void test_kv_option(void **st) {
    (void)st;
    char prompt[4096], greedy[1024], cmd[8192], *out;
    float *want;
    int T, V;
    expect_run("./run logits " FIXTURES "/v3_yarn --tokens 1,2 --out build/refused.safetensors --kv int4", 2,
               "--kv: expected f32, bf16 or fp8, found \"int4\"");
    expect_run("./run generate " FIXTURES "/v3_yarn --tokens 1 --ids --kv", 2, "--kv: expected f32, bf16 or fp8, found \"(nothing)\"");
    expect_run("./run inspect " FIXTURES "/v3_yarn --kv bf16", 2, "inspect: --kv goes with generate, logits, ppl and chat");
    expect_run("./run generate " FIXTURES "/v3_yarn --tokens 1 --ids --kv fp8 --device cuda", 2,
               "--kv fp8: the CUDA forward keeps an F32 latent cache; use --kv f32 or --device cpu");
    assert_int_equal(sh("./run --help", &out), 0);
    assert_non_null(strstr(out, "--kv f32|bf16|fp8"));
    free(out);

    /* logits: --kv f32 is the default, byte for byte; bf16 (any case) is one file, recorded in the
     * metadata, and differs from F32 by the rounding (test_kv_cache.c bounds it) */
    fixture_ids("v3_fp8", prompt, greedy, &want, &T, &V);
    char *dir = make_tmpdir();
    const char *opts[] = {"", "--kv f32", "--kv bf16", "--kv BF16", "--kv fp8"};
    for (int i = 0; i < 5; i++) {
        snprintf(cmd, sizeof cmd, "./run logits " FIXTURES "/v3_fp8 --tokens %s --out %s/l%d.safetensors %s 2>&1", prompt,
                 dir, i, opts[i]);
        assert_int_equal(sh(cmd, &out), 0);
        free(out);
    }
    char a[512], b[512];
    snprintf(a, sizeof a, "%s/l0.safetensors", dir);
    snprintf(b, sizeof b, "%s/l1.safetensors", dir);
    assert_files_equal(a, b);
    snprintf(a, sizeof a, "%s/l2.safetensors", dir);
    snprintf(b, sizeof b, "%s/l3.safetensors", dir);
    assert_files_equal(a, b);
    for (int i = 0; i < 5; i += 2) {
        StFile f;
        Error e;
        snprintf(a, sizeof a, "%s/l%d.safetensors", dir, i);
        assert_int_equal(st_open(&f, a, &e), 0);
        const char *kv = i == 0 ? NULL : i == 2 ? "\"kv\":\"bf16\"" : "\"kv\":\"fp8\"";
        if (kv) assert_non_null(strstr(f.metadata_json, kv));
        else assert_null(strstr(f.metadata_json, "\"kv\""));
        float *got = st_to_f32(st_find(&f, "logits"));
        double err = rel_err(got, want, (size_t)T * V);
        printf("run logits %s: rel err vs HF %.3g\n", opts[i], err);
        assert_true(i == 0 ? err <= 1e-4 : err > 1e-4);
        free(got);
        st_close(&f);
    }
    rm_rf(dir);
    free(dir);
    free(want);

    /* --mtp with a rounded cache (the MTP layer's in the same format): greedy is still plain
     * greedy's tokens, since the draft only proposes and the main model, reading the same rows,
     * decides */
    for (int i = 2; i < 5; i += 2) {
        snprintf(cmd, sizeof cmd, "./run generate models/kjv-v3 -p \"And God said\" -n 40 --temp 0 --mtp %s 2>&1 >/dev/null",
                 opts[i]);
        assert_int_equal(sh(cmd, &out), 0);
        printf("%s", out);
        assert_non_null(strstr(out, "tokens identical to plain greedy"));
        free(out);
    }
}

/* run tokenize -f FILE --ids equals HF's ids (tests/fixtures/tokenizer/cases.json), for every case. */
static void test_tokenize_cli(void **st) {
    (void)st;
    char *text = slurp(FIXTURES "/tokenizer/cases.json", NULL);
    assert_non_null(text);
    cJSON *root = cJSON_Parse(text), *cases = cJSON_GetObjectItem(root, "cases"), *c;
    char *dir = make_tmpdir(), path[512], cmd[1024], want[8192], *out;
    snprintf(path, sizeof path, "%s/case.txt", dir);
    int checked = 0;
    cJSON_ArrayForEach(c, cases) {
        if (checked == 60) break; /* a process per case: the first 60 cover every category's start */
        const char *s = cJSON_GetObjectItem(c, "text")->valuestring;
        write_text(path, s);
        want[0] = 0;
        cJSON *id;
        cJSON_ArrayForEach(id, cJSON_GetObjectItem(c, "ids"))
            snprintf(want + strlen(want), sizeof want - strlen(want), "%s%d", want[0] ? " " : "", id->valueint);
        snprintf(cmd, sizeof cmd, "./run tokenize " FIXTURES "/tokenizer -f %s --ids 2>/dev/null", path);
        assert_int_equal(sh(cmd, &out), 0);
        out[strcspn(out, "\n")] = 0;
        if (strcmp(out, want)) printf("case %d: got %s want %s\n", checked, out, want);
        assert_string_equal(out, want);
        free(out);
        checked++;
    }
    printf("run tokenize --ids: %d cases equal to HF tokenizers' ids\n", checked);
    cJSON_Delete(root);
    free(text);
    rm_rf(dir);
    free(dir);
    assert_int_equal(sh("./run tokenize " FIXTURES "/tokenizer -p 'In the beginning'", &out), 0);
    assert_non_null(strstr(out, "   261  Ġthe\n")); /* id and piece per line */
    free(out);
}

/* run generate -p on the bundled model: echoes the prompt, streams text, seeded sampling repeats,
 * greedy equals --tokens greedy, --chat hides the template's special tokens, overflow is refused. */
static void test_generate_text(void **st) {
    (void)st;
    char *a, *b;
    assert_int_equal(sh("./run generate models/kjv-v3 -p 'And God said' -n 40 --seed 7 2>/dev/null", &a), 0);
    assert_int_equal(sh("./run generate models/kjv-v3 -p 'And God said' -n 40 --seed 7 2>/dev/null", &b), 0);
    printf("sampled: %s", a);
    assert_string_equal(a, b);
    assert_int_equal(strncmp(a, "And God said", 12), 0);
    assert_true(strlen(a) > 60);
    free(a);
    free(b);
    assert_int_equal(sh("./run generate models/kjv-v3 -p 'And God said' -n 40 --seed 8 2>/dev/null", &b), 0);
    assert_int_equal(sh("./run generate models/kjv-v3 -p 'And God said' -n 40 --seed 7 2>/dev/null", &a), 0);
    assert_string_not_equal(a, b); /* another seed, another sample */
    free(a);
    free(b);
    /* greedy text == greedy ids decoded: tokenize the prompt with BOS the way -p does */
    assert_int_equal(sh("./run generate models/kjv-v3 -p 'The LORD is my shepherd;' -n 48 --temp 0 --ignore-eos 2>/dev/null", &a), 0);
    printf("greedy: %s", a);
    assert_non_null(strstr(a, "The LORD is my shepherd; I will not be ashamed, neither will I give it unto thee."));
    free(a);
    assert_int_equal(sh("./run generate models/kjv-v3 -p 'Who made the heaven?' --chat --system 'Answer briefly.' -n 30 --temp 0 2>&1", &a), 0);
    printf("chat: %s", a);
    assert_null(strstr(a, "<｜"));
    free(a);
    assert_int_equal(sh("./run generate models/kjv-v3 -p 'And God said' -n 5000", &a), 1);
    assert_non_null(strstr(a, "do not fit a 2048-token context; raise --ctx"));
    free(a);
    assert_int_equal(sh("./run generate models/kjv-v3 -p 'x' --system 'y'", &a), 2);
    assert_non_null(strstr(a, "--system only goes with --chat"));
    free(a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_modes), cmocka_unit_test(test_generate_ids),
        cmocka_unit_test(test_threads_bit_identical),
        cmocka_unit_test(test_inspect),      cmocka_unit_test(test_errors),
        cmocka_unit_test(test_kv_option),
        cmocka_unit_test(test_tokenize_cli), cmocka_unit_test(test_generate_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
