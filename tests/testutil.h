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

#define FIXTURES "tests/fixtures"

/* max_i |a_i - b_i| / max_i |b_i|: the "relative error" every numerics test reports. */
static inline double rel_err(const float *a, const float *b, size_t n) {
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > maxdiff || isnan(d)) maxdiff = isnan(d) ? INFINITY : d;
        if (fabs((double)b[i]) > maxref) maxref = fabs((double)b[i]);
    }
    return maxref > 0 ? maxdiff / maxref : maxdiff;
}

/* Prints "OK   what: rel err 3.1e-07 (tol 1e-04)" or NOT OK, then fails the test if over. */
static inline void check_close(const char *what, const float *got, const float *want, size_t n, double tol) {
    double err = rel_err(got, want, n);
    printf("%s %s: rel err %.3g (tol %.0e)\n", err <= tol ? "OK    " : "NOT OK", what, err, tol);
    assert_true(err <= tol);
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

#endif
