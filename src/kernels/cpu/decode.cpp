#include "metapo/kernels/decode.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "metapo/kernels/vec_math.h"

namespace metapo::cpu {

namespace {

// <a, b> over n elements with 16 interleaved partial sums folded in a fixed tree: vectorizes
// without -ffast-math, and the result depends only on a and b.
inline float dot_fixed(const float* a, const float* b, int64_t n) {
  constexpr int64_t kL = 16;
  float acc[kL] = {};
  int64_t k = 0;
  for (; k + kL <= n; k += kL) {
#pragma omp simd
    for (int64_t j = 0; j < kL; ++j) acc[j] += a[k + j] * b[k + j];
  }
  float tail = 0;
  for (; k < n; ++k) tail += a[k] * b[k];
  for (int64_t half = kL / 2; half > 0; half /= 2)
    for (int64_t j = 0; j < half; ++j) acc[j] += acc[j + half];
  return acc[0] + tail;
}

}  // namespace

// Y[m, out] = X[m, in] W[out, in]^T (+ b[out]) for the decode step. Tiles run over W's rows, whose
// count is fixed by the layer, and each output element is one dot product summed in a fixed order
// (kL interleaved partial sums, then a fixed tree), so row i's result is bit-identical whatever m is
// and whichever rows share the call. A BLAS GEMM is not: it picks its kernel by the shape. Every
// thread owns whole tiles, so the thread count does not matter either.
void linear_rows(float* Y, const float* X, const float* W, const float* b, int64_t m, int64_t in,
                 int64_t out) {
  constexpr int64_t kR = 4;   // W rows per tile: each X load feeds kR multiply-adds
  constexpr int64_t kL = 16;  // partial sums per output: independent chains for the FMA pipes
  static_assert(kR == 4, "the tile loop below names its four W rows");
  const int64_t n_tiles = (out + kR - 1) / kR;
  // A decode step of a small model is many tiny products: threads only pay off above ~0.25M MACs
  // (either way each output is computed by one thread in the same order).
#pragma omp parallel for schedule(static) if (m * in * out > (int64_t(1) << 18))
  for (int64_t tile = 0; tile < n_tiles; ++tile) {
    const int64_t o0 = tile * kR;
    // The last tile may be short: its missing rows repeat the last row and are not stored.
    const float* w0 = W + std::min(o0 + 0, out - 1) * in;
    const float* w1 = W + std::min(o0 + 1, out - 1) * in;
    const float* w2 = W + std::min(o0 + 2, out - 1) * in;
    const float* w3 = W + std::min(o0 + 3, out - 1) * in;
    for (int64_t i = 0; i < m; ++i) {
      const float* x = X + i * in;
      float acc[kR][kL] = {};
      int64_t k = 0;
      for (; k + kL <= in; k += kL) {
#pragma omp simd
        for (int64_t j = 0; j < kL; ++j) {
          const float xv = x[k + j];
          acc[0][j] += xv * w0[k + j];
          acc[1][j] += xv * w1[k + j];
          acc[2][j] += xv * w2[k + j];
          acc[3][j] += xv * w3[k + j];
        }
      }
      const float* w[kR] = {w0, w1, w2, w3};
      for (int64_t r = 0; r < kR && o0 + r < out; ++r) {
        float tail = 0;
        for (int64_t kk = k; kk < in; ++kk) tail += x[kk] * w[r][kk];
        for (int64_t half = kL / 2; half > 0; half /= 2)
          for (int64_t j = 0; j < half; ++j) acc[r][j] += acc[r][j + half];
        Y[i * out + o0 + r] = acc[r][0] + tail + (b ? b[o0 + r] : 0.0f);
      }
    }
  }
}

void decode_attention(const DecodeAttentionParams& p) {
  const int64_t m = p.m, Hq = p.n_heads, D = p.head_dim, hpg = p.n_heads / p.n_kv_heads;
  int64_t max_len = 0;
  for (int64_t i = 0; i < m; ++i) max_len = std::max(max_len, p.n_keys[i]);
  // One (row, head) per task, fixed order.
#pragma omp parallel if (m * Hq * max_len * D > (int64_t(1) << 18))
  {
    std::vector<float> pr(static_cast<size_t>(max_len));  // [keys] scores, then probabilities
#pragma omp for collapse(2) schedule(static)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t hd = 0; hd < Hq; ++hd) {
        const int64_t nk = p.n_keys[i], g = hd / hpg;
        const float* q = p.q + i * p.ld_q + hd * D;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < nk; ++j) {
          pr[j] = dot_fixed(q, p.k[i] + j * p.ld_kv + g * D, D) * p.scale;
          mx = std::max(mx, pr[j]);
        }
#pragma omp simd
        for (int64_t j = 0; j < nk; ++j) pr[j] = vexp(pr[j] - mx);
        float sum = 0;
        for (int64_t j = 0; j < nk; ++j) sum += pr[j];
        float* o = p.out + i * p.ld_out + hd * D;  // [D]
        std::fill(o, o + D, 0.0f);
        for (int64_t j = 0; j < nk; ++j) {
          const float* v = p.v[i] + j * p.ld_kv + g * D;
          for (int64_t e = 0; e < D; ++e) o[e] += pr[j] * v[e];
        }
        const float inv = 1.0f / sum;
        for (int64_t e = 0; e < D; ++e) o[e] *= inv;
      }
  }
}

}  // namespace metapo::cpu
