/* fuzz_golden.c - `run golden --verify` on a mutated golden file, in-process (golden_main, as run.c
 * calls it): the file's metadata (config, shapes, functions, seed) decides what is re-run and how
 * large every buffer is, so a hostile file must be refused before anything is allocated from it.
 * Verify prints a line per function; run it with -close_fd_mask=3. Seeds: small golden files
 * written by ./run golden (tests/fuzz/seeds.sh). */
#include "fuzz.h"
#include "golden.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[600];
    fuzz_write(path, sizeof path, "g.safetensors", data, size);
    char *argv[] = {"--verify", path, NULL};
    int rc = golden_main(2, argv);
    if (rc != 0 && rc != 1) abort(); /* 2 would be a usage error: not the file's fault */
    return 0;
}
