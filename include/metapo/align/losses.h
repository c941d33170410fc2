// The per-pair preference losses (`--loss`), with TRL's formulas and TRL's logged rewards.
//
// Everything here is a pure function of a few doubles per pair: the caller sums token log-probs over
// each response, calls pair_loss, and feeds d_policy_* back as the upstream coefficient of every
// token of that response (d Σ_t logp_t / d logp_t = 1). Keeping the losses scalar makes each one a
// few lines that can be checked against TRL's source line by line (docs/losses.md gives every
// formula, tests/test_losses.cpp checks them against TRL itself).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace metapo {

// The names are TRL's `loss_type` strings (DPOTrainer; "simpo" from CPOTrainer; "cdpo" is DPOTrainer's
// "sigmoid" with label smoothing, as TRL up to 0.24 computed and documented it).
enum class LossType {
  Sigmoid,      // DPO
  Ipo,          // IPO, length-normalized as TRL does
  Hinge,        // SLiC
  Cdpo,         // conservative DPO (label smoothing)
  Robust,       // robust DPO (unbiased under label flips)
  Simpo,        // SimPO (reference-free, length-normalized)
  ExoPair,      // EXO, pairwise
  NcaPair,      // NCA, pairwise
  BcoPair,      // BCO, pairwise (current TRL: no running-mean shift)
  SppoHard,     // SPPO with hard labels
  ApoZero,      // APO-zero
  ApoDown,      // APO-down
  Discopop,     // DiscoPOP / log-ratio modulated loss
  SigmoidNorm,  // DPO on per-token (length-normalized) log-ratios
};

// "--loss foo: unknown loss (valid: sigmoid, ipo, ...)" on an unknown name.
LossType parse_loss(const std::string& name);
std::string loss_name(LossType type);
// Every loss, in the order of the enum (for help texts and tests).
const std::vector<LossType>& all_losses();

// False only for reference-free losses (simpo): the caller may skip the reference forward.
bool loss_uses_reference(LossType type);
// True for losses that divide log-probs by the response length (ipo, simpo, sigmoid_norm): they need
// len_chosen, len_rejected >= 1.
bool loss_is_length_normalized(LossType type);
// True for losses that read label_smoothing (cdpo, robust, exo_pair, simpo).
bool loss_uses_label_smoothing(LossType type);
// True for losses in which the policy enters only through the pair's margin m (sigmoid, ipo, hinge,
// cdpo, robust, simpo, exo_pair, discopop, sigmoid_norm): then ∂ℓ/∂log π(y_w) and ∂ℓ/∂log π(y_l)
// have a fixed ratio per pair (−1, or the ratio of the lengths when normalized), and so have the
// derivatives of the label-confidence loss ℓ(u) and of ∂ℓ(u)/∂u. Not: nca_pair, bco_pair, sppo_hard,
// apo_zero, apo_down (terms of one response alone).
bool loss_is_margin_only(LossType type);

struct LossConfig {
  LossType type = LossType::Sigmoid;
  double beta = 0.1;             // TRL's beta (τ for IPO; SimPO's β, typically 2.0)
  double label_smoothing = 0.0;  // ε: cdpo, robust (flip rate), exo_pair (EXO's ε), simpo
  double simpo_gamma = 0.5;      // SimPO's target margin γ (TRL: simpo_gamma; logits shift γ/β)
  double discopop_tau = 0.05;    // DiscoPOP's τ (TRL default and the paper's recommendation)
  // How a pair's weight u enters its loss in training (not an option of its own: MetaPO's
  // --meta-apply sets it). false: u scales the loss. true: u ∈ [0, 1] is a label confidence, the
  // loss is confidence_pair_loss's ℓ(u) and weights are not normalized.
  bool weights_as_confidence = false;
};

// Rejects settings a loss cannot use: beta <= 0, label_smoothing outside the loss's range, or set for
// a loss that would ignore it (no silent no-op options).
void validate(const LossConfig& cfg);

// One preference pair, log-probs summed over response tokens.
struct PairLogps {
  double policy_chosen = 0, policy_rejected = 0;  // Σ log π_θ(y|x)
  double ref_chosen = 0, ref_rejected = 0;        // Σ log π_ref(y|x) (ignored by reference-free losses)
  int64_t len_chosen = 0, len_rejected = 0;       // response token counts
};

struct PairLossResult {
  double loss = 0;                                   // ℓ_i
  double d_policy_chosen = 0, d_policy_rejected = 0;  // ∂ℓ_i/∂policy_chosen, ∂ℓ_i/∂policy_rejected
  // TRL's logged rewards, detached: β(policy − ref) for DPOTrainer's losses, β·policy/len for simpo
  // (CPOTrainer). margin = reward_chosen − reward_rejected (the implicit-reward margin m_i).
  double reward_chosen = 0, reward_rejected = 0;
  double margin = 0;
};

// ℓ_i and its exact gradient for one pair. Inputs are not range-checked beyond the lengths of
// length-normalized losses (validate the config once, not per pair).
PairLossResult pair_loss(const LossConfig& cfg, const PairLogps& p);

// A pair's loss when its weight u ∈ [0, 1] is the confidence in its label (MetaPO's --meta-apply
// confidence; docs/metapo.md, "Weights as label confidence"):
//   ℓ(u) = (1+u)/2 · ℓ(y_w ≻ y_l) + (1−u)/2 · ℓ(y_l ≻ y_w),
// the loss mixed with the same pair's loss with chosen and rejected swapped. u = 1 is the loss itself;
// u = 0 says "no preference" and pulls the pair back toward the reference's preference instead of
// dropping it. For the sigmoid loss ℓ(u) is cdpo with ε = (1−u)/2.
struct ConfidencePairLoss {
  PairLossResult mixed;            // ℓ(u), its derivatives; rewards and margin are the unswapped pair's
  double du_chosen = 0, du_rejected = 0;  // ∂²ℓ/∂u∂policy_*: (∂ℓ/∂policy − ∂ℓ_swapped/∂policy) / 2
};
ConfidencePairLoss confidence_pair_loss(const LossConfig& cfg, const PairLogps& p, double u);

}  // namespace metapo
