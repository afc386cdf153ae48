/* exhaustive_fp8.c - every one of the 2^32 float bit patterns, encoded to E4M3 and to E5M2 under
 * both overflow policies by fp8.c, against a second formulation written here from the definition:
 *
 *   1. list the non-negative finite values of the format, in code order (which is value order),
 *      plus the value the next code would have if it were finite (E4M3: 480, E5M2: 65536);
 *   2. for |x|, binary-search the last listed value <= |x|; pick the nearer of it and the next one,
 *      on a tie the one with the even code (mantissa ending in 0), comparing 2|x| with lo + hi in
 *      FP64 (exact);
 *   3. landing on the extra value, or beyond it, or |x| = inf, is an overflow: max (FP8_SATURATE)
 *      or E4M3 NaN / E5M2 inf (FP8_TORCH); NaN is sign | 0x7F; the sign is then put back.
 *
 * It shares no code with fp8.c's encoder (which works on the float's bits). The 2^31 magnitudes are
 * split across the machine's cores; each magnitude is checked with both signs and both policies.
 * Not part of `make test` (a minute or two on two cores): `make test-exhaustive`. */
#include "testutil.h"

#include "fp8.h"

#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    const char *name;
    int man_bits, bias, max_code;   /* max_code: the largest finite non-negative code */
    uint8_t overflow_torch;         /* what PyTorch gives on overflow: E4M3 NaN, E5M2 inf */
    uint8_t (*encode)(float, Fp8Overflow);
    float (*decode)(uint8_t);
    double value[130];              /* value[c], c = 0..max_code + 1 (the last one virtual) */
} Format;

/* The value of code c from the definition: E = 0: m/2^M * 2^(1-bias), else (1 + m/2^M) * 2^(E-bias). */
static void format_table(Format *f) {
    for (int c = 0; c <= f->max_code + 1; c++) {
        int E = c >> f->man_bits, m = c & ((1 << f->man_bits) - 1);
        double frac = (double)m / (1 << f->man_bits);
        f->value[c] = E == 0 ? ldexp(frac, 1 - f->bias) : ldexp(1 + frac, E - f->bias);
    }
}

/* Reference magnitude code of a >= 0 (not NaN); max_code + 1 means overflow. */
static int reference_code(const Format *f, float a) {
    int n = f->max_code + 1;                /* index of the virtual value */
    if (isinf(a) || a >= f->value[n]) return n;
    int lo = 0, hi = n;                     /* value[lo] <= a < value[hi] */
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (f->value[mid] <= a) lo = mid; else hi = mid;
    }
    double twice = 2.0 * a, mid = f->value[lo] + f->value[hi];
    if (twice < mid) return lo;
    if (twice > mid) return hi;
    return lo % 2 == 0 ? lo : hi;           /* tie: the even code */
}

typedef struct {
    const Format *f;
    uint32_t begin, end;                    /* magnitude bit patterns [begin, end) */
    uint64_t checked, bad;
    uint32_t first_bad[4];                  /* float bits of the first mismatches */
    uint8_t got[4], want[4];
} Job;

static void note_bad(Job *j, uint32_t bits, uint8_t got, uint8_t want) {
    if (j->bad < 4) {
        j->first_bad[j->bad] = bits;
        j->got[j->bad] = got;
        j->want[j->bad] = want;
    }
    j->bad++;
}

static void *run_job(void *arg) {
    Job *j = arg;
    const Format *f = j->f;
    for (uint32_t u = j->begin; u < j->end; u++) {
        float a;
        memcpy(&a, &u, 4);
        uint8_t want_sat, want_torch;
        if (isnan(a)) {
            want_sat = want_torch = 0x7F;
        } else {
            int c = reference_code(f, a);
            want_sat = c > f->max_code ? (uint8_t)f->max_code : (uint8_t)c;
            want_torch = c > f->max_code ? f->overflow_torch : (uint8_t)c;
        }
        for (uint32_t sign = 0; sign < 2; sign++) {
            uint32_t bits = u | sign << 31;
            float x;
            memcpy(&x, &bits, 4);
            uint8_t s = f->encode(x, FP8_SATURATE), t = f->encode(x, FP8_TORCH);
            uint8_t ws = want_sat | (uint8_t)(sign << 7), wt = want_torch | (uint8_t)(sign << 7);
            if (s != ws) note_bad(j, bits, s, ws);
            if (t != wt) note_bad(j, bits, t, wt);
            j->checked += 2;
        }
    }
    return NULL;
}

static void check_every_float(Format *f) {
    format_table(f);
    for (int c = 0; c <= f->max_code; c++) assert_true(f->decode((uint8_t)c) == (float)f->value[c]);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = ncpu < 1 ? 1 : ncpu > 64 ? 64 : (int)ncpu;
    Job jobs[64];
    pthread_t th[64];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const uint64_t total = 0x80000000ull;
    for (int i = 0; i < nt; i++) {
        jobs[i] = (Job){f, (uint32_t)(total * i / nt), (uint32_t)(total * (i + 1) / nt), 0, 0, {0}, {0}, {0}};
        assert_int_equal(pthread_create(&th[i], NULL, run_job, &jobs[i]), 0);
    }
    uint64_t checked = 0, bad = 0;
    for (int i = 0; i < nt; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        checked += jobs[i].checked;
        bad += jobs[i].bad;
        for (uint64_t k = 0; k < jobs[i].bad && k < 4; k++) {
            float x;
            memcpy(&x, &jobs[i].first_bad[k], 4);
            printf("  %s(%a = 0x%08X): fp8.c 0x%02X, reference 0x%02X\n", f->name, x,
                   jobs[i].first_bad[k], jobs[i].got[k], jobs[i].want[k]);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("%s %s: %llu encodings (2^32 floats x 2 policies), %llu differ; %.1f s on %d threads\n",
           bad ? "NOT OK" : "OK    ", f->name, (unsigned long long)checked, (unsigned long long)bad, sec, nt);
    assert_true(checked == 2 * 2 * total);
    assert_true(bad == 0);
}

static void test_e4m3_every_float(void **state) {
    (void)state;
    Format f = {"e4m3", 3, 7, 0x7E, 0x7F, fp8_e4m3_encode, fp8_e4m3_decode, {0}};
    check_every_float(&f);
    assert_true(f.value[0x7E] == 448 && f.value[0x7F] == 480);
}

static void test_e5m2_every_float(void **state) {
    (void)state;
    Format f = {"e5m2", 2, 15, 0x7B, 0x7C, fp8_e5m2_encode, fp8_e5m2_decode, {0}};
    check_every_float(&f);
    assert_true(f.value[0x7B] == 57344 && f.value[0x7C] == 65536);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e4m3_every_float),
        cmocka_unit_test(test_e5m2_every_float),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
