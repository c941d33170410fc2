// The options of MetaPO (DESIGN §6), shared by the trainer and the MetaPO state.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

namespace metapo {

// MetaPO (DESIGN §6): per-pair weights from a weight net over temporal pair statistics, learned by a
// first-order bilevel update on validation batches.
struct MetaConfig {
  int64_t interval = 1;     // a meta update every `interval` steps ...
  int64_t warmup = 0;       // ... from this step on
  // Adam's learning rate on the weight net; NaN: by the run's length (meta_lr()).
  double lr = std::numeric_limits<double>::quiet_NaN();
  double ema_rate = 0.1;    // λ of the pair statistics
  int64_t val_batch = 8;    // validation pairs per meta update (all ranks)
  // ρ of the trust region (ρ/2B) Σ (w̃ − 1)² around uniform weights; NaN: the default of `apply`
  // (meta_penalty()).
  double penalty = std::numeric_limits<double>::quiet_NaN();
  // How the policy uses the weights: "confidence" (each a_i ∈ [0, 1] the confidence in the pair's
  // label: confidence_pair_loss, no normalization) or "scale" (Σ a_i ℓ_i / Σ a_i, DESIGN §6).
  std::string apply = "confidence";
  bool precondition = true; // ĝ_V = g_V / (√v̂ + ε) with the policy optimizer's second moment
  int64_t hidden = 32;
  double a_min = 1e-3;
  // The significance gate (docs/metapo.md, "The significance gate"): the policy trains on a_i^γ
  // rather than a_i, with γ = 1 − 1/T² once T > Z (0 before: uniform weights) and T the t statistic
  // of the running mean (EMA, rate gate_ema, over meta steps) of corr(a, s), the correlation over each
  // global batch of the net's weights with the alignments they are meant to predict. Z = gate; 0: no
  // gate (γ = 1, the weights as learned).
  double gate = 2;
  double gate_ema = 0.02;
  // Forward-only refresh of the pair statistics: every refresh_every steps, the next refresh_pairs
  // training pairs (a window rotating through the split) are scored and observed, so pairs gather
  // history faster than one observation per epoch (0: off).
  int64_t refresh_every = 0, refresh_pairs = 0;
  // How the alignments s_i = ⟨ĝ_V, ∇θ ℓ_i⟩ are computed: "ghost" (ghost products in the training
  // backward, the default), "exact" (one extra forward+backward per pair; tests and tiny models) or
  // "fd" (central finite difference of ℓ_i along ĝ_V: two extra forwards per micro-batch).
  std::string hypergrad = "ghost";
  // Feature ablation: "all", "temporal" (instantaneous inputs zeroed) or "instantaneous" (temporal
  // inputs zeroed). Zeroed standardized inputs sit at the origin the attributions are measured from.
  std::string features = "all";
  double fd_step = 1e-3;  // fd: θ ± h ĝ, h = fd_step · min(1 / max|ĝ|, max(‖θ‖, 1) / ‖ĝ‖)
  // Diagnostics: on every meta step, one JSON line per step in this file with every pair's sample
  // id, raw and standardized features, weight and alignment s_i ("": off).
  std::string trace_path;
};

// The weight net's learning rate when --meta-lr is not given: kMetaLrBudget over the run's number of
// meta updates, so that the net can move as far in a one-epoch run as in a three-epoch one (1e-3 for
// the 375 updates of 3 epochs of 4000 pairs at batch 32, 3e-3 for one epoch; docs/metapo.md "The
// meta learning rate").
inline constexpr double kMetaLrBudget = 0.375;

// The number of steps in [0, total_steps) that take a meta update (is_meta_step, metapo.h).
inline int64_t meta_updates(const MetaConfig& cfg, int64_t total_steps) {
  if (total_steps <= cfg.warmup) return 0;
  return (total_steps - cfg.warmup + cfg.interval - 1) / cfg.interval;
}

// The learning rate in effect: cfg.lr, or when that is NaN (not set) kMetaLrBudget / meta_updates().
inline double meta_lr(const MetaConfig& cfg, int64_t total_steps) {
  if (!std::isnan(cfg.lr)) return cfg.lr;
  const int64_t n = meta_updates(cfg, total_steps);
  return kMetaLrBudget / double(n > 0 ? n : 1);
}

// ρ in effect: cfg.penalty, or when that is NaN (not set) 0.2 for apply "confidence" and 0.5 for
// "scale" (docs/metapo.md, "Weights as label confidence").
inline double meta_penalty(const MetaConfig& cfg) {
  if (!std::isnan(cfg.penalty)) return cfg.penalty;
  return cfg.apply == "confidence" ? 0.2 : 0.5;
}

}  // namespace metapo
