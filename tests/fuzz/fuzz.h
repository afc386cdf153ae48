/* fuzz.h - what every libFuzzer target (tests/fuzz/fuzz_*.c) shares: a private scratch directory
 * for inputs the code under test reads by path, and the rule for a refused input: a message of
 * exactly one line. A target aborts (libFuzzer saves the input as crash-*) when the rule breaks.
 *
 * Build and run: make fuzz (clang -fsanitize=fuzzer,address,undefined), see notes/robustness.md. */
#ifndef FUZZ_H
#define FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One directory per fuzzing process, made on first use under $TMPDIR (or /tmp). */
static inline const char *fuzz_dir(void) {
    static char dir[512];
    if (!dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/dsv3-fuzz-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(dir)) { perror("mkdtemp"); abort(); }
    }
    return dir;
}

/* Writes data [n] to fuzz_dir()/name; returns the path (a static buffer per call site is enough:
 * each target writes at most a few files per input). */
static inline void fuzz_write(char *path, size_t cap, const char *name, const void *data, size_t n) {
    snprintf(path, cap, "%s/%s", fuzz_dir(), name);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) { perror(path); abort(); }
}

/* A refused input must say why, on one line. */
static inline void fuzz_check_msg(const Error *e, const char *what) {
    if (!e->msg[0]) { fprintf(stderr, "%s failed without a message\n", what); abort(); }
    if (strchr(e->msg, '\n')) { fprintf(stderr, "%s: a message of more than one line: %s\n", what, e->msg); abort(); }
}

/* The input as a NUL-terminated string (malloc'd; the caller frees). */
static inline char *fuzz_cstr(const uint8_t *data, size_t n) {
    char *s = malloc(n + 1);
    if (!s) abort();
    memcpy(s, data, n);
    s[n] = 0;
    return s;
}

#endif
