/* fuzz_tokenizer_json.c - tokenizer_load on an arbitrary tokenizer.json (vocabulary, merges, added
 * tokens, the pre-tokenizer's Split regexes), then encode and decode of a fixed text that meets
 * every path (ASCII, digits, CJK, a stray byte, an added token). Seed: the fixture tokenizer and
 * the bundled model's (tests/fuzz/seeds.sh). */
#include "fuzz.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[600];
    fuzz_write(path, sizeof path, "tokenizer.json", data, size);
    Tokenizer *t;
    Error e = {{0}};
    if (tokenizer_load(&t, path, &e)) {
        fuzz_check_msg(&e, "tokenizer_load");
        return 0;
    }
    static const char text[] = "In the beginning, 1234 \xe4\xb8\xad\xe6\x96\x87 \xff<\xef\xbd\x9cUser\xef\xbd\x9c>  x\n";
    int *ids, n;
    if (tokenizer_encode(t, text, sizeof text - 1, &ids, &n, &e) == 0) {
        char *back;
        size_t nb;
        if (tokenizer_decode(t, ids, n, &back, &nb, &e) == 0) free(back);
        else fuzz_check_msg(&e, "tokenizer_decode");
        free(ids);
    } else {
        fuzz_check_msg(&e, "tokenizer_encode");
    }
    for (int id = -1; id <= tokenizer_vocab_size(t); id++) {
        size_t nb;
        tokenizer_token_bytes(t, id, &nb);
        tokenizer_piece(t, id);
        tokenizer_is_special(t, id);
    }
    tokenizer_free(t);
    return 0;
}
