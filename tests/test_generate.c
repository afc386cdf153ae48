/* test_generate.c - generate.c against HF: the chat prompt ids equal HF transformers'
 * apply_chat_template for each DeepSeek template family (tests/fixtures/make_chat_fixtures.py),
 * unknown templates are refused, generate() at temp 0 reproduces HF's greedy continuation, and
 * sampling is reproducible from the seed. (MTP decoding: test_mtp.c.) */
#include "generate.h"
#include "testutil.h"

#include <cJSON.h>
#include <unistd.h>

#define BUNDLED "models/kjv-v3"

/* A directory holding the bundled tokenizer.json and a tokenizer_config.json with this template. */
static char *tokenizer_dir(const char *template_json_or_null) {
    char *dir = make_tmpdir(), path[512], *cwd = getcwd(NULL, 0), target[1024];
    snprintf(target, sizeof target, "%s/" BUNDLED "/tokenizer.json", cwd);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    assert_int_equal(symlink(target, path), 0);
    free(cwd);
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "bos_token", "<｜begin▁of▁sentence｜>");
    cJSON_AddStringToObject(cfg, "eos_token", "<｜end▁of▁sentence｜>");
    if (template_json_or_null) cJSON_AddStringToObject(cfg, "chat_template", template_json_or_null);
    char *text = cJSON_Print(cfg);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    write_text(path, text);
    free(text);
    cJSON_Delete(cfg);
    return dir;
}

static void test_chat_ids_equal_hf(void **st) {
    (void)st;
    Error e;
    char *json = read_file(FIXTURES "/chat/cases.json", NULL, &e);
    if (!json) fail_msg("%s", e.msg);
    cJSON *root = cJSON_Parse(json);
    assert_non_null(root);
    const cJSON *c;
    int n_cases = 0, n_multi = 0, per_family[3] = {0};
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        const char *family = cJSON_GetObjectItem(c, "family")->valuestring;
        const cJSON *sys = cJSON_GetObjectItem(c, "system"), *turns = cJSON_GetObjectItem(c, "turns");
        const char *user = turns ? NULL : cJSON_GetObjectItem(c, "user")->valuestring;
        char *dir = tokenizer_dir(cJSON_GetObjectItem(c, "template")->valuestring);
        Tokenizer *tok;
        if (tokenizer_load(&tok, dir, &e)) fail_msg("%s", e.msg);
        ChatFormat f;
        if (chat_format_detect(&f, dir, tok, &e)) fail_msg("%s", e.msg);
        ChatFormat want = !strcmp(family, "r1") ? CHAT_R1 : !strcmp(family, "v2") ? CHAT_V2 : CHAT_V3;
        assert_int_equal(f, want);
        const char *system = cJSON_IsString(sys) ? sys->valuestring : NULL;
        char *text;
        if (turns) { /* a whole conversation: earlier replies closed with EOS (R1: reasoning dropped) */
            const char *t[16];
            int nt = cJSON_GetArraySize(turns);
            assert_true(nt <= 16 && nt % 2 == 1);
            for (int i = 0; i < nt; i++) t[i] = cJSON_GetArrayItem(turns, i)->valuestring;
            text = chat_render(f, tok, system, t, nt);
            n_multi++;
        } else {
            text = prompt_render(1, f, tok, system, user);
        }
        assert_string_equal(text, cJSON_GetObjectItem(c, "text")->valuestring);
        int *ids, n;
        assert_int_equal(tokenizer_encode(tok, text, strlen(text), &ids, &n, &e), 0);
        const cJSON *hf = cJSON_GetObjectItem(c, "ids");
        assert_int_equal(n, cJSON_GetArraySize(hf));
        for (int i = 0; i < n; i++) assert_int_equal(ids[i], cJSON_GetArrayItem(hf, i)->valueint);
        per_family[want]++;
        n_cases++;
        free(ids); free(text);
        tokenizer_free(tok);
        rm_rf(dir);
        free(dir);
    }
    printf("chat prompts: %d of %d equal HF's apply_chat_template ids (V3 %d, R1 %d, V2 %d; %d multi-turn)\n", n_cases,
           n_cases, per_family[CHAT_V3], per_family[CHAT_R1], per_family[CHAT_V2], n_multi);
    assert_true(n_cases >= 18 && n_multi >= 6 && per_family[0] && per_family[1] && per_family[2]);
    cJSON_Delete(root);
    free(json);
}

static void test_chat_format_errors(void **st) {
    (void)st;
    Tokenizer *tok;
    Error e;
    ChatFormat f = CHAT_R1;
    /* no template: the tokens decide (the bundled tokenizer has <｜User｜>, <｜Assistant｜>) */
    char *dir = tokenizer_dir(NULL);
    assert_int_equal(tokenizer_load(&tok, dir, &e), 0);
    assert_int_equal(chat_format_detect(&f, dir, tok, &e), 0);
    assert_int_equal(f, CHAT_V3);
    tokenizer_free(tok);
    rm_rf(dir);
    free(dir);
    /* a template of another family (ChatML) is refused, naming the file */
    dir = tokenizer_dir("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>{% endfor %}");
    assert_int_equal(tokenizer_load(&tok, dir, &e), 0);
    assert_int_equal(chat_format_detect(&f, dir, tok, &e), -1);
    printf("error: %s\n", e.msg);
    assert_non_null(strstr(e.msg, "tokenizer_config.json"));
    assert_non_null(strstr(e.msg, "not one of DeepSeek's"));
    tokenizer_free(tok);
    rm_rf(dir);
    free(dir);
    /* the V3 format with a tokenizer that lacks its tokens: the bundled one without them */
    char *v3 = tokenizer_dir("{{ bos_token }}{% for m in messages %}{{ '<｜User｜>' + m['content'] }}{% endfor %}"
                             "{{ '<｜Assistant｜>' }}");
    char path[512];
    char *text = read_file(BUNDLED "/tokenizer.json", NULL, &e);
    cJSON *tj = cJSON_Parse(text);
    cJSON *added = cJSON_GetObjectItem(tj, "added_tokens");
    for (int i = cJSON_GetArraySize(added) - 1; i >= 0; i--) {
        const char *content = cJSON_GetObjectItem(cJSON_GetArrayItem(added, i), "content")->valuestring;
        if (!strcmp(content, "<｜User｜>") || !strcmp(content, "<｜Assistant｜>")) {
            cJSON_DeleteItemFromObject(cJSON_GetObjectItem(cJSON_GetObjectItem(tj, "model"), "vocab"), content);
            cJSON_DeleteItemFromArray(added, i);
        }
    }
    char *out = cJSON_PrintUnformatted(tj);
    snprintf(path, sizeof path, "%s/tokenizer.json", v3);
    unlink(path);
    write_text(path, out);
    free(out); free(text);
    cJSON_Delete(tj);
    assert_int_equal(tokenizer_load(&tok, v3, &e), 0);
    assert_int_equal(chat_format_detect(&f, v3, tok, &e), -1);
    printf("error: %s\n", e.msg);
    assert_non_null(strstr(e.msg, "does not have as tokens"));
    tokenizer_free(tok);
    rm_rf(v3);
    free(v3);
}

/* generate() at temp 0, fed HF's prompt ids, continues exactly as HF's greedy generate did. */
static void check_greedy(const char *name) {
    char path[256];
    Model m;
    State s;
    Error e;
    StFile x;
    snprintf(path, sizeof path, FIXTURES "/%s/expected.safetensors", name);
    assert_int_equal(st_open(&x, path, &e), 0);
    const StTensor *p = st_find(&x, "prompt"), *g = st_find(&x, "greedy");
    int T = (int)p->numel, N = (int)g->numel, *prompt = malloc(sizeof(int) * T);
    for (int i = 0; i < T; i++) prompt[i] = (int)dtype_load_f32(p->dtype, p->data, i);
    snprintf(path, sizeof path, FIXTURES "/%s", name);
    if (model_load(&m, path, &e)) fail_msg("%s", e.msg);
    assert_int_equal(state_init(&s, &m, T + N, 16, &e), 0);
    GenOptions o = {.temp = 0, .top_p = 1, .seed = 1, .n_new = N, .ignore_eos = 1, .eos = m.cfg.eos_token_id};
    GenResult r;
    assert_int_equal(generate(&m, &s, NULL, prompt, T, &o, &r, &e), 0);
    assert_int_equal(r.n, N);
    for (int i = 0; i < N; i++) assert_int_equal(r.ids[i], (int)dtype_load_f32(g->dtype, g->data, i));
    printf("%s: generate() gives HF's %d greedy tokens\n", name, N);
    free(r.ids);
    free(prompt);
    state_free(&s);
    model_free(&m);
    st_close(&x);
}

static void test_generate_greedy_equals_hf(void **st) {
    (void)st;
    check_greedy("v3_yarn");
    check_greedy("v2_lite");
    check_greedy("v3_fp8");
}

/* Same seed, same tokens; another seed, other tokens; the cache bound is checked up front. */
static void test_generate_sampling_seeded(void **st) {
    (void)st;
    Model m;
    State s;
    Error e;
    assert_int_equal(model_load(&m, BUNDLED, &e), 0);
    assert_int_equal(state_init(&s, &m, 64, 16, &e), 0);
    int prompt[3] = {0, 100, 200};
    GenOptions o = {.temp = 1.0f, .top_p = 0.95f, .seed = 7, .n_new = 40, .ignore_eos = 1, .eos = -1};
    GenResult a, b, c;
    assert_int_equal(generate(&m, &s, NULL, prompt, 3, &o, &a, &e), 0);
    assert_int_equal(generate(&m, &s, NULL, prompt, 3, &o, &b, &e), 0);
    o.seed = 8;
    assert_int_equal(generate(&m, &s, NULL, prompt, 3, &o, &c, &e), 0);
    assert_int_equal(a.n, 40);
    assert_memory_equal(a.ids, b.ids, sizeof(int) * 40);
    assert_memory_not_equal(a.ids, c.ids, sizeof(int) * 40);
    o.n_new = 62; /* 3 + 62 > 64 */
    GenResult d;
    assert_int_equal(generate(&m, &s, NULL, prompt, 3, &o, &d, &e), -1);
    printf("error: %s\n", e.msg);
    assert_non_null(strstr(e.msg, "raise --ctx"));
    free(a.ids); free(b.ids); free(c.ids);
    state_free(&s);
    model_free(&m);
}

/* A chat session keeps the conversation in one cache: its second reply equals generate() from a
 * fresh state on the whole conversation's ids (turn 1, reply 1, EOS, turn 2), prefilled at once. */
static void test_chat_session_equals_fresh_prefill(void **st) {
    (void)st;
    Model m;
    State s, fresh;
    Error e;
    Tokenizer *tok;
    assert_int_equal(model_load(&m, BUNDLED, &e), 0);
    assert_int_equal(tokenizer_load(&tok, BUNDLED, &e), 0);
    assert_int_equal(state_init(&s, &m, 256, 16, &e), 0);
    const char *u1 = "Who was Moses?", *u2 = "And who was Aaron?";
    char input[128], *outbuf = NULL;
    size_t outlen = 0;
    snprintf(input, sizeof input, "%s\n\n%s\n", u1, u2); /* the empty line is skipped */
    FILE *in = fmemopen(input, strlen(input), "r"), *out = open_memstream(&outbuf, &outlen);
    GenOptions o = {.temp = 0, .top_p = 1, .n_new = 12, .ignore_eos = 1, .eos = tokenizer_eos_id(tok)};
    assert_int_equal(chat_session(&m, &s, tok, CHAT_V3, NULL, in, out, &o, &e), 0);
    fclose(in);
    fclose(out);
    int r1[12], r2[12], used;
    const char *p = outbuf;
    for (int i = 0; i < 12; i++, p += used) assert_int_equal(sscanf(p, "%d%n", &r1[i], &used), 1);
    for (int i = 0; i < 12; i++, p += used) assert_int_equal(sscanf(p, "%d%n", &r2[i], &used), 1);
    /* the whole conversation's ids, built from its parts */
    char *first = chat_render(CHAT_V3, tok, NULL, &u1, 1), second[128];
    snprintf(second, sizeof second, "<｜User｜>%s<｜Assistant｜>", u2);
    int *a, na, *b, nb;
    assert_int_equal(tokenizer_encode(tok, first, strlen(first), &a, &na, &e), 0);
    assert_int_equal(tokenizer_encode(tok, second, strlen(second), &b, &nb, &e), 0);
    int *all = malloc(sizeof(int) * (size_t)(na + 13 + nb)), n = 0;
    memcpy(all, a, sizeof(int) * na);
    n = na;
    memcpy(all + n, r1, sizeof r1);
    n += 12;
    all[n++] = tokenizer_eos_id(tok);
    memcpy(all + n, b, sizeof(int) * nb);
    n += nb;
    assert_int_equal(state_init(&fresh, &m, 256, 64, &e), 0);
    GenResult r;
    assert_int_equal(generate(&m, &fresh, tok, all, n, &o, &r, &e), 0);
    assert_memory_equal(r.ids, r2, sizeof r2);
    printf("chat session: reply 2 (%d tokens) equals a fresh prefill of the %d-token conversation\n", r.n, n);
    /* a conversation that outgrows the cache is stopped with a message */
    State small;
    assert_int_equal(state_init(&small, &m, 30, 16, &e), 0); /* turn 1 needs 19, turn 2 up to 39 */
    in = fmemopen(input, strlen(input), "r");
    out = fopen("/dev/null", "w");
    assert_int_equal(chat_session(&m, &small, tok, CHAT_V3, NULL, in, out, &o, &e), -1);
    printf("error: %s\n", e.msg);
    assert_non_null(strstr(e.msg, "turn 2"));
    assert_non_null(strstr(e.msg, "raise --ctx"));
    fclose(in);
    fclose(out);
    free(r.ids); free(all); free(a); free(b); free(first); free(outbuf);
    state_free(&small);
    state_free(&fresh);
    state_free(&s);
    tokenizer_free(tok);
    model_free(&m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_ids_equal_hf),         cmocka_unit_test(test_chat_format_errors),
        cmocka_unit_test(test_generate_greedy_equals_hf), cmocka_unit_test(test_generate_sampling_seeded),
        cmocka_unit_test(test_chat_session_equals_fresh_prefill),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
