/* fp8_error.c - `run fp8-error`: how much error FP8 quantization and a limited accumulator put into
 * a GEMM, per scaling layout and accumulator (the table of notes/fp8.md, section 4).
 *
 * The data: y [M, N] = x [M, K] . W [N, K]^T with M = 16, N = 64 (1024 dot products of length K),
 *   gaussian   x, W ~ N(0, 1), drawn with ops.h's Rng and rng_normal from the seed (x, then W)
 *   outliers   the same draws continued, with K/256 channels of x (the same ones in every row, as
 *              LLM activations have them, picked by rng_next % K) 100x larger
 * Each data set goes through every case: a scaling layout (one scale per row of x and one for W,
 * or DeepSeek-V3's 1 x 128 tiles and 128 x 128 blocks, with FP32 or UE8M0 scales) and an
 * accumulator of fp8_gemm (fp8.c: FP32, or 14 bits truncated / to nearest, with or without
 * promotion every N_C = 128). Two errors per row, max_i |y_i - ref_i| / max_i |ref_i|:
 *   err_f64   ref = the FP64 product of the unquantized x and W: quantization and accumulation
 *   err_acc   ref = the FP64 product of the dequantized x and W: accumulation alone
 */
#include "fp8_error.h"

#include <math.h>
#include <stdlib.h>

#include "ops.h"

/* max_i |y_i - ref_i| / max_i |ref_i| */
static double max_rel(const float *y, const double *ref, int n) {
    double d = 0, r = 0;
    for (int i = 0; i < n; i++) {
        d = fmax(d, fabs((double)y[i] - ref[i]));
        r = fmax(r, fabs(ref[i]));
    }
    return d / r;
}

/* y_ref [M, N] = x [M, K] . w [N, K]^T in FP64. */
static void dot_f64(double *y, const float *x, const float *w, int M, int N, int K) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)x[(size_t)m * K + k] * w[(size_t)n * K + k];
            y[(size_t)m * N + n] = s;
        }
}

int fp8_error_table(Fp8ErrorRow *rows, int max_rows, int K, uint64_t seed) {
    enum { M = 16, N = 64 };
    const Fp8Accum fp32 = {0, 0, FP8_ACC_TRUNCATE};
    const Fp8Accum tr_all = {FP8_ACC_BITS, 0, FP8_ACC_TRUNCATE}, rn_all = {FP8_ACC_BITS, 0, FP8_ACC_NEAREST};
    const Fp8Accum tr_128 = {FP8_ACC_BITS, FP8_NC, FP8_ACC_TRUNCATE}, rn_128 = {FP8_ACC_BITS, FP8_NC, FP8_ACC_NEAREST};
    const struct { const char *scaling, *accum; Fp8Accum acc; int per_row, ue8m0; } cases[] = {
        {"per-row / per-tensor", "FP32", fp32, 1, 0},
        {"per-row / per-tensor", "14-bit trunc, no promotion", tr_all, 1, 0},
        {"per-row / per-tensor", "14-bit nearest, no promotion", rn_all, 1, 0},
        {"per-row / per-tensor", "14-bit trunc, N_C=128", tr_128, 1, 0},
        {"per-row / per-tensor", "14-bit nearest, N_C=128", rn_128, 1, 0},
        {"1x128 / 128x128", "FP32 (DeepSeek kernel)", fp32, 0, 0},
        {"1x128 / 128x128", "14-bit trunc, N_C=128", tr_128, 0, 0},
        {"1x128 / 128x128", "14-bit nearest, N_C=128", rn_128, 0, 0},
        {"1x128/128x128 UE8M0", "FP32 (DeepSeek kernel)", fp32, 0, 1}, /* scales rounded up to 2^k */
    };
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    size_t nx = (size_t)M * K, nw = (size_t)N * K, nkb = (size_t)(K + FP8_BLOCK - 1) / FP8_BLOCK;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *xd = malloc(nx * 4), *wd = malloc(nw * 4);
    float *sx = malloc(M * nkb * 4), *sw = malloc(N * nkb * 4), *y = malloc(M * N * 4);
    uint8_t *qx = malloc(nx), *qw = malloc(nw);
    double *ref = malloc(M * N * 8), *ref_q = malloc(M * N * 8);
    int out = 0;
    if (!x || !w || !xd || !wd || !sx || !sw || !y || !qx || !qw || !ref || !ref_q) out = -1;
    Rng r;
    rng_seed(&r, seed);
    for (int data = 0; data < 2 && out >= 0; data++) {
        for (size_t i = 0; i < nx; i++) x[i] = rng_normal(&r);
        for (size_t i = 0; i < nw; i++) w[i] = rng_normal(&r);
        if (data == 1)
            for (int c = 0; c < K / 256; c++) {
                int ch = (int)(rng_next(&r) % (uint64_t)K);
                for (int m = 0; m < M; m++) x[(size_t)m * K + ch] *= 100.0f;
            }
        dot_f64(ref, x, w, M, N, K);
        for (int c = 0; c < n_cases && out < max_rows; c++) {
            int bk = cases[c].per_row ? K : FP8_BLOCK, bn = cases[c].per_row ? N : FP8_BLOCK;
            Fp8ScaleFmt fmt = cases[c].ue8m0 ? FP8_SCALE_UE8M0 : FP8_SCALE_F32;
            fp8_quant_act(qx, sx, x, M, K, bk, fmt);
            fp8_quant_block(qw, sw, w, N, K, bn, bk, fmt);
            fp8_dequant_act(xd, qx, sx, M, K, bk);
            fp8_dequant_block(wd, qw, sw, N, K, bn, bk);
            dot_f64(ref_q, xd, wd, M, N, K);
            fp8_gemm(y, qx, sx, qw, sw, M, N, K, bn, bk, cases[c].acc);
            rows[out++] = (Fp8ErrorRow){data ? "outliers" : "gaussian", cases[c].scaling,
                                        cases[c].accum, cases[c].acc, bk,
                                        max_rel(y, ref, M * N), max_rel(y, ref_q, M * N)};
        }
    }
    free(x); free(w); free(xd); free(wd); free(sx); free(sw); free(y); free(qx); free(qw);
    free(ref); free(ref_q);
    return out;
}

void fp8_error_print(FILE *f, const Fp8ErrorRow *rows, int n) {
    fprintf(f, "| data     | scaling x / W        | accumulator                  | vs FP64  | accum only |\n");
    fprintf(f, "|----------|----------------------|------------------------------|----------|------------|\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "| %-8s | %-20s | %-28s | %.2e | %.2e   |\n", rows[i].data, rows[i].scaling, rows[i].accum,
                rows[i].err_f64, rows[i].err_acc);
}
