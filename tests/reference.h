// Straightforward double-precision loops of what the kernels and ops compute, for the tests that check
// them (test_kernels: each CPU kernel; test_ops: each op through the dispatch): fp32 results against
// these, and backwards against finite differences of <r, these>.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace metapo::test {

// Y[n, out] = X[n, in] W[out, in]^T (+ b[out]; b may be null).
inline std::vector<double> ref_linear(const std::vector<double>& X, const std::vector<double>& W, const double* b,
                                      int64_t n, int64_t in, int64_t out) {
  std::vector<double> Y(size_t(n * out));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < out; ++j) {
      double s = b ? b[j] : 0.0;
      for (int64_t k = 0; k < in; ++k) s += X[i * in + k] * W[j * in + k];
      Y[i * out + j] = s;
    }
  return Y;
}

// y = x / rms(x) * w per row of C.
inline std::vector<double> ref_rmsnorm(const std::vector<double>& x, const std::vector<double>& w, int64_t n,
                                       int64_t C, double eps) {
  std::vector<double> y(x.size());
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += x[i * C + c] * x[i * C + c];
    const double r = 1.0 / std::sqrt(ss / double(C) + eps);
    for (int64_t c = 0; c < C; ++c) y[i * C + c] = x[i * C + c] * r * w[c];
  }
  return y;
}

// h = silu(g) * u over rows of [g | u].
inline std::vector<double> ref_swiglu(const std::vector<double>& gu, int64_t n, int64_t I) {
  std::vector<double> h(size_t(n * I));
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < I; ++i) {
      const double g = gu[t * 2 * I + i], u = gu[t * 2 * I + I + i];
      h[t * I + i] = g / (1.0 + std::exp(-g)) * u;
    }
  return h;
}

// Causal attention over packed sequences cu (rows of the fused [q | k | v], Hq query heads and Hkv KV
// heads of D): every (sequence, head, row) separately.
inline std::vector<double> ref_attention(const std::vector<double>& qkv, const std::vector<int64_t>& cu, int64_t Hq,
                                         int64_t Hkv, int64_t D) {
  const int64_t n = cu.back(), Q = Hq * D, ld = Q + 2 * Hkv * D;
  std::vector<double> out(size_t(n * Q), 0.0);
  const double scale = 1.0 / std::sqrt(double(D));
  for (size_t si = 0; si + 1 < cu.size(); ++si)
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t g = h / (Hq / Hkv);
      for (int64_t i = cu[si]; i < cu[si + 1]; ++i) {
        std::vector<double> sc;
        double mx = -1e300;
        for (int64_t j = cu[si]; j <= i; ++j) {
          double d = 0;
          for (int64_t k = 0; k < D; ++k) d += qkv[i * ld + h * D + k] * qkv[j * ld + Q + g * D + k];
          sc.push_back(d * scale);
          mx = std::max(mx, d * scale);
        }
        double sum = 0;
        for (double& v : sc) sum += (v = std::exp(v - mx));
        for (int64_t j = cu[si]; j <= i; ++j)
          for (int64_t k = 0; k < D; ++k)
            out[i * Q + h * D + k] += sc[size_t(j - cu[si])] / sum * qkv[j * ld + Q + Hkv * D + g * D + k];
      }
    }
  return out;
}

// log p(tg[i] | h[rows[i]]) under the LM head W [V, C].
inline std::vector<double> ref_logprob(const std::vector<double>& h, const std::vector<double>& W,
                                       const std::vector<int32_t>& rows, const std::vector<int32_t>& tg, int64_t C,
                                       int64_t V) {
  std::vector<double> lp;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<double> z(static_cast<size_t>(V));
    double mx = -1e300;
    for (int64_t v = 0; v < V; ++v) {
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += h[rows[i] * C + c] * W[v * C + c];
      mx = std::max(mx, z[size_t(v)] = s);
    }
    double sum = 0;
    for (double x : z) sum += std::exp(x - mx);
    lp.push_back(z[size_t(tg[i])] - mx - std::log(sum));
  }
  return lp;
}

}  // namespace metapo::test
