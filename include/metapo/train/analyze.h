// `metapo analyze` (DESIGN §6, "Interpretability"): what a trained MetaPO weight net decides and why.
//
// The computation is split so that every piece except the model forward is a pure function a unit
// test can drive with hand-made inputs:
//   read_meta_run, read_run_record   RUN/metapo.json and RUN/run.json (train/run_files.h)
//   analysis_input                   model forward over a split → raw features per pair (collective)
//   analyze_weights                  features → weights, attributions, quality statistics
//   analysis_json / summary_json / pair_weights_jsonl / summary_text   the outputs
// The CLI (src/cli/cmd_analyze.cpp) only parses options, calls these and writes the files on rank 0.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "metapo/align/losses.h"
#include "metapo/comm/topology.h"
#include "metapo/data/dataset.h"
#include "metapo/meta/attribution.h"
#include "metapo/meta/features.h"
#include "metapo/meta/pair_stats.h"
#include "metapo/meta/weight_net.h"
#include "metapo/model/llama.h"
#include "metapo/train/run_files.h"

namespace metapo {

struct AnalyzeOptions {
  int64_t ig_steps = 64;             // trapezoid intervals of integrated gradients
  int64_t permutation_repeats = 3;   // shuffles per feature
  int64_t max_pairs = 2000;          // pairs attributed (a seeded sample when the split is larger)
  uint64_t seed = 0;                 // of that sample and of the permutations
  std::string features = "all";      // the run's --meta-features (metapo.json "features_used")
};

// Per pair of the split, everything the analysis reads.
struct AnalyzeInput {
  std::vector<int64_t> sample_id;  // [N]
  std::vector<double> raw;         // [N, F] raw features (make_features), F = kNumFeatures
  std::vector<double> history;     // [N] the pair's observation count n from the stored table
  std::vector<float> quality;      // [N] or empty (synth: 1 clean, 0 flipped)
  std::vector<float> difficulty;   // [N] or empty (synth: 1 hard, 0 easy)
  int64_t size() const { return int64_t(sample_id.size()); }
};

// Collective over topo.world_comm(): the forward pass of every pair of s under the model (pairs split over
// the ranks by pair_logps, gathered on every rank), pair_loss with `loss` for the instantaneous
// margin and loss, the stored table rows for the temporal features. Every rank returns the same
// input. s needs reference log-probs unless the loss is reference-free.
AnalyzeInput analysis_input(LlamaModel<float>& model, const float* params, const PairSplit& s,
                            const MetaRun& run, const LossConfig& loss, int64_t micro, const Topology& topo);

// Mean, population std, extremes, quantiles (linear interpolation between order statistics, as
// numpy's default) and a histogram of equal-width bins over [min, max] (all values in bin 0 when
// min == max).
struct Distribution {
  double mean = 0, std = 0, min = 0, max = 0;
  static constexpr std::array<double, 5> kQuantileLevels = {0.05, 0.25, 0.5, 0.75, 0.95};
  std::array<double, 5> quantiles{};
  std::vector<double> hist_edges;    // [bins + 1]
  std::vector<int64_t> hist_counts;  // [bins]
};
Distribution distribution(const std::vector<double>& v, int64_t bins = 20);

// Mean weight of one group of pairs ("clean", "flipped/hard", ...).
struct GroupWeight {
  std::string name;
  int64_t count = 0;
  double mean_weight = 0;      // of the raw a_i (NaN when the group is empty)
  double mean_normalized = 0;  // of w̃_i = N a_i / Σa, so 1 is the split's average
};

struct AnalyzeResult {
  int64_t n = 0;                 // pairs analyzed
  int64_t with_history = 0;      // pairs with at least kMinHistory observations
  std::vector<double> z, a, w;   // [N] logit, raw weight, normalized weight N a_i / Σa
  Distribution weights;          // of a (what `train` logs as weights/*)

  std::vector<int64_t> attributed;  // indices (into the split, ascending) of the attributed pairs
  AttributionSummary ig;            // integrated gradients of z from the standardized origin
  double ig_completeness_gap = 0;   // max |Σ_f attr − (z(x) − z(0))| over the attributed pairs
  AttributionSummary permutation;   // permutation importance on the same pairs

  bool has_quality = false, has_difficulty = false;
  double quality_auc = 0;     // AUC of a for clean (quality ≥ 0.5) vs flipped; NaN if a class is empty
  double spearman = 0;        // Spearman(a, quality)
  double margin_auc = 0;      // AUC of the instantaneous margin alone, all pairs
  double margin_ema_auc = 0;  // AUC of the raw margin EMA alone, over the pairs observed at least once
  int64_t margin_ema_pairs = 0;
  std::vector<GroupWeight> groups;
};

// Replicated and deterministic (no communication): the same result on every rank.
AnalyzeResult analyze_weights(const WeightNet& net, const FeatureStandardizer& stdz, const AnalyzeInput& in,
                              const AnalyzeOptions& opt);

// Pair i is clean when quality ≥ 0.5 (the positive class of the AUCs) and hard when difficulty ≥ 0.5.
constexpr double kLabelThreshold = 0.5;

// RUN/analysis.json: everything in the result plus `context` (run, data, split, model, options) at
// its top level. Non-finite numbers are written as null.
nlohmann::json analysis_json(const AnalyzeResult& r, const nlohmann::json& context);
// The last stdout line: temporal_share, temporal_share_permutation, quality_auc, spearman,
// margin_auc, margin_ema_auc, weight_mean, weight_std, n (quality fields null without quality).
nlohmann::json summary_json(const AnalyzeResult& r);
// RUN/pair_weights.jsonl: one line per pair in split order.
std::string pair_weights_jsonl(const AnalyzeResult& r, const AnalyzeInput& in);
// A few lines and a per-feature table for a person.
std::string summary_text(const AnalyzeResult& r);

}  // namespace metapo
