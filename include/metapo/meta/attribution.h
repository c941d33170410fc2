// Interpretability of the weight net (DESIGN §6, `metapo analyze`): how much of its decisions the
// temporal features drive versus the instantaneous ones, and how its weights track a dataset's quality.
//
// Attributions are of z (the logit before the floor and sigmoid), not of a: z is what the net
// computes, and the sigmoid would only squash the large-|z| pairs that the net is most sure about.
// Features are the standardized ones the net sees, so the baseline "origin" is the running mean of
// every feature (DESIGN §6 "Features").
#pragma once
#include <cstdint>
#include <vector>

#include "metapo/meta/weight_net.h"

namespace metapo {

// Integrated gradients of z from the baseline x' = 0 for one row x [F]:
//   attr_f = x_f ∫_0^1 ∂z/∂x_f(α x) dα,
// the integral by the trapezoid rule on `steps` equal intervals (steps + 1 gradient evaluations).
// Completeness: Σ_f attr_f = T_K[φ'] with φ(α) = z(α x), K = steps, which differs from
// ∫ φ' = z(x) − z(0) by the trapezoid error
//   gap = (φ''(1) − φ''(0)) / (12 K²) + O(K⁻⁴),   |gap| ≤ max_α |φ'''(α)| / (12 K²),
// so quadrupling K divides the gap by 16 (tests/test_attribution.cpp checks both).
std::vector<double> integrated_gradients(const WeightNet& net, const double* x, int64_t steps = 64);
// The same for every row of X [B, F] → attr [B, F].
std::vector<double> integrated_gradients(const WeightNet& net, const std::vector<double>& X, int64_t B,
                                         int64_t steps = 64);
// max_b |Σ_f attr[b, f] − (z(x_b) − z(0))|: the completeness gap to report next to the attributions,
// so a user can tell the quadrature was fine enough.
double max_completeness_gap(const WeightNet& net, const std::vector<double>& X, int64_t B,
                            const std::vector<double>& attr);

// Per-feature importance and the share of it that goes to the temporal features:
//   temporal_share = Σ_{f temporal} mean_abs[f] / Σ_f mean_abs[f],
// NaN when every importance is 0 (e.g. the initial net, whose last layer is zero: nothing is decided).
struct AttributionSummary {
  std::vector<double> mean_abs;  // [F]
  double temporal_share;
};

// Summarizes attributions attr [B, F]: mean_abs[f] = mean_b |attr[b, f]|. is_temporal [F] marks the
// temporal features (the caller takes it from the features header; indices 0..4 of today's 7).
AttributionSummary summarize_attribution(const std::vector<double>& attr, int64_t B,
                                         const std::vector<bool>& is_temporal);

// Permutation importance of each feature f: shuffle column f of X [B, F] across the rows (the rest of
// each row unchanged) and measure mean_b |z(x̃_b) − z(x_b)|, averaged over `repeats` shuffles. The
// shuffle of (feature f, repeat r) is a Fisher–Yates from make_rng(seed, f, r, RngPurpose::Permute),
// so the result is a pure function of (net, X, seed). mean_abs holds the importances.
AttributionSummary permutation_importance(const WeightNet& net, const std::vector<double>& X, int64_t B,
                                          const std::vector<bool>& is_temporal, uint64_t seed,
                                          int64_t repeats = 1);

// Quality correlation. 1-based ranks with ties given their average rank.
std::vector<double> average_ranks(const std::vector<double>& x);
// Area under the ROC curve of score for label (1 = positive, 0 = negative; e.g. clean vs flipped):
// the probability that a random positive scores above a random negative, ties counted ½
// (Mann–Whitney U on average ranks). NaN when one class is empty.
double auc(const std::vector<double>& score, const std::vector<int>& label);
// Spearman's ρ: Pearson's correlation of the average ranks. NaN when fewer than 2 values or when
// either side is constant.
double spearman(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace metapo
