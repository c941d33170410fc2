// The weight net's input features (DESIGN §6, "Features"): per pair, F = 8 values, in this order:
//   temporal       margin_ema (μ), margin_trend (Δ), volatility (√v), ref_deviation (its EMA),
//                  log_count (log(1+n))
//   instantaneous  margin (current m), loss (current base loss ℓ), logp_gap (the policy's own
//                  preference: logπ(y_w)/|y_w| − logπ(y_l)/|y_l|, mean per-token log-probabilities)
// logp_gap is not in DESIGN §6: the implicit-reward margin starts at 0 for every pair (the policy is
// the reference), so it carries only what training changed, while the policy's own preference also
// carries what the reference model already knew about the pair (docs/metapo.md, "Diagnosis").
// Temporal features come from the pair's PairStatRow as fetched for this step (normally before this
// step's observation is recorded, so they describe the pair's history and the instantaneous ones its
// present).
//
// Raw features are standardized by running *global* statistics — mean and standard deviation of every
// raw value of the earlier training steps over all ranks — and clipped to ±5, so the weight net sees
// inputs of unit scale whatever the model's margin scale. The trainer (MetaPOState) standardizes all
// micro-batches of a step with the statistics as of the start of the step and adds the step's raw
// features in one update at its end, so a pair's input depends on the global batch only, not on the
// micro-batching or the number of data-parallel ranks. (The first step sees no statistics: zeros.) A pair with fewer than 2 observations has no history yet
// (μ is one margin, Δ and v are 0 by initialization): its temporal features are set to 0, the value
// of an average pair, and its rows do not enter the temporal features' statistics.
#pragma once
#include <array>
#include <string>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/meta/pair_stats.h"

namespace metapo {

// Column indices of the [B, F] feature matrices.
constexpr int kFeatMarginEma = 0;
constexpr int kFeatMarginTrend = 1;
constexpr int kFeatVolatility = 2;
constexpr int kFeatRefDeviation = 3;
constexpr int kFeatLogCount = 4;
constexpr int kFeatMargin = 5;
constexpr int kFeatLoss = 6;
constexpr int kFeatLogpGap = 7;
constexpr int kNumFeatures = 8;
constexpr int kNumTemporalFeatures = 5;  // columns [0, 5) are temporal, [5, 8) instantaneous

constexpr std::array<const char*, kNumFeatures> kFeatureNames = {
    "margin_ema", "margin_trend", "volatility", "ref_deviation", "log_count", "margin", "loss", "logp_gap"};

// The instantaneous inputs of one pair under the current parameters.
struct PairNow {
  double margin = 0;    // implicit-reward margin m (pair_loss)
  double loss = 0;      // base loss ℓ
  double logp_gap = 0;  // logπ(y_w)/|y_w| − logπ(y_l)/|y_l|
};

// logp_gap from the policy's sequence log-probabilities and the response lengths (tokens, ≥ 1).
double logp_gap(double logp_chosen, int64_t len_chosen, double logp_rejected, int64_t len_rejected);

constexpr bool is_temporal(int f) { return f >= 0 && f < kNumTemporalFeatures; }

// log_count is recorded (it marks which pairs have history, and analyze reports it) but always enters
// the weight net as 0: without refresh passes every pair of an epoch has the same count, so it carries
// nothing about the pair, and its running standard deviation is ~0 — the first step of the next epoch
// (and `metapo analyze`, which sees the final counts) then standardized it to the ±5 clip for every
// pair, an input the net had never seen (docs/metapo.md, "Diagnosis").
constexpr bool is_net_input(int f) { return f != kFeatLogCount; }

// Observations a pair needs before its temporal features count.
constexpr double kMinHistory = 2;

// Raw features, [B, F] row-major, B = rows.size() = now.size().
std::vector<double> make_features(const std::vector<PairStatRow>& rows, const std::vector<PairNow>& now);

// Whether a raw feature row (F values) belongs to a pair with at least kMinHistory observations; read
// from its log_count column, which is log(1+n) of an integer n.
bool has_history(const double* raw_row);

// The feature ablation of `--meta-features`: "all" keeps every standardized input, "temporal" zeroes
// the instantaneous ones, "instantaneous" the temporal ones (x: [rows, kNumFeatures]). Zero is the
// standardized origin the attributions are measured from, so a masked feature gets no attribution.
void mask_features(std::vector<double>& x, int64_t rows, const std::string& keep);

class FeatureStandardizer {
 public:
  static constexpr double kMinStd = 1e-6;  // a constant feature standardizes to 0, not to ±inf
  static constexpr double kClip = 5.0;

  // Collective over comm: adds this step's raw features ([B, F], each rank its own pairs, B may differ
  // per rank) to the running statistics. The batch's sums are all-reduced before they are added, so
  // every rank holds bit-identical statistics afterwards. The trainer calls it once per step, after
  // the step's weights are made.
  void update(const std::vector<double>& raw, Comm& comm);

  // Local: (x − mean) / max(std, kMinStd), clipped to ±kClip; 0 for the temporal features of pairs
  // without history, for any feature that has no statistics yet, and for log_count (is_net_input).
  std::vector<double> standardize(const std::vector<double>& raw) const;

  double count(int f) const { return count_[size_t(f)]; }
  double mean(int f) const;
  double stddev(int f) const;  // population standard deviation of the values seen

  // Checkpoint state: [count[F], sum[F], sum_of_squares[F]] (3F doubles).
  std::vector<double> state() const;
  void load_state(const std::vector<double>& state);

 private:
  // Per feature, because the temporal features skip pairs without history.
  std::array<double, kNumFeatures> count_{}, sum_{}, sumsq_{};
};

}  // namespace metapo
