/* rel_err.h - the "relative error" every numerics check reports: max_i |a_i - b_i| / max_i |b_i|
 * (a NaN difference counts as infinite). Plain C, no cmocka: testutil.h and the device checks
 * (tests/device_forward.c, tests/test_forward_twins.cu) share it. */
#ifndef REL_ERR_H
#define REL_ERR_H

#include <math.h>
#include <stddef.h>

/* a [n] against the reference b [n]. */
static inline double rel_err(const float *a, const float *b, size_t n) {
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > maxdiff || isnan(d)) maxdiff = isnan(d) ? INFINITY : d;
        if (fabs((double)b[i]) > maxref) maxref = fabs((double)b[i]);
    }
    return maxref > 0 ? maxdiff / maxref : maxdiff;
}

#endif
