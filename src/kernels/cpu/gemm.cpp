#include "metapo/kernels/gemm.h"

#include <cblas.h>

namespace metapo::cpu {

static CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

template <>
void gemm<float>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_sgemm(CblasRowMajor, tr(ta), tr(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <>
void gemm<double>(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                  int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  cblas_dgemm(CblasRowMajor, tr(ta), tr(tb), M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <typename T>
void linear_forward(T* Y, const T* X, const T* W, const T* b, int64_t n, int64_t in, int64_t out) {
  if (b) {
    // Seed Y with the bias so the GEMM adds onto it (beta = 1): no second pass over Y.
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < out; ++j) Y[i * out + j] = b[j];
  }
  gemm<T>(false, true, n, out, in, T(1), X, in, W, in, b ? T(1) : T(0), Y, out);
}

template <typename T>
void linear_backward(T* dX, T* dW, T* db, const T* dY, const T* X, const T* W, int64_t n,
                     int64_t in, int64_t out, bool accumulate) {
  if (dX) gemm<T>(false, false, n, in, out, T(1), dY, out, W, in, T(0), dX, in);
  gemm<T>(true, false, out, in, n, T(1), dY, out, X, in, accumulate ? T(1) : T(0), dW, in);
  if (db) {
    // Column sums in a fixed order (each thread owns whole columns): deterministic.
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < out; ++j) {
      T s = 0;
      for (int64_t i = 0; i < n; ++i) s += dY[i * out + j];
      db[j] = accumulate ? db[j] + s : s;
    }
  }
}

template <typename T>
void linear_ghost_dots(const T* A, const T* G, const T* Ghat, const T* ghat_b, int64_t n, int64_t in,
                       int64_t out, T* work, double* rdot) {
  gemm<T>(false, true, n, out, in, T(1), A, in, Ghat, in, T(0), work, out);  // P = A Ĝᵀ  [n, out]
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const T* g = G + t * out;
    const T* p = work + t * out;
    // Double accumulation, vectorized (the simd reduction lets the compiler reorder the sum).
    double s = 0;
    if (ghat_b) {
#pragma omp simd reduction(+ : s)
      for (int64_t o = 0; o < out; ++o) s += double(g[o]) * (double(p[o]) + double(ghat_b[o]));
    } else {
#pragma omp simd reduction(+ : s)
      for (int64_t o = 0; o < out; ++o) s += double(g[o]) * double(p[o]);
    }
    rdot[t] += s;
  }
}

template void linear_ghost_dots<float>(const float*, const float*, const float*, const float*, int64_t,
                                       int64_t, int64_t, float*, double*);
template void linear_ghost_dots<double>(const double*, const double*, const double*, const double*,
                                        int64_t, int64_t, int64_t, double*, double*);
template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t,
                                    int64_t, int64_t);
template void linear_forward<double>(double*, const double*, const double*, const double*, int64_t,
                                     int64_t, int64_t);
template void linear_backward<float>(float*, float*, float*, const float*, const float*,
                                     const float*, int64_t, int64_t, int64_t, bool);
template void linear_backward<double>(double*, double*, double*, const double*, const double*,
                                      const double*, int64_t, int64_t, int64_t, bool);

}  // namespace metapo::cpu
