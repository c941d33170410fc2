// Per-pair weights for the weighted batch loss L = Σ_i w_i ℓ_i / Σ_i w_i (`--weighting`).
//
// The static baselines live here: each is a fixed rule of numbers the trainer already has (the
// pair's log-probs, its current margin, a dataset column). MetaPO's learned weights come from the
// weight net (DESIGN §6) and share only the enum and the batch normalization with them.
#pragma once
#include <string>
#include <vector>

#include "metapo/align/losses.h"

namespace metapo {

enum class Weighting {
  Uniform,  // w = 1: the plain base loss
  Wpo,      // WPO: the policy's own length-normalized probability of both responses
  Margin,   // σ(m / τ) of the instantaneous implicit-reward margin
  Column,   // a dataset column
  Metapo,   // the learned weight net (not computed by static_pair_weights)
};

// "--weighting foo: unknown weighting (valid: uniform, wpo, margin, column, metapo)" on an unknown name.
Weighting parse_weighting(const std::string& name);
std::string weighting_name(Weighting w);

struct WeightOptions {
  double wpo_alpha = 1.0;         // exponent on WPO's weight: w = (π̄_w π̄_l)^α (1 = the paper's)
  double margin_tau = 1.0;        // temperature of the margin weighting
  std::string column = "weight";  // dataset column for --weighting column (named in errors)
};

// Rejects options the chosen weighting would misuse (alpha < 0, tau <= 0, an empty column name).
void validate(Weighting w, const WeightOptions& opt);

// Raw weight per pair: finite and >= 0 (column values may be 0; σ and exp cannot underflow to 0 for
// any realistic margin or log-prob, and an underflow is reported rather than returned). Constants with
// respect to θ: no gradient flows through them, the caller multiplies ℓ_i's upstream gradient by
// w_i / Σ_j w_j. The caller forms Σ_j w_j over the global batch and must reject a sum of 0.
// pairs.size() is the batch size; margin also reads losses (same size, for the margins) and column
// reads column_values (same size); the vectors a weighting does not read may be empty.
// Fails for Weighting::Metapo (those weights come from the weight net).
std::vector<double> static_pair_weights(Weighting w, const std::vector<PairLogps>& pairs,
                                        const std::vector<PairLossResult>& losses,
                                        const std::vector<double>& column_values, const WeightOptions& opt);

}  // namespace metapo
