/* test_matmul.c - the decode kernels (matmul.c): every vector kernel this CPU runs against the
 * plain C reference, bit for bit, on random shapes that hit every edge: cols not a multiple of 8,
 * 16 or 128, rows not a multiple of the 4-row pass, partial FP8 blocks in both directions, block
 * sizes other than 128, NaN codes 0x7F / 0xFF, subnormal E4M3 codes, tiny and huge block scales
 * (a scale whose s * 2^120 overflows takes the plain path), unaligned BF16 and F32 data, 1 to
 * SMALL_BATCH tokens; and the thread count changes no bit. */
#include "ops.h"
#include "fp8.h"
#include "testutil.h"

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
static void one_case(Rng *g, DType dt, int rows, int cols, int n, int offset, int block, int specials, int *checked) {
    size_t es = dtype_size(dt), nel = (size_t)rows * cols;
    unsigned char *raw = malloc(nel * es + 64), *w = raw + offset;
    float *x = malloc(sizeof(float) * (size_t)n * cols);
    float *ref = malloc(sizeof(float) * (size_t)n * rows), *got = malloc(sizeof(float) * (size_t)n * rows);
    int nrb = (rows + block - 1) / block, ncb = (cols + block - 1) / block;
    float *scale = malloc(sizeof(float) * (size_t)nrb * ncb);
    for (int i = 0; i < n * cols; i++) x[i] = rng_normal(g);
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
        scale[1] = 300.0f;          /* s * 2^120 overflows: that row group goes the plain way */
    }
    Tensor W = {.data = w, .dtype = dt, .rows = rows, .cols = cols};
    if (dt == DT_F8_E4M3) { W.scale_inv = scale; W.block_r = block; W.block_c = block; }
    assert_int_equal(matmul_small_with(ref, x, &W, n, MATMUL_PLAIN), 0);
    for (int k = MATMUL_PLAIN + 1; k <= MATMUL_BEST; k++) {
        if (!matmul_kernel_supported((MatmulKernel)k)) continue;
        for (int th = 1; th <= 2; th++) {
            omp_set_num_threads(th);
            memset(got, 0xAB, sizeof(float) * (size_t)n * rows);
            assert_int_equal(matmul_small_with(got, x, &W, n, (MatmulKernel)k), 0);
            size_t at = 0;
            if (!same_bits(got, ref, (size_t)n * rows, &at)) {
                printf("NOT OK %s %s %dx%d n=%d offset %d block %d threads %d: out[%zu] %a vs plain %a\n",
                       matmul_kernel_name((MatmulKernel)k), dtype_name(dt), rows, cols, n, offset, block, th,
                       at, got[at], ref[at]);
                fail();
            }
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
        one_case(&g, dt, rows, cols, n, offset, block, c % 2, &checked);
    }
    /* a block size that is not a multiple of 8 goes the plain way (and still agrees) */
    one_case(&g, DT_F8_E4M3, 20, 50, 2, 0, 12, 1, &checked);
    printf("OK     %d kernel runs (%d cases) bit-identical to the plain kernel\n", checked, n_cases + 1);
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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kernels_bit_identical),
        cmocka_unit_test(test_dot_f32),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
