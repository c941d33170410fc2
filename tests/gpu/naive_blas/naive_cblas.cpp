// Plain-loop cblas_sgemm / cblas_dgemm (row-major only) with double accumulation: the GPU tests' stand-in
// for OpenBLAS (cblas.h says why).
#include "cblas.h"

#include <cstdint>
#include <cstdlib>

namespace {

template <typename T>
void gemm(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint M, blasint N, blasint K, T alpha,
          const T* A, blasint lda, const T* B, blasint ldb, T beta, T* C, blasint ldc) {
  if (order != CblasRowMajor) std::abort();
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = ta == CblasNoTrans ? A[i * lda + k] : A[k * lda + i];
        const double b = tb == CblasNoTrans ? B[k * ldb + j] : B[j * ldb + k];
        s += a * b;
      }
      T& c = C[i * ldc + j];
      c = T(double(alpha) * s + (beta == T(0) ? 0.0 : double(beta) * double(c)));
    }
}

}  // namespace

extern "C" void cblas_sgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint M, blasint N, blasint K,
                            float alpha, const float* A, blasint lda, const float* B, blasint ldb, float beta,
                            float* C, blasint ldc) {
  gemm(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

extern "C" void cblas_dgemm(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint M, blasint N, blasint K,
                            double alpha, const double* A, blasint lda, const double* B, blasint ldb, double beta,
                            double* C, blasint ldc) {
  gemm(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
