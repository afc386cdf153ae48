/* fp8_error.h - `run fp8-error`: the error of an FP8 GEMM per scaling layout and accumulator, the
 * table of notes/fp8.md section 4. An experiment on fp8.c's codecs and GEMM, not part of them;
 * fp8_error.c says how the data are drawn and what each row measures. */
#ifndef FP8_ERROR_H
#define FP8_ERROR_H

#include <stdint.h>
#include <stdio.h>

#include "fp8.h"

/* One row: a data set, a scaling layout, an accumulator, and the measured relative errors
 * (max_i |y_i - ref_i| / max_i |ref_i| over 16 x 64 dot products of length K):
 *   err_f64    vs the FP64 dot products of the unquantized inputs (quantization + accumulation)
 *   err_acc    vs the FP64 dot products of the dequantized inputs (accumulation alone) */
typedef struct {
    const char *data;    /* "gaussian" or "outliers" */
    const char *scaling; /* "1x128 / 128x128" or "per-row / per-tensor" */
    const char *accum;   /* "FP32", "14-bit trunc, N_C=128", ... */
    Fp8Accum acc;
    int block_k;         /* K-extent of a scale block */
    double err_f64, err_acc;
} Fp8ErrorRow;

/* Fills rows [max_rows] (FP8_ERROR_ROWS are made) for dot products of length K (a multiple of 128)
 * drawn from seed. Returns the number of rows, or -1 when memory runs out. Prints nothing. */
#define FP8_ERROR_ROWS 18
int fp8_error_table(Fp8ErrorRow *rows, int max_rows, int K, uint64_t seed);

/* rows [n] as the markdown table of notes/fp8.md (a header line, then one line per row). */
void fp8_error_print(FILE *f, const Fp8ErrorRow *rows, int n);

#endif
