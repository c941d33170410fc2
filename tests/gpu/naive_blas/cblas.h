// The two CBLAS calls the CPU kernels make (cblas_sgemm, cblas_dgemm), for the GPU tests' CPU reference:
// the device machine has the CUDA toolkit but no BLAS, so tests/gpu compiles the CPU kernels against
// these plain loops (naive_cblas.cpp) instead of OpenBLAS.
#pragma once

enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112, CblasConjTrans = 113 };
typedef int blasint;

#ifdef __cplusplus
extern "C" {
#endif
void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, blasint M, blasint N,
                 blasint K, float alpha, const float* A, blasint lda, const float* B, blasint ldb, float beta, float* C,
                 blasint ldc);
void cblas_dgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, blasint M, blasint N,
                 blasint K, double alpha, const double* A, blasint lda, const double* B, blasint ldb, double beta,
                 double* C, blasint ldc);
#ifdef __cplusplus
}
#endif
