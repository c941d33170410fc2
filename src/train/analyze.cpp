// `metapo analyze`: loading a MetaPO run, the forward pass over a split, and the interpretability
// statistics (definitions in analyze.h).
#include "metapo/train/analyze.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>

#include "metapo/core/error.h"
#include "metapo/core/rng.h"
#include "metapo/train/dpo.h"

namespace metapo {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr int64_t F = kNumFeatures;

// JSON numbers: NaN and ±inf have no JSON spelling, so they become null explicitly (a reader then
// sees "not defined", e.g. an AUC without flipped pairs, rather than a parse error).
json num(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }

// Linear interpolation between order statistics of sorted values (numpy's default "linear").
double quantile_sorted(const std::vector<double>& s, double q) {
  const double pos = q * double(s.size() - 1);
  const size_t lo = size_t(std::floor(pos)), hi = std::min(lo + 1, s.size() - 1);
  return s[lo] + (pos - double(lo)) * (s[hi] - s[lo]);
}

double mean_of(const std::vector<double>& v, const std::vector<size_t>& idx) {
  if (idx.empty()) return kNaN;
  double s = 0;
  for (size_t i : idx) s += v[i];
  return s / double(idx.size());
}

json distribution_json(const Distribution& d) {
  json q = json::object();
  for (size_t k = 0; k < d.quantiles.size(); ++k) {
    char key[16];
    std::snprintf(key, sizeof key, "p%02d", int(std::lround(Distribution::kQuantileLevels[k] * 100)));
    q[key] = num(d.quantiles[k]);
  }
  json edges = json::array();
  for (double e : d.hist_edges) edges.push_back(num(e));
  return {{"mean", num(d.mean)}, {"std", num(d.std)}, {"min", num(d.min)}, {"max", num(d.max)},
          {"quantiles", q}, {"histogram", {{"edges", edges}, {"counts", d.hist_counts}}}};
}

json per_feature(const std::vector<double>& v) {
  json out = json::array();
  for (double x : v) out.push_back(num(x));
  return out;
}

}  // namespace

// ---- the forward pass --------------------------------------------------------------------------

AnalyzeInput analysis_input(LlamaModel<float>& model, const float* params, const PairSplit& s, const MetaRun& run,
                            const LossConfig& loss, int64_t micro, const Topology& topo) {
  MP_CHECK(micro >= 1, "--micro-batch must be at least 1");
  MP_CHECK(s.has_ref() || !loss_uses_reference(loss.type),
           "the split has no reference log-probs, which loss ", loss_name(loss.type),
           " needs (run metapo precompute-ref with the run's reference model first)");
  const int64_t N = s.size();
  std::vector<int64_t> idx(static_cast<size_t>(N));
  std::iota(idx.begin(), idx.end(), int64_t(0));
  std::vector<double> chosen, rejected;
  pair_logps(model, nullptr, params, s, idx, MicroBatching{micro, 0}, topo.world_comm(), chosen, rejected);

  // The instantaneous features exactly as the trainer forms them: margin = the implicit-reward
  // margin of pair_loss, loss = the base loss ℓ_i, the policy's per-token log-probability gap.
  std::vector<PairNow> now(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) {
    PairLogps p;
    p.policy_chosen = chosen[size_t(i)], p.policy_rejected = rejected[size_t(i)];
    if (s.has_ref()) p.ref_chosen = s.ref_logp_chosen[size_t(i)], p.ref_rejected = s.ref_logp_rejected[size_t(i)];
    p.len_chosen = s.chosen.len(i), p.len_rejected = s.rejected.len(i);
    const PairLossResult r = pair_loss(loss, p);
    now[size_t(i)] = {r.margin, r.loss, logp_gap(p.policy_chosen, p.len_chosen, p.policy_rejected, p.len_rejected)};
  }
  AnalyzeInput in;
  in.sample_id = s.sample_id;
  const std::vector<PairStatRow> rows = run.rows_of(s.sample_id);
  in.raw = make_features(rows, now);
  for (const PairStatRow& r : rows) in.history.push_back(r.n);
  in.quality = s.quality;
  if (auto it = s.columns.find("difficulty"); it != s.columns.end()) in.difficulty = it->second;
  return in;
}

// ---- the statistics ----------------------------------------------------------------------------

Distribution distribution(const std::vector<double>& v, int64_t bins) {
  MP_CHECK(!v.empty(), "distribution of no values");
  MP_CHECK(bins >= 1, "distribution: bins must be >= 1 (got ", bins, ")");
  Distribution d;
  std::vector<double> s = v;
  std::sort(s.begin(), s.end());
  d.min = s.front(), d.max = s.back();
  double sum = 0;
  for (double x : v) sum += x;
  d.mean = sum / double(v.size());
  double ss = 0;  // two passes: no cancellation when the spread is tiny against the mean
  for (double x : v) ss += (x - d.mean) * (x - d.mean);
  d.std = std::sqrt(ss / double(v.size()));
  for (size_t k = 0; k < d.quantiles.size(); ++k) d.quantiles[k] = quantile_sorted(s, Distribution::kQuantileLevels[k]);
  const double width = (d.max - d.min) / double(bins);
  for (int64_t b = 0; b <= bins; ++b) d.hist_edges.push_back(b == bins ? d.max : d.min + double(b) * width);
  d.hist_counts.assign(size_t(bins), 0);
  for (double x : v) {
    int64_t b = width > 0 ? int64_t((x - d.min) / width) : 0;
    d.hist_counts[size_t(std::clamp<int64_t>(b, 0, bins - 1))]++;  // the maximum closes the last bin
  }
  return d;
}

AnalyzeResult analyze_weights(const WeightNet& net, const FeatureStandardizer& stdz, const AnalyzeInput& in,
                              const AnalyzeOptions& opt) {
  MP_CHECK(net.config().n_features == F, "analyze: the weight net has ", net.config().n_features,
           " inputs, expected ", F);
  const int64_t N = in.size();
  MP_CHECK(N >= 1, "analyze: the split has no pairs");
  MP_CHECK(int64_t(in.raw.size()) == N * F, "analyze: ", in.raw.size(), " feature values for ", N, " pairs");
  MP_CHECK(int64_t(in.history.size()) == N, "analyze: ", in.history.size(), " history counts for ", N, " pairs");
  MP_CHECK(in.quality.empty() || int64_t(in.quality.size()) == N, "analyze: ", in.quality.size(),
           " quality values for ", N, " pairs");
  MP_CHECK(in.difficulty.empty() || int64_t(in.difficulty.size()) == N, "analyze: ", in.difficulty.size(),
           " difficulty values for ", N, " pairs");
  MP_CHECK(opt.ig_steps >= 1, "--ig-steps must be at least 1");
  MP_CHECK(opt.permutation_repeats >= 1, "--permutation-repeats must be at least 1");
  MP_CHECK(opt.max_pairs >= 0, "--max-pairs must not be negative");
  for (int64_t i = 0; i < N; ++i) {
    MP_CHECK(in.quality.empty() || std::isfinite(in.quality[size_t(i)]), "analyze: quality of pair ", i,
             " (sample id ", in.sample_id[size_t(i)], ") is not finite");
    MP_CHECK(in.difficulty.empty() || std::isfinite(in.difficulty[size_t(i)]), "analyze: difficulty of pair ", i,
             " (sample id ", in.sample_id[size_t(i)], ") is not finite");
  }

  AnalyzeResult r;
  r.n = N;
  std::vector<double> X = stdz.standardize(in.raw);  // [N, F]
  mask_features(X, N, opt.features);                  // as the run's weight net saw them
  // forward() caches activations, so it runs on a copy: the caller's net stays const.
  WeightNet local = net;
  local.forward(X, N, r.a, &r.z);
  double sum_a = 0;
  for (double a : r.a) sum_a += a;
  r.w.resize(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) r.w[size_t(i)] = double(N) * r.a[size_t(i)] / sum_a;
  for (int64_t i = 0; i < N; ++i) r.with_history += has_history(&in.raw[size_t(i * F)]) ? 1 : 0;
  r.weights = distribution(r.a);

  // Attribution on every pair, or on a seeded sample of max_pairs of them (a partial Fisher–Yates;
  // RngPurpose::Sample is otherwise only used by generation, which this command never runs).
  std::vector<int64_t> order(static_cast<size_t>(N));
  std::iota(order.begin(), order.end(), int64_t(0));
  const int64_t B = (opt.max_pairs == 0 || opt.max_pairs >= N) ? N : opt.max_pairs;
  if (B < N) {
    Philox rng = make_rng(opt.seed, 0, 0, RngPurpose::Sample);
    for (int64_t i = 0; i < B; ++i) std::swap(order[size_t(i)], order[size_t(i + int64_t(rng.below(uint64_t(N - i))))]);
    order.resize(static_cast<size_t>(B));
    std::sort(order.begin(), order.end());
  }
  r.attributed = order;
  std::vector<double> Xs(size_t(B * F));
  for (int64_t b = 0; b < B; ++b)
    std::copy(X.begin() + order[size_t(b)] * F, X.begin() + (order[size_t(b)] + 1) * F, Xs.begin() + b * F);
  std::vector<bool> temporal(static_cast<size_t>(F));
  for (int64_t f = 0; f < F; ++f) temporal[size_t(f)] = is_temporal(int(f));
  const std::vector<double> attr = integrated_gradients(net, Xs, B, opt.ig_steps);
  r.ig = summarize_attribution(attr, B, temporal);
  r.ig_completeness_gap = max_completeness_gap(net, Xs, B, attr);
  r.permutation = permutation_importance(net, Xs, B, temporal, opt.seed, opt.permutation_repeats);

  // Quality: clean pairs are the positive class, so an AUC above ½ means the net up-weights them.
  r.has_quality = !in.quality.empty();
  r.has_difficulty = !in.difficulty.empty();
  r.quality_auc = r.spearman = r.margin_auc = r.margin_ema_auc = kNaN;
  std::vector<int> clean(size_t(N), 0);
  if (r.has_quality) {
    std::vector<double> q(static_cast<size_t>(N)), margin(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) {
      q[size_t(i)] = in.quality[size_t(i)];
      clean[size_t(i)] = q[size_t(i)] >= kLabelThreshold ? 1 : 0;
      margin[size_t(i)] = in.raw[size_t(i * F + kFeatMargin)];
    }
    r.quality_auc = auc(r.a, clean);
    r.spearman = spearman(r.a, q);
    r.margin_auc = auc(margin, clean);
    // The raw EMA of a pair never observed is a placeholder 0, not a measurement: leave those out.
    std::vector<double> ema;
    std::vector<int> ema_label;
    for (int64_t i = 0; i < N; ++i)
      if (in.history[size_t(i)] >= 1) {
        ema.push_back(in.raw[size_t(i * F + kFeatMarginEma)]);
        ema_label.push_back(clean[size_t(i)]);
      }
    r.margin_ema_pairs = int64_t(ema.size());
    r.margin_ema_auc = auc(ema, ema_label);
  }

  // Groups: quality × difficulty where the dataset has them, each also on its own.
  std::vector<std::pair<std::string, std::vector<size_t>>> groups;
  auto add_group = [&](const std::string& name, auto&& member) {
    std::vector<size_t> idx;
    for (int64_t i = 0; i < N; ++i)
      if (member(size_t(i))) idx.push_back(size_t(i));
    groups.emplace_back(name, std::move(idx));
  };
  auto hard = [&](size_t i) { return in.difficulty[i] >= kLabelThreshold; };
  if (r.has_quality) {
    add_group("clean", [&](size_t i) { return clean[i] == 1; });
    add_group("flipped", [&](size_t i) { return clean[i] == 0; });
  }
  if (r.has_difficulty) {
    add_group("hard", [&](size_t i) { return hard(i); });
    add_group("easy", [&](size_t i) { return !hard(i); });
  }
  if (r.has_quality && r.has_difficulty) {
    add_group("clean/hard", [&](size_t i) { return clean[i] == 1 && hard(i); });
    add_group("clean/easy", [&](size_t i) { return clean[i] == 1 && !hard(i); });
    add_group("flipped/hard", [&](size_t i) { return clean[i] == 0 && hard(i); });
    add_group("flipped/easy", [&](size_t i) { return clean[i] == 0 && !hard(i); });
  }
  for (const auto& [name, idx] : groups)
    r.groups.push_back({name, int64_t(idx.size()), mean_of(r.a, idx), mean_of(r.w, idx)});
  return r;
}

// ---- outputs -----------------------------------------------------------------------------------

json summary_json(const AnalyzeResult& r) {
  json j;
  j["n"] = r.n;
  j["temporal_share"] = num(r.ig.temporal_share);
  j["temporal_share_permutation"] = num(r.permutation.temporal_share);
  j["quality_auc"] = r.has_quality ? num(r.quality_auc) : json(nullptr);
  j["spearman"] = r.has_quality ? num(r.spearman) : json(nullptr);
  j["margin_auc"] = r.has_quality ? num(r.margin_auc) : json(nullptr);
  j["margin_ema_auc"] = r.has_quality ? num(r.margin_ema_auc) : json(nullptr);
  j["weight_mean"] = num(r.weights.mean);
  j["weight_std"] = num(r.weights.std);
  return j;
}

json analysis_json(const AnalyzeResult& r, const json& context) {
  json j = context.is_object() ? context : json::object();
  j["n"] = r.n;
  j["with_history"] = r.with_history;
  j["weights"] = distribution_json(r.weights);
  j["weights_normalized"] = distribution_json(distribution(r.w));
  json names = json::array(), temporal = json::array();
  for (int64_t f = 0; f < F; ++f) names.push_back(kFeatureNames[size_t(f)]), temporal.push_back(is_temporal(int(f)));
  j["attribution"] = {
      {"pairs", int64_t(r.attributed.size())},
      {"features", names},
      {"temporal", temporal},
      {"integrated_gradients",
       {{"mean_abs", per_feature(r.ig.mean_abs)},
        {"temporal_share", num(r.ig.temporal_share)},
        {"completeness_gap", num(r.ig_completeness_gap)}}},
      {"permutation",
       {{"mean_abs", per_feature(r.permutation.mean_abs)}, {"temporal_share", num(r.permutation.temporal_share)}}}};
  if (r.has_quality) {
    j["quality"] = {{"auc", num(r.quality_auc)},
                    {"spearman", num(r.spearman)},
                    {"margin_auc", num(r.margin_auc)},
                    {"margin_ema_auc", num(r.margin_ema_auc)},
                    {"margin_ema_pairs", r.margin_ema_pairs},
                    {"threshold", kLabelThreshold}};
  } else {
    j["quality"] = nullptr;
  }
  json groups = json::array();
  for (const GroupWeight& g : r.groups)
    groups.push_back({{"name", g.name}, {"count", g.count}, {"mean_weight", num(g.mean_weight)},
                      {"mean_normalized", num(g.mean_normalized)}});
  j["groups"] = groups;
  j["summary"] = summary_json(r);
  return j;
}

std::string pair_weights_jsonl(const AnalyzeResult& r, const AnalyzeInput& in) {
  MP_CHECK(in.size() == r.n, "pair weights: ", in.size(), " pairs for a result of ", r.n);
  std::string out;
  for (int64_t i = 0; i < r.n; ++i) {
    json j;
    j["sample_id"] = in.sample_id[size_t(i)];
    j["weight"] = num(r.a[size_t(i)]);
    j["weight_normalized"] = num(r.w[size_t(i)]);
    j["z"] = num(r.z[size_t(i)]);
    if (!in.quality.empty()) j["quality"] = num(in.quality[size_t(i)]);
    if (!in.difficulty.empty()) j["difficulty"] = num(in.difficulty[size_t(i)]);
    j["history"] = in.history[size_t(i)];
    json feats = json::object();
    for (int64_t f = 0; f < F; ++f) feats[kFeatureNames[size_t(f)]] = num(in.raw[size_t(i * F + f)]);
    j["features"] = feats;
    out += j.dump() + "\n";
  }
  return out;
}

std::string summary_text(const AnalyzeResult& r) {
  std::string s;
  char line[512];
  const Distribution& d = r.weights;
  std::snprintf(line, sizeof line, "%lld pairs (%lld with history); weights a: mean %.4f std %.4f min %.4f max %.4f\n",
                (long long)r.n, (long long)r.with_history, d.mean, d.std, d.min, d.max);
  s += line;
  std::snprintf(line, sizeof line, "  quantiles 5/25/50/75/95%%: %.4f %.4f %.4f %.4f %.4f\n", d.quantiles[0],
                d.quantiles[1], d.quantiles[2], d.quantiles[3], d.quantiles[4]);
  s += line;
  std::snprintf(line, sizeof line,
                "temporal share: %.3f (integrated gradients, %lld pairs, completeness gap %.1e), %.3f (permutation)\n",
                r.ig.temporal_share, (long long)r.attributed.size(), r.ig_completeness_gap,
                r.permutation.temporal_share);
  s += line;
  if (r.has_quality) {
    std::snprintf(line, sizeof line,
                  "quality: AUC clean vs flipped %.3f (margin alone %.3f, margin EMA alone %.3f), Spearman %.3f\n",
                  r.quality_auc, r.margin_auc, r.margin_ema_auc, r.spearman);
    s += line;
  } else {
    s += "quality: the split has no quality column\n";
  }
  s += "  feature         type           IG |attr|   permutation\n";
  for (int64_t f = 0; f < F; ++f) {
    std::snprintf(line, sizeof line, "  %-15s %-13s %10.4g %13.4g\n", kFeatureNames[size_t(f)],
                  is_temporal(int(f)) ? "temporal" : "instantaneous", r.ig.mean_abs[size_t(f)],
                  r.permutation.mean_abs[size_t(f)]);
    s += line;
  }
  if (!r.groups.empty()) {
    s += "  group           count     mean a   mean a/mean\n";
    for (const GroupWeight& g : r.groups) {
      std::snprintf(line, sizeof line, "  %-15s %5lld %10.4f %13.4f\n", g.name.c_str(), (long long)g.count,
                    g.mean_weight, g.mean_normalized);
      s += line;
    }
  }
  return s;
}

}  // namespace metapo
