/* test_robust.c - untrusted input and hostile circumstances (notes/robustness.md): every size a file
 * or a flag claims is checked against a limit before anything is allocated from it, outputs appear
 * whole or not at all (a SIGKILL at any moment leaves the old files), existing outputs are kept
 * without --force, Ctrl-C stops generation at the next token with the speed so far, and a closed
 * stdout ends it quietly. Each check prints the message a user sees. */
#include "generate.h"
#include "outfile.h"
#include "safetensors.h"
#include "tokenizer.h"
#include "testutil.h"

#include <dirent.h>
#include <unistd.h>

#define KJV "models/kjv-v3"


/* A safetensors file of one header and `data` bytes of zeros. */
static void write_st(const char *path, const char *header, size_t data) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t n = strlen(header);
    for (int i = 0; i < 8; i++) fputc((int)(n >> (8 * i)) & 0xff, f);
    fputs(header, f);
    for (size_t i = 0; i < data; i++) fputc(0, f);
    fclose(f);
}

static void st_refused(const char *path, const char *needle) {
    StFile f;
    Error e = {{0}};
    assert_int_equal(st_open(&f, path, &e), -1);
    printf("st_open: %s\n", e.msg);
    assert_non_null(strstr(e.msg, needle));
    assert_null(strchr(e.msg, '\n'));
}

static void test_safetensors_limits(void **st) {
    (void)st;
    char *dir = make_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    /* a tensor larger than the file: 10^12 bytes claimed, 16 present */
    write_st(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[250000000000],\"data_offsets\":[0,1000000000000]}}", 16);
    st_refused(path, "run past the data region of 16 bytes");
    /* a shape whose element count overflows 64 bits (2^32 x 2^32) */
    write_st(path, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,16]}}", 16);
    st_refused(path, "more elements than 2^63");
    /* a header length past the end of the file */
    write_st(path, "{}", 0);
    FILE *f = fopen(path, "r+b");
    fputc(0xff, f), fputc(0xff, f), fclose(f);
    st_refused(path, "header length 65535 is larger than the 2 bytes after it");
    rm_rf(dir);
    free(dir);
}

static void config_refused(const char *json, const char *needle) {
    Config c;
    Error e = {{0}};
    assert_int_equal(config_parse(&c, json, "config.json", &e), -1);
    printf("config_parse: %s\n", e.msg);
    assert_non_null(strstr(e.msg, needle));
}

static void test_config_limits(void **st) {
    (void)st;
    const char *base = "{\"model_type\": \"deepseek_v3\", \"num_hidden_layers\": 2, \"num_attention_heads\": 2, "
                       "\"intermediate_size\": 64, \"n_routed_experts\": 0, ";
    char json[1024];
    snprintf(json, sizeof json, "%s\"vocab_size\": 256, \"hidden_size\": 1000000000}", base);
    config_refused(json, "hidden_size 1000000000 is outside the limit 0..65536");
    snprintf(json, sizeof json, "%s\"vocab_size\": 2000000000, \"hidden_size\": 64}", base);
    config_refused(json, "vocab_size 2000000000 is outside the limit 0..4194304");
    snprintf(json, sizeof json, "%s\"vocab_size\": 2147483648, \"hidden_size\": 64}", base); /* 2^31 */
    config_refused(json, "\"vocab_size\": expected an integer, found a number out of range");
}

static void test_tokenizer_limits(void **st) {
    (void)st;
    char *dir = make_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    /* one token claiming id 2^31 - 1: a vocabulary of 2^31 entries */
    write_text(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 2147483647}, \"merges\": []}}");
    Tokenizer *t;
    Error e = {{0}};
    assert_int_equal(tokenizer_load(&t, path, &e), -1);
    printf("tokenizer_load: %s\n", e.msg);
    assert_non_null(strstr(e.msg, "id 2147483647 is past the limit 4194303"));
    rm_rf(dir);
    free(dir);
}

static void test_cli_limits(void **st) {
    (void)st;
    char *dir = make_tmpdir(), cmd[1024];
    expect_run("./run generate " KJV " -p 'And God said' -n 4 --ctx 1000000000", 1,
           "--ctx 1000000000: the latent cache needs 2.62e+12 bytes, more than this machine's");
    expect_run("./run generate " KJV " -p 'And God said' -n 1000000", 1, "1000004 tokens (prompt + new) do not fit a 2048-token context");
    snprintf(cmd, sizeof cmd, "head -c 10000000 /dev/zero | tr '\\000' a > %s/big && ./run generate " KJV " -f %s/big", dir, dir);
    expect_run(cmd, 1, "the prompt is 10000000 bytes, over the limit of 1048576 bytes (1 MiB)");
    snprintf(cmd, sizeof cmd, "./run chat " KJV " -n 4 < %s/big", dir);
    expect_run(cmd, 1, "turn 1: over the limit of 1048576 bytes (1 MiB) for a prompt");
    /* run init of DeepSeek-V3's 671B config: 2.7 TB of F32, refused before a byte is drawn */
    snprintf(cmd, sizeof cmd, "./run init --config " FIXTURES "/configs/deepseek_v3/config.json --out %s/v3", dir);
    expect_run(cmd, 1, "checkpoint needs 2.68e+12 bytes (f32), more than the");
    snprintf(cmd, sizeof cmd, "test ! -e %s/v3", dir);
    assert_int_equal(system(cmd), 0);
    rm_rf(dir);
    free(dir);
}

/* Existing outputs are kept unless --force. */
static void test_no_clobber(void **st) {
    (void)st;
    char *dir = make_tmpdir(), cmd[1024], path[512];
    snprintf(path, sizeof path, "%s/g.safetensors", dir);
    write_text(path, "old");
    snprintf(cmd, sizeof cmd, "./run golden --config " FIXTURES "/v2_lite/config.json --functions rmsnorm --out %s", path);
    expect_run(cmd, 1, "g.safetensors exists; add --force to replace it");
    char *text = slurp(path, NULL);
    assert_string_equal(text, "old");
    free(text);
    strcat(cmd, " --force");
    expect_run(cmd, 0, "1 functions, 4 tensors");
    snprintf(cmd, sizeof cmd, "./run quantize " KJV " %s/q --to fp8 && ./run quantize " KJV " %s/q --to bf16", dir, dir);
    expect_run(cmd, 1, "q/config.json exists; add --force to replace it");
    snprintf(cmd, sizeof cmd, "./run quantize " KJV " %s/q --to bf16 --force", dir);
    expect_run(cmd, 0, "dequantized");
    snprintf(cmd, sizeof cmd, "./run init --config " FIXTURES "/v3_yarn/config.json --out %s/i && "
             "./run init --config " FIXTURES "/v3_yarn/config.json --out %s/i", dir, dir);
    expect_run(cmd, 1, "i/config.json exists; add --force to replace it");
    snprintf(cmd, sizeof cmd, "./run init --config " FIXTURES "/v3_yarn/config.json --out %s/i --force --seed 3", dir);
    expect_run(cmd, 0, "wrote a random f32 model");
    rm_rf(dir);
    free(dir);
}

/* Every file in dir is old's or new's file of that name, byte for byte, or a ".NAME.tmp-*" file;
 * returns how many are new's. */
static int old_or_new(const char *dir, const char *old, const char *new_dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *de;
    int n_new = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') {
            assert_true(!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") || strstr(de->d_name, ".tmp-"));
            continue;
        }
        char p[1024], po[1024], pn[1024];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        snprintf(po, sizeof po, "%s/%s", old, de->d_name);
        snprintf(pn, sizeof pn, "%s/%s", new_dir, de->d_name);
        size_t n, no = 0, nn = 0;
        char *a = slurp(p, &n), *b = slurp(po, &no), *c = slurp(pn, &nn);
        assert_non_null(a);
        int is_old = b && n == no && !memcmp(a, b, n), is_new = c && n == nn && !memcmp(a, c, n);
        if (!is_old && !is_new) fail_msg("%s is neither the old file nor the new one (%zu bytes)", p, n);
        n_new += is_new && !is_old;
        free(a), free(b), free(c);
    }
    closedir(d);
    return n_new;
}

/* run quantize killed with SIGKILL at 16 moments: OUT's files are always the old ones or complete new
 * ones, never a partial file under a final name. */
static void test_sigkill_quantize(void **st) {
    (void)st;
    char *dir = make_tmpdir(), cmd[2048];
    /* old: the BF16 round trip in OUT; new: the FP8 conversion, made once uninterrupted for reference */
    snprintf(cmd, sizeof cmd, "./run quantize " KJV " %s/old --to bf16 >/dev/null 2>&1 && cp -r %s/old %s/out", dir, dir, dir);
    assert_int_equal(system(cmd), 0);
    snprintf(cmd, sizeof cmd, "./run quantize " KJV " %s/new --to fp8 >/dev/null 2>&1", dir);
    double t0 = now_s();
    assert_int_equal(system(cmd), 0);
    double dur = now_s() - t0; /* the kills are spread over 0 .. 1.25 times a whole run */
    char old[600], new_dir[600], out[600];
    snprintf(old, sizeof old, "%s/old", dir), snprintf(new_dir, sizeof new_dir, "%s/new", dir), snprintf(out, sizeof out, "%s/out", dir);
    int mixed = 0, all_old = 0, all_new = 0;
    for (int k = 0; k < 16; k++) {
        snprintf(cmd, sizeof cmd, "(./run quantize " KJV " %s --to fp8 --force >/dev/null 2>&1 & p=$!; sleep %.3f; "
                 "kill -KILL $p 2>/dev/null; wait $p) 2>/dev/null; true", out, dur * k / 12);
        assert_int_equal(system(cmd), 0);
        int n = old_or_new(out, old, new_dir);
        n == 0 ? all_old++ : n == 5 ? all_new++ : mixed++;
        snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s %s", out, old, out); /* back to the old files */
        assert_int_equal(system(cmd), 0);
    }
    printf("16 SIGKILLs over %.3f s: %d left only old files, %d some new files (each whole), %d all new\n", dur * 1.25,
           all_old, mixed, all_new);
    assert_true(all_old < 16); /* some kills came after the first rename */
    rm_rf(dir);
    free(dir);
}

/* The same for st_write (run golden, run init, run logits): a file replaced in a child killed while
 * writing leaves the old bytes or the complete new ones. */
static void test_outfile(void **st) {
    (void)st;
    char *dir = make_tmpdir(), path[512], cmd[1024];
    snprintf(path, sizeof path, "%s/f", dir);
    Error e;
    assert_int_equal(outfile_write(path, "old", 3, &e), 0);
    OutFile o;
    assert_int_equal(outfile_open(&o, path, &e), 0);
    fputs("half of the new", o.f);
    fflush(o.f);
    char *text = slurp(path, NULL); /* mid-write, the name still gives the old file */
    assert_string_equal(text, "old");
    free(text);
    outfile_discard(&o);
    snprintf(cmd, sizeof cmd, "test $(ls -a %s | wc -l) -eq 3", dir); /* ., .., f: no temporary left */
    assert_int_equal(system(cmd), 0);
    assert_int_equal(outfile_check_clobber(path, 0, &e), -1);
    printf("%s\n", e.msg);
    assert_int_equal(outfile_check_clobber(path, 1, &e), 0);
    snprintf(path, sizeof path, "%s/no-such-dir/f", dir);
    assert_int_equal(outfile_write(path, "x", 1, &e), -1);
    printf("%s\n", e.msg);
    assert_non_null(strstr(e.msg, "cannot create"));
    rm_rf(dir);
    free(dir);
}

/* Ctrl-C during generate and chat: the text so far, the speed line, status 130. A closed stdout:
 * status 141 and nothing on stderr. */
static void test_signals(void **st) {
    (void)st;
    char *out;
    int rc = sh("bash -c './run generate " KJV " -p \"And God said\" -n 1900 --ignore-eos --seed 1 2>&1 & p=$!; "
                "sleep 1; kill -INT $p; wait $p; echo \"status $?\"'", &out);
    printf("%.300s...\n%s\n", out, strrchr(out, '\n') ? strstr(out, "run: prompt") : "");
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "And God said"));
    assert_non_null(strstr(out, "interrupted (Ctrl-C); temp 0.8, top-p 0.9, seed 1"));
    assert_non_null(strstr(out, "status 130"));
    free(out);
    /* $! of a background pipeline is its last process, this ./run (a pgrep by name could also find
     * the wrapping shells, or another user's run chat) */
    rc = sh("bash -c '(echo Hello; sleep 10) | ./run chat " KJV " -n 1900 --ignore-eos 2>&1 & p=$!; sleep 1.5; "
            "kill -INT $p; wait $p; echo \"status $?\"'", &out);
    printf("%s\n", strstr(out, "run chat:") ? strstr(out, "run chat:") : out);
    assert_non_null(strstr(out, "run chat: interrupted:"));
    assert_non_null(strstr(out, "tok/s"));
    free(out);
    char *dir = make_tmpdir(), cmd[1024];
    snprintf(cmd, sizeof cmd, "bash -c './run generate " KJV " -p \"And God said\" -n 1900 --ignore-eos 2>%s/err | head -c 20; "
             "echo \" status ${PIPESTATUS[0]}\"; wc -c < %s/err'", dir, dir);
    rc = sh(cmd, &out);
    printf("%s", out);
    assert_non_null(strstr(out, "And God said"));
    assert_non_null(strstr(out, " status 141\n0\n"));
    free(out);
    rm_rf(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_safetensors_limits), cmocka_unit_test(test_config_limits),
        cmocka_unit_test(test_tokenizer_limits),   cmocka_unit_test(test_cli_limits),
        cmocka_unit_test(test_no_clobber),         cmocka_unit_test(test_outfile),
        cmocka_unit_test(test_sigkill_quantize),   cmocka_unit_test(test_signals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
