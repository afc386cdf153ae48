/* fuzz_encode.c - encode on arbitrary bytes with the bundled model's tokenizer (DeepSeek-V3's
 * pre-tokenizer and byte-level BPE): it must succeed, and decode(encode(s)) must give s back byte
 * for byte (tokenizer.h's promise for any byte string, UTF-8 or not). The stream printer must give
 * the same bytes in the same order. Seeds: the tokenizer fixture's case texts (tests/fuzz/seeds.sh). */
#include "fuzz.h"
#include "tokenizer.h"

static Tokenizer *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    Error e = {{0}};
    if (!tok && tokenizer_load(&tok, getenv("DSV3_FUZZ_TOKENIZER") ? getenv("DSV3_FUZZ_TOKENIZER") : "models/kjv-v3", &e)) {
        fprintf(stderr, "fuzz_encode: %s (run from the repository root)\n", e.msg);
        abort();
    }
    int *ids, n;
    if (tokenizer_encode(tok, (const char *)data, size, &ids, &n, &e)) {
        fprintf(stderr, "encode failed: %s\n", e.msg);
        abort();
    }
    char *back;
    size_t nb;
    if (tokenizer_decode(tok, ids, n, &back, &nb, &e)) {
        fprintf(stderr, "decode failed: %s\n", e.msg);
        abort();
    }
    if (nb != size || memcmp(back, data, size)) {
        fprintf(stderr, "decode(encode(s)) != s: %zu bytes in, %zu out\n", size, nb);
        abort();
    }
    /* the streaming printer: the same bytes, in order */
    TokenizerStream s = {0};
    char out[64];
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *b = tokenizer_token_bytes(tok, ids[i], &len);
        for (size_t j = 0; j < len; j += 32) {
            size_t m = len - j < 32 ? len - j : 32, w = tokenizer_stream_push(&s, out, b + j, m);
            if (k + w > size || memcmp(out, data + k, w)) abort();
            k += w;
        }
    }
    size_t w = tokenizer_stream_flush(&s, out);
    if (k + w != size || memcmp(out, data + k, w)) abort();
    free(back);
    free(ids);
    return 0;
}
