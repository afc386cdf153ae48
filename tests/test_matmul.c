/* test_matmul.c - the decode kernels (matmul.c, matmul_e4m3.c): every vector kernel this CPU runs
 * against the plain C reference, bit for bit, on random shapes that hit every edge: cols not a
 * multiple of 8, 16 or 128, rows not a multiple of the 4-row pass, partial FP8 blocks in both
 * directions, block sizes other than 128 (and not multiples of 8 or 16), every E4M3 code (random
 * bytes) including NaN codes 0x7F / 0xFF and subnormals, tiny, huge and overflowing block scales,
 * activations beyond 256 (where the E4M3 kernels scale the codes instead of x), unaligned BF16 and
 * F32 data, 1 to SMALL_BATCH tokens; and the thread count changes no bit. The E4M3 reference
 * itself against the order matmul_e4m3.c documents, and against a double-precision sum. */
#include "ops.h"
#include "fp8.h"
#include "matmul_e4m3.h"
#include "testutil.h"

#include <math.h>

#include <cblas.h>
#include <omp.h>

/* Equal bits (NaN payloads included: the vector kernels add in the plain kernel's operand order). */
static int same_bits(const float *a, const float *b, size_t n, size_t *where) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(a + i, b + i, sizeof(float))) {
            *where = i;
            return 0;
        }
    return 1;
}

/* One random case: rows x cols of dtype dt (offset bytes past an aligned start), n tokens. */
static void one_case(Rng *g, DType dt, int rows, int cols, int n, int offset, int block, int specials, float xmul,
                     int *checked) {
    size_t es = dtype_size(dt), nel = (size_t)rows * cols;
    unsigned char *raw = malloc(nel * es + 64), *w = raw + offset;
    float *x = malloc(sizeof(float) * (size_t)n * cols);
    float *ref = malloc(sizeof(float) * (size_t)n * rows), *got = malloc(sizeof(float) * (size_t)n * rows);
    int nrb = (rows + block - 1) / block, ncb = (cols + block - 1) / block;
    float *scale = malloc(sizeof(float) * (size_t)nrb * ncb);
    for (int i = 0; i < n * cols; i++) x[i] = rng_normal(g) * xmul;
    for (size_t i = 0; i < nel; i++) {
        float v = rng_normal(g);
        if (dt == DT_F32) memcpy(w + 4 * i, &v, 4);
        else if (dt == DT_BF16) { uint16_t h = f32_to_bf16(v); memcpy(w + 2 * i, &h, 2); }
        else w[i] = (uint8_t)(rng_next(g) >> 56); /* every code: subnormals (e = 0), +-0, NaNs */
    }
    if (dt == DT_F8_E4M3 && !specials) /* no NaN codes: the vector path runs everywhere */
        for (size_t i = 0; i < nel; i++) if ((w[i] | 0x80) == 0xFF) w[i] ^= 1;
    for (int i = 0; i < nrb * ncb; i++) scale[i] = ldexpf(1.0f + rng_uniform(g), (int)(rng_next(g) % 40) - 30);
    if (specials && nrb * ncb > 1) {
        scale[0] = 0x1p-140f;       /* subnormal scale: s * 2^120 is still exact */
        scale[1] = 300.0f;          /* large: products that overflow */
    }
    int any_nan = 0;
    if (dt == DT_F8_E4M3)
        for (size_t i = 0; i < nel; i++) any_nan |= (w[i] | 0x80) == 0xFF;
    unsigned char known = TENSOR_NAN_UNKNOWN;
    Tensor W = {.data = w, .dtype = dt, .rows = rows, .cols = cols};
    if (dt == DT_F8_E4M3) { W.scale_inv = scale; W.block_r = block; W.block_c = block; }
    assert_int_equal(matmul_small_with(ref, x, &W, n, MATMUL_PLAIN), 0);
    for (int k = MATMUL_PLAIN + 1; k <= MATMUL_BEST; k++) {
        if (!matmul_kernel_supported((MatmulKernel)k)) continue;
        /* E4M3 also with its scan result kept (W.nan_codes): pass 1 records it, pass 2 uses it */
        for (int th = 1; th <= 2; th++)
            for (int pass = 0; pass < (dt == DT_F8_E4M3 ? 3 : 1); pass++) {
                omp_set_num_threads(th);
                unsigned char known_before = pass ? *W.nan_codes : 0;
                memset(got, 0xAB, sizeof(float) * (size_t)n * rows);
                assert_int_equal(matmul_small_with(got, x, &W, n, (MatmulKernel)k), 0);
                size_t at = 0;
                if (!same_bits(got, ref, (size_t)n * rows, &at)) {
                    printf("NOT OK %s %s %dx%d n=%d offset %d block %d x * %g threads %d pass %d: out[%zu] %a vs "
                           "plain %a\n", matmul_kernel_name((MatmulKernel)k), dtype_name(dt), rows, cols, n, offset,
                           block, xmul, th, pass, at, got[at], ref[at]);
                    fail();
                }
                if (pass == 1) assert_int_equal(*W.nan_codes, any_nan ? TENSOR_NAN_SOME : TENSOR_NAN_NONE);
                if (pass == 2) assert_int_equal(*W.nan_codes, known_before);
                if (pass == 0) *(W.nan_codes = &known) = TENSOR_NAN_UNKNOWN;
                if (pass == 2) W.nan_codes = NULL;
                (*checked)++;
            }
    }
    free(raw); free(x); free(ref); free(got); free(scale);
}

static void test_kernels_bit_identical(void **st) {
    (void)st;
    Rng g;
    rng_seed(&g, 15);
    int checked = 0, n_cases = getenv("DSV3_QUICK") ? 40 : 200;
    const DType dts[3] = {DT_F32, DT_BF16, DT_F8_E4M3};
    const int shapes[][2] = {{1, 1}, {3, 7}, {4, 8}, {5, 9}, {64, 128}, {65, 129}, {130, 200}, {7, 255}, {9, 1000}};
    for (int c = 0; c < n_cases; c++) {
        DType dt = dts[c % 3];
        int rows, cols;
        if (c < 27) { rows = shapes[c / 3][0]; cols = shapes[c / 3][1]; }
        else { rows = 1 + (int)(rng_next(&g) % 150); cols = 1 + (int)(rng_next(&g) % 700); }
        int n = 1 + (int)(rng_next(&g) % SMALL_BATCH), offset = (int)(rng_next(&g) % 4);
        int block = (c % 5 == 4) ? 8 * (1 + (int)(rng_next(&g) % 8)) : 128; /* 8 .. 64, or DeepSeek's 128 */
        float xmul = c % 7 == 6 ? 300.0f : 1.0f; /* |x| >= 256: the E4M3 kernels multiply the codes by 2^120 */
        one_case(&g, dt, rows, cols, n, offset, block, c % 2, xmul, &checked);
    }
    /* block sizes that are no multiple of 8 or 16: every block ends in a masked (or padded) part */
    one_case(&g, DT_F8_E4M3, 20, 50, 2, 0, 12, 1, 1.0f, &checked);
    one_case(&g, DT_F8_E4M3, 23, 333, 1, 0, 20, 0, 1.0f, &checked);
    one_case(&g, DT_F8_E4M3, 9, 301, 7, 0, 7, 0, 300.0f, &checked);
    printf("OK     %d kernel runs (%d cases) bit-identical to the plain kernel\n", checked, n_cases + 3);
}

/* The AVX2 dot product equals the plain one (mla.c's attention runs on it). */
static void test_dot_f32(void **st) {
    (void)st;
    Rng g;
    rng_seed(&g, 16);
    for (int n = 0; n < 300; n++) {
        float a[300], b[300], acc[8] = {0};
        for (int i = 0; i < n; i++) { a[i] = rng_normal(&g); b[i] = rng_normal(&g); }
        for (int i = 0; i < n; i++) acc[i % 8] += a[i] * b[i];
        float want = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
        float got = dot_f32(a, b, n);
        assert_memory_equal(&got, &want, sizeof(float));
    }
    printf("OK     dot_f32 of lengths 0..299 equals the 8-lane reference bit for bit\n");
}

/* e4m3_dot_plain is the order matmul_e4m3.c's header states (16 lanes per block, each restarted at
 * +0, fmaf throughout, scaled into 16 running sums, halves added), and within FP32 rounding of the
 * exact sum (double, each term |decode(q) x s| at most n * 2^-24 of error in all). */
static void test_e4m3_order(void **st) {
    (void)st;
    Rng g;
    rng_seed(&g, 17);
    int n_checked = 0;
    for (int cols = 1; cols <= 600; cols += 1 + cols / 8)
        for (int bc = 16; bc <= 128; bc *= 8) {
            int nb = (cols + bc - 1) / bc;
            uint8_t q[600];
            float x[600], s[40];
            for (int i = 0; i < cols; i++) {
                q[i] = (uint8_t)(rng_next(&g) >> 56);
                if ((q[i] | 0x80) == 0xFF) q[i] ^= 1;
                x[i] = rng_normal(&g);
            }
            for (int b = 0; b < nb; b++) s[b] = ldexpf(1.0f + rng_uniform(&g), -(int)(rng_next(&g) % 12));
            float a[16] = {0};
            double exact = 0, mag = 0;
            for (int b = 0; b < nb; b++) {
                float p[16] = {0};
                for (int i = b * bc; i < cols && i < (b + 1) * bc; i++) {
                    int k = (i - b * bc) % 16;
                    p[k] = fmaf(fp8_e4m3_decode(q[i]), x[i], p[k]);
                    exact += (double)fp8_e4m3_decode(q[i]) * x[i] * s[b];
                    mag += fabs((double)fp8_e4m3_decode(q[i]) * x[i] * s[b]);
                }
                for (int k = 0; k < 16; k++) a[k] = fmaf(p[k], s[b], a[k]);
            }
            float want = ((((a[0] + a[8]) + (a[4] + a[12])) + ((a[2] + a[10]) + (a[6] + a[14]))) +
                          (((a[1] + a[9]) + (a[5] + a[13])) + ((a[3] + a[11]) + (a[7] + a[15]))));
            float got = e4m3_dot_plain(x, q, s, cols, bc);
            assert_memory_equal(&got, &want, sizeof(float));
            if (fabs(got - exact) > cols * 0x1p-24 * mag) {
                printf("NOT OK cols %d block %d: %.9g vs exact %.9g\n", cols, bc, got, exact);
                fail();
            }
            n_checked++;
        }
    printf("OK     e4m3_dot_plain in the documented order and within n * 2^-24 * sum|terms| of the exact sum (%d rows)\n",
           n_checked);
}

/* The prefill path (n > SMALL_BATCH) with 2 threads: whole tiles per thread, each a 1-thread sgemm,
 * so the same bits as with one thread, for BF16 and FP8 weights of several tiles and a ragged last. */
static void test_prefill_threads(void **st) {
    (void)st;
    Rng g;
    rng_seed(&g, 18);
    int rows = 700, cols = 300, n = 37;
    uint16_t *wb = malloc(sizeof(uint16_t) * (size_t)rows * cols);
    uint8_t *wq = malloc((size_t)rows * cols);
    float *x = malloc(sizeof(float) * (size_t)n * cols), scale[6 * 3];
    float *one = malloc(sizeof(float) * (size_t)n * rows), *two = malloc(sizeof(float) * (size_t)n * rows);
    for (int i = 0; i < rows * cols; i++) {
        wb[i] = f32_to_bf16(rng_normal(&g));
        wq[i] = (uint8_t)(rng_next(&g) >> 56);
        if ((wq[i] | 0x80) == 0xFF) wq[i] ^= 1;
    }
    for (int i = 0; i < n * cols; i++) x[i] = rng_normal(&g);
    for (int i = 0; i < 18; i++) scale[i] = ldexpf(1.0f + rng_uniform(&g), -8);
    Tensor ws[2] = {{.data = wb, .dtype = DT_BF16, .rows = rows, .cols = cols},
                    {.data = wq, .dtype = DT_F8_E4M3, .rows = rows, .cols = cols, .scale_inv = scale, .block_r = 128,
                     .block_c = 128}};
    int blas = openblas_get_num_threads();
    for (int k = 0; k < 2; k++) {
        Error e;
        omp_set_num_threads(1);
        openblas_set_num_threads(1);
        assert_int_equal(matmul(one, x, &ws[k], n, &e), 0);
        omp_set_num_threads(2);
        openblas_set_num_threads(2);
        memset(two, 0xAB, sizeof(float) * (size_t)n * rows);
        assert_int_equal(matmul(two, x, &ws[k], n, &e), 0);
        size_t at = 0;
        if (!same_bits(two, one, (size_t)n * rows, &at)) fail_msg("%s: out[%zu] %a at 2 threads, %a at 1", dtype_name(ws[k].dtype), at, two[at], one[at]);
    }
    openblas_set_num_threads(blas);
    printf("OK     prefill of %d tokens, [%d, %d] BF16 and FP8: the same bits at 1 and 2 threads\n", n, rows, cols);
    free(wb); free(wq); free(x); free(one); free(two);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernels_bit_identical),
        cmocka_unit_test(test_e4m3_order),
        cmocka_unit_test(test_dot_f32),
        cmocka_unit_test(test_prefill_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
