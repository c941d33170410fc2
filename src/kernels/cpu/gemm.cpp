#include "metapo/kernels/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <vector>

#include "metapo/core/buffer.h"

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

namespace {

// db (+)= column sums of dY [n, out], in a fixed order (each thread owns whole columns): deterministic.
template <typename T>
void bias_grad(T* db, const T* dY, int64_t n, int64_t out, bool accumulate) {
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < out; ++j) {
    T s = 0;
    for (int64_t i = 0; i < n; ++i) s += dY[i * out + j];
    db[j] = accumulate ? db[j] + s : s;
  }
}

}  // namespace

template <typename T>
void linear_backward(T* dX, T* dW, T* db, const T* dY, const T* X, const T* W, int64_t n,
                     int64_t in, int64_t out, bool accumulate) {
  if (dX) gemm<T>(false, false, n, in, out, T(1), dY, out, W, in, T(0), dX, in);
  gemm<T>(true, false, out, in, n, T(1), dY, out, X, in, accumulate ? T(1) : T(0), dW, in);
  if (db) bias_grad(db, dY, n, out, accumulate);
}

template <typename T>
void linear_ghost_dots(const T* A, const T* G, const T* Ghat, const T* ghat_b, int64_t n, int64_t in,
                       int64_t out, T* work, double* rdot) {
  // ⟨G_t, Ĝ A_t⟩ = ⟨G_t Ĝ, A_t⟩: take the GEMM whose output rows are the shorter, P = A Ĝᵀ [n, out] or
  // Q = G Ĝ [n, in] (the same FLOPs, less to write and read back), then a row-wise dot in double.
  const bool by_out = out <= in;
  const int64_t m = by_out ? out : in;
  if (by_out)
    gemm<T>(false, true, n, out, in, T(1), A, in, Ghat, in, T(0), work, out);  // P = A Ĝᵀ  [n, out]
  else
    gemm<T>(false, false, n, in, out, T(1), G, out, Ghat, in, T(0), work, in);  // Q = G Ĝ  [n, in]
  const T* other = by_out ? G : A;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const T* g = other + t * m;
    const T* p = work + t * m;
    // Double accumulation, vectorized (the simd reduction lets the compiler reorder the sum).
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t o = 0; o < m; ++o) s += double(g[o]) * double(p[o]);
    if (ghat_b) {
      const T* gy = G + t * out;
#pragma omp simd reduction(+ : s)
      for (int64_t o = 0; o < out; ++o) s += double(gy[o]) * double(ghat_b[o]);
    }
    rdot[t] += s;
  }
}

namespace {

// Tiles of dW [out, in] for linear_backward_ghost: a tile's dW, Ĝ and one segment's product fit in the
// L2 cache together (3 × 96 × 512 floats = 590 KB) while the segment GEMMs stay large enough for BLAS.
constexpr int64_t kGhostTileOut = 96, kGhostTileIn = 512;
// Below this mean segment length the per-segment products cost more than the per-row ghost GEMM.
constexpr int64_t kGhostMinMeanSegment = 4;

}  // namespace

template <typename T>
void linear_backward_ghost(T* dX, T* dW, T* db, const T* dY, const T* X, const T* W, int64_t n, int64_t in,
                           int64_t out, bool accumulate, const T* Ghat, const T* ghat_b, const int64_t* seg,
                           int64_t n_seg, double* rdot) {
  int64_t nonempty = 0;
  for (int64_t s = 0; s < n_seg; ++s) nonempty += seg[s + 1] > seg[s] ? 1 : 0;
  if (nonempty == 0 || n < kGhostMinMeanSegment * nonempty) {
    // Short segments: one [n, out] ghost GEMM and per-row dots are cheaper.
    linear_backward(dX, dW, db, dY, X, W, n, in, out, accumulate);
    if (n > 0) {
      Buffer<T> work = tagged_buffer<T>(Mem::Workspace, size_t(n * std::min(in, out)));
      std::vector<double> row(size_t(n), 0.0);
      linear_ghost_dots(X, dY, Ghat, ghat_b, n, in, out, work.data(), row.data());
      for (int64_t s = 0; s < n_seg; ++s)
        for (int64_t t = seg[s]; t < seg[s + 1]; ++t) rdot[seg[s]] += row[size_t(t)];
    }
    return;
  }
  // dX and db exactly as linear_backward (dW is skipped there: in/out = 0 makes its GEMM empty).
  if (dX) gemm<T>(false, false, n, in, out, T(1), dY, out, W, in, T(0), dX, in);
  if (db) bias_grad(db, dY, n, out, accumulate);
  // dW tile by tile: per segment, P_s = G_sᵀ A_s (one small GEMM, BLAS single-threaded inside the
  // parallel loop), ⟨Ĝ, P_s⟩ on the tile and dW += P_s while P_s is in cache. Every tile sums its
  // segments in order and the partial dots are reduced tile by tile in order: the same result for any
  // thread count.
  const int64_t nto = (out + kGhostTileOut - 1) / kGhostTileOut, nti = (in + kGhostTileIn - 1) / kGhostTileIn;
  const int64_t ntiles = nto * nti;
  std::vector<double> part(size_t(ntiles * n_seg), 0.0);
#pragma omp parallel
  {
    std::vector<T> P(size_t(kGhostTileOut * kGhostTileIn));
#pragma omp for schedule(static)
    for (int64_t tile = 0; tile < ntiles; ++tile) {
      const int64_t o0 = (tile / nti) * kGhostTileOut, i0 = (tile % nti) * kGhostTileIn;
      const int64_t mo = std::min(kGhostTileOut, out - o0), mi = std::min(kGhostTileIn, in - i0);
      bool first = !accumulate;
      for (int64_t s = 0; s < n_seg; ++s) {
        const int64_t t0 = seg[s], len = seg[s + 1] - t0;
        if (len <= 0) continue;
        gemm<T>(true, false, mo, mi, len, T(1), dY + t0 * out + o0, out, X + t0 * in + i0, in, T(0), P.data(), mi);
        double d = 0;
        for (int64_t o = 0; o < mo; ++o) {
          T* w = dW + (o0 + o) * in + i0;
          const T* g = Ghat + (o0 + o) * in + i0;
          const T* p = P.data() + o * mi;
          T ds = 0;  // ≤ kGhostTileIn terms in T, then double
          if (first) {
#pragma omp simd reduction(+ : ds)
            for (int64_t i = 0; i < mi; ++i) ds += p[i] * g[i], w[i] = p[i];
          } else {
#pragma omp simd reduction(+ : ds)
            for (int64_t i = 0; i < mi; ++i) ds += p[i] * g[i], w[i] += p[i];
          }
          d += double(ds);
        }
        part[size_t(tile * n_seg + s)] = d;
        first = false;
      }
      if (first)  // no rows at all and dW is to be overwritten
        for (int64_t o = 0; o < mo; ++o) std::fill(dW + (o0 + o) * in + i0, dW + (o0 + o) * in + i0 + mi, T(0));
    }
  }
  for (int64_t s = 0; s < n_seg; ++s) {
    if (seg[s + 1] <= seg[s]) continue;
    double d = 0;
    for (int64_t tile = 0; tile < ntiles; ++tile) d += part[size_t(tile * n_seg + s)];
    if (ghat_b)
      for (int64_t t = seg[s]; t < seg[s + 1]; ++t) {
        double b = 0;
        for (int64_t o = 0; o < out; ++o) b += double(dY[t * out + o]) * double(ghat_b[o]);
        d += b;
      }
    rdot[seg[s]] += d;
  }
}

template void linear_ghost_dots<float>(const float*, const float*, const float*, const float*, int64_t,
                                       int64_t, int64_t, float*, double*);
template void linear_ghost_dots<double>(const double*, const double*, const double*, const double*,
                                        int64_t, int64_t, int64_t, double*, double*);
template void linear_backward_ghost<float>(float*, float*, float*, const float*, const float*, const float*,
                                           int64_t, int64_t, int64_t, bool, const float*, const float*,
                                           const int64_t*, int64_t, double*);
template void linear_backward_ghost<double>(double*, double*, double*, const double*, const double*,
                                            const double*, int64_t, int64_t, int64_t, bool, const double*,
                                            const double*, const int64_t*, int64_t, double*);
template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t,
                                    int64_t, int64_t);
template void linear_forward<double>(double*, const double*, const double*, const double*, int64_t,
                                     int64_t, int64_t);
template void linear_backward<float>(float*, float*, float*, const float*, const float*,
                                     const float*, int64_t, int64_t, int64_t, bool);
template void linear_backward<double>(double*, double*, double*, const double*, const double*,
                                      const double*, int64_t, int64_t, int64_t, bool);

}  // namespace metapo::cpu
