// `metapo analyze` without the CLI or a model (DESIGN §6, "Interpretability"): hand-set weight nets
// whose decisions depend on one known feature (temporal share exactly 1 or 0), the quality AUC
// against attribution.h's auc of the same weights, the group counts, the distribution summary, the
// seeded attribution sample, and the RUN/metapo.json validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/core/error.h"
#include "metapo/core/rng.h"
#include "metapo/meta/attribution.h"
#include "metapo/train/analyze.h"
#include "test_util.h"

using namespace metapo;
using nlohmann::json;
using std::vector;

namespace {

template <typename Fn>
std::string error_of(Fn&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// A net whose z depends on feature k only: W1 is zero except column k, the last layer is random.
WeightNet only_feature(int k, uint64_t seed = 5) {
  WeightNet net({kNumFeatures, 8, 1e-3, seed});
  vector<double>& p = net.params();
  const WeightNetLayout& l = net.layout();
  for (int64_t o = 0; o < 8; ++o)
    for (int64_t f = 0; f < kNumFeatures; ++f)
      if (f != k) p[size_t(l.w1 + o * kNumFeatures + f)] = 0;
  const vector<double> last = test::randn<double>(9, seed + 1);
  for (int64_t i = 0; i < 9; ++i) p[size_t(l.w3 + i)] = last[size_t(i)];
  return net;
}

// N pairs with random history (n from 0 to 5 observations), margins, losses and log-prob gaps; quality alternates
// in a known pattern (3 of every 10 flipped) and difficulty on a different period.
AnalyzeInput synthetic_input(int64_t N, uint64_t seed) {
  Philox rng(seed, 1, 2, 3);
  vector<PairStatRow> rows(static_cast<size_t>(N));
  vector<PairNow> now(static_cast<size_t>(N));
  AnalyzeInput in;
  for (int64_t i = 0; i < N; ++i) {
    PairStatRow& r = rows[size_t(i)];
    const int64_t n = int64_t(rng.below(6));
    for (int64_t t = 0; t < n; ++t) update_pair_stat(r, rng.normal(), std::abs(rng.normal()), t, 0.3);
    PairNow& p = now[size_t(i)];
    p.margin = rng.normal();
    p.loss = std::log1p(std::exp(-p.margin));
    p.logp_gap = rng.normal();
    in.sample_id.push_back(i);
    in.history.push_back(r.n);
    in.quality.push_back(i % 10 < 3 ? 0.0f : 1.0f);
    in.difficulty.push_back(i % 4 == 0 ? 1.0f : 0.0f);
  }
  in.raw = make_features(rows, now);
  return in;
}

// A standardizer that has seen exactly this input's features.
FeatureStandardizer fitted(const AnalyzeInput& in) {
  FeatureStandardizer s;
  SelfComm one;
  s.update(in.raw, one);
  return s;
}

}  // namespace

TEST(Analyze, TemporalOnlyNetHasTemporalShareOne) {
  const AnalyzeInput in = synthetic_input(200, 1);
  const AnalyzeResult r = analyze_weights(only_feature(kFeatMarginEma), fitted(in), in, AnalyzeOptions{});
  EXPECT_EQ(r.n, 200);
  EXPECT_GT(r.with_history, 0);
  EXPECT_LT(r.with_history, 200);
  EXPECT_DOUBLE_EQ(r.ig.temporal_share, 1.0);
  EXPECT_DOUBLE_EQ(r.permutation.temporal_share, 1.0);
  EXPECT_GT(r.ig.mean_abs[kFeatMarginEma], 0);
  EXPECT_GT(r.permutation.mean_abs[kFeatMarginEma], 0);
  EXPECT_LT(r.ig_completeness_gap, 1e-3);
}

TEST(Analyze, MarginOnlyNetHasTemporalShareZero) {
  const AnalyzeInput in = synthetic_input(200, 2);
  const AnalyzeResult r = analyze_weights(only_feature(kFeatMargin), fitted(in), in, AnalyzeOptions{});
  EXPECT_DOUBLE_EQ(r.ig.temporal_share, 0.0);
  EXPECT_DOUBLE_EQ(r.permutation.temporal_share, 0.0);
  EXPECT_GT(r.ig.mean_abs[kFeatMargin], 0);
  for (int f = 0; f < kNumFeatures; ++f)
    if (f != kFeatMargin) {
      EXPECT_EQ(r.ig.mean_abs[size_t(f)], 0.0) << kFeatureNames[size_t(f)];
    }
}

TEST(Analyze, InitialNetDecidesNothing) {
  // The trainer's starting net (last layer zero): every weight is equal and no feature matters, so
  // the shares are undefined (null in JSON), not 0 or 1.
  const AnalyzeInput in = synthetic_input(50, 3);
  const AnalyzeResult r = analyze_weights(WeightNet({kNumFeatures, 8, 1e-3, 0}), fitted(in), in, AnalyzeOptions{});
  EXPECT_TRUE(std::isnan(r.ig.temporal_share));
  EXPECT_EQ(r.weights.min, r.weights.max);
  EXPECT_DOUBLE_EQ(r.weights.min, 1e-3 + (1 - 1e-3) * 0.5);
  EXPECT_LT(r.weights.std, 1e-15);  // the mean of 50 equal values can round by an ulp
  EXPECT_TRUE(summary_json(r)["temporal_share"].is_null());
  EXPECT_EQ(r.weights.hist_counts[0], 50);
}

TEST(Analyze, WeightsMatchTheNetAndNormalize) {
  const AnalyzeInput in = synthetic_input(64, 4);
  const FeatureStandardizer st = fitted(in);
  WeightNet net = only_feature(kFeatLoss);
  const AnalyzeResult r = analyze_weights(net, st, in, AnalyzeOptions{});
  vector<double> a, z;
  net.forward(st.standardize(in.raw), 64, a, &z);
  EXPECT_EQ(r.a, a);
  EXPECT_EQ(r.z, z);
  double sw = 0;
  for (double w : r.w) sw += w;
  EXPECT_NEAR(sw, 64.0, 1e-9);
  double sa = 0;
  for (double x : a) sa += x;
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(r.w[i], 64.0 * a[i] / sa, 1e-12);
}

TEST(Analyze, QualityAucIsAttributionAucOfTheWeights) {
  const AnalyzeInput in = synthetic_input(300, 5);
  const AnalyzeResult r = analyze_weights(only_feature(kFeatMarginTrend), fitted(in), in, AnalyzeOptions{});
  vector<int> clean;
  vector<double> q, margin, ema;
  vector<int> ema_label;
  for (int64_t i = 0; i < 300; ++i) {
    clean.push_back(in.quality[size_t(i)] >= 0.5f ? 1 : 0);
    q.push_back(in.quality[size_t(i)]);
    margin.push_back(in.raw[size_t(i * kNumFeatures + kFeatMargin)]);
    if (in.history[size_t(i)] >= 1) {
      ema.push_back(in.raw[size_t(i * kNumFeatures + kFeatMarginEma)]);
      ema_label.push_back(clean.back());
    }
  }
  ASSERT_TRUE(r.has_quality);
  EXPECT_DOUBLE_EQ(r.quality_auc, auc(r.a, clean));
  // The normalization is a positive scale: the same ranks, the same AUC.
  EXPECT_DOUBLE_EQ(r.quality_auc, auc(r.w, clean));
  EXPECT_DOUBLE_EQ(r.spearman, spearman(r.a, q));
  EXPECT_DOUBLE_EQ(r.margin_auc, auc(margin, clean));
  EXPECT_DOUBLE_EQ(r.margin_ema_auc, auc(ema, ema_label));
  EXPECT_EQ(r.margin_ema_pairs, int64_t(ema.size()));
  const json s = summary_json(r);
  for (const char* k : {"temporal_share", "temporal_share_permutation", "quality_auc", "spearman", "weight_mean",
                        "weight_std", "n"})
    EXPECT_TRUE(s.contains(k)) << k;
  EXPECT_DOUBLE_EQ(s["quality_auc"].get<double>(), r.quality_auc);
}

TEST(Analyze, QualityGroupsAreCounted) {
  const AnalyzeInput in = synthetic_input(100, 6);
  const AnalyzeResult r = analyze_weights(only_feature(kFeatVolatility), fitted(in), in, AnalyzeOptions{});
  // Flipped: i % 10 < 3 (30 pairs); hard: i % 4 == 0 (25 pairs). Both: i ≡ 0 (mod 4) and i % 10 in
  // {0, 1, 2} → i in {0, 12, 20, 32, 40, 52, 60, 72, 80, 92}: 10 pairs.
  std::map<std::string, int64_t> want = {{"clean", 70},      {"flipped", 30},      {"hard", 25},
                                         {"easy", 75},       {"clean/hard", 15},   {"clean/easy", 55},
                                         {"flipped/hard", 10}, {"flipped/easy", 20}};
  ASSERT_EQ(r.groups.size(), want.size());
  for (const GroupWeight& g : r.groups) {
    ASSERT_TRUE(want.count(g.name)) << g.name;
    EXPECT_EQ(g.count, want[g.name]) << g.name;
    double sa = 0, sw = 0, n = 0;
    for (int64_t i = 0; i < 100; ++i) {
      const bool flipped = i % 10 < 3, hard = i % 4 == 0;
      const bool in_group = (g.name == "clean" && !flipped) || (g.name == "flipped" && flipped) ||
                            (g.name == "hard" && hard) || (g.name == "easy" && !hard) ||
                            (g.name == "clean/hard" && !flipped && hard) || (g.name == "clean/easy" && !flipped && !hard) ||
                            (g.name == "flipped/hard" && flipped && hard) || (g.name == "flipped/easy" && flipped && !hard);
      if (in_group) sa += r.a[size_t(i)], sw += r.w[size_t(i)], n += 1;
    }
    EXPECT_NEAR(g.mean_weight, sa / n, 1e-12) << g.name;
    EXPECT_NEAR(g.mean_normalized, sw / n, 1e-12) << g.name;
  }
}

TEST(Analyze, WithoutQualityTheQualityFieldsAreNull) {
  AnalyzeInput in = synthetic_input(40, 7);
  in.quality.clear();
  in.difficulty.clear();
  const AnalyzeResult r = analyze_weights(only_feature(kFeatMargin), fitted(in), in, AnalyzeOptions{});
  EXPECT_FALSE(r.has_quality);
  EXPECT_TRUE(r.groups.empty());
  const json s = summary_json(r);
  EXPECT_TRUE(s["quality_auc"].is_null());
  EXPECT_TRUE(s["spearman"].is_null());
  EXPECT_TRUE(analysis_json(r, json::object())["quality"].is_null());
  const std::string lines = pair_weights_jsonl(r, in);
  EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 40);
  EXPECT_FALSE(json::parse(lines.substr(0, lines.find('\n'))).contains("quality"));
}

TEST(Analyze, AttributionSampleIsSeededAndSorted) {
  const AnalyzeInput in = synthetic_input(500, 8);
  const FeatureStandardizer st = fitted(in);
  AnalyzeOptions opt;
  opt.max_pairs = 100, opt.ig_steps = 16, opt.permutation_repeats = 1;
  const AnalyzeResult a = analyze_weights(only_feature(kFeatLogCount), st, in, opt);
  const AnalyzeResult b = analyze_weights(only_feature(kFeatLogCount), st, in, opt);
  ASSERT_EQ(a.attributed.size(), 100u);
  EXPECT_EQ(a.attributed, b.attributed);
  EXPECT_TRUE(std::is_sorted(a.attributed.begin(), a.attributed.end()));
  EXPECT_EQ(std::adjacent_find(a.attributed.begin(), a.attributed.end()), a.attributed.end());
  opt.seed = 1;
  EXPECT_NE(analyze_weights(only_feature(kFeatLogCount), st, in, opt).attributed, a.attributed);
  opt.max_pairs = 0;  // all
  EXPECT_EQ(analyze_weights(only_feature(kFeatLogCount), st, in, opt).attributed.size(), 500u);
}

TEST(Analyze, DistributionQuantilesAndHistogram) {
  vector<double> v;
  for (int i = 0; i <= 100; ++i) v.push_back(double(i));  // 0..100: quantile q is exactly 100 q
  const Distribution d = distribution(v, 20);
  EXPECT_DOUBLE_EQ(d.mean, 50.0);
  EXPECT_DOUBLE_EQ(d.min, 0.0);
  EXPECT_DOUBLE_EQ(d.max, 100.0);
  EXPECT_NEAR(d.quantiles[0], 5.0, 1e-12);
  EXPECT_NEAR(d.quantiles[2], 50.0, 1e-12);
  EXPECT_NEAR(d.quantiles[4], 95.0, 1e-12);
  ASSERT_EQ(d.hist_counts.size(), 20u);
  ASSERT_EQ(d.hist_edges.size(), 21u);
  int64_t total = 0;
  for (int64_t c : d.hist_counts) total += c;
  EXPECT_EQ(total, 101);
  EXPECT_EQ(d.hist_counts[0], 5);    // 0..4
  EXPECT_EQ(d.hist_counts[19], 6);   // 95..100: the maximum closes the last bin
}

TEST(Analyze, MetaRunFileIsValidated) {
  WeightNet net = only_feature(kFeatMargin);
  json j;
  j["format"] = "metapo-meta", j["format_version"] = kMetaRunFormatVersion;
  j["net"] = {{"hidden", 8}, {"a_min", 1e-3}, {"n_features", kNumFeatures}, {"params", net.params()}};
  j["features"] = vector<std::string>(kFeatureNames.begin(), kFeatureNames.end());
  j["standardizer"] = vector<double>(3 * kNumFeatures, 0.0);
  j["pair_stats"] = {{"fields", vector<std::string>(kPairStatFieldNames.begin(), kPairStatFieldNames.end())},
                     {"rows", 2},
                     {"data", {3, 0.5, 0.4, 0.1, 0.2, 0.3, 7, 0, 0, 0, 0, 0, 0, -1}}};
  const MetaRun run = parse_meta_run(j, "r/metapo.json");
  EXPECT_EQ(run.make_net().params(), net.params());
  const vector<PairStatRow> rows = run.rows_of({1, 0, 5});
  EXPECT_EQ(rows[1].n, 3);
  EXPECT_EQ(rows[1].mu, 0.4);
  EXPECT_EQ(rows[1].last_step, 7);
  EXPECT_EQ(rows[0].n, 0);
  EXPECT_EQ(rows[2].n, 0);  // past the table: unseen

  auto broken = [&](auto&& edit) {
    json b = j;
    edit(b);
    return error_of([&] { parse_meta_run(b, "r/metapo.json"); });
  };
  EXPECT_NE(broken([](json& b) { b["format_version"] = 1; }).find("r/metapo.json: format_version 1 is not supported"), std::string::npos);
  EXPECT_NE(broken([](json& b) { b["format"] = "x"; }).find("r/metapo.json: format"), std::string::npos);
  EXPECT_NE(broken([](json& b) { b["net"]["params"].erase(0); }).find("net.params has"), std::string::npos);
  EXPECT_NE(broken([](json& b) { b["net"]["params"][3] = nullptr; }).find("net.params[3]"), std::string::npos);
  EXPECT_NE(broken([](json& b) { b["features"][5] = "m"; }).find("features[5]"), std::string::npos);
  EXPECT_NE(broken([](json& b) { b["standardizer"].erase(0); }).find("standardizer has 23"), std::string::npos);
  EXPECT_NE(broken([](json& b) { b["pair_stats"]["rows"] = 3; }).find("pair_stats.data has 14"), std::string::npos);
  EXPECT_NE(broken([](json& b) { b.erase("pair_stats"); }).find("missing field pair_stats"), std::string::npos);
  EXPECT_NE(error_of([] { read_meta_run("/nonexistent/metapo.json"); }).find("--weighting metapo"), std::string::npos);
}
