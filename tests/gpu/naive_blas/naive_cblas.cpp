// Plain-loop cblas_sgemm / cblas_dgemm (row-major only): the GPU tests' stand-in for OpenBLAS (cblas.h
// says why). Both operands are first packed so that every output element is one contiguous dot product
// over K (which the compiler vectorizes), and rows are spread over OpenMP threads when the build has
// OpenMP: fast enough for the tests' CPU references on the device machine's cores.
#include "cblas.h"

#include <cstdint>
#include <cstdlib>
#include <vector>

namespace {

template <typename T>
void gemm(CBLAS_ORDER order, CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, blasint M, blasint N, blasint K, T alpha,
          const T* A, blasint lda, const T* B, blasint ldb, T beta, T* C, blasint ldc) {
  if (order != CblasRowMajor) std::abort();
  // a[i, k] = op(A)[i, k], bt[j, k] = op(B)[k, j]: both K-contiguous.
  std::vector<T> a(size_t(M) * size_t(K)), bt(size_t(N) * size_t(K));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k) a[size_t(i * K + k)] = ta == CblasNoTrans ? A[i * lda + k] : A[k * lda + i];
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < N; ++j)
    for (int64_t k = 0; k < K; ++k) bt[size_t(j * K + k)] = tb == CblasNoTrans ? B[k * ldb + j] : B[j * ldb + k];
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      const T* x = a.data() + i * K;
      const T* y = bt.data() + j * K;
      T s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < K; ++k) s += x[k] * y[k];
      T& c = C[i * ldc + j];
      c = alpha * s + (beta == T(0) ? T(0) : beta * c);
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
