/* fuzz_chat_template.c - an arbitrary tokenizer_config.json beside the bundled model's
 * tokenizer.json: tokenizer_load reads its bos_token / eos_token, chat_format_detect its
 * chat_template (a string, or a list of {name, template}); a recognized format then renders a
 * prompt and a three-turn conversation, which must encode. Seeds: the fixture and model
 * tokenizer_config.json files and DeepSeek's templates from tests/fixtures/chat (seeds.sh). */
#include "fuzz.h"
#include "generate.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[600], tj[600];
    snprintf(tj, sizeof tj, "%s/tokenizer.json", fuzz_dir());
    if (access(tj, F_OK) != 0) { /* once per process: the real tokenizer.json, linked in */
        const char *src = getenv("DSV3_FUZZ_TOKENIZER") ? getenv("DSV3_FUZZ_TOKENIZER") : "models/kjv-v3";
        char real[4096], abs[4200];
        if (!realpath(src, real)) { perror(src); abort(); }
        snprintf(abs, sizeof abs, "%s/tokenizer.json", real);
        if (symlink(abs, tj)) { perror(tj); abort(); }
    }
    fuzz_write(path, sizeof path, "tokenizer_config.json", data, size);
    Tokenizer *t;
    Error e = {{0}};
    if (tokenizer_load(&t, fuzz_dir(), &e)) {
        fuzz_check_msg(&e, "tokenizer_load");
        return 0;
    }
    ChatFormat f;
    if (chat_format_detect(&f, fuzz_dir(), t, &e) == 0) {
        const char *turns[3] = {"Hello", "Hi. </think>How may I help?", "Say \"x\"\n"};
        char *p = prompt_render(1, f, t, "sys", "user text");
        char *c = chat_render(f, t, NULL, turns, 3);
        if (!p || !c) abort();
        int *ids, n;
        if (tokenizer_encode(t, c, strlen(c), &ids, &n, &e)) abort();
        free(ids);
        free(p);
        free(c);
    } else {
        fuzz_check_msg(&e, "chat_format_detect");
    }
    tokenizer_free(t);
    return 0;
}
