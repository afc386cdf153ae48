/* testutil.h - shared bits of the cmocka tests. Tests run from the repository root. */
#ifndef TESTUTIL_H
#define TESTUTIL_H

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sys/wait.h>

#include "model.h"
#include "ops.h"
#include "rel_err.h" /* rel_err(a, b, n): max |a - b| / max |b| */
#include "safetensors.h"

#define FIXTURES "tests/fixtures"

/* Random test data comes from ops.h's generator, the codebase's one: Rng (xorshift64*, seeded
 * through splitmix64), rng_uniform, rng_normal (Box-Muller). Seeded, so every machine draws the
 * same numbers. These two only shape its draws. */
static inline float test_uniform(Rng *r) { return rng_uniform(r) * 2.0f - 1.0f; } /* [-1, 1) */
/* p [n] uniform on [-scale, scale), malloc'ed (the caller frees). */
static inline float *test_rand_buf(Rng *r, size_t n, float scale) {
    float *p = malloc(sizeof(float) * (n ? n : 1));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) p[i] = test_uniform(r) * scale;
    return p;
}

/* Prints "OK   what: rel err 3.1e-07 (tol 1e-04)" or NOT OK, then fails the test if over. */
static inline void check_close(const char *what, const float *got, const float *want, size_t n, double tol) {
    double err = rel_err(got, want, n);
    printf("%s %s: rel err %.3g (tol %.0e)\n", err <= tol ? "OK    " : "NOT OK", what, err, tol);
    assert_true(err <= tol);
}

/* The whole file at path, NUL-terminated (ops.h's read_file; the caller frees), its size in *n
 * when n is not NULL; NULL when it cannot be read. */
static inline char *slurp(const char *path, size_t *n) {
    Error e;
    return read_file(path, n, &e);
}

/* A fixture's expected.safetensors (tests/fixtures/make_fixtures.py, HF transformers): the prompt
 * [T] ids, HF's greedy continuation [n_greedy] ids and HF's logits [T, V] of the prompt. */
typedef struct {
    StFile f;
    int T, V, n_greedy;
    int *prompt, *greedy;
    float *logits; /* [T, V] */
} Expected;

static inline int *expected_ids(const StTensor *t) {
    int *ids = malloc(sizeof(int) * (size_t)(t->numel ? t->numel : 1));
    for (int64_t i = 0; i < t->numel; i++) ids[i] = (int)dtype_load_f32(t->dtype, t->data, i);
    return ids;
}
/* Opens fixture name's expected.safetensors into f (the caller st_closes it). */
static inline void expected_open(StFile *f, const char *name) {
    char path[512];
    Error e;
    snprintf(path, sizeof path, FIXTURES "/%s/expected.safetensors", name);
    if (st_open(f, path, &e)) fail_msg("%s", e.msg);
}
/* Loads fixture name's checkpoint into m and opens its expected.safetensors into f. */
static inline void fixture_open(Model *m, StFile *f, const char *name) {
    char dir[512];
    Error e;
    snprintf(dir, sizeof dir, FIXTURES "/%s", name);
    if (model_load(m, dir, &e)) fail_msg("%s", e.msg);
    expected_open(f, name);
}
static inline void expected_load(Expected *x, const char *name) {
    expected_open(&x->f, name);
    const StTensor *p = st_find(&x->f, "prompt"), *g = st_find(&x->f, "greedy"), *l = st_find(&x->f, "logits");
    assert_non_null(p); assert_non_null(g); assert_non_null(l);
    x->T = (int)p->numel;
    x->n_greedy = (int)g->numel;
    x->V = (int)l->shape[1];
    x->prompt = expected_ids(p);
    x->greedy = expected_ids(g);
    x->logits = st_to_f32(l);
}
/* Loads fixture name's checkpoint into m and its expected outputs into x. */
static inline void fixture_load(Model *m, Expected *x, const char *name) {
    char dir[512];
    Error e;
    expected_load(x, name);
    snprintf(dir, sizeof dir, FIXTURES "/%s", name);
    if (model_load(m, dir, &e)) fail_msg("%s", e.msg);
}
static inline void expected_free(Expected *x) {
    free(x->prompt); free(x->greedy); free(x->logits);
    st_close(&x->f);
}

/* A fresh temporary directory (mkdtemp) under /tmp; the caller removes it with rm_rf. */
static inline char *make_tmpdir(void) {
    char *p = strdup("/tmp/dsv3test.XXXXXX");
    assert_non_null(mkdtemp(p));
    return p;
}
static inline void rm_rf(const char *dir) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}
static inline void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* Runs a shell command; returns its exit status and what it printed on stdout in *out (malloc'd,
 * the caller frees). Without a "2>" of its own, stderr is captured too. */
static inline int sh(const char *cmd, char **out) {
    char full[4096];
    snprintf(full, sizeof full, strstr(cmd, "2>") ? "%s" : "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    assert_non_null(p);
    size_t cap = 4096, n = 0, got;
    char *buf = malloc(cap);
    while ((got = fread(buf + n, 1, cap - n - 1, p)) > 0)
        if ((n += got) + 1 == cap) buf = realloc(buf, cap *= 2);
    buf[n] = 0;
    int status = pclose(p);
    *out = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Files a and b hold the same bytes. */
static inline void assert_files_equal(const char *a, const char *b) {
    size_t na, nb;
    Error e;
    char *x = read_file(a, &na, &e), *y = read_file(b, &nb, &e);
    if (!x || !y) fail_msg("%s", e.msg);
    assert_int_equal(na, nb);
    assert_memory_equal(x, y, na);
    free(x);
    free(y);
}

/* Runs cmd; its exit status must be status and its output (stdout and stderr) contain needle. */
static inline void expect_run(const char *cmd, int status, const char *needle) {
    char *out;
    int rc = sh(cmd, &out);
    printf("$ %.200s\n%s", cmd, out);
    assert_int_equal(rc, status);
    assert_non_null(strstr(out, needle));
    free(out);
}

/* The same into a fixed buffer (truncated to cap). */
static inline int sh_buf(const char *cmd, char *buf, size_t cap) {
    char *out;
    int rc = sh(cmd, &out);
    snprintf(buf, cap, "%s", out);
    free(out);
    return rc;
}

#endif
