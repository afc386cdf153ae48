/* fuzz_config.c - config_parse on arbitrary text, then what the commands do first with a config:
 * the parameter counts, the summary, the RoPE table, the cache size. A parsed config must be one
 * the rest of the program can size without overflow (the limits in config.c). Seeds: every
 * config.json under tests/fixtures and models. */
#include "fuzz.h"
#include "model.h"
#include "rope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fuzz_cstr(data, size);
    Config c;
    Error e = {{0}};
    if (config_parse(&c, text, "fuzz.json", &e)) {
        fuzz_check_msg(&e, "config_parse");
        free(text);
        return 0;
    }
    free(text);
    double total, active, mtp;
    config_param_counts(&c, &total, &active, &mtp);
    FILE *null = fopen("/dev/null", "w");
    if (null) config_print(null, &c), fclose(null);
    float *inv = malloc(sizeof(float) * (size_t)c.qk_rope_head_dim / 2 + 1);
    if (!inv) abort();
    rope_inv_freq(inv, &c.rope, c.qk_rope_head_dim);
    free(inv);
    return 0;
}
