// The weight net (DESIGN §6): backward and dz/dx against central finite differences for every
// parameter, the initial output a = a_min + (1 − a_min)/2 for any input, determinism of the seeded
// initialization, the input checks, and Adam against its formulas worked by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "metapo/core/error.h"
#include "metapo/meta/weight_net.h"
#include "test_util.h"

using namespace metapo;
using metapo::test::error_of;
using std::vector;

namespace {

// A net whose every parameter is random and O(1), the last layer included, so every path of the
// backward carries a non-zero gradient (the initial net's zero last layer would hide W1, W2, b1, b2).
WeightNet random_net(int64_t F, int64_t H, uint64_t seed) {
  WeightNet net({F, H, 1e-3, seed});
  net.params() = test::randn<double>(size_t(net.n_params()), seed + 100, 0.5);
  return net;
}

}  // namespace

TEST(WeightNet, LayoutIsContiguousAndDocumented) {
  const WeightNetLayout l = weight_net_layout(7, 32);
  EXPECT_EQ(l.w1, 0);
  EXPECT_EQ(l.b1, 7 * 32);
  EXPECT_EQ(l.w2, l.b1 + 32);
  EXPECT_EQ(l.b2, l.w2 + 32 * 32);
  EXPECT_EQ(l.w3, l.b2 + 32);
  EXPECT_EQ(l.b3, l.w3 + 32);
  EXPECT_EQ(l.total, 7 * 32 + 32 + 32 * 32 + 32 + 32 + 1);
  WeightNet net(WeightNetConfig{});
  EXPECT_EQ(net.n_params(), 1345);
  EXPECT_EQ(int64_t(net.params().size()), net.n_params());
}

TEST(WeightNet, InitialOutputIsExactlyTheMidpoint) {
  for (double a_min : {0.0, 1e-3, 0.25}) {
    WeightNetConfig cfg;
    cfg.a_min = a_min;
    cfg.seed = 7;
    WeightNet net(cfg);
    const WeightNetLayout& l = net.layout();
    for (int64_t i = l.w3; i < l.total; ++i) EXPECT_EQ(net.params()[i], 0.0) << "last layer entry " << i;
    // Any input, extreme ones included: z is exactly 0, so a is exactly the midpoint.
    const int64_t B = 6;
    vector<double> X = test::randn<double>(size_t(B * cfg.n_features), 3, 3.0);
    X[0] = 1e6;
    X[1] = -1e6;
    vector<double> a, z;
    net.forward(X, B, a, &z);
    const double mid = a_min + (1 - a_min) * 0.5;
    for (int64_t b = 0; b < B; ++b) {
      EXPECT_EQ(z[b], 0.0);
      EXPECT_EQ(a[b], mid) << "row " << b << " a_min " << a_min;
    }
  }
}

TEST(WeightNet, InitializationIsGlorotUniformAndDeterministic) {
  WeightNetConfig cfg;
  cfg.seed = 1234;
  WeightNet n1(cfg), n2(cfg);
  EXPECT_EQ(n1.params(), n2.params());  // bit-identical: every rank builds the same net
  cfg.seed = 1235;
  WeightNet n3(cfg);
  EXPECT_NE(n1.params(), n3.params());

  const WeightNetLayout& l = n1.layout();
  const vector<double>& p = n1.params();
  const double r1 = std::sqrt(6.0 / (7 + 32)), r2 = std::sqrt(6.0 / (32 + 32));
  double max1 = 0, max2 = 0;
  for (int64_t i = l.w1; i < l.b1; ++i) max1 = std::max(max1, std::abs(p[i]));
  for (int64_t i = l.w2; i < l.b2; ++i) max2 = std::max(max2, std::abs(p[i]));
  EXPECT_LT(max1, r1);
  EXPECT_LT(max2, r2);
  EXPECT_GT(max1, 0.8 * r1);  // 224 uniform draws reach the edge of the interval
  EXPECT_GT(max2, 0.9 * r2);
  for (int64_t i = l.b1; i < l.w2; ++i) EXPECT_EQ(p[i], 0.0);
  for (int64_t i = l.b2; i < l.w3; ++i) EXPECT_EQ(p[i], 0.0);
}

TEST(WeightNet, BackwardMatchesFiniteDifferences) {
  const int64_t F = 7, H = 9, B = 5;
  WeightNet net = random_net(F, H, 42);
  const vector<double> X = test::randn<double>(size_t(B * F), 43);
  const vector<double> dA = test::randn<double>(size_t(B), 44);
  // L(φ) = Σ_b dA_b a_b(φ), so dL/dφ is exactly what backward(dA) accumulates.
  auto loss = [&] {
    vector<double> a;
    net.forward(X, B, a);
    return test::dot(dA, a);
  };
  vector<double> a;
  net.forward(X, B, a);
  // backward accumulates: start from a known non-zero gradient and subtract it afterwards.
  vector<double> grad(size_t(net.n_params()), 0.25);
  net.backward(dA, grad);
  for (double& g : grad) g -= 0.25;

  const vector<double> fd = test::fd_grad(net.params(), loss, 1e-6);
  double max_abs = 0, max_ref = 0;
  for (size_t i = 0; i < fd.size(); ++i) {
    max_abs = std::max(max_abs, std::abs(grad[i] - fd[i]));
    max_ref = std::max(max_ref, std::abs(fd[i]));
  }
  std::printf("weight net backward vs FD (%zu params): max abs err %.3e, max |grad| %.3e\n", fd.size(),
              max_abs, max_ref);
  // Central differences with h = 1e-6 in double: truncation ~h² |a'''| ≈ 1e-12 and rounding
  // ~eps |L| / h ≈ 1e-10; 1e-8 leaves two orders of margin.
  EXPECT_LT(max_abs, 1e-8);
  EXPECT_GT(max_ref, 1e-2);  // the check is not vacuous
  for (size_t i = 0; i < fd.size(); ++i) ASSERT_NEAR(grad[i], fd[i], 1e-8) << "parameter " << i;
}

TEST(WeightNet, DzDxMatchesFiniteDifferencesAndForward) {
  const int64_t F = 7, H = 32;
  WeightNet net = random_net(F, H, 5);
  vector<double> x = test::randn<double>(size_t(F), 6, 1.5);
  const vector<double> g = net.dz_dx(x.data());
  const vector<double> fd = test::fd_grad(x, [&] { return net.z_of(x.data()); }, 1e-6);
  double max_abs = 0;
  for (int64_t f = 0; f < F; ++f) max_abs = std::max(max_abs, std::abs(g[f] - fd[f]));
  std::printf("dz/dx vs FD: max abs err %.3e\n", max_abs);
  EXPECT_LT(max_abs, 1e-8);

  vector<double> a, z;
  net.forward(x, 1, a, &z);
  EXPECT_EQ(z[0], net.z_of(x.data()));
  const double s = 1 / (1 + std::exp(-z[0]));
  EXPECT_NEAR(a[0], 1e-3 + (1 - 1e-3) * s, 1e-15);
}

TEST(WeightNet, RejectsBadInput) {
  EXPECT_NE(error_of([] { WeightNet({7, 0, 1e-3, 0}); }).find("hidden must be >= 1"), std::string::npos);
  EXPECT_NE(error_of([] { WeightNet({0, 32, 1e-3, 0}); }).find("n_features"), std::string::npos);
  EXPECT_NE(error_of([] { WeightNet({7, 32, 1.0, 0}); }).find("a_min must be in [0, 1)"), std::string::npos);
  WeightNet net(WeightNetConfig{});
  vector<double> grad(size_t(net.n_params())), a;
  EXPECT_NE(error_of([&] { net.backward({1.0}, grad); }).find("no forward()"), std::string::npos);
  EXPECT_NE(error_of([&] { net.forward(vector<double>(13), 2, a); }).find("expected B*F = 2*7"),
            std::string::npos);
  net.forward(vector<double>(14), 2, a);
  EXPECT_NE(error_of([&] { net.backward({1.0}, grad); }).find("last forward had B = 2"), std::string::npos);
  vector<double> short_grad(3);
  EXPECT_NE(error_of([&] { net.backward({1.0, 2.0}, short_grad); }).find("expected n_params = 1345"),
            std::string::npos);
}

TEST(WeightNet, AdamMatchesHandComputation) {
  vector<double> p = {1.0, -2.0, 0.5};
  AdamState st;
  const double lr = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  // Step 1: m = 0.1 g, v = 0.001 g², so m̂ = g and v̂ = g²: each parameter moves by lr·g/(|g| + eps).
  const vector<double> g1 = {0.5, -0.1, 0.0};
  adam_update(p, g1, st, lr);
  EXPECT_EQ(st.t, 1);
  EXPECT_NEAR(p[0], 1.0 - 0.1 * 0.5 / (0.5 + eps), 1e-15);
  EXPECT_NEAR(p[1], -2.0 + 0.1 * 0.1 / (0.1 + eps), 1e-15);
  EXPECT_EQ(p[2], 0.5);  // a zero gradient does not move a parameter
  // Step 2 by the formulas: m = 0.9·0.1·g1 + 0.1·g2, v = 0.999·0.001·g1² + 0.001·g2²,
  // m̂ = m/(1 − 0.81), v̂ = v/(1 − 0.998001).
  const vector<double> g2 = {-0.2, 0.3, 1.0};
  const vector<double> before = p;
  adam_update(p, g2, st, lr, b1, b2, eps);
  EXPECT_EQ(st.t, 2);
  for (size_t i = 0; i < p.size(); ++i) {
    const double m = 0.9 * 0.1 * g1[i] + 0.1 * g2[i];
    const double v = 0.999 * 0.001 * g1[i] * g1[i] + 0.001 * g2[i] * g2[i];
    const double mhat = m / (1 - 0.81), vhat = v / (1 - 0.998001);
    EXPECT_NEAR(p[i], before[i] - lr * mhat / (std::sqrt(vhat) + eps), 1e-14) << "parameter " << i;
    EXPECT_NEAR(st.m[i], m, 1e-16);
    EXPECT_NEAR(st.v[i], v, 1e-16);
  }
  // Worked number for parameter 2 (g1 = 0, g2 = 1): m̂ = 0.1/0.19, v̂ = 0.001/0.001999 → step ≈ 0.0744.
  EXPECT_NEAR(before[2] - p[2], 0.1 * (0.1 / 0.19) / (std::sqrt(0.001 / 0.001999) + 1e-8), 1e-15);

  AdamState bad;
  EXPECT_NE(error_of([&] { adam_update(p, {1.0}, bad, lr); }).find("gradient has 1 values"),
            std::string::npos);
}
