/* tests/test_mla_decode.cu - mla_decode.cu's kernel against its C twin, mla_paged_decode_latent.
 *
 *   make mla-decode-test    (builds, then runs ./build/mla_decode/test_mla_decode; an sm_90 GPU)
 *   ./build/mla_decode/test_mla_decode 0,1     (only variants 0 and 1)
 *
 * Random paged batches (ragged lengths around tile and page boundaries, length 1, pages shuffled
 * in the pool, 16, 20 and 128 heads, a batch that needs no split) in BF16 and FP8. q is drawn
 * BF16-exact, so what separates the two is the kernel's own rounding (p in BF16, FP8 values
 * widened to BF16) and its summation order. Every case runs through every kernel variant
 * (mla_decode.h; MLA_DECODE_VARIANT does not apply here), one line each: OK/NOT OK, o_lat's
 * max|gpu - cpu| / max|cpu| and lse's max|gpu - cpu|, against the tolerances below. The last cases
 * (many short sequences, 32, 48 and 64 heads) are for variant 1's schedule and head groups; the
 * two after them hold rows whose FP8 codes are mostly subnormal (subnormal_row), for variant 3's
 * conversion of the codes.
 * Not a cmocka test (the Makefile's tests/test_*.c glob does not see a .cu file).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mla_decode.h"

static int failures = 0, run_variant[MLA_DEC_VARIANTS];
static Rng rng;

static double rel_err(const float *got, const float *want, size_t n) {
    double maxdiff = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (isnan(d) || d > maxdiff) maxdiff = isnan(d) ? INFINITY : d;
        maxref = fmax(maxref, fabs((double)want[i]));
    }
    return maxref > 0 ? maxdiff / maxref : maxdiff;
}
static double abs_err(const float *got, const float *want, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        m = isnan(d) ? INFINITY : fmax(m, d);
    }
    return m;
}

/* Tolerances, per format: o_lat relative, lse absolute. BF16 cache: p's BF16 rounding (2^-9) is
 * the largest term; FP8: also each value's BF16 rounding of code * scale. */
static const double TOL_O[] = {0, 1e-2, 1e-2}, TOL_LSE[] = {0, 1e-4, 1e-2};

/* The subnormal case: in every 128-feature block of c_kv, feature 0 is large (4 .. 8, either sign:
 * the block's scale amax / 448) and the other 127 are about 2^-7 of the scale's unit, so that most of
 * their E4M3 codes are subnormal (|code| < 2^-6). o_lat is then checked a second time on those 127
 * columns alone (relative to their own largest reference value), where a flushed subnormal shows. */
static void subnormal_row(float *row, int W) {
    for (int i = 0; i < W; i++) row[i] = rng_normal(&rng);
    for (int b = 0; b < MLA_DEC_DC / 128; b++) {
        float big = 4.0f + 4.0f * (float)(rng_next(&rng) % 1024) / 1024.0f, unit = big / 448.0f;
        row[128 * b] = rng_next(&rng) % 2 ? big : -big;
        for (int i = 1; i < 128; i++) row[128 * b + i] *= 1.5f * unit / 128.0f;
    }
}
static double rel_err_small_columns(const float *got, const float *want, size_t rows) {
    double maxdiff = 0, maxref = 0;
    for (size_t r = 0; r < rows; r++)
        for (int col = 0; col < MLA_DEC_DC; col++) {
            if (col % 128 == 0) continue;
            size_t i = r * MLA_DEC_DC + col;
            double d = fabs((double)got[i] - want[i]);
            if (isnan(d) || d > maxdiff) maxdiff = isnan(d) ? INFINITY : d;
            maxref = fmax(maxref, fabs((double)want[i]));
        }
    return maxref > 0 ? maxdiff / maxref : maxdiff;
}

static void run_case_rows(MlaKvFormat f, int n_h, const int *lens, int B, int want_lse, int subnormal) {
    const int W = MLA_DEC_DC + MLA_DEC_DR;
    int max_pages = 0;
    for (int b = 0; b < B; b++) {
        int np = (lens[b] + MLA_PAGE - 1) / MLA_PAGE;
        max_pages = np > max_pages ? np : max_pages;
    }
    int n_pages = B * max_pages + 3; /* a few pages nobody owns */
    int32_t *tables = (int32_t *)malloc(sizeof(int32_t) * B * max_pages), *perm = (int32_t *)malloc(sizeof(int32_t) * n_pages);
    for (int i = 0; i < n_pages; i++) perm[i] = i;
    for (int i = n_pages - 1; i > 0; i--) {
        int j = (int)(rng_next(&rng) % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int i = 0; i < B * max_pages; i++) tables[i] = perm[i];
    MlaPagedCache c;
    Error e;
    if (mla_paged_init(&c, f, MLA_DEC_DC, MLA_DEC_DR, n_pages, &e)) { printf("%s\n", e.msg); exit(1); }
    for (size_t i = 0; i < (size_t)n_pages * MLA_PAGE * c.row_bytes; i++) c.data[i] = 0xff; /* NaN rows */
    float *row = (float *)malloc(sizeof(float) * W);
    for (int b = 0; b < B; b++)
        for (int s = 0; s < lens[b]; s++) {
            if (subnormal) subnormal_row(row, W);
            else for (int i = 0; i < W; i++) row[i] = rng_normal(&rng);
            mla_paged_write(&c, tables + b * max_pages, s, row);
        }
    size_t nq = (size_t)B * n_h * W, no = (size_t)B * n_h * MLA_DEC_DC, nl = (size_t)B * n_h;
    float *q = (float *)malloc(sizeof(float) * nq);
    for (size_t i = 0; i < nq; i++) q[i] = bf16_to_f32(f32_to_bf16(rng_normal(&rng)));
    float *o_ref = (float *)malloc(sizeof(float) * no), *o = (float *)malloc(sizeof(float) * no);
    float *l_ref = (float *)malloc(sizeof(float) * nl), *l = (float *)malloc(sizeof(float) * nl);
    float scale = 0.0722f; /* 192^-0.5, V3's softmax scale before YaRN's mscale */
    mla_paged_decode_latent(o_ref, l_ref, q, &c, tables, max_pages, lens, B, n_h, scale, NULL);
    int max_len = 0;
    for (int b = 0; b < B; b++) max_len = lens[b] > max_len ? lens[b] : max_len;
    for (int v = 0; v < MLA_DEC_VARIANTS; v++) {
        if (!run_variant[v]) continue;
        mla_paged_decode_latent_cuda_variant(o, want_lse ? l : NULL, q, &c, tables, max_pages, lens, B, n_h, scale, v);
        MlaDecodePlan p;
        mla_decode_plan_variant(&p, B, n_h, max_len, v);
        double eo = rel_err(o, o_ref, no), el = want_lse ? abs_err(l, l_ref, nl) : 0;
        double es = subnormal ? rel_err_small_columns(o, o_ref, (size_t)B * n_h) : 0;
        int ok = eo <= TOL_O[f] && el <= TOL_LSE[f] && es <= TOL_O[f];
        failures += !ok;
        char cut[64];
        if (v == 0) snprintf(cut, sizeof cut, "%2d chunks of %3d tiles", p.n_split, p.chunk_tiles);
        else snprintf(cut, sizeof cut, "%3d CTAs x %d heads   ", p.n_cta, p.heads_per_cta);
        char small[80] = "";
        if (subnormal) snprintf(small, sizeof small, "  small columns rel err %.2e (tol %.0e)", es, TOL_O[f]);
        printf("%s v%d %-4s heads %3d, B %3d, lengths %d..%d, %s: o_lat rel err %.2e (tol %.0e)  "
               "lse abs err %.2e (tol %.0e)%s%s\n",
               ok ? "OK    " : "NOT OK", v, mla_kv_format_name(f), n_h, B, lens[0], max_len, cut, eo, TOL_O[f], el,
               TOL_LSE[f], want_lse ? "" : " (lse not asked)", small);
    }
    mla_paged_free(&c);
    free(tables); free(perm); free(row); free(q); free(o_ref); free(o); free(l_ref); free(l);
}

static void run_case(MlaKvFormat f, int n_h, const int *lens, int B, int want_lse) {
    run_case_rows(f, n_h, lens, B, want_lse, 0);
}

/* argv[1]: the variants to run, e.g. "0,1" (default all): a variant that faults takes the process
 * down with it, so a new one can be run on its own first. */
int main(int argc, char **argv) {
    for (int v = 0; v < MLA_DEC_VARIANTS; v++) run_variant[v] = argc < 2;
    for (const char *a = argc > 1 ? argv[1] : ""; *a; a++)
        if (*a >= '0' && *a < '0' + MLA_DEC_VARIANTS) run_variant[*a - '0'] = 1;
    rng_seed(&rng, 1616);
    const int ragged[] = {1, 31, 32, 33, 63, 64, 65, 200, 1000, 4097};
    const int v3[] = {1, 64, 129, 2000};
    const int pad[] = {5, 300};
    const int short_[] = {1, 40, 64};
    int many[64], tiny[300], pages[6] = {64, 128, 64, 192, 65, 63};
    for (int i = 0; i < 64; i++) many[i] = 1 + (int)(rng_next(&rng) % 3000);
    for (int i = 0; i < 300; i++) tiny[i] = 1 + (int)(rng_next(&rng) % 200);
    for (int f = MLA_KV_BF16; f <= MLA_KV_FP8; f++) {
        run_case((MlaKvFormat)f, 16, ragged, 10, 1);
        run_case((MlaKvFormat)f, 128, v3, 4, 1);
        run_case((MlaKvFormat)f, 20, pad, 2, 1);
        run_case((MlaKvFormat)f, 16, short_, 3, 0);
        run_case((MlaKvFormat)f, 16, many, 64, 1);
        run_case((MlaKvFormat)f, 16, tiny, 300, 1);
        run_case((MlaKvFormat)f, 32, pages, 6, 1);
        run_case((MlaKvFormat)f, 48, v3, 4, 1);
        run_case((MlaKvFormat)f, 64, tiny, 40, 1);
        run_case_rows((MlaKvFormat)f, 16, ragged, 10, 1, 1); /* subnormal E4M3 codes (FP8) */
        run_case_rows((MlaKvFormat)f, 64, v3, 4, 1, 1);
    }
    printf(failures ? "%d case(s) NOT OK\n" : "all cases OK\n", failures);
    return failures != 0;
}
