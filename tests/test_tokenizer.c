/* test_tokenizer.c - tokenizer.c against hand-built tokenizer.json files (each rule on its own)
 * and against HF tokenizers (tests/fixtures/tokenizer, made by make_tokenizer_fixtures.py).
 *
 * The hand-built tokenizers have the 256 byte tokens as ids 0..255 (id = byte value), then one
 * token per merge (ids 256.. in merge order), then the added tokens (ids 1000.., after a gap).
 * Merges are written here as raw bytes and spelled in the byte-level alphabet by this file's own
 * copy of the byte map. */
#include "testutil.h"

#include <cJSON.h>
#include <stdint.h>
#include <time.h>

#include "tokenizer.h"

/* DeepSeek-V3's pre_tokenizer regexes, as in its tokenizer.json (there: JSON-escaped). */
static const char *DS_SPLITS[] = {
    "\\p{N}{1,3}",
    "[一-龥぀-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
};

/* ------------------------------------------------------------------ building tokenizer.json */

typedef struct {
    char *s;
    size_t n, cap;
} Buf;

static void put(Buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (b->n + (size_t)k + 1 > b->cap) {
        b->cap = 2 * (b->n + (size_t)k + 1);
        b->s = realloc(b->s, b->cap);
        assert_non_null(b->s);
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}

static int byte_cp(int b) { /* GPT-2's bytes_to_unicode, written out independently */
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) return b;
    int extra = 0;
    for (int c = 0; c < b; c++) extra += !((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255));
    return 256 + extra;
}

static void put_utf8(Buf *b, int cp) {
    if (cp < 0x80) put(b, "%c", cp);
    else put(b, "%c%c", 0xC0 | cp >> 6, 0x80 | (cp & 0x3F));
}

/* raw bytes -> their byte-level spelling, into b (JSON-escaped when json). */
static void put_spelled(Buf *b, const char *raw, size_t n, int json) {
    for (size_t i = 0; i < n; i++) {
        int cp = byte_cp((unsigned char)raw[i]);
        if (json && (cp == '"' || cp == '\\')) put(b, "\\");
        put_utf8(b, cp);
    }
}

static void put_json_string(Buf *b, const char *s) {
    put(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') put(b, "\\%c", c);
        else if (c < 0x20) put(b, "\\u%04x", c);
        else put(b, "%c", c);
    }
    put(b, "\"");
}

typedef struct {
    const char *const *merges;  /* raw-byte pairs: left, right, left, right, ..., NULL */
    const char *pre_tokenizer;  /* "deepseek", "gpt2", or a JSON object */
    const char *added;          /* JSON list of added tokens, or NULL */
    int merges_as_pairs;        /* write ["a", "b"] instead of "a b" */
} Spec;

static char *build_json(const Spec *sp) {
    Buf b = {0};
    int n_merges = 0;
    while (sp->merges && sp->merges[2 * n_merges]) n_merges++;
    put(&b, "{\"version\": \"1.0\", \"added_tokens\": %s, \"normalizer\": null,\n", sp->added ? sp->added : "[]");
    if (strcmp(sp->pre_tokenizer, "deepseek") == 0) {
        put(&b, "\"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [");
        for (int i = 0; i < 3; i++) {
            put(&b, "{\"type\": \"Split\", \"pattern\": {\"Regex\": ");
            put_json_string(&b, DS_SPLITS[i]);
            put(&b, "}, \"behavior\": \"Isolated\", \"invert\": false},\n");
        }
        put(&b, "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": false}]},\n");
    } else if (strcmp(sp->pre_tokenizer, "gpt2") == 0) {
        put(&b, "\"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true},\n");
    } else {
        put(&b, "\"pre_tokenizer\": %s,\n", sp->pre_tokenizer);
    }
    put(&b, "\"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"use_regex\": true},\n");
    put(&b, "\"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, \"vocab\": {");
    for (int i = 0; i < 256; i++) {
        char c = (char)i;
        put(&b, "%s\"", i ? ", " : "");
        put_spelled(&b, &c, 1, 1);
        put(&b, "\": %d", i);
    }
    for (int i = 0; i < n_merges; i++) {
        put(&b, ", \"");
        put_spelled(&b, sp->merges[2 * i], strlen(sp->merges[2 * i]), 1);
        put_spelled(&b, sp->merges[2 * i + 1], strlen(sp->merges[2 * i + 1]), 1);
        put(&b, "\": %d", 256 + i);
    }
    put(&b, "},\n\"merges\": [");
    for (int i = 0; i < n_merges; i++) { /* "left right", or ["left", "right"] as newer files have */
        put(&b, "%s%s\"", i ? ", " : "", sp->merges_as_pairs ? "[" : "");
        put_spelled(&b, sp->merges[2 * i], strlen(sp->merges[2 * i]), 1);
        put(&b, sp->merges_as_pairs ? "\", \"" : " ");
        put_spelled(&b, sp->merges[2 * i + 1], strlen(sp->merges[2 * i + 1]), 1);
        put(&b, "\"%s", sp->merges_as_pairs ? "]" : "");
    }
    put(&b, "]}}\n");
    return b.s;
}

/* Writes json into a fresh directory as tokenizer.json and loads it (the directory is removed). */
static Tokenizer *load_json_text(const char *json, Error *err) {
    char *dir = make_tmpdir(), path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    write_text(path, json);
    Tokenizer *t = NULL;
    int rc = tokenizer_load(&t, dir, err);
    rm_rf(dir);
    free(dir);
    return rc == 0 ? t : NULL;
}

static Tokenizer *load_spec(const Spec *sp) {
    Error err = {{0}};
    char *json = build_json(sp);
    Tokenizer *t = load_json_text(json, &err);
    free(json);
    if (!t) printf("load failed: %s\n", err.msg);
    assert_non_null(t);
    return t;
}

/* id of the token whose bytes are raw (spelled through the test's own byte map). */
static int tid(const Tokenizer *t, const char *raw) {
    Buf b = {0};
    put_spelled(&b, raw, strlen(raw), 0);
    int id = tokenizer_token_id(t, b.s);
    free(b.s);
    return id;
}

/* Encodes text [n bytes], checks decode gives it back, and compares with the tokens listed
 * (raw bytes each, NULL-terminated list); prints both sides on a mismatch. */
static void expect_tokens_n(const Tokenizer *t, const char *text, size_t n, const char *const *want) {
    Error err = {{0}};
    int *ids, n_ids, n_want = 0;
    assert_int_equal(tokenizer_encode(t, text, n, &ids, &n_ids, &err), 0);
    while (want[n_want]) n_want++;
    int same = n_ids == n_want;
    for (int i = 0; same && i < n_ids; i++) /* raw bytes, or an added token's text */
        same = ids[i] == tid(t, want[i]) || ids[i] == tokenizer_token_id(t, want[i]);
    if (!same) {
        printf("NOT OK encode \"%.*s\": got", (int)n, text);
        for (int i = 0; i < n_ids; i++) printf(" [%s]", tokenizer_piece(t, ids[i]));
        printf(", want");
        for (int i = 0; i < n_want; i++) printf(" [%s]", want[i]);
        printf("\n");
    }
    assert_true(same);
    char *back;
    size_t n_back;
    assert_int_equal(tokenizer_decode(t, ids, n_ids, &back, &n_back, &err), 0);
    assert_int_equal(n_back, n);
    assert_memory_equal(back, text, n);
    free(back);
    free(ids);
}
#define expect_tokens(t, text, ...) expect_tokens_n(t, text, strlen(text), (const char *const[]){__VA_ARGS__, NULL})

static void expect_round_trip(const Tokenizer *t, const char *text, size_t n) {
    Error err = {{0}};
    int *ids, n_ids;
    char *back;
    size_t n_back;
    assert_int_equal(tokenizer_encode(t, text, n, &ids, &n_ids, &err), 0);
    for (int i = 0; i < n_ids; i++) assert_true(ids[i] >= 0 && ids[i] < tokenizer_vocab_size(t));
    assert_int_equal(tokenizer_decode(t, ids, n_ids, &back, &n_back, &err), 0);
    assert_int_equal(n_back, n);
    assert_memory_equal(back, text, n);
    free(back);
    free(ids);
}

/* -------------------------------------------------------------------------------- unit tests */

static void test_byte_alphabet(void **state) {
    (void)state;
    Tokenizer *t = load_spec(&(Spec){.pre_tokenizer = "deepseek"});
    assert_int_equal(tokenizer_vocab_size(t), 256);
    assert_string_equal(tokenizer_piece(t, ' '), "Ġ");  /* U+0120 */
    assert_string_equal(tokenizer_piece(t, '\n'), "Ċ"); /* U+010A */
    assert_string_equal(tokenizer_piece(t, 0), "Ā");    /* U+0100 */
    assert_string_equal(tokenizer_piece(t, 0xAD), "Ń"); /* U+0143, the last of the 68 */
    assert_string_equal(tokenizer_piece(t, 'a'), "a");
    assert_string_equal(tokenizer_piece(t, 0xE9), "é");
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int *ids, n_ids;
        Error err = {{0}};
        assert_int_equal(tokenizer_encode(t, &c, 1, &ids, &n_ids, &err), 0);
        assert_int_equal(n_ids, 1);
        assert_int_equal(ids[0], b);
        size_t n;
        const char *bytes = tokenizer_token_bytes(t, b, &n);
        assert_int_equal(n, 1);
        assert_int_equal((unsigned char)bytes[0], b);
        free(ids);
    }
    size_t n;
    tokenizer_token_bytes(t, 9999, &n); /* ids past the vocabulary decode to nothing */
    assert_int_equal(n, 0);
    assert_null(tokenizer_piece(t, -1));
    tokenizer_free(t);
}

/* The worked example of tokenizer.c's header, and the order of merges. */
static void test_bpe_merges(void **state) {
    (void)state;
    const char *merges[] = {"l", "l", "h", "e", " ", "he", "ll", "o", " he", "llo", "b", "c", "a", "b", NULL};
    for (int pairs = 0; pairs < 2; pairs++) {
        Tokenizer *t = load_spec(&(Spec){.merges = merges, .pre_tokenizer = "deepseek", .merges_as_pairs = pairs});
        expect_tokens(t, " hello", " hello");
        expect_tokens(t, "hello", "he", "llo");
        expect_tokens(t, "hell", "he", "ll");
        expect_tokens(t, "lll", "ll", "l");     /* equal ranks: leftmost first */
        expect_tokens(t, "llll", "ll", "ll");
        expect_tokens(t, "abc", "a", "bc");     /* "b c" has the lower rank */
        expect_tokens(t, "ab", "ab");
        expect_tokens(t, "", NULL);
        tokenizer_free(t);
    }
}

/* DeepSeek-V3's three Split regexes: merges that would cross a piece boundary never apply. */
static void test_deepseek_split(void **state) {
    (void)state;
    const char *merges[] = {"1", "2", "12", "3", "4", "5", "45", "6", "3", "4", "a", "1", " ", "1", " ", " ",
                            " ", "b", "\r", "\n", "\r\n", "\r\n", "a", "\xe4", "#", "i", "#i", "n", ".", " ",
                            "\xe4", "\xb8", "\xe4\xb8", "\xad", "\xe4\xb8\xad", "\xe6", "H", "i", "2", "0", "20", "2",
                            " ", "2", "4", "!", NULL};
    Tokenizer *t = load_spec(&(Spec){.merges = merges, .pre_tokenizer = "deepseek"});
    expect_tokens(t, "Hi 2024!", "Hi", " ", "202", "4", "!"); /* tokenizer.c's worked example */
    expect_tokens(t, "123456", "123", "456");          /* digits in groups of 3 */
    expect_tokens(t, "1234567", "123", "456", "7");
    expect_tokens(t, "a1", "a", "1");                  /* letters and digits apart */
    expect_tokens(t, " 12", " ", "12");                /* the space does not join a number */
    expect_tokens(t, "a  b", "a", " ", " b");          /* \s+(?!\S) leaves the last space to the word */
    expect_tokens(t, "a\r\n\r\nb", "a", "\r\n\r\n", "b"); /* \s*[\r\n]+ is one piece */
    expect_tokens(t, "a中", "a", "\xe4\xb8\xad");       /* CJK runs are pieces of their own */
    expect_tokens(t, "中文", "\xe4\xb8\xad\xe6", "\x96", "\x87");
    expect_tokens(t, "#include", "#in", "c", "l", "u", "d", "e"); /* punctuation + ASCII letters */
    expect_tokens(t, "x. y", "x", ".", " ", "y");      /* " ?[\p{P}\p{S}]+" takes no space after */
    tokenizer_free(t);
}

/* A bare ByteLevel with use_regex true: GPT-2's regex. Also \s as Oniguruma reads it. */
static void test_gpt2_split(void **state) {
    (void)state;
    const char *merges[] = {" ", "w", " w", "o", "'", "s", "d", "'", " ", "4", " 4", "2", "\xe1", "\xa0",
                            "\xe1\xa0", "\x8e", "\xe1\xa0\x8e", "\xe1\xa0\x8e", "\xe1\xa0\x8e\xe1\xa0\x8e", "!",
                            "\xc2", "\x85", "\xc2\x85", "\xc2\x85", NULL};
    Tokenizer *t = load_spec(&(Spec){.merges = merges, .pre_tokenizer = "gpt2"});
    expect_tokens(t, "wod's 42", "w", "o", "d", "'s", " 42");
    expect_tokens(t, " wo", " wo");
    /* U+180E is not \s for Oniguruma (PCRE2 with UCP says it is): one piece of punctuation */
    expect_tokens(t, "\xe1\xa0\x8e\xe1\xa0\x8e!", "\xe1\xa0\x8e\xe1\xa0\x8e!");
    /* U+0085 (NEL) is \s for both: "a", NEL, NEL, "b" as \s+(?!\S) leaves one */
    expect_tokens(t, "a\xc2\x85\xc2\x85" "b", "a", "\xc2\x85", "\xc2\x85", "b");
    tokenizer_free(t);
}

static const char *ADDED =
    "[{\"id\": 1000, \"content\": \"<｜begin▁of▁sentence｜>\", \"single_word\": false, \"lstrip\": false, "
    "\"rstrip\": false, \"normalized\": false, \"special\": true},"
    " {\"id\": 1001, \"content\": \"<｜end▁of▁sentence｜>\", \"normalized\": false, \"special\": true},"
    " {\"id\": 1002, \"content\": \"<｜User｜>\", \"normalized\": false, \"special\": true},"
    " {\"id\": 1003, \"content\": \"<a>\", \"normalized\": false, \"special\": true},"
    " {\"id\": 1004, \"content\": \"<a><b>\", \"normalized\": false, \"special\": true},"
    " {\"id\": 1005, \"content\": \"bcd\", \"normalized\": false, \"special\": false},"
    " {\"id\": 1006, \"content\": \"ab\", \"normalized\": true, \"special\": false}]";

static void test_added_tokens(void **state) {
    (void)state;
    const char *merges[] = {"h", "i", "a", "b", "c", "d", "x", "y", NULL};
    Tokenizer *t = load_spec(&(Spec){.merges = merges, .pre_tokenizer = "deepseek", .added = ADDED});
    assert_int_equal(tokenizer_vocab_size(t), 1007);
    assert_int_equal(tokenizer_bos_id(t), 1000);
    assert_int_equal(tokenizer_eos_id(t), 1001);
    assert_int_equal(tokenizer_token_id(t, "<｜User｜>"), 1002);
    assert_int_equal(tokenizer_token_id(t, "no such token"), -1);
    assert_true(tokenizer_is_special(t, 1002));
    assert_false(tokenizer_is_special(t, 1006));
    assert_null(tokenizer_piece(t, 500)); /* ids 260..999 are a gap */
    char *back;
    size_t n_back;
    Error err = {{0}};
    assert_int_equal(tokenizer_decode(t, (int[]){500}, 1, &back, &n_back, &err), -1);
    assert_false(tokenizer_is_special(t, 'a'));
    expect_tokens(t, "<｜begin▁of▁sentence｜><｜User｜>hi<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>", "<｜User｜>",
                  "hi", "<｜end▁of▁sentence｜>");
    expect_tokens(t, "x<a><b>y", "x", "<a><b>", "y");     /* the longest match wins */
    expect_tokens(t, "x<a>y", "x", "<a>", "y");
    expect_tokens(t, "<a><a><b>", "<a>", "<a><b>");
    expect_tokens(t, "<｜User", "<", "\xef", "\xbd", "\x9c", "U", "s", "e", "r"); /* half a special token is text */
    expect_tokens(t, "abcd", "a", "bcd");                /* "normalized": false ones match first */
    expect_tokens(t, "abab", "ab", "ab");
    expect_tokens(t, " <a> ", " ", "<a>", " ");
    tokenizer_free(t);
}

/* Any byte string, valid UTF-8 or not, comes back from decode(encode(s)). */
static void test_invalid_utf8_round_trip(void **state) {
    (void)state;
    const char *merges[] = {"\xe4", "\xb8", "a", "b", " ", "a", "\xff", "\xfe", "1", "2", NULL};
    Tokenizer *t = load_spec(&(Spec){.merges = merges, .pre_tokenizer = "deepseek", .added = ADDED});
    expect_tokens(t, "\xe4\xb8", "\xe4\xb8");                 /* a cut-off character: one piece */
    expect_tokens(t, "ab\xff\xfe" "ab", "ab", "\xff\xfe", "ab"); /* invalid bytes are a piece of their own */
    expect_tokens(t, "\xc0\xaf", "\xc0", "\xaf");             /* an overlong '/' is not UTF-8 */
    int *ids, n_ids;
    Error err = {{0}};
    assert_int_equal(tokenizer_encode(t, "a\0b", 3, &ids, &n_ids, &err), 0); /* NUL is a byte like any */
    assert_int_equal(n_ids, 3);
    assert_int_equal(ids[1], 0);
    free(ids);
    expect_round_trip(t, "a\0b", 3);
    const char *pool[] = {"a", "b", " ", "1", "2", "\n", "\r\n", "\t", "中", "😀", "é", "\xcc\x81", "<a>",
                          "<｜User｜>", "\xe4", "\xb8", "\xff", "\xc0", "\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "!",
                          "'s", "\0"};
    const int n_pool = (int)(sizeof pool / sizeof *pool);
    Rng rng; /* testutil.h: ops.h's generator */
    rng_seed(&rng, 12345);
    char buf[512];
    for (int iter = 0; iter < 2000; iter++) {
        size_t n = 0;
        int parts = iter % 40;
        for (int p = 0; p < parts; p++) {
            uint32_t r = (uint32_t)rng_next(&rng);
            int which = (int)(r >> 16) % (n_pool + 1);
            if (which == n_pool) buf[n++] = (char)(r >> 8); /* any byte at all */
            else {
                size_t len = which == n_pool - 1 ? 1 : strlen(pool[which]);
                memcpy(buf + n, pool[which], len), n += len;
            }
        }
        expect_round_trip(t, buf, n);
    }
    printf("OK     2000 random byte strings round-trip\n");
    tokenizer_free(t);
}

static void test_stream(void **state) {
    (void)state;
    TokenizerStream s = {0};
    char out[64];
    /* "a€😀" arriving in awkward pieces: € = e2 82 ac, 😀 = f0 9f 98 80 */
    assert_int_equal(tokenizer_stream_push(&s, out, "a\xe2", 2), 1);
    assert_memory_equal(out, "a", 1);
    assert_int_equal(tokenizer_stream_push(&s, out, "\x82", 1), 0);
    assert_int_equal(tokenizer_stream_push(&s, out, "\xac\xf0\x9f", 3), 3);
    assert_memory_equal(out, "\xe2\x82\xac", 3);
    assert_int_equal(tokenizer_stream_push(&s, out, "\x98", 1), 0);
    assert_int_equal(tokenizer_stream_push(&s, out, "\x80", 1), 4);
    assert_memory_equal(out, "😀", 4);
    /* bytes that can never become a character go out at once */
    assert_int_equal(tokenizer_stream_push(&s, out, "\xff", 1), 1);
    assert_int_equal(tokenizer_stream_push(&s, out, "\xe2", 1), 0);
    assert_int_equal(tokenizer_stream_push(&s, out, "x", 1), 2);
    assert_memory_equal(out, "\xe2x", 2);
    assert_int_equal(tokenizer_stream_push(&s, out, "\xed\xa0", 2), 2); /* a surrogate start: invalid */
    assert_int_equal(tokenizer_stream_push(&s, out, "\xf0\x9f", 2), 0);
    assert_int_equal(tokenizer_stream_flush(&s, out), 2);                /* the end: what is held */
    assert_memory_equal(out, "\xf0\x9f", 2);
    assert_int_equal(tokenizer_stream_flush(&s, out), 0);
}

/* A directory with tokenizer_config.json: bos/eos from there (a string or {"content": ...}). */
static void test_config(void **state) {
    (void)state;
    const char *merges[] = {"<", "s", "<s", ">", "<", "/", "</", "s", "</s", ">", NULL};
    char *json = build_json(&(Spec){.merges = merges, .pre_tokenizer = "deepseek"});
    char *dir = make_tmpdir(), path[600];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    write_text(path, json);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    write_text(path, "{\"bos_token\": {\"__type\": \"AddedToken\", \"content\": \"<s>\"}, \"eos_token\": \"</s>\"}");
    Tokenizer *t = NULL;
    Error err = {{0}};
    assert_int_equal(tokenizer_load(&t, dir, &err), 0);
    assert_int_equal(tokenizer_bos_id(t), tokenizer_token_id(t, "<s>"));
    assert_int_equal(tokenizer_eos_id(t), tokenizer_token_id(t, "</s>"));
    assert_true(tokenizer_bos_id(t) >= 256);
    tokenizer_free(t);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir); /* a file path works too */
    assert_int_equal(tokenizer_load(&t, path, &err), 0);
    assert_int_equal(tokenizer_eos_id(t), tokenizer_token_id(t, "</s>"));
    tokenizer_free(t);
    rm_rf(dir);
    free(dir);
    free(json);
}

/* Less common forms: a Split on a literal String, an empty normalizer Sequence, ignore_merges. */
static void test_other_forms(void **state) {
    (void)state;
    const char *fmt = "{\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": []}, \"model\": {\"type\": \"BPE\", "
                      "\"ignore_merges\": %s, \"vocab\": {\"a\": 0, \"b\": 1, \".\": 2, \"x\": 3, \"y\": 4, \"z\": 5, "
                      "\"xy\": 6, \"xyz\": 7}, \"merges\": [[\"x\", \"y\"]]}, \"pre_tokenizer\": {\"type\": \"Sequence\", "
                      "\"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"String\": \".\"}, \"behavior\": "
                      "\"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
                      "\"use_regex\": false}]}}";
    for (int ignore = 0; ignore < 2; ignore++) {
        char json[1024];
        Error err = {{0}};
        snprintf(json, sizeof json, fmt, ignore ? "true" : "false");
        Tokenizer *t = load_json_text(json, &err);
        if (!t) printf("load failed: %s\n", err.msg);
        assert_non_null(t);
        /* pieces "xyz" "." "xyzz" ("." is a literal, not "any character"); with ignore_merges a
         * piece that is a token ("xyz") is taken whole, else BPE gives xy z */
        if (ignore) expect_tokens(t, "xyz.xyzz", "xyz", ".", "xy", "z", "z");
        else expect_tokens(t, "xyz.xyzz", "xy", "z", ".", "xy", "z", "z");
        tokenizer_free(t);
    }
}

/* Each broken file fails with one line that names the file or field. */
static void expect_load_error(const char *json, const char *must_mention) {
    Error err = {{0}};
    Tokenizer *t = load_json_text(json, &err);
    printf("error: %s\n", err.msg);
    assert_null(t);
    assert_non_null(strstr(err.msg, must_mention));
    assert_null(strchr(err.msg, '\n'));
}

#define A_MODEL "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}" /* a valid model */

static void test_errors(void **state) {
    (void)state;
    Error err = {{0}};
    Tokenizer *t = (Tokenizer *)1;
    assert_int_equal(tokenizer_load(&t, "/nonexistent/tokenizer.json", &err), -1);
    printf("error: %s\n", err.msg);
    assert_null(t);
    assert_non_null(strstr(err.msg, "/nonexistent/tokenizer.json"));
    expect_load_error("{\"model\": {\"type\": \"BPE\", ", "not valid JSON");
    expect_load_error("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "model.type");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"merges\": []}}", "model.vocab");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}", "model.merges");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []}}", "model.vocab");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
                      "\"ab\" is not in model.vocab");
    expect_load_error("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"ab\"]}}", "model.merges[0]");
    expect_load_error("{" A_MODEL "}", "pre_tokenizer");
    expect_load_error("{" A_MODEL ", \"pre_tokenizer\": {\"type\": \"Whitespace\"}}", "Whitespace");
    expect_load_error("{" A_MODEL ", \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(a\"}, "
                      "\"behavior\": \"Isolated\"}}", "regex /(a/");
    expect_load_error("{" A_MODEL ", \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, "
                      "\"behavior\": \"Removed\"}}", "behavior");
    expect_load_error("{" A_MODEL ", \"normalizer\": {\"type\": \"NFC\"}}", "normalizer");
    expect_load_error("{" A_MODEL ", \"added_tokens\": [{\"id\": 1, \"content\": \"<m>\", \"lstrip\": true}]}", "lstrip");
    /* a byte with no token cannot be encoded: an error, not a silent drop */
    t = load_json_text("{" A_MODEL ", \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false}}", &err);
    assert_non_null(t);
    int *ids, n_ids;
    assert_int_equal(tokenizer_encode(t, "ab", 2, &ids, &n_ids, &err), -1);
    printf("error: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "0x62"));
    char *back;
    size_t n_back;
    assert_int_equal(tokenizer_decode(t, (int[]){0, 5}, 2, &back, &n_back, &err), -1);
    printf("error: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "id 5"));
    tokenizer_free(t);
}

/* --------------------------------------------------------------------- against HF tokenizers */

static char *hex_decode(const char *hex, size_t *n) {
    size_t len = strlen(hex) / 2;
    char *out = malloc(len + 1);
    for (size_t i = 0; i < len; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (char)v;
    }
    *n = len;
    return out;
}

/* Every case of dir/cases.json: ids equal to HF's, decode(encode(s)) == s; raw-byte cases
 * (not valid UTF-8, so HF cannot take them) round-trip only. Then the encode speed. */
static void check_fixture(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/cases.json", dir);
    char *text = slurp(path, NULL);
    if (!text) {
        printf("SKIP   %s/cases.json is absent: run tests/fixtures/make_tokenizer_fixtures.py\n", dir);
        return;
    }
    Tokenizer *t = NULL;
    Error err = {{0}};
    if (tokenizer_load(&t, dir, &err)) printf("load failed: %s\n", err.msg);
    assert_non_null(t);
    cJSON *root = cJSON_Parse(text);
    assert_non_null(root);
    const cJSON *c;
    int n_cases = 0, n_raw = 0, n_bad = 0;
    Buf all = {0};
    cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
        size_t n;
        char *s = hex_decode(cJSON_GetObjectItem(c, "hex")->valuestring, &n);
        const cJSON *want = cJSON_GetObjectItem(c, "ids");
        int *ids, n_ids;
        assert_int_equal(tokenizer_encode(t, s, n, &ids, &n_ids, &err), 0);
        if (cJSON_IsArray(want)) {
            int ok = n_ids == cJSON_GetArraySize(want), i = 0;
            const cJSON *w;
            cJSON_ArrayForEach(w, want) ok = ok && i < n_ids && ids[i++] == w->valueint;
            if (!ok && n_bad++ < 10) {
                printf("NOT OK case %d \"%s\":\n  got ", n_cases, cJSON_GetObjectItem(c, "text")->valuestring);
                for (i = 0; i < n_ids; i++) printf(" %d[%s]", ids[i], tokenizer_piece(t, ids[i]));
                printf("\n  want");
                cJSON_ArrayForEach(w, want) printf(" %d[%s]", w->valueint, tokenizer_piece(t, w->valueint));
                printf("\n");
            }
            n_cases++;
            put(&all, "%.*s", (int)n, s);
        } else {
            n_raw++;
        }
        char *back;
        size_t n_back;
        assert_int_equal(tokenizer_decode(t, ids, n_ids, &back, &n_back, &err), 0);
        if (n_back != n || memcmp(back, s, n) != 0) {
            printf("NOT OK round trip of case %d\n", n_cases + n_raw);
            n_bad++;
        }
        free(back), free(ids), free(s);
    }
    const cJSON *bos = cJSON_GetObjectItem(root, "bos_id"), *eos = cJSON_GetObjectItem(root, "eos_id");
    if (bos) assert_int_equal(tokenizer_bos_id(t), bos->valueint);
    if (eos) assert_int_equal(tokenizer_eos_id(t), eos->valueint);
    printf("%s %s: %d cases with HF's ids, %d raw-byte round trips, %d wrong\n", n_bad ? "NOT OK" : "OK    ", dir,
           n_cases, n_raw, n_bad);
    assert_int_equal(n_bad, 0);

    /* speed: about 1 MB made of the cases (prose, code, CJK, emoji, digits...) */
    Buf mb = {0};
    while (mb.n < (1u << 20) && all.n > 0) put(&mb, "%.*s", (int)all.n, all.s);
    int *ids, n_ids;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(tokenizer_encode(t, mb.s, mb.n, &ids, &n_ids, &err), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("speed  encode %.2f MB in %.3f s: %.1f MB/s, %d tokens\n", (double)mb.n / 1e6, sec,
           (double)mb.n / 1e6 / sec, n_ids);
    free(ids), free(mb.s), free(all.s), free(text);
    cJSON_Delete(root);
    tokenizer_free(t);
}

static void test_hf_fixture(void **state) {
    (void)state;
    check_fixture(FIXTURES "/tokenizer");           /* DeepSeek-V3's pre_tokenizer */
    check_fixture(FIXTURES "/tokenizer/gpt2_style"); /* ByteLevel with GPT-2's regex */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_alphabet),
        cmocka_unit_test(test_bpe_merges),
        cmocka_unit_test(test_deepseek_split),
        cmocka_unit_test(test_gpt2_split),
        cmocka_unit_test(test_added_tokens),
        cmocka_unit_test(test_invalid_utf8_round_trip),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_other_forms),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_hf_fixture),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
