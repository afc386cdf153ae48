/* matmul_e4m3.h - the decode dot products of E4M3 weights with block scales (matmul_e4m3.c states
 * the order of the sums; every kernel gives the same bits). */
#ifndef MATMUL_E4M3_H
#define MATMUL_E4M3_H

#include "ops.h"

/* The plain reference: sum_i decode(q[i]) * x[i] * s[i / block_c] for one row, q [cols] its codes,
 * s [ceil(cols / block_c)] its block scales, x [cols]. */
float e4m3_dot_plain(const float *x, const uint8_t *q, const float *s, int cols, int block_c);

/* 1 when x [n] may be scaled by 2^120 exactly (no finite |x| >= 256). */
int e4m3_x_scalable(const float *x, size_t n);

/* out[t][r] for rows [r0, r0+nr) of W (E4M3 with scale_inv) and tokens t < n, out [n, W->rows],
 * x [n, W->cols]; through kernel k (MATMUL_PLAIN, _AVX2 or _AVX512, which the caller has checked
 * the CPU runs). xs: x * 2^120 when e4m3_x_scalable(x), else NULL. With scan set, each row group is
 * scanned for NaN codes, and one holding one goes the plain way; scan = 0 (the caller knows that no
 * code of W is NaN) skips the scan. Returns 1 when a scan found a NaN code, else 0. */
int e4m3_rows(float *out, const float *x, const float *xs, const Tensor *W, int n, int r0, int nr, MatmulKernel k,
              int scan);

#endif
