/* test_fp8.c - FP8 codecs, block quantization, GEMM emulation, and PyTorch's casts (fixtures made
 * by tests/fixtures/make_fp8_fixtures.py). Every float bit pattern is checked by
 * tests/exhaustive_fp8.c (make test-exhaustive). */
#include "testutil.h"

#include "fp8.h"
#include "fp8_error.h"
#include "safetensors.h"

#include <stdint.h>
#include <unistd.h>

static uint32_t bits_of(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }

/* ---- codecs ---------------------------------------------------------------------------------- */

static void test_e4m3_all_codes_round_trip(void **state) {
    (void)state;
    int nans = 0;
    for (int c = 0; c < 256; c++) {
        float v = fp8_e4m3_decode((uint8_t)c);
        for (int p = 0; p < 2; p++) {
            uint8_t back = fp8_e4m3_encode(v, (Fp8Overflow)p);
            if ((c & 0x7F) == 0x7F) {
                assert_true(isnan(v));
                assert_int_equal(back, c);   /* NaN -> NaN, sign bit kept */
            } else {
                assert_false(isnan(v) || isinf(v));
                assert_int_equal(back, c);
            }
        }
        nans += isnan(v) != 0;
    }
    assert_int_equal(nans, 2); /* 0x7F, 0xFF */
}

static void test_e5m2_all_codes_round_trip(void **state) {
    (void)state;
    int nans = 0, infs = 0;
    for (int c = 0; c < 256; c++) {
        float v = fp8_e5m2_decode((uint8_t)c);
        nans += isnan(v) != 0;
        infs += isinf(v) != 0;
        if (isnan(v)) {
            for (int p = 0; p < 2; p++)
                assert_true(isnan(fp8_e5m2_decode(fp8_e5m2_encode(v, (Fp8Overflow)p))));
        } else if (isinf(v)) { /* inf survives PyTorch's cast; saturation makes it max */
            assert_int_equal(fp8_e5m2_encode(v, FP8_TORCH), c);
            assert_int_equal(fp8_e5m2_encode(v, FP8_SATURATE), (c & 0x80) | 0x7B);
        } else {
            assert_int_equal(fp8_e5m2_encode(v, FP8_TORCH), c);
            assert_int_equal(fp8_e5m2_encode(v, FP8_SATURATE), c);
        }
    }
    assert_int_equal(nans, 6); /* S.11111.{01,10,11} */
    assert_int_equal(infs, 2);
}

static void test_decode_hand_values(void **state) {
    (void)state;
    assert_true(fp8_e4m3_decode(0x7E) == 448.0f);
    assert_true(fp8_e4m3_decode(0xFE) == -448.0f);
    assert_true(fp8_e4m3_decode(0x01) == 0x1p-9f);      /* min subnormal */
    assert_true(fp8_e4m3_decode(0x07) == 7 * 0x1p-9f);  /* max subnormal */
    assert_true(fp8_e4m3_decode(0x08) == 0x1p-6f);      /* min normal */
    assert_true(fp8_e4m3_decode(0x38) == 1.0f);
    assert_true(fp8_e4m3_decode(0x3B) == 1.375f);
    assert_true(fp8_e4m3_decode(0x77) == 240.0f);       /* 0 1110 111 = 2^7 * 1.875 */
    assert_true(fp8_e5m2_decode(0x7B) == 57344.0f);
    assert_true(fp8_e5m2_decode(0x01) == 0x1p-16f);     /* min subnormal */
    assert_true(fp8_e5m2_decode(0x04) == 0x1p-14f);     /* min normal */
    assert_true(fp8_e5m2_decode(0x3C) == 1.0f);
    assert_true(fp8_e5m2_decode(0x7C) == INFINITY);
    assert_true(fp8_e5m2_decode(0xFC) == -INFINITY);
    assert_true(fp8_e4m3_decode(0x80) == 0.0f && signbit(fp8_e4m3_decode(0x80)));
    assert_true(fp8_e5m2_decode(0x80) == 0.0f && signbit(fp8_e5m2_decode(0x80)));
}

typedef struct { float x; uint8_t torch, sat; } Case;

/* Each case through encode with both overflow policies; a miss prints the case before failing. */
static void check_cases(const char *fmt, uint8_t (*encode)(float, Fp8Overflow), const Case *cs, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint8_t t = encode(cs[i].x, FP8_TORCH), s = encode(cs[i].x, FP8_SATURATE);
        if (t != cs[i].torch || s != cs[i].sat)
            printf("%s(%a): torch 0x%02X (want 0x%02X), saturate 0x%02X (want 0x%02X)\n",
                   fmt, cs[i].x, t, cs[i].torch, s, cs[i].sat);
        assert_int_equal(t, cs[i].torch);
        assert_int_equal(s, cs[i].sat);
    }
}

static void test_e4m3_encode_hand_values(void **state) {
    (void)state;
    const Case cs[] = {
        {0.0f, 0x00, 0x00},          {-0.0f, 0x80, 0x80},          /* signed zero */
        {1.0f, 0x38, 0x38},          {1.0625f, 0x38, 0x38},        /* 1 + 1/16: tie -> even 1.0 */
        {1.1875f, 0x3A, 0x3A},       /* 1 + 3/16: tie between 1.125 (odd) and 1.25 (even) */
        {1.0626f, 0x39, 0x39},       /* just above the tie */
        {0x1p-9f, 0x01, 0x01},       {-0x1p-9f, 0x81, 0x81},
        {0x1p-10f, 0x00, 0x00},      /* half the min subnormal: tie -> 0 (PyTorch, seen on H100) */
        {0x1.8p-10f, 0x01, 0x01},    /* 1.5 * 2^-10 -> 2^-9 (PyTorch, seen on H100) */
        {0x1.0002p-10f, 0x01, 0x01}, /* just above half */
        {3 * 0x1p-10f, 0x02, 0x02},  /* 1.5 units: tie between 1 and 2 -> 2 */
        {5 * 0x1p-10f, 0x02, 0x02},  /* 2.5 units: tie between 2 and 3 -> 2 */
        {15 * 0x1p-10f, 0x08, 0x08}, /* 7.5 units: tie between 0x07 and 0x08 = 2^-6 (carry) */
        {1e-30f, 0x00, 0x00},        {-1e-30f, 0x80, 0x80},        {0x1p-149f, 0x00, 0x00},
        {31.0f, 0x60, 0x60},         /* 1.9375 * 16: tie between 1.875*16 and 32 -> 32 (carry) */
        {448.0f, 0x7E, 0x7E},        {460.0f, 0x7E, 0x7E},
        {464.0f, 0x7E, 0x7E},        /* tie between 448 (even) and the missing 480 -> 448 */
        {464.01f, 0x7F, 0x7E},       {465.0f, 0x7F, 0x7E},         {480.0f, 0x7F, 0x7E},
        {1e4f, 0x7F, 0x7E},          {-1e4f, 0xFF, 0xFE},          {3e38f, 0x7F, 0x7E},
        {INFINITY, 0x7F, 0x7E},      {-INFINITY, 0xFF, 0xFE},
        {NAN, 0x7F, 0x7F},           {-NAN, 0xFF, 0xFF},
    };
    check_cases("e4m3", fp8_e4m3_encode, cs, sizeof cs / sizeof cs[0]);
}

static void test_e5m2_encode_hand_values(void **state) {
    (void)state;
    const Case cs[] = {
        {0.0f, 0x00, 0x00},          {-0.0f, 0x80, 0x80},
        {1.0f, 0x3C, 0x3C},          {1.125f, 0x3C, 0x3C},         /* tie -> even 1.0 */
        {1.375f, 0x3E, 0x3E},        /* tie between 1.25 (odd) and 1.5 (even) */
        {0x1p-16f, 0x01, 0x01},      /* min subnormal */
        {0x1p-17f, 0x00, 0x00},      /* tie -> 0 */
        {0x1.8p-17f, 0x01, 0x01},    {3 * 0x1p-17f, 0x02, 0x02},   /* 1.5 units -> 2 */
        {7 * 0x1p-17f, 0x04, 0x04},  /* 3.5 units: tie between 0x03 and 0x04 = 2^-14 (carry) */
        {57344.0f, 0x7B, 0x7B},      {60000.0f, 0x7B, 0x7B},       /* PyTorch, seen on H100 */
        {61439.99f, 0x7B, 0x7B},
        {61440.0f, 0x7C, 0x7B},      /* tie between 57344 (odd) and 65536 (even, = inf) */
        {65536.0f, 0x7C, 0x7B},      {1e5f, 0x7C, 0x7B},           {-1e5f, 0xFC, 0xFB},
        {INFINITY, 0x7C, 0x7B},      {-INFINITY, 0xFC, 0xFB},
    };
    check_cases("e5m2", fp8_e5m2_encode, cs, sizeof cs / sizeof cs[0]);
    assert_true(isnan(fp8_e5m2_decode(fp8_e5m2_encode(NAN, FP8_TORCH))));
    assert_true(isnan(fp8_e5m2_decode(fp8_e5m2_encode(NAN, FP8_SATURATE))));
    assert_int_equal(fp8_e5m2_encode(-NAN, FP8_TORCH) & 0x80, 0x80);
}

/* ---- block quantization ---------------------------------------------------------------------- */

static void test_scale(void **state) {
    (void)state;
    assert_true(fp8_scale(0.0f, FP8_SCALE_F32) == 1.0f);
    assert_true(fp8_scale(0.0f, FP8_SCALE_UE8M0) == 1.0f);
    assert_true(fp8_scale(0x1p-149f, FP8_SCALE_F32) == 1.0f); /* amax/448 underflows to 0 */
    assert_true(fp8_scale(448.0f, FP8_SCALE_F32) == 1.0f);
    assert_true(fp8_scale(1.0f, FP8_SCALE_F32) == 1.0f / 448.0f);
    assert_true(fp8_scale(448.0f, FP8_SCALE_UE8M0) == 1.0f);  /* already a power of two */
    assert_true(fp8_scale(449.0f, FP8_SCALE_UE8M0) == 2.0f);
    assert_true(fp8_scale(1.0f, FP8_SCALE_UE8M0) == 0x1p-8f); /* 1/448 in (2^-9, 2^-8] */
    Rng s;
    rng_seed(&s, 7);
    for (int i = 0; i < 10000; i++) {
        float amax = (float)ldexp(rng_uniform(&s) + 1e-3, (int)(rng_next(&s) % 80) - 40);
        float f = fp8_scale(amax, FP8_SCALE_F32), u = fp8_scale(amax, FP8_SCALE_UE8M0);
        int e;
        assert_true(frexpf(u, &e) == 0.5f);        /* a power of two */
        assert_true(u >= f && u < 2 * f);          /* the smallest one >= amax/448 */
        assert_true(f == amax / 448.0f);
        assert_true(amax / u <= 448.0f);
    }
}

/* The worked example of notes/fp8.md: a block whose largest |x| is 3.2, and its element 1.0. */
static void test_worked_example(void **state) {
    (void)state;
    float s = fp8_scale(3.2f, FP8_SCALE_F32);
    assert_true(s == 3.2f / 448.0f);
    float v = 1.0f / s;                                   /* 140.0000 */
    assert_true(fabsf(v - 140.0f) < 1e-4f);
    assert_int_equal(fp8_e4m3_encode(v, FP8_SATURATE), 0x71); /* 0 1110 001 = 1.125 * 2^7 = 144 */
    assert_true(fp8_e4m3_decode(0x71) == 144.0f);
    assert_true(fabs(144.0f * s - 1.0285714) < 1e-6);      /* 2.9% off: 140 was 12 of 16 up */
    assert_int_equal(fp8_e4m3_encode(3.2f / s, FP8_SATURATE), 0x7E);   /* amax -> 448 */
    float u = fp8_scale(3.2f, FP8_SCALE_UE8M0);           /* 3.2/448 = 0.00714 -> 2^-7 */
    assert_true(u == 0x1p-7f);
    assert_int_equal(fp8_e4m3_encode(1.0f / u, FP8_SATURATE), 0x70);   /* 128 exactly */
    assert_int_equal(fp8_e4m3_encode(3.2f / u, FP8_SATURATE), 0x7D);   /* 409.6 -> 416 */
    assert_true(fp8_e4m3_decode(0x7D) * u == 3.25f);
    /* a 14-bit accumulator at 2^15 has an ulp of 2: adding 1 is lost (truncated, or a tie to even) */
    assert_true(fp8_acc_round(32768.0 + 1.0, 14, FP8_ACC_TRUNCATE) == 32768.0);
    assert_true(fp8_acc_round(32768.0 + 1.0, 14, FP8_ACC_NEAREST) == 32768.0);
    assert_true(fp8_acc_round(32768.0 + 3.0, 14, FP8_ACC_TRUNCATE) == 32770.0);
    assert_true(fp8_acc_round(32768.0 + 3.0, 14, FP8_ACC_NEAREST) == 32772.0);
}

/* Checks q, scale against w for blocks block_r x block_c: scale = amax/448 (or its UE8M0 round-up),
 * each block's largest element coded as +-448 (F32 scales), every element within half an ulp. */
static void check_block_quant(const float *w, const uint8_t *q, const float *scale, int rows,
                              int cols, int block_r, int block_c, Fp8ScaleFmt fmt) {
    int nbr = (rows + block_r - 1) / block_r, nbc = (cols + block_c - 1) / block_c;
    float *back = malloc((size_t)rows * cols * sizeof *back);
    fp8_dequant_block(back, q, scale, rows, cols, block_r, block_c);
    for (int br = 0; br < nbr; br++)
        for (int bc = 0; bc < nbc; bc++) {
            float amax = 0;
            for (int r = br * block_r; r < rows && r < (br + 1) * block_r; r++)
                for (int c = bc * block_c; c < cols && c < (bc + 1) * block_c; c++)
                    amax = fmaxf(amax, fabsf(w[(size_t)r * cols + c]));
            float sc = scale[br * nbc + bc];
            if (fmt == FP8_SCALE_F32) assert_true(sc == amax / 448.0f);
            else { int e; assert_true(frexpf(sc, &e) == 0.5f && sc >= amax / 448.0f && sc < amax / 224.0f); }
            for (int r = br * block_r; r < rows && r < (br + 1) * block_r; r++)
                for (int c = bc * block_c; c < cols && c < (bc + 1) * block_c; c++) {
                    size_t i = (size_t)r * cols + c;
                    assert_int_equal(q[i], fp8_e4m3_encode(w[i] / sc, FP8_SATURATE));
                    if (fmt == FP8_SCALE_F32 && fabsf(w[i]) == amax) assert_int_equal(q[i] & 0x7F, 0x7E);
                    assert_true(back[i] == fp8_e4m3_decode(q[i]) * sc);
                    /* half an ulp: 2^-4 relative for normals, 2^-10 * scale in the subnormal range,
                     * plus room for the FP32 division w/scale and the product q*scale */
                    double bound = fmax(0x1p-4 * fabs(w[i]), 0x1p-10 * sc) + 0x1p-22 * fabs(w[i]);
                    assert_true(fabs((double)back[i] - w[i]) <= bound);
                }
        }
    free(back);
}

static void test_block_quant_partial_blocks(void **state) {
    (void)state;
    const int rows = 200, cols = 300; /* 2 x 3 blocks of 128, the last ones partial */
    float *w = malloc(rows * cols * sizeof *w);
    uint8_t *q = malloc(rows * cols);
    float scale[2 * 3];
    Rng s;
    rng_seed(&s, 11);
    for (int i = 0; i < rows * cols; i++) /* magnitudes spread over 2^-20..2^10 to reach subnormals */
        w[i] = rng_normal(&s) * (float)ldexp(1.0, (int)(rng_next(&s) % 31) - 20);
    for (int c = 256; c < cols; c++) w[150 * cols + c] = 0; /* make one block's row zero */
    for (int f = 0; f < 2; f++) {
        fp8_quant_block(q, scale, w, rows, cols, 128, 128, (Fp8ScaleFmt)f);
        check_block_quant(w, q, scale, rows, cols, 128, 128, (Fp8ScaleFmt)f);
    }
    /* an all-zero block gets scale 1 and zero codes */
    for (int r = 128; r < rows; r++) for (int c = 256; c < cols; c++) w[r * cols + c] = 0;
    fp8_quant_block(q, scale, w, rows, cols, 128, 128, FP8_SCALE_F32);
    assert_true(scale[1 * 3 + 2] == 1.0f);
    for (int r = 128; r < rows; r++) for (int c = 256; c < cols; c++) assert_int_equal(q[r * cols + c], 0);
    free(w);
    free(q);
}

static void test_act_quant_tiles(void **state) {
    (void)state;
    const int rows = 5, cols = 300;   /* 1x128 tiles: scale [5, 3], last tile 44 wide */
    float x[5 * 300], back[5 * 300], scale[5 * 3], scale2[5 * 3];
    uint8_t q[5 * 300], q2[5 * 300];
    Rng s;
    rng_seed(&s, 12);
    for (int i = 0; i < rows * cols; i++) x[i] = rng_normal(&s) * (i % 97 == 0 ? 50.0f : 1.0f);
    for (int f = 0; f < 2; f++) {
        fp8_quant_act(q, scale, x, rows, cols, 128, (Fp8ScaleFmt)f);
        check_block_quant(x, q, scale, rows, cols, 1, 128, (Fp8ScaleFmt)f);
        fp8_quant_block(q2, scale2, x, rows, cols, 1, 128, (Fp8ScaleFmt)f);
        assert_memory_equal(q, q2, sizeof q);
        assert_memory_equal(scale, scale2, sizeof scale);
        fp8_dequant_act(back, q, scale, rows, cols, 128);
        for (int i = 0; i < rows * cols; i++) assert_true(back[i] == fp8_e4m3_decode(q[i]) * scale[(i / cols) * 3 + (i % cols) / 128]);
    }
}

/* ---- GEMM emulation -------------------------------------------------------------------------- */

static void test_acc_round(void **state) {
    (void)state;
    const double u = 0x1p-15; /* half an ulp of 1 with 14 mantissa bits */
    assert_true(fp8_acc_round(1 + u, 14, FP8_ACC_NEAREST) == 1);                 /* tie -> even */
    assert_true(fp8_acc_round(1 + 3 * u, 14, FP8_ACC_NEAREST) == 1 + 4 * u);     /* tie -> even */
    assert_true(fp8_acc_round(1 + 3 * u, 14, FP8_ACC_TRUNCATE) == 1 + 2 * u);
    assert_true(fp8_acc_round(-(1 + 3 * u), 14, FP8_ACC_TRUNCATE) == -(1 + 2 * u)); /* to zero */
    assert_true(fp8_acc_round(-(1 + 3 * u), 14, FP8_ACC_NEAREST) == -(1 + 4 * u));
    assert_true(fp8_acc_round(2 - u, 14, FP8_ACC_NEAREST) == 2);                  /* carry */
    assert_true(fp8_acc_round(2 - u, 14, FP8_ACC_TRUNCATE) == 2 - 2 * u);
    assert_true(fp8_acc_round(12345.0, 14, FP8_ACC_TRUNCATE) == 12345.0);        /* 14 bits fit */
    assert_true(fp8_acc_round(0x1.00017p40, 23, FP8_ACC_NEAREST) == (double)(float)0x1.00017p40);
    assert_true(fp8_acc_round(0.0, 14, FP8_ACC_TRUNCATE) == 0.0);
}

typedef struct {
    int M, N, K, bn, bk;
    float *x, *w, *sx, *sw, *y;
    uint8_t *qx, *qw;
} Gemm;

/* x [M, K], w [N, K] ~ N(0, 1) (w with a few outliers), quantized per 1 x bk / bn x bk. */
static Gemm gemm_make(int M, int N, int K, int bn, int bk, uint64_t seed) {
    Gemm g = {M, N, K, bn, bk, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    int nkb = (K + bk - 1) / bk, nnb = (N + bn - 1) / bn;
    g.x = malloc((size_t)M * K * 4); g.w = malloc((size_t)N * K * 4);
    g.sx = malloc((size_t)M * nkb * 4); g.sw = malloc((size_t)nnb * nkb * 4);
    g.y = malloc((size_t)M * N * 4); g.qx = malloc((size_t)M * K); g.qw = malloc((size_t)N * K);
    Rng s;
    rng_seed(&s, seed);
    for (size_t i = 0; i < (size_t)M * K; i++) g.x[i] = rng_normal(&s);
    for (size_t i = 0; i < (size_t)N * K; i++) g.w[i] = rng_normal(&s) * (i % 1009 == 0 ? 30.0f : 1.0f);
    fp8_quant_act(g.qx, g.sx, g.x, M, K, bk, FP8_SCALE_F32);
    fp8_quant_block(g.qw, g.sw, g.w, N, K, bn, bk, FP8_SCALE_F32);
    return g;
}
static void gemm_free(Gemm *g) {
    free(g->x); free(g->w); free(g->sx); free(g->sw); free(g->y); free(g->qx); free(g->qw);
}

/* max |y - ref| / max |ref| with ref = the FP64 product of the dequantized (in FP64) operands */
static double gemm_acc_err(const Gemm *g) {
    int nkb = (g->K + g->bk - 1) / g->bk;
    double maxd = 0, maxr = 0;
    for (int m = 0; m < g->M; m++)
        for (int n = 0; n < g->N; n++) {
            double ref = 0;
            for (int k = 0; k < g->K; k++)
                ref += (double)fp8_e4m3_decode(g->qx[(size_t)m * g->K + k]) * g->sx[m * nkb + k / g->bk] *
                       fp8_e4m3_decode(g->qw[(size_t)n * g->K + k]) * g->sw[(n / g->bn) * nkb + k / g->bk];
            maxd = fmax(maxd, fabs(g->y[m * g->N + n] - ref));
            maxr = fmax(maxr, fabs(ref));
        }
    return maxd / maxr;
}

/* FP32 mode equals the exact product of the dequantized operands up to FP32 rounding: per K-block
 * the exact partial P is rounded once, times sx, times sw (3 roundings), then nkb FP32 additions,
 * so |y - ref| <= gamma(nkb + 2) * sum_kb |P sx sw|, gamma(n) = n u / (1 - n u), u = 2^-24. */
static void test_gemm_fp32_mode_is_dequant_matmul(void **state) {
    (void)state;
    const int shapes[][5] = {{3, 200, 300, 128, 128}, {2, 64, 1024, 128, 128}, {4, 33, 77, 16, 32}};
    for (size_t t = 0; t < sizeof shapes / sizeof shapes[0]; t++) {
        Gemm g = gemm_make(shapes[t][0], shapes[t][1], shapes[t][2], shapes[t][3], shapes[t][4], 100 + t);
        fp8_gemm(g.y, g.qx, g.sx, g.qw, g.sw, g.M, g.N, g.K, g.bn, g.bk, (Fp8Accum){0, 0, FP8_ACC_TRUNCATE});
        int nkb = (g.K + g.bk - 1) / g.bk;
        double gamma = (nkb + 2) * 0x1p-24 / (1 - (nkb + 2) * 0x1p-24), worst = 0;
        for (int m = 0; m < g.M; m++)
            for (int n = 0; n < g.N; n++) {
                double ref = 0, absum = 0;
                for (int kb = 0; kb < nkb; kb++) {
                    double p = 0;
                    for (int k = kb * g.bk; k < g.K && k < (kb + 1) * g.bk; k++)
                        p += (double)fp8_e4m3_decode(g.qx[(size_t)m * g.K + k]) * fp8_e4m3_decode(g.qw[(size_t)n * g.K + k]);
                    double term = p * g.sx[m * nkb + kb] * g.sw[(n / g.bn) * nkb + kb];
                    ref += term;
                    absum += fabs(term);
                }
                double err = fabs(g.y[m * g.N + n] - ref), bound = gamma * absum;
                assert_true(err <= bound);
                if (bound > 0) worst = fmax(worst, err / bound);
            }
        printf("OK     fp8_gemm FP32 mode [%d,%d,%d] blocks %dx%d: worst |y - ref| = %.2f of the FP32 rounding bound\n",
               g.M, g.N, g.K, g.bn, g.bk, worst);
        /* promotion at every K-block boundary: n_c = 0 and n_c = block_k are the same computation */
        float *y2 = malloc((size_t)g.M * g.N * 4);
        fp8_gemm(y2, g.qx, g.sx, g.qw, g.sw, g.M, g.N, g.K, g.bn, g.bk, (Fp8Accum){14, 0, FP8_ACC_TRUNCATE});
        fp8_gemm(g.y, g.qx, g.sx, g.qw, g.sw, g.M, g.N, g.K, g.bn, g.bk, (Fp8Accum){14, g.bk, FP8_ACC_TRUNCATE});
        assert_memory_equal(y2, g.y, (size_t)g.M * g.N * 4);
        free(y2);
        gemm_free(&g);
    }
}

/* The limited accumulator: without promotion its error grows with K; promoting every 128 elements
 * pulls it back. Per-row / per-tensor scales (block_k = K), so only the accumulator differs. */
static void test_gemm_limited_accumulator(void **state) {
    (void)state;
    const int Ks[] = {256, 1024, 4096};
    for (int r = 0; r < 2; r++) {
        Fp8AccRound rnd = (Fp8AccRound)r;
        double none[3], prom[3];
        for (int i = 0; i < 3; i++) {
            Gemm g = gemm_make(8, 64, Ks[i], 64, Ks[i], 200);
            fp8_gemm(g.y, g.qx, g.sx, g.qw, g.sw, g.M, g.N, g.K, g.bn, g.bk, (Fp8Accum){FP8_ACC_BITS, 0, rnd});
            none[i] = gemm_acc_err(&g);
            fp8_gemm(g.y, g.qx, g.sx, g.qw, g.sw, g.M, g.N, g.K, g.bn, g.bk, (Fp8Accum){FP8_ACC_BITS, FP8_NC, rnd});
            prom[i] = gemm_acc_err(&g);
            printf("%-8s K=%4d  14-bit accumulator: no promotion %.3e, promotion every 128: %.3e\n",
                   rnd == FP8_ACC_TRUNCATE ? "trunc" : "nearest", Ks[i], none[i], prom[i]);
            gemm_free(&g);
        }
        /* truncation's error grows like K, rounding to nearest's like sqrt(K) (x4 per x16 in K) */
        assert_true(none[1] > 1.5 * none[0]);
        assert_true(none[2] > 1.5 * none[1]);
        assert_true(none[2] > 3 * prom[2]);
        assert_true(none[2] > 3 * none[0]);
    }
}

/* The table of notes/fp8.md, printed; its headline numbers asserted. */
static void test_error_table(void **state) {
    (void)state;
    Fp8ErrorRow rows[FP8_ERROR_ROWS];
    int n = fp8_error_table(rows, FP8_ERROR_ROWS, 4096, 1234);
    assert_int_equal(n, FP8_ERROR_ROWS);
    fp8_error_print(stdout, rows, n);
    for (int i = 0; i < n; i++) {
        if (rows[i].acc.man_bits == 0) assert_true(rows[i].err_acc < 1e-6); /* FP32: rounding only */
        assert_true(rows[i].err_f64 < 0.07);   /* E4M3's half ulp is 6.25% of an element */
    }
    /* V3 report 3.3.2: "a maximum relative error of nearly 2%" for K = 4096 without promotion */
    assert_true(strcmp(rows[1].accum, "14-bit trunc, no promotion") == 0);
    assert_true(rows[1].err_acc > 0.01 && rows[1].err_acc < 0.03);
    /* with outliers, 1x128 tiles beat one scale per row: a tile's largest element is coded exactly
     * (it becomes +-448), and with 1x128 tiles most outliers are the largest of their tile */
    assert_true(strcmp(rows[14].scaling, "1x128 / 128x128") == 0 && strcmp(rows[9].scaling, "per-row / per-tensor") == 0);
    assert_true(strcmp(rows[14].data, "outliers") == 0 && strcmp(rows[9].data, "outliers") == 0);
    assert_true(rows[14].err_f64 < rows[9].err_f64);
    /* UE8M0 scales (a power of two >= amax/448) leave part of E4M3's range unused: still E4M3's few
     * percent. With outliers they cost more than FP32 scales, since an outlier, the largest of its
     * tile, loses its exact +-448 code (larger for every seed 1..10 and 1234). On Gaussian data the
     * two are within the seed's noise (E4M3's relative precision does not depend on the scale but at
     * the top code and in the subnormals; UE8M0 was the larger for 7 of those 11 seeds): not asserted. */
    for (int d = 0; d < 2; d++) {
        const Fp8ErrorRow *f32 = &rows[9 * d + 5], *ue = &rows[9 * d + 8];
        assert_true(strstr(ue->scaling, "UE8M0") && !strstr(f32->scaling, "UE8M0"));
        assert_true(ue->err_f64 < 0.07);
    }
    assert_true(strcmp(rows[17].data, "outliers") == 0 && rows[17].err_f64 > rows[14].err_f64);
}

/* ---- PyTorch fixtures ------------------------------------------------------------------------ */

static const StTensor *need(const StFile *f, const char *name, DType dt, int64_t numel) {
    const StTensor *t = st_find(f, name);
    if (!t) printf("fixture tensor %s missing\n", name);
    assert_non_null(t);
    assert_int_equal(t->dtype, dt);
    if (numel >= 0) assert_int_equal(t->numel, numel);
    return t;
}

/* The fixture at path, opened into f; the test is skipped when it was never made. */
static void open_fixture(StFile *f, const char *path) {
    Error e;
    if (access(path, R_OK) != 0) {
        printf("SKIP   %s absent: run tests/fixtures/make_fp8_fixtures.py (torch) to make it\n", path);
        skip();
    }
    assert_int_equal(st_open(f, path, &e), 0);
}

static void test_torch_casts(void **state) {
    (void)state;
    const char *path = FIXTURES "/fp8/casts.safetensors";
    StFile f;
    open_fixture(&f, path);
    const StTensor *x = need(&f, "x", DT_F32, -1);
    const char *names[] = {"e4m3", "e5m2", "e4m3_cuda", "e5m2_cuda"};
    for (int v = 0; v < 4; v++) {
        const StTensor *t = v < 2 ? need(&f, names[v], DT_U8, x->numel) : st_find(&f, names[v]);
        if (!t) { printf("       %s not in the fixture (made without a GPU)\n", names[v]); continue; }
        assert_int_equal(t->numel, x->numel);
        const uint8_t *want = t->data;
        int64_t bad = 0;
        for (int64_t i = 0; i < x->numel; i++) {
            float xi;
            memcpy(&xi, (const char *)x->data + 4 * i, 4);
            uint8_t got = v % 2 == 0 ? fp8_e4m3_encode(xi, FP8_TORCH) : fp8_e5m2_encode(xi, FP8_TORCH);
            if (got != want[i] && bad++ < 10)
                printf("  %s(%a = 0x%08X): torch 0x%02X, fp8.c 0x%02X\n", names[v], xi, bits_of(xi), want[i], got);
        }
        printf("%s torch .to(%s) bit for bit: %lld of %lld differ\n", bad ? "NOT OK" : "OK    ", names[v],
               (long long)bad, (long long)x->numel);
        assert_int_equal(bad, 0);
    }
    st_close(&f);
}

static void test_torch_gemm(void **state) {
    (void)state;
    const char *path = FIXTURES "/fp8/gemm.safetensors";
    StFile f;
    open_fixture(&f, path);
    enum { M = 4, N = 200, K = 384 };
    const float *x = need(&f, "x", DT_F32, M * K)->data, *w = need(&f, "w", DT_F32, N * K)->data;
    const uint8_t *qx_t = need(&f, "x_q", DT_U8, M * K)->data, *qw_t = need(&f, "w_q", DT_U8, N * K)->data;
    const float *sx_t = need(&f, "x_scale", DT_F32, M * 3)->data;
    const float *sw_t = need(&f, "w_scale_inv", DT_F32, 2 * 3)->data;
    const float *y_t = need(&f, "y", DT_F32, M * N)->data;
    const double *y64 = need(&f, "y_f64", DT_F64, M * N)->data;
    uint8_t qx[M * K], qw[N * K];
    float sx[M * 3], sw[2 * 3], y[M * N];
    fp8_quant_act(qx, sx, x, M, K, 128, FP8_SCALE_F32);
    fp8_quant_block(qw, sw, w, N, K, 128, 128, FP8_SCALE_F32);
    assert_memory_equal(sx, sx_t, sizeof sx);
    assert_memory_equal(sw, sw_t, sizeof sw);
    assert_memory_equal(qx, qx_t, sizeof qx);
    assert_memory_equal(qw, qw_t, sizeof qw);
    printf("OK     act_quant / weight quant: codes and scales equal PyTorch's bit for bit\n");
    fp8_gemm(y, qx, sx, qw, sw, M, N, K, 128, 128, (Fp8Accum){0, 0, FP8_ACC_TRUNCATE});
    int bad = 0;
    for (int i = 0; i < M * N; i++) bad += bits_of(y[i]) != bits_of(y_t[i]);
    printf("%s fp8_gemm FP32 mode vs PyTorch's kernel math: %d of %d outputs differ\n",
           bad ? "NOT OK" : "OK    ", bad, M * N);
    assert_int_equal(bad, 0);
    /* against the unquantized product: each operand element is off by at most half an ulp
     * (2^-4 relative, or 2^-10 * scale in the subnormal range), so elementwise
     * |y - x.w| <= sum_k (ex |w| + |x| ew + ex ew) + FP32 rounding (<= 2^-20 sum |x w| here) */
    double worst = 0, maxd = 0, maxr = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double ref = 0, bound = 0, absum = 0;
            for (int k = 0; k < K; k++) {
                double xv = x[m * K + k], wv = w[n * K + k];
                double ex = fmax(0x1p-4 * fabs(xv), 0x1p-10 * sx[m * 3 + k / 128]);
                double ew = fmax(0x1p-4 * fabs(wv), 0x1p-10 * sw[(n / 128) * 3 + k / 128]);
                ref += xv * wv;
                absum += fabs(xv * wv);
                bound += ex * fabs(wv) + fabs(xv) * ew + ex * ew + 0x1p-20 * fabs(xv * wv);
            }
            /* PyTorch's FP64 product is ours (same layout), to FP64 rounding: gamma(K) sum |x w| */
            assert_true(fabs(ref - y64[m * N + n]) <= 2.0 * K * 0x1p-53 * absum);
            assert_true(fabs(y[m * N + n] - ref) <= bound);
            worst = fmax(worst, fabs(y[m * N + n] - ref) / bound);
            maxd = fmax(maxd, fabs(y[m * N + n] - y64[m * N + n]));
            maxr = fmax(maxr, fabs(y64[m * N + n]));
        }
    printf("OK     fp8_gemm vs PyTorch's FP64 of the unquantized inputs: rel err %.3g, "
           "worst |y - ref| = %.2f of the half-ulp bound\n", maxd / maxr, worst);
    st_close(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e4m3_all_codes_round_trip),
        cmocka_unit_test(test_e5m2_all_codes_round_trip),
        cmocka_unit_test(test_decode_hand_values),
        cmocka_unit_test(test_e4m3_encode_hand_values),
        cmocka_unit_test(test_e5m2_encode_hand_values),
        cmocka_unit_test(test_scale),
        cmocka_unit_test(test_worked_example),
        cmocka_unit_test(test_block_quant_partial_blocks),
        cmocka_unit_test(test_act_quant_tiles),
        cmocka_unit_test(test_acc_round),
        cmocka_unit_test(test_gemm_fp32_mode_is_dequant_matmul),
        cmocka_unit_test(test_gemm_limited_accumulator),
        cmocka_unit_test(test_error_table),
        cmocka_unit_test(test_torch_casts),
        cmocka_unit_test(test_torch_gemm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
