// The normalization and look-ahead steps of the meta-gradient (formulas in meta_grad.h).
#include "metapo/meta/meta_grad.h"

#include <algorithm>
#include <cmath>

#include "metapo/core/error.h"

namespace metapo {

namespace {

void check_batch(const char* what, size_t n_local, int64_t B) {
  MP_CHECK(B >= 1, what, ": global batch size must be >= 1 (got ", B, ")");
  MP_CHECK(int64_t(n_local) <= B, what, ": ", n_local, " local pairs exceed the global batch size ", B);
}

void check_sum_a(const char* what, double global_sum_a) {
  MP_CHECK(std::isfinite(global_sum_a) && global_sum_a > 0, what,
           ": global sum of raw weights must be finite and > 0 (got ", global_sum_a, ")");
}

}  // namespace

double local_a_sum(const std::vector<double>& a) {
  double s = 0;
  for (double v : a) s += v;
  return s;
}

std::vector<double> normalized_weights(const std::vector<double>& a, int64_t B, double global_sum_a) {
  check_batch("normalized weights", a.size(), B);
  check_sum_a("normalized weights", global_sum_a);
  const double scale = double(B) / global_sum_a;
  std::vector<double> w(a.size());
  for (size_t i = 0; i < a.size(); ++i) w[i] = scale * a[i];
  return w;
}

std::vector<double> lookahead_dLdw(const std::vector<double>& s, int64_t B, double eta) {
  check_batch("look-ahead dL/dw", s.size(), B);
  const double scale = -eta / double(B);
  std::vector<double> g(s.size());
  for (size_t i = 0; i < s.size(); ++i) g[i] = scale * s[i];
  return g;
}

std::vector<double> rms_normalized(const std::vector<double>& s, double global_sum_sq, int64_t B) {
  check_batch("normalized alignments", s.size(), B);
  MP_CHECK(std::isfinite(global_sum_sq) && global_sum_sq >= 0, "normalized alignments: Σ s² must be finite and >= 0 (got ",
           global_sum_sq, ")");
  std::vector<double> out(s.size(), 0.0);
  if (global_sum_sq <= 0) return out;
  const double inv = 1.0 / std::sqrt(global_sum_sq / double(B));
  for (size_t i = 0; i < s.size(); ++i) out[i] = s[i] * inv;
  return out;
}

void add_uniform_penalty(std::vector<double>& g, const std::vector<double>& a, int64_t B, double global_sum_a,
                         double rho) {
  MP_CHECK(g.size() == a.size(), "uniform penalty: ", g.size(), " values of dL/dw for ", a.size(), " raw weights");
  check_batch("uniform penalty", a.size(), B);
  check_sum_a("uniform penalty", global_sum_a);
  MP_CHECK(rho >= 0 && std::isfinite(rho), "uniform penalty: rho must be finite and >= 0 (got ", rho, ")");
  const double scale = double(B) / global_sum_a;
  for (size_t i = 0; i < g.size(); ++i) g[i] += rho * (scale * a[i] - 1.0) / double(B);
}

double local_ga_sum(const std::vector<double>& g, const std::vector<double>& a) {
  MP_CHECK(g.size() == a.size(), "local g·a sum: ", g.size(), " values of dL/dw for ", a.size(),
           " raw weights");
  double s = 0;
  for (size_t i = 0; i < g.size(); ++i) s += g[i] * a[i];
  return s;
}

std::vector<double> dLda(const std::vector<double>& g, const std::vector<double>& a, int64_t B,
                         double global_sum_a, double global_sum_ga) {
  MP_CHECK(g.size() == a.size(), "dL/da: ", g.size(), " values of dL/dw for ", a.size(), " raw weights");
  check_batch("dL/da", a.size(), B);
  check_sum_a("dL/da", global_sum_a);
  // The mean of g under the weights a: every pair's gradient is measured against it, because raising
  // one a_j takes weight away from all the others through Σa.
  const double g_bar = global_sum_ga / global_sum_a;
  const double scale = double(B) / global_sum_a;
  std::vector<double> d(g.size());
  for (size_t j = 0; j < g.size(); ++j) d[j] = scale * (g[j] - g_bar);
  return d;
}

void local_gate_sums(const std::vector<double>& a, const std::vector<double>& s, double* sums) {
  MP_CHECK(a.size() == s.size(), "gate sums: ", a.size(), " weights for ", s.size(), " alignments");
  for (int k = 0; k < kGateSums; ++k) sums[k] = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    sums[0] += a[i], sums[1] += a[i] * a[i], sums[2] += s[i], sums[3] += s[i] * s[i], sums[4] += a[i] * s[i];
  }
}

double correlation_from_sums(const double* sums, int64_t B) {
  MP_CHECK(B >= 1, "gate correlation: global batch size must be >= 1 (got ", B, ")");
  const double n = double(B), ma = sums[0] / n, ms = sums[2] / n;
  const double va = sums[1] / n - ma * ma, vs = sums[3] / n - ms * ms, cov = sums[4] / n - ma * ms;
  // Relative to the scale of the values, so that rounding in the sums of a near-constant vector does
  // not pass for spread.
  if (!(va > 1e-12 * (sums[1] / n)) || !(vs > 1e-12 * (sums[3] / n))) return std::nan("");
  return std::max(-1.0, std::min(1.0, cov / std::sqrt(va * vs)));
}

void gate_update(GateState& st, double c, double alpha, int64_t B) {
  MP_CHECK(alpha > 0 && alpha <= 1, "gate: EMA rate must be in (0, 1] (got ", alpha, ")");
  if (!std::isfinite(c)) return;
  st.n += 1;
  st.m = (1 - alpha) * st.m + alpha * c;
  st.v = (1 - alpha) * st.v + alpha * c * c;
  const double d = 1 - alpha, dn = std::pow(d, double(st.n)), bc = 1 - dn;
  const double mh = st.m / bc, vh = st.v / bc;
  const double floor = B > 1 ? 1.0 / double(B - 1) : 1.0;
  const double var = std::max(vh - mh * mh, floor);
  // Σ_k w_k² for the normalized weights w_k = α d^(n−k) / bc of the n values taken in.
  const double S = alpha * alpha * (1 - dn * dn) / (1 - d * d) / (bc * bc);
  st.t = mh / std::sqrt(var * S);
}

double gate_gamma(const GateState& st, double Z) {
  if (!(st.t > Z) || !(st.t > 1)) return 0.0;
  return 1.0 - 1.0 / (st.t * st.t);
}

std::vector<double> applied_weights(const std::vector<double>& a, double gamma) {
  if (gamma == 1.0) return a;
  std::vector<double> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = gamma == 0.0 ? 1.0 : std::pow(a[i], gamma);
  return out;
}

}  // namespace metapo
