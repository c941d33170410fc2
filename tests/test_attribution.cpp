// Interpretability (DESIGN §6): integrated gradients' completeness and its quadrature error (K = 64
// against 256 and the trapezoid rule's error term), a hand-built net that only reads one feature, the
// temporal share, permutation importance, and AUC / Spearman against values worked by hand.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "metapo/core/error.h"
#include "metapo/meta/attribution.h"
#include "metapo/meta/weight_net.h"
#include "test_util.h"

using namespace metapo;
using metapo::test::error_of;
using std::vector;

namespace {

// Today's 7 features: margin_ema, margin_trend, volatility, ref_deviation, log_count | margin, loss.
const vector<bool> kTemporal = {true, true, true, true, true, false, false};

WeightNet random_net(uint64_t seed) {
  WeightNet net({7, 32, 1e-3, seed});
  net.params() = test::randn<double>(size_t(net.n_params()), seed + 100, 0.5);
  return net;
}

// The net reads only feature k: every other column of W1 is zero, the last layer is random.
WeightNet only_feature(int64_t k, uint64_t seed) {
  WeightNet net({7, 32, 1e-3, seed});
  const WeightNetLayout& l = net.layout();
  vector<double>& p = net.params();
  for (int64_t o = 0; o < 32; ++o)
    for (int64_t f = 0; f < 7; ++f)
      if (f != k) p[l.w1 + o * 7 + f] = 0;
  const vector<double> last = test::randn<double>(33, seed + 1);
  for (int64_t i = 0; i < 33; ++i) p[l.w3 + i] = last[i];
  return net;
}

// φ'(α) = d z(αx)/dα = x · ∇z(αx).
double phi1(const WeightNet& net, const vector<double>& x, double alpha) {
  vector<double> xa(x.size());
  for (size_t f = 0; f < x.size(); ++f) xa[f] = alpha * x[f];
  return test::dot(x, net.dz_dx(xa.data()));
}

}  // namespace

TEST(Attribution, CompletenessWithinTheTrapezoidError) {
  const WeightNet net = random_net(11);
  const int64_t B = 6, F = 7;
  const vector<double> X = test::randn<double>(size_t(B * F), 12, 1.5);
  const vector<double> origin(size_t(F), 0.0);
  const double z0 = net.z_of(origin.data());
  const vector<double> attr64 = integrated_gradients(net, X, B, 64);
  const vector<double> attr256 = integrated_gradients(net, X, B, 256);
  double worst64 = 0, worst256 = 0;
  for (int64_t b = 0; b < B; ++b) {
    const vector<double> x(X.begin() + b * F, X.begin() + (b + 1) * F);
    const double dz = net.z_of(x.data()) - z0;
    double sum64 = 0, sum256 = 0;
    for (int64_t f = 0; f < F; ++f) {
      sum64 += attr64[b * F + f];
      sum256 += attr256[b * F + f];
    }
    const double gap64 = sum64 - dz, gap256 = sum256 - dz;
    // The trapezoid rule's leading error (Euler–Maclaurin): (φ''(1) − φ''(0)) / (12 K²), with φ'' by
    // central differences of φ' (h = 1e-4: error ~h² φ'''' ≈ 1e-8 relative, far below the 5% checked).
    const double h = 1e-4;
    auto phi2 = [&](double al) { return (phi1(net, x, al + h) - phi1(net, x, al - h)) / (2 * h); };
    const double lead = phi2(1.0) - phi2(0.0);
    const double pred64 = lead / (12.0 * 64 * 64), pred256 = lead / (12.0 * 256 * 256);
    // The rigorous bound max|φ'''| / (12 K²), the max over a fine grid of second differences of φ'.
    double m3 = 0;
    const int grid = 400;
    for (int i = 0; i <= grid; ++i) {
      const double al = double(i) / grid;
      const double d3 = (phi1(net, x, al + h) - 2 * phi1(net, x, al) + phi1(net, x, al - h)) / (h * h);
      m3 = std::max(m3, std::abs(d3));
    }
    std::printf("row %d: z(x)-z(0) %+.4f  gap K=64 %+.3e (lead term %+.3e, bound %.3e)  K=256 %+.3e  "
                "ratio %.2f\n",
                int(b), dz, gap64, pred64, m3 / (12.0 * 64 * 64), gap256, gap64 / gap256);
    EXPECT_LE(std::abs(gap64), m3 / (12.0 * 64 * 64));
    EXPECT_LE(std::abs(gap256), m3 / (12.0 * 256 * 256));
    EXPECT_NEAR(gap64, pred64, 0.05 * std::abs(pred64) + 1e-13);
    EXPECT_NEAR(gap256, pred256, 0.05 * std::abs(pred256) + 1e-13);
    // Second order: 4× the steps, 1/16 of the gap (the O(K⁻⁴) rest moves the ratio by < 1 here).
    EXPECT_NEAR(gap64 / gap256, 16.0, 1.0);
    worst64 = std::max(worst64, std::abs(gap64));
    worst256 = std::max(worst256, std::abs(gap256));
  }
  EXPECT_DOUBLE_EQ(max_completeness_gap(net, X, B, attr64), worst64);
  EXPECT_DOUBLE_EQ(max_completeness_gap(net, X, B, attr256), worst256);
  std::printf("max completeness gap: K=64 %.3e, K=256 %.3e\n", worst64, worst256);
}

TEST(Attribution, OnlyTheFeatureTheNetReadsGetsAttribution) {
  for (int64_t k : {2, 6}) {  // one temporal, one instantaneous
    const WeightNet net = only_feature(k, 40 + uint64_t(k));
    const int64_t B = 5, F = 7;
    const vector<double> X = test::randn<double>(size_t(B * F), 41, 1.5);
    const vector<double> attr = integrated_gradients(net, X, B);
    const vector<double> origin(size_t(F), 0.0);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t f = 0; f < F; ++f) {
        if (f == k) continue;
        EXPECT_EQ(attr[b * F + f], 0.0) << "row " << b << " feature " << f;
      }
      EXPECT_NEAR(attr[b * F + k], net.z_of(X.data() + b * F) - net.z_of(origin.data()), 1e-3);
    }
    const AttributionSummary ig = summarize_attribution(attr, B, kTemporal);
    EXPECT_GT(ig.mean_abs[k], 1e-2);
    EXPECT_EQ(ig.temporal_share, kTemporal[k] ? 1.0 : 0.0);

    const AttributionSummary perm = permutation_importance(net, X, B, kTemporal, 9, 3);
    for (int64_t f = 0; f < F; ++f) {
      if (f == k) continue;
      EXPECT_EQ(perm.mean_abs[f], 0.0) << "feature " << f;  // z does not change at all
    }
    EXPECT_GT(perm.mean_abs[k], 1e-2);
    EXPECT_EQ(perm.temporal_share, kTemporal[k] ? 1.0 : 0.0);
  }
}

TEST(Attribution, SummaryByHandAndTheUndecidedInitialNet) {
  // attr [2, 3]: mean |attr| = (2, 1, 0.5); temporal = features 0 and 2 → (2 + 0.5) / 3.5.
  const AttributionSummary s = summarize_attribution({1, -2, 0.5, -3, 0, 0.5}, 2, {true, false, true});
  EXPECT_DOUBLE_EQ(s.mean_abs[0], 2.0);
  EXPECT_DOUBLE_EQ(s.mean_abs[1], 1.0);
  EXPECT_DOUBLE_EQ(s.mean_abs[2], 0.5);
  EXPECT_DOUBLE_EQ(s.temporal_share, 2.5 / 3.5);
  // The initial net (zero last layer) attributes nothing to anything: the share is undefined.
  const WeightNet net(WeightNetConfig{});
  const vector<double> X = test::randn<double>(14, 5);
  const vector<double> attr = integrated_gradients(net, X, 2);
  for (double v : attr) EXPECT_EQ(v, 0.0);
  EXPECT_TRUE(std::isnan(summarize_attribution(attr, 2, kTemporal).temporal_share));
  EXPECT_TRUE(std::isnan(permutation_importance(net, X, 2, kTemporal, 1).temporal_share));
}

TEST(Attribution, PermutationImportanceIsSeededAndShufflesWithinTheColumn) {
  const WeightNet net = random_net(50);
  const int64_t B = 40, F = 7;
  vector<double> X = test::randn<double>(size_t(B * F), 51);
  const AttributionSummary p1 = permutation_importance(net, X, B, kTemporal, 77, 2);
  const AttributionSummary p2 = permutation_importance(net, X, B, kTemporal, 77, 2);
  const AttributionSummary p3 = permutation_importance(net, X, B, kTemporal, 78, 2);
  EXPECT_EQ(p1.mean_abs, p2.mean_abs);
  EXPECT_EQ(p1.temporal_share, p2.temporal_share);
  EXPECT_NE(p1.mean_abs, p3.mean_abs);
  for (int64_t f = 0; f < F; ++f) EXPECT_GT(p1.mean_abs[f], 0.0);
  EXPECT_GT(p1.temporal_share, 0.0);
  EXPECT_LT(p1.temporal_share, 1.0);
  // A constant column permutes onto itself: values are only moved within the column.
  for (int64_t b = 0; b < B; ++b) X[b * F + 3] = 0.7;
  EXPECT_EQ(permutation_importance(net, X, B, kTemporal, 77).mean_abs[3], 0.0);
  EXPECT_NE(error_of([&] { permutation_importance(net, X, B, {true}, 1); }).find("1 entries for 7"),
            std::string::npos);
}

TEST(Attribution, AverageRanksAucAndSpearmanByHand) {
  EXPECT_EQ(average_ranks({3, 1, 3, 2}), (vector<double>{3.5, 1, 3.5, 2}));
  // No ties: 3 of the 4 (positive, negative) pairs are ordered right.
  EXPECT_DOUBLE_EQ(auc({0.1, 0.4, 0.35, 0.8}, {0, 0, 1, 1}), 0.75);
  // Ties: positives {2, 3} against negatives {1, 2}: 1 + ½ + 1 + 1 = 3.5 of 4.
  EXPECT_DOUBLE_EQ(auc({1, 2, 2, 3}, {0, 1, 0, 1}), 0.875);
  // Positives {0.5, 0.9} against negatives {0.5, 0.5, 0.1}: ½ + ½ + 1 + 3 = 5 of 6.
  EXPECT_DOUBLE_EQ(auc({0.5, 0.5, 0.5, 0.9, 0.1}, {1, 0, 0, 1, 0}), 5.0 / 6.0);
  EXPECT_DOUBLE_EQ(auc({1, 2, 3}, {0, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(auc({1, 2, 3}, {1, 0, 0}), 0.0);
  EXPECT_DOUBLE_EQ(auc({4, 4, 4}, {1, 0, 1}), 0.5);
  EXPECT_TRUE(std::isnan(auc({1, 2}, {1, 1})));

  // y ranks (1, 2, 3.5, 5, 3.5) against x ranks 1..5: cov 8, var 10 and 9.5 → 8/√95.
  EXPECT_DOUBLE_EQ(spearman({1, 2, 3, 4, 5}, {5, 6, 7, 8, 7}), 8.0 / std::sqrt(95.0));
  // Ties on both sides: ranks (1.5, 1.5, 3, 4) and (1, 2.5, 2.5, 4): 3.75 / 4.5.
  EXPECT_DOUBLE_EQ(spearman({1, 1, 2, 3}, {1, 2, 2, 3}), 3.75 / 4.5);
  EXPECT_DOUBLE_EQ(spearman({1, 2, 3}, {10, 20, 30}), 1.0);
  EXPECT_DOUBLE_EQ(spearman({1, 2, 3}, {3, 2, 1}), -1.0);
  EXPECT_TRUE(std::isnan(spearman({1, 2, 3}, {2, 2, 2})));

  EXPECT_NE(error_of([] { auc({1, 2}, {0, 2}); }).find("label 1 is 2, expected 0 or 1"), std::string::npos);
  EXPECT_NE(error_of([] { spearman({1, 2}, {1}); }).find("2 values against 1"), std::string::npos);
  EXPECT_NE(error_of([] { average_ranks({1, NAN}); }).find("value 1 is not finite"), std::string::npos);
}
