/* tests/cblas_shim/cblas.h - the two CBLAS routines the C code calls, for a GPU box without
 * OpenBLAS: `make cuda` puts this folder on the include path and links cblas_shim.c (a naive,
 * row-major-only version) when `pkg-config --exists openblas` fails. Not for speed. */
#ifndef DSV3_CBLAS_SHIM_H
#define DSV3_CBLAS_SHIM_H

#ifdef __cplusplus
extern "C" {
#endif

enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };

/* C [M, N] = alpha op(A) op(B) + beta C, row-major only (all that the C code uses). */
void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int M,
                 int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc);
void cblas_saxpy(int n, float alpha, const float *x, int incx, float *y, int incy);

#ifdef __cplusplus
}
#endif

#endif
