// The weight net's features (DESIGN §6): raw values from statistics rows, the running global
// standardization against hand-computed means and deviations, clipping, zeros for pairs without
// history, and the checkpoint state.
#include <gtest/gtest.h>

#include "test_util.h"

#include <cmath>
#include <string>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/core/error.h"
#include "metapo/meta/features.h"

using namespace metapo;
using metapo::test::error_of;
using std::vector;

namespace {

PairStatRow row(double n, double mu, double trend, double vol, double dev) {
  PairStatRow r;
  r.n = n, r.mu = mu, r.trend = trend, r.vol = vol, r.ref_dev = dev, r.last_margin = mu, r.last_step = n;
  return r;
}

// The current values of pairs with these margins and losses (logp_gap 0 unless given).
vector<PairNow> now_of(const vector<double>& margin, const vector<double>& loss, const vector<double>& gap = {}) {
  vector<PairNow> v;
  for (size_t b = 0; b < margin.size(); ++b) v.push_back({margin[b], b < loss.size() ? loss[b] : 0.0, gap.empty() ? 0.0 : gap[b]});
  return v;
}

// Raw features of pairs that all have history (n = 5), column f = values[b].
vector<double> with_column(int f, const vector<double>& values) {
  vector<PairStatRow> rows(values.size(), row(5, 0, 0, 0, 0));
  vector<double> x = make_features(rows, vector<PairNow>(values.size()));
  for (size_t b = 0; b < values.size(); ++b) x[b * kNumFeatures + size_t(f)] = values[b];
  return x;
}

}  // namespace

TEST(Features, NamesAndGroups) {
  const vector<std::string> names(kFeatureNames.begin(), kFeatureNames.end());
  EXPECT_EQ(names, (vector<std::string>{"margin_ema", "margin_trend", "volatility", "ref_deviation",
                                        "log_count", "margin", "loss", "logp_gap"}));
  EXPECT_EQ(kNumFeatures, 8);
  for (int f : {kFeatMarginEma, kFeatMarginTrend, kFeatVolatility, kFeatRefDeviation, kFeatLogCount})
    EXPECT_TRUE(is_temporal(f)) << kFeatureNames[size_t(f)];
  for (int f : {kFeatMargin, kFeatLoss, kFeatLogpGap, -1, 8}) EXPECT_FALSE(is_temporal(f)) << f;
}

TEST(Features, RawValues) {
  const vector<double> x = make_features({row(3, 1.5, -0.25, 4.0, 0.125), row(0, 0, 0, 0, 0)},
                                         now_of({2.0, -1.0}, {0.1269, 1.3133}, {0.75, -0.5}));
  ASSERT_EQ(x.size(), 16u);
  EXPECT_EQ(vector<double>(x.begin(), x.begin() + 8),
            (vector<double>{1.5, -0.25, 2.0, 0.125, std::log(4.0), 2.0, 0.1269, 0.75}));
  EXPECT_EQ(vector<double>(x.begin() + 8, x.end()), (vector<double>{0, 0, 0, 0, 0, -1.0, 1.3133, -0.5}));
  EXPECT_EQ(error_of([] { make_features({row(1, 0, 0, 0, 0)}, now_of({1.0, 2.0}, {1.0})); }),
            "make_features: 1 statistics rows but 2 pairs' current values");
}

TEST(Features, LogpGapIsThePerTokenPreference) {
  // chosen: −6 over 3 tokens (−2 per token), rejected: −10 over 4 (−2.5): the policy prefers chosen.
  EXPECT_DOUBLE_EQ(logp_gap(-6.0, 3, -10.0, 4), 0.5);
  EXPECT_DOUBLE_EQ(logp_gap(-10.0, 4, -6.0, 3), -0.5);
  EXPECT_EQ(error_of([] { logp_gap(-1.0, 0, -1.0, 2); }), "logp_gap: response lengths must be >= 1 (got 0 and 2)");
}

TEST(Features, HistoryFromLogCount) {
  for (double n : {0.0, 1.0, 2.0, 3.0, 1e6, 123456789.0}) {
    const vector<double> x = make_features({row(n, 0, 0, 0, 0)}, now_of({0.0}, {0.0}));
    EXPECT_EQ(has_history(x.data()), n >= 2) << n;
  }
}

TEST(Features, StandardizesWithKnownStatistics) {
  SelfComm comm;
  FeatureStandardizer s;
  // margin column 1, 2, 3, 4, 5, 6, 7: mean 4, population std 2.
  const vector<double> x = with_column(kFeatMargin, {1, 2, 3, 4, 5, 6, 7});
  s.update(x, comm);
  EXPECT_EQ(s.count(kFeatMargin), 7);
  EXPECT_DOUBLE_EQ(s.mean(kFeatMargin), 4.0);
  EXPECT_DOUBLE_EQ(s.stddev(kFeatMargin), 2.0);
  const vector<double> z = s.standardize(x);
  for (size_t b = 0; b < 7; ++b) EXPECT_DOUBLE_EQ(z[b * kNumFeatures + kFeatMargin], (double(b) + 1 - 4) / 2);
  // The other columns are constant (0, or log 6 for log_count): std below kMinStd, standardized to 0
  // (to within the rounding of the mean: 7·log 6 / 7 need not be log 6 exactly).
  for (size_t b = 0; b < 7; ++b)
    for (int f : {kFeatMarginEma, kFeatLogCount, kFeatLoss})
      EXPECT_NEAR(z[b * kNumFeatures + size_t(f)], 0.0, 1e-9);
}

TEST(Features, RunningStatisticsCoverEveryBatch) {
  SelfComm comm;
  FeatureStandardizer once, twice;
  once.update(with_column(kFeatLoss, {0.5, 1.5, 2.5, 3.5}), comm);
  twice.update(with_column(kFeatLoss, {0.5, 1.5}), comm);
  twice.update(with_column(kFeatLoss, {2.5, 3.5}), comm);
  EXPECT_EQ(twice.count(kFeatLoss), 4);
  EXPECT_DOUBLE_EQ(twice.mean(kFeatLoss), 2.0);
  EXPECT_DOUBLE_EQ(twice.stddev(kFeatLoss), std::sqrt(1.25));
  // Halves and their squares add exactly in any grouping, so one batch and two agree bit for bit.
  for (int k = 0; k < 3; ++k) {
    const size_t at = size_t(k * kNumFeatures + kFeatLoss);  // count, sum, sum of squares of the loss
    EXPECT_EQ(once.state()[at], twice.state()[at]);
  }
}

TEST(Features, ClipsToFiveStandardDeviations) {
  SelfComm comm;
  FeatureStandardizer s;
  vector<double> v(100, 0.0);
  v[0] = 1000.0, v[1] = -1000.0;  // mean 0, std √(2·10⁶/100) ≈ 141: both are ±7.07 std out
  const vector<double> x = with_column(kFeatMarginTrend, v);
  s.update(x, comm);
  const vector<double> z = s.standardize(x);
  EXPECT_EQ(z[0 * kNumFeatures + kFeatMarginTrend], 5.0);
  EXPECT_EQ(z[1 * kNumFeatures + kFeatMarginTrend], -5.0);
  EXPECT_EQ(z[2 * kNumFeatures + kFeatMarginTrend], 0.0);
}

TEST(Features, PairsWithoutHistoryGetZeroTemporalFeatures) {
  SelfComm comm;
  FeatureStandardizer s;
  // Two pairs with history (n = 2, 4) and two without (n = 0, 1) whose temporal values are far off.
  const vector<PairStatRow> rows = {row(2, 1.0, 0.5, 1.0, 0.2), row(4, 3.0, -0.5, 9.0, 0.4),
                                    row(0, 0, 0, 0, 0), row(1, 50.0, 0, 0, 7.0)};
  const vector<double> x = make_features(rows, now_of({1.0, 3.0, 5.0, 7.0}, {1.0, 2.0, 3.0, 4.0}, {0.5, -0.5, 1.0, 2.0}));
  s.update(x, comm);
  // Temporal statistics come from the two pairs with history only.
  EXPECT_EQ(s.count(kFeatMarginEma), 2);
  EXPECT_DOUBLE_EQ(s.mean(kFeatMarginEma), 2.0);
  EXPECT_DOUBLE_EQ(s.mean(kFeatVolatility), 2.0);  // √1 and √9
  EXPECT_DOUBLE_EQ(s.mean(kFeatLogCount), 0.5 * (std::log(3.0) + std::log(5.0)));
  EXPECT_EQ(s.count(kFeatMargin), 4);
  EXPECT_DOUBLE_EQ(s.mean(kFeatMargin), 4.0);
  const vector<double> z = s.standardize(x);
  for (size_t b = 0; b < 4; ++b) {
    for (int f = 0; f < kNumFeatures; ++f) {
      const double zf = z[b * kNumFeatures + size_t(f)];
      if ((is_temporal(f) && b >= 2) || !is_net_input(f)) {
        EXPECT_EQ(zf, 0.0) << "pair " << b << " " << kFeatureNames[size_t(f)];
      } else {
        EXPECT_DOUBLE_EQ(zf, (x[b * kNumFeatures + size_t(f)] - s.mean(f)) / s.stddev(f))
            << "pair " << b << " " << kFeatureNames[size_t(f)];
      }
    }
  }
  EXPECT_DOUBLE_EQ(z[0 * kNumFeatures + kFeatMarginEma], -1.0);
  EXPECT_DOUBLE_EQ(z[1 * kNumFeatures + kFeatMarginEma], 1.0);
}

TEST(Features, NoStatisticsYetGivesZeros) {
  FeatureStandardizer s;
  const vector<double> x = make_features({row(3, 1.0, 2.0, 3.0, 4.0)}, now_of({5.0}, {6.0}));
  EXPECT_EQ(s.standardize(x), vector<double>(kNumFeatures, 0.0));
}

TEST(Features, StateRoundTrip) {
  SelfComm comm;
  FeatureStandardizer a;
  const vector<PairStatRow> rows = {row(2, 1.0, 0.5, 1.0, 0.2), row(7, -3.0, 0.25, 0.5, 0.1),
                                    row(1, 0, 0, 0, 0)};
  const vector<double> x = make_features(rows, now_of({0.3, -0.7, 2.0}, {0.5, 1.2, 0.1}));
  a.update(x, comm);
  a.update(make_features(rows, now_of({1.3, 0.7, -2.0}, {0.2, 0.6, 3.1})), comm);
  const vector<double> st = a.state();
  ASSERT_EQ(st.size(), size_t(3 * kNumFeatures));
  FeatureStandardizer b;
  b.load_state(st);
  EXPECT_EQ(b.state(), st);
  EXPECT_EQ(b.standardize(x), a.standardize(x));
  EXPECT_EQ(error_of([&] { b.load_state(vector<double>(20, 0.0)); }),
            "feature statistics: checkpoint state has 20 values, expected 24 (count, sum and sum of squares "
            "of 8 features)");
  vector<double> bad = st;
  bad[kFeatLoss] = -1;
  EXPECT_EQ(error_of([&] { b.load_state(bad); }).rfind(
                "feature statistics: checkpoint state of feature loss is invalid (count -1, sum ", 0),
            0u);
}

TEST(Features, RejectsMalformedMatrices) {
  SelfComm comm;
  FeatureStandardizer s;
  EXPECT_EQ(error_of([&] { s.update(vector<double>(10, 0.0), comm); }),
            "feature statistics: 10 values are not a [B, 8] feature matrix");
  vector<double> x = with_column(kFeatLoss, {1.0, NAN});
  EXPECT_EQ(error_of([&] { s.update(x, comm); }),
            "feature statistics: feature loss of row 1 is not finite (nan)");
}

TEST(Features, LogCountIsNoNetInput) {
  // After whole epochs every pair has the same count: the running std of log_count is 0. A pair seen
  // once more (the next epoch, or `metapo analyze` on the final table) used to standardize to the +5
  // clip; log_count now always enters the net as 0, the other temporal features as before.
  SelfComm comm;
  FeatureStandardizer s;
  const vector<PairStatRow> seen_twice = {row(2, 1.0, 0.5, 1.0, 0.2), row(2, 3.0, -0.5, 9.0, 0.4)};
  s.update(make_features(seen_twice, now_of({1.0, 3.0}, {0.5, 0.1}, {0.2, 0.4})), comm);
  EXPECT_LT(s.stddev(kFeatLogCount), FeatureStandardizer::kMinStd);
  const vector<double> z = s.standardize(make_features({row(3, 3.0, 0.5, 9.0, 0.4)}, now_of({3.0}, {0.1}, {0.4})));
  EXPECT_EQ(z[kFeatLogCount], 0.0);
  EXPECT_DOUBLE_EQ(z[kFeatMarginEma], 1.0);  // (3 − 2) / 1
  EXPECT_FALSE(is_net_input(kFeatLogCount));
  for (int f = 0; f < kNumFeatures; ++f) {
    if (f != kFeatLogCount) {
      EXPECT_TRUE(is_net_input(f)) << kFeatureNames[size_t(f)];
    }
  }
}
