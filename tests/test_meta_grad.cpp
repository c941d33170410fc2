// The meta-gradient chain of DESIGN §6 step 3: the normalization's backward against finite differences
// of L(a) = Σ_i g_i w̃_i(a), its agreement when the batch is split over ranks (global sums), and the whole
// chain through the weight net against finite differences of L(φ) = Σ_i g_i w̃_i(a(φ)) for every φ entry.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "metapo/core/error.h"
#include "metapo/meta/meta_grad.h"
#include "metapo/meta/weight_net.h"
#include "test_util.h"

using namespace metapo;
using metapo::test::error_of;
using std::vector;

namespace {

// Positive raw weights spread over (0.05, ~2), like a net's outputs away from the floor.
vector<double> random_a(size_t n, uint64_t seed) {
  vector<double> a = test::randn<double>(n, seed, 0.6);
  for (double& v : a) v = 0.05 + std::abs(v);
  return a;
}

// L(a) = Σ_i g_i w̃_i(a) over a whole (single-rank) batch.
double normalized_loss(const vector<double>& g, const vector<double>& a) {
  const int64_t B = int64_t(a.size());
  return test::dot(g, normalized_weights(a, B, local_a_sum(a)));
}

vector<double> slice(const vector<double>& v, size_t lo, size_t hi) {
  return vector<double>(v.begin() + lo, v.begin() + hi);
}

}  // namespace

TEST(MetaGrad, NormalizedWeightsAndLookaheadByHand) {
  // Global batch of 4 split 2 + 2; Σa = 0.5 + 1.5 + 1 + 1 = 4, so w̃ = 4 a / 4 = a.
  const vector<double> w = normalized_weights({0.5, 1.5}, 4, 4.0);
  EXPECT_DOUBLE_EQ(w[0], 0.5);
  EXPECT_DOUBLE_EQ(w[1], 1.5);
  // g_i = −(η/B) s_i with η = 1 by default.
  const vector<double> g = lookahead_dLdw({2.0, -4.0}, 4);
  EXPECT_DOUBLE_EQ(g[0], -0.5);
  EXPECT_DOUBLE_EQ(g[1], 1.0);
  EXPECT_DOUBLE_EQ(lookahead_dLdw({2.0}, 4, 0.1)[0], -0.05);
  EXPECT_DOUBLE_EQ(local_ga_sum({1.0, 2.0}, {3.0, 4.0}), 11.0);
  // dL/da_j = (B/Σa)(g_j − Σga/Σa): B = 2, a = (1, 3), g = (1, −1): Σa = 4, Σga = −2,
  // ḡ = −0.5, so dL/da = 0.5·(1.5, −0.5) = (0.75, −0.25).
  const vector<double> d = dLda({1.0, -1.0}, {1.0, 3.0}, 2, 4.0, -2.0);
  EXPECT_DOUBLE_EQ(d[0], 0.75);
  EXPECT_DOUBLE_EQ(d[1], -0.25);
}

TEST(MetaGrad, DLdaMatchesFiniteDifferences) {
  for (uint64_t seed : {1, 2, 3}) {
    const size_t n = 11;
    vector<double> a = random_a(n, seed);
    const vector<double> g = test::randn<double>(n, seed + 10);
    const double S = local_a_sum(a);
    const vector<double> d = dLda(g, a, int64_t(n), S, local_ga_sum(g, a));
    const vector<double> fd = test::fd_grad(a, [&] { return normalized_loss(g, a); }, 1e-6);
    double max_abs = 0;
    for (size_t j = 0; j < n; ++j) max_abs = std::max(max_abs, std::abs(d[j] - fd[j]));
    std::printf("dL/da vs FD (seed %d): max abs err %.3e\n", int(seed), max_abs);
    // L is O(1) and smooth in a (Σa ≥ 0.55): FD error ~1e-10, see test_weight_net.cpp.
    EXPECT_LT(max_abs, 1e-8);
    // The normalization is scale-invariant, so dL/da is orthogonal to a: Σ_j a_j dL/da_j = 0.
    EXPECT_NEAR(test::dot(a, d), 0.0, 1e-13);
  }
}

TEST(MetaGrad, DLdaUsesGlobalSumsAcrossRanks) {
  const size_t n = 11;
  const vector<double> a = random_a(n, 21), g = test::randn<double>(n, 22);
  const vector<double> whole = dLda(g, a, int64_t(n), local_a_sum(a), local_ga_sum(g, a));
  // Three "ranks" holding 4, 3 and 4 pairs: each reduces its local sums, the trainer all-reduces them.
  const size_t cut[] = {0, 4, 7, 11};
  double S = 0, GA = 0;
  for (int r = 0; r < 3; ++r) {
    S += local_a_sum(slice(a, cut[r], cut[r + 1]));
    GA += local_ga_sum(slice(g, cut[r], cut[r + 1]), slice(a, cut[r], cut[r + 1]));
  }
  for (int r = 0; r < 3; ++r) {
    const vector<double> part =
        dLda(slice(g, cut[r], cut[r + 1]), slice(a, cut[r], cut[r + 1]), int64_t(n), S, GA);
    for (size_t j = 0; j < part.size(); ++j)
      EXPECT_NEAR(part[j], whole[cut[r] + j], 1e-14) << "rank " << r << " pair " << j;
  }
}

TEST(MetaGrad, FullChainThroughWeightNetMatchesFiniteDifferences) {
  const int64_t F = 7, H = 12, B = 8;
  WeightNet net({F, H, 1e-3, 3});
  // Random O(1) parameters everywhere (the initial zero last layer would leave W1..b2 without gradient).
  net.params() = test::randn<double>(size_t(net.n_params()), 31, 0.5);
  const vector<double> X = test::randn<double>(size_t(B * F), 32);
  const vector<double> s = test::randn<double>(size_t(B), 33, 10.0);  // alignments ⟨ĝ_V, ∇ℓ_i⟩
  const vector<double> g = lookahead_dLdw(s, B);

  // L(φ) = Σ_i g_i w̃_i(a(φ)): the first-order look-ahead validation loss up to a φ-free constant.
  auto loss = [&] {
    vector<double> a;
    net.forward(X, B, a);
    return normalized_loss(g, a);
  };

  vector<double> a;
  net.forward(X, B, a);
  const double S = local_a_sum(a);
  const vector<double> dA = dLda(g, a, B, S, local_ga_sum(g, a));
  vector<double> grad(size_t(net.n_params()), 0.0);
  net.backward(dA, grad);

  const vector<double> fd = test::fd_grad(net.params(), loss, 1e-6);
  double max_abs = 0, max_ref = 0;
  for (size_t i = 0; i < fd.size(); ++i) {
    max_abs = std::max(max_abs, std::abs(grad[i] - fd[i]));
    max_ref = std::max(max_ref, std::abs(fd[i]));
  }
  std::printf("meta chain dL/dphi vs FD (%zu params): max abs err %.3e, max |grad| %.3e\n", fd.size(),
              max_abs, max_ref);
  EXPECT_GT(max_ref, 1e-2);
  EXPECT_LT(max_abs, 1e-8);
  for (size_t i = 0; i < fd.size(); ++i) ASSERT_NEAR(grad[i], fd[i], 1e-8) << "parameter " << i;

  // Two ranks with replicas of the net, 3 and 5 pairs each: the all-reduced (summed) gradient equals
  // the single-rank one up to the summation order.
  const int64_t cut[] = {0, 3, 8};
  vector<double> a_r[2];
  double S2 = 0, GA2 = 0;
  WeightNet replica[2] = {net, net};
  for (int r = 0; r < 2; ++r) {
    replica[r].forward(slice(X, size_t(cut[r] * F), size_t(cut[r + 1] * F)), cut[r + 1] - cut[r], a_r[r]);
    S2 += local_a_sum(a_r[r]);
    GA2 += local_ga_sum(slice(g, size_t(cut[r]), size_t(cut[r + 1])), a_r[r]);
  }
  vector<double> summed(size_t(net.n_params()), 0.0);
  for (int r = 0; r < 2; ++r) {
    vector<double> local(size_t(net.n_params()), 0.0);
    replica[r].backward(dLda(slice(g, size_t(cut[r]), size_t(cut[r + 1])), a_r[r], B, S2, GA2), local);
    for (size_t i = 0; i < local.size(); ++i) summed[i] += local[i];
  }
  for (size_t i = 0; i < summed.size(); ++i) ASSERT_NEAR(summed[i], grad[i], 1e-14) << "parameter " << i;
}

TEST(MetaGrad, RmsNormalizedAlignments) {
  // s = (3, −4) on one rank, (0, 0) on the other: Σ s² = 25 over B = 4, rms 2.5.
  const vector<double> a = rms_normalized({3.0, -4.0}, 25.0, 4);
  EXPECT_DOUBLE_EQ(a[0], 1.2);
  EXPECT_DOUBLE_EQ(a[1], -1.6);
  EXPECT_EQ(rms_normalized({0.0, 0.0}, 25.0, 4), (vector<double>{0.0, 0.0}));
  EXPECT_EQ(rms_normalized({0.0, 0.0}, 0.0, 2), (vector<double>{0.0, 0.0}));  // an all-zero batch stays zero
  // Scale-free: s and 1000 s give the same result; the normalized batch has unit RMS.
  const vector<double> s = test::randn<double>(9, 5);
  const double ss = test::dot(s, s);
  vector<double> big = s;
  for (double& v : big) v *= 1000;
  const vector<double> x = rms_normalized(s, ss, 9), y = rms_normalized(big, 1e6 * ss, 9);
  for (size_t i = 0; i < 9; ++i) EXPECT_NEAR(x[i], y[i], 1e-14);
  EXPECT_NEAR(test::dot(x, x), 9.0, 1e-12);
}

TEST(MetaGrad, UniformPenaltyMatchesFiniteDifferences) {
  // L(a) = Σ_i g_i w̃_i + (ρ / 2B) Σ_i (w̃_i − 1)²: add_uniform_penalty gives ∂L/∂w̃, and dLda carries it
  // through the normalization; both against central differences in a.
  for (uint64_t seed : {1, 2, 3}) {
    const size_t n = 13;
    const double rho = 0.5 * double(seed);
    vector<double> a = random_a(n, seed);
    const vector<double> g0 = test::randn<double>(n, seed + 20);
    const auto loss = [&] {
      const vector<double> w = normalized_weights(a, int64_t(n), local_a_sum(a));
      double p = 0;
      for (double v : w) p += (v - 1) * (v - 1);
      return test::dot(g0, w) + rho / (2.0 * double(n)) * p;
    };
    vector<double> g = g0;
    add_uniform_penalty(g, a, int64_t(n), local_a_sum(a), rho);
    const vector<double> d = dLda(g, a, int64_t(n), local_a_sum(a), local_ga_sum(g, a));
    const vector<double> fd = test::fd_grad(a, loss, 1e-6);
    double max_abs = 0;
    for (size_t j = 0; j < n; ++j) max_abs = std::max(max_abs, std::abs(d[j] - fd[j]));
    std::printf("penalized dL/da vs FD (seed %d, rho %.1f): max abs err %.3e\n", int(seed), rho, max_abs);
    EXPECT_LT(max_abs, 1e-8);  // as in DLdaMatchesFiniteDifferences: L is O(1) and smooth in a
  }
  // At uniform weights the penalty has no gradient; ρ = 0 leaves g as it was.
  vector<double> g = {0.25, -0.5};
  add_uniform_penalty(g, {0.3, 0.3}, 2, 0.6, 2.0);
  EXPECT_EQ(g, (vector<double>{0.25, -0.5}));
  add_uniform_penalty(g, {0.1, 0.5}, 2, 0.6, 0.0);
  EXPECT_EQ(g, (vector<double>{0.25, -0.5}));
  // Raw weights (0.1, 0.5) of a batch of 2: w̃ = (1/3, 5/3), ρ = 3: g += 3 (w̃ − 1) / 2 = (−1, 1).
  add_uniform_penalty(g, {0.1, 0.5}, 2, 0.6, 3.0);
  EXPECT_NEAR(g[0], 0.25 - 1.0, 1e-15);
  EXPECT_NEAR(g[1], -0.5 + 1.0, 1e-15);
}

TEST(MetaGrad, RejectsBadInput) {
  EXPECT_NE(error_of([] {
              vector<double> g = {1.0};
              add_uniform_penalty(g, {1.0}, 1, 1.0, -1.0);
            }).find("rho must be finite and >= 0"),
            std::string::npos);
  EXPECT_NE(error_of([] { normalized_weights({1.0}, 1, 0.0); }).find("must be finite and > 0"),
            std::string::npos);
  EXPECT_NE(error_of([] { dLda({1.0, 2.0}, {1.0}, 2, 1.0, 1.0); }).find("2 values of dL/dw for 1"),
            std::string::npos);
  EXPECT_NE(error_of([] { lookahead_dLdw({1.0, 2.0, 3.0}, 2); }).find("exceed the global batch size 2"),
            std::string::npos);
  EXPECT_NE(error_of([] { local_ga_sum({1.0}, {}); }).find("1 values of dL/dw for 0"), std::string::npos);
}

// The significance gate: the correlation from the all-reduced sums is Pearson's (split over two
// "ranks" by adding their sums), undefined without spread; T is the EMA-weighted mean of the
// correlations over its own standard error, computed here from the explicit weights of the EMA.
TEST(MetaGrad, GateCorrelationAndTStatistic) {
  const vector<double> a = random_a(12, 5), s = test::randn<double>(12, 6, 1.0);
  double lo[kGateSums], hi[kGateSums], all[kGateSums];
  local_gate_sums(slice(a, 0, 5), slice(s, 0, 5), lo);
  local_gate_sums(slice(a, 5, 12), slice(s, 5, 12), hi);
  for (int k = 0; k < kGateSums; ++k) all[k] = lo[k] + hi[k];
  double ma = 0, ms = 0, saa = 0, sss = 0, sas = 0;
  for (size_t i = 0; i < 12; ++i) ma += a[i] / 12, ms += s[i] / 12;
  for (size_t i = 0; i < 12; ++i)
    saa += (a[i] - ma) * (a[i] - ma), sss += (s[i] - ms) * (s[i] - ms), sas += (a[i] - ma) * (s[i] - ms);
  EXPECT_NEAR(correlation_from_sums(all, 12), sas / std::sqrt(saa * sss), 1e-12);
  // Every weight the same (the first step: the net's last layer is zero): no correlation.
  local_gate_sums(vector<double>(12, 0.5), s, all);
  EXPECT_TRUE(std::isnan(correlation_from_sums(all, 12)));

  const double alpha = 0.1;
  const int64_t B = 32;
  const vector<double> c = {0.3, 0.1, 0.25, NAN, 0.4, 0.05, 0.2};
  GateState st;
  vector<double> taken;
  for (double v : c) {
    gate_update(st, v, alpha, B);
    if (!std::isnan(v)) taken.push_back(v);
    const size_t n = taken.size();
    ASSERT_EQ(st.n, int64_t(n));
    // Explicit normalized EMA weights w_k ∝ α (1 − α)^(n − 1 − k).
    vector<double> w(n);
    double sw = 0;
    for (size_t k = 0; k < n; ++k) sw += (w[k] = alpha * std::pow(1 - alpha, double(n - 1 - k)));
    double m = 0, m2 = 0, S = 0;
    for (size_t k = 0; k < n; ++k) m += w[k] / sw * taken[k], m2 += w[k] / sw * taken[k] * taken[k], S += (w[k] / sw) * (w[k] / sw);
    const double var = std::max(m2 - m * m, 1.0 / double(B - 1));
    EXPECT_NEAR(st.t, m / std::sqrt(var * S), 1e-9) << "after " << n << " correlations";
  }
  // γ: 0 up to Z, then 1 − 1/T².
  st.t = 1.5;
  EXPECT_EQ(gate_gamma(st, 2.0), 0.0);
  EXPECT_NEAR(gate_gamma(st, 1.0), 1.0 - 1.0 / 2.25, 1e-15);
  st.t = 4.0;
  EXPECT_NEAR(gate_gamma(st, 2.0), 0.9375, 1e-15);
  st.t = 0.5;  // below 1 no share of T² is signal, whatever Z
  EXPECT_EQ(gate_gamma(st, 0.0), 0.0);
  st.t = -5.0;
  EXPECT_EQ(gate_gamma(st, 2.0), 0.0);
  // The applied weights.
  const vector<double> w = {0.25, 0.5, 0.9};
  EXPECT_EQ(applied_weights(w, 1.0), w);
  EXPECT_EQ(applied_weights(w, 0.0), vector<double>(3, 1.0));
  const vector<double> w2 = applied_weights(w, 2.0);
  for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(w2[i], w[i] * w[i], 1e-15);
  EXPECT_NE(error_of([] {
              GateState g;
              gate_update(g, 0.1, 0.0, 8);
            }).find("EMA rate must be in (0, 1]"),
            std::string::npos);
}
