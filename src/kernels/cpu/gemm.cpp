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

// The fused weight gradient and segment dots of linear_backward_ghost, written as a GEMM micro-kernel
// (packed panels, a register block of the output) so that each segment's product never leaves the
// registers: dW = Gᵀ A is accumulated over the rows in an MR × NR register block of dW (MR rows of
// `out`, NR = 2 vectors of `in`), and at the end of every segment the block is dotted with the same
// block of Ĝ, added to the chunk's sum and cleared. The extra work is that flush, once per segment and
// block: a few rows' worth of FMAs, where a separate ghost GEMM would cost a whole forward and BLAS
// calls per segment lose most of their speed on products of 30–60 rows.
// GCC vector extensions: the vector width follows the target (AVX-512: 64 bytes, else 32).
// METAPO_GHOST_VECTOR_BYTES overrides it (to test the other width on a machine without it).
#if defined(METAPO_GHOST_VECTOR_BYTES)
constexpr int kGhostVectorBytes = METAPO_GHOST_VECTOR_BYTES;
#elif defined(__AVX512F__)
constexpr int kGhostVectorBytes = 64;
#else
constexpr int kGhostVectorBytes = 32;
#endif

template <typename T, int VB>
struct GhostVec {
  typedef T type __attribute__((vector_size(VB)));
  static constexpr int width = VB / int(sizeof(T));
};

// Rows of a chunk that end in one flush: `len` rows, then the block's product belongs to segment `sid`
// (−1: rows outside every segment, which count in dW only).
struct GhostRun {
  int64_t len, sid;
};

// Registers: MR × 2 accumulators + 2 loads + a broadcast; 16 vector registers with AVX2, 32 with AVX-512.
template <typename T, int VB>
constexpr int ghost_mr() {
  return VB == 64 ? 12 : 6;
}

// One register block over one chunk of rows: Ap [rows][NR] (a packed panel of A), Gp [rows][MR] (of G).
// dW and Ĝ point at the block's top-left element (row stride ld); rows/cols < MR/NR at the edges.
// A run's product is summed in registers; at its end it is dotted with the block of Ĝ and added to the
// chunk's sum (L1), and dW is written once per chunk.
template <typename T, int VB>
void ghost_block(const GhostRun* runs, int64_t n_runs, const T* Ap, const T* Gp, T* dW, const T* Gh, int64_t ld,
                 int rows, int cols, bool overwrite, double* part) {
  using V = typename GhostVec<T, VB>::type;
  constexpr int W = GhostVec<T, VB>::width, NR = 2 * W, MR = ghost_mr<T, VB>();
  // Ĝ is first needed at the end of the first run and dW at the end of the chunk: fetch their rows
  // while the rows are summed.
  for (int r = 0; r < rows; ++r) {
    __builtin_prefetch(Gh + r * ld, 0), __builtin_prefetch(Gh + r * ld + NR - 1, 0);
    __builtin_prefetch(dW + r * ld, 1), __builtin_prefetch(dW + r * ld + NR - 1, 1);
  }
  const bool full = rows == MR && cols == NR;
  T gbuf[MR][NR];  // the block of Ĝ, zero outside the matrix (edge blocks only)
  const T* gp = Gh;
  int64_t gld = ld;
  if (!full) {
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NR; ++c) gbuf[r][c] = r < rows && c < cols ? Gh[r * ld + c] : T(0);
    gp = &gbuf[0][0], gld = NR;
  }
  V acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = V{};
  V sum[MR][2];  // the chunk's sum so far (the runs before the current one)
  for (int r = 0; r < MR; ++r) sum[r][0] = sum[r][1] = V{};
  for (int64_t k = 0; k < n_runs; ++k) {
    for (int64_t t = 0; t < runs[k].len; ++t, Ap += NR, Gp += MR) {
      V a0, a1;
      __builtin_memcpy(&a0, Ap, sizeof(V));
      __builtin_memcpy(&a1, Ap + W, sizeof(V));
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const T gr = Gp[r];
        acc[r][0] += gr * a0;
        acc[r][1] += gr * a1;
      }
    }
    // Flush: the run's own product is dotted with Ĝ (so its dot is as precise as the run's own terms,
    // whatever the other runs hold), added to the chunk's sum and cleared.
    V dv{};
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      V g0, g1;
      __builtin_memcpy(&g0, gp + r * gld, sizeof(V)), __builtin_memcpy(&g1, gp + r * gld + W, sizeof(V));
      dv += acc[r][0] * g0 + acc[r][1] * g1;
      sum[r][0] += acc[r][0], sum[r][1] += acc[r][1];
      acc[r][0] = acc[r][1] = V{};
    }
    // Horizontal sum: halve the vector until one lane is left.
    T lanes[W];
    __builtin_memcpy(lanes, &dv, sizeof(V));
    for (int h = W / 2; h > 0; h /= 2)
      for (int l = 0; l < h; ++l) lanes[l] += lanes[l + h];
    if (runs[k].sid >= 0) part[runs[k].sid] += double(lanes[0]);
  }
  if (full) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      V w0 = sum[r][0], w1 = sum[r][1], d0, d1;
      T* w = dW + r * ld;
      if (!overwrite) {
        __builtin_memcpy(&d0, w, sizeof(V)), __builtin_memcpy(&d1, w + W, sizeof(V));
        w0 += d0, w1 += d1;
      }
      __builtin_memcpy(w, &w0, sizeof(V)), __builtin_memcpy(w + W, &w1, sizeof(V));
    }
  } else {
    T buf[MR][NR];
    for (int r = 0; r < MR; ++r)
      __builtin_memcpy(&buf[r][0], &sum[r][0], sizeof(V)), __builtin_memcpy(&buf[r][W], &sum[r][1], sizeof(V));
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) dW[r * ld + c] = overwrite ? buf[r][c] : dW[r * ld + c] + buf[r][c];
  }
}

// dW (+)= Gᵀ A and part[ob · n_seg + s] = Σ over the o-block ob's rows of ⟨Ĝ, G_sᵀ A_s⟩. Rows are taken
// in chunks of kChunkRows, A's columns in blocks of kChunkCols (a packed chunk of A fits the L2 cache);
// threads share the packing of A and split the o-blocks. Every element of dW and every part[] sums its
// terms in the same order for any thread count.
template <typename T, int VB>
void ghost_weight_grad(T* dW, const T* G, const T* A, const T* Gh, int64_t n, int64_t in, int64_t out,
                       bool accumulate, const int64_t* seg, int64_t n_seg, std::vector<double>& part) {
  constexpr int W = GhostVec<T, VB>::width, NR = 2 * W, MR = ghost_mr<T, VB>();
  constexpr int64_t kChunkRows = 128;
  constexpr int64_t kChunkCols = (kWeightGradGhostWorkspaceBytes / int64_t(sizeof(T)) / kChunkRows) / NR * NR;
  const int64_t n_ob = (out + MR - 1) / MR;
  part.assign(size_t(n_ob * n_seg), 0.0);
  std::vector<int64_t> sid(size_t(n), -1);  // each row's segment
  for (int64_t s = 0; s < n_seg; ++s)
    for (int64_t t = std::max<int64_t>(seg[s], 0); t < std::min(seg[s + 1], n); ++t) sid[size_t(t)] = s;
  Buffer<T> Ap = tagged_buffer<T>(Mem::Workspace, size_t(kChunkRows * kChunkCols));
#pragma omp parallel
  {
    std::vector<T> Gp(size_t(kChunkRows * MR));
    std::vector<GhostRun> runs;
    for (int64_t t0 = 0; t0 < n; t0 += kChunkRows) {
      const int64_t kn = std::min(kChunkRows, n - t0);
      runs.clear();
      for (int64_t t = t0; t < t0 + kn; ++t)
        if (t == t0 || sid[size_t(t)] != sid[size_t(t - 1)])
          runs.push_back({1, sid[size_t(t)]});
        else
          ++runs.back().len;
      for (int64_t i0 = 0; i0 < in; i0 += kChunkCols) {
        const int64_t ni = std::min(kChunkCols, in - i0), n_pan = (ni + NR - 1) / NR;
#pragma omp for schedule(static)
        for (int64_t p = 0; p < n_pan; ++p) {
          const int64_t c0 = i0 + p * NR, nc = std::min<int64_t>(NR, in - c0);
          T* dst = Ap.data() + p * kChunkRows * NR;
          for (int64_t t = 0; t < kn; ++t, dst += NR) {
            const T* src = A + (t0 + t) * in + c0;
            for (int64_t c = 0; c < nc; ++c) dst[c] = src[c];
            for (int64_t c = nc; c < NR; ++c) dst[c] = T(0);
          }
        }
#pragma omp for schedule(static)
        for (int64_t ob = 0; ob < n_ob; ++ob) {
          const int64_t o0 = ob * MR;
          const int rows = int(std::min<int64_t>(MR, out - o0));
          if (rows == MR) {
            for (int64_t t = 0; t < kn; ++t) __builtin_memcpy(&Gp[size_t(t * MR)], G + (t0 + t) * out + o0, sizeof(T) * MR);
          } else {
            for (int64_t t = 0; t < kn; ++t) {
              const T* src = G + (t0 + t) * out + o0;
              for (int r = 0; r < MR; ++r) Gp[size_t(t * MR + r)] = r < rows ? src[r] : T(0);
            }
          }
          for (int64_t p = 0; p < n_pan; ++p) {
            const int64_t c0 = i0 + p * NR;
            ghost_block<T, VB>(runs.data(), int64_t(runs.size()), Ap.data() + p * kChunkRows * NR, Gp.data(),
                               dW + o0 * in + c0, Gh + o0 * in + c0, in, rows, int(std::min<int64_t>(NR, in - c0)),
                               !accumulate && t0 == 0, part.data() + ob * n_seg);
          }
        }
      }
    }
  }
}

// Below this mean segment length the per-segment flushes cost more than the per-row ghost GEMM.
constexpr int64_t kGhostMinMeanSegment = 4;

}  // namespace

template <typename T>
void weight_grad_ghost(T* dW, const T* G, const T* A, const T* Ghat, int64_t n, int64_t in, int64_t out, bool accumulate,
                       const int64_t* seg, int64_t n_seg, double* seg_dot) {
  if (n <= 0 || n_seg <= 0) {  // no dots to take
    gemm<T>(true, false, out, in, n, T(1), G, out, A, in, accumulate ? T(1) : T(0), dW, in);
    return;
  }
  std::vector<double> part;  // the first chunk of rows overwrites dW when !accumulate
  ghost_weight_grad<T, kGhostVectorBytes>(dW, G, A, Ghat, n, in, out, accumulate, seg, n_seg, part);
  const int64_t n_ob = int64_t(part.size()) / n_seg;
  for (int64_t s = 0; s < n_seg; ++s) {
    double d = 0;
    for (int64_t ob = 0; ob < n_ob; ++ob) d += part[size_t(ob * n_seg + s)];
    seg_dot[s] += d;
  }
}

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
  // dX and db exactly as linear_backward; dW and the segment dots in the fused micro-kernel.
  if (dX) gemm<T>(false, false, n, in, out, T(1), dY, out, W, in, T(0), dX, in);
  if (db) bias_grad(db, dY, n, out, accumulate);
  std::vector<double> sd(size_t(n_seg), 0.0);
  weight_grad_ghost(dW, dY, X, Ghat, n, in, out, accumulate, seg, n_seg, sd.data());
  for (int64_t s = 0; s < n_seg; ++s) {
    if (seg[s + 1] <= seg[s]) continue;
    double d = sd[size_t(s)];
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
template void weight_grad_ghost<float>(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t,
                                       bool, const int64_t*, int64_t, double*);
template void weight_grad_ghost<double>(double*, const double*, const double*, const double*, int64_t, int64_t,
                                        int64_t, bool, const int64_t*, int64_t, double*);
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
