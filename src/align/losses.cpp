// The per-pair losses. Each case is TRL's expression (trl/trainer/dpo_trainer.py, DPOTrainer._compute_loss
// in TRL 1.16; simpo: trl/experimental/cpo/cpo_trainer.py, CPOTrainer.cpo_loss; cdpo: DPOTrainer.dpo_loss
// "sigmoid" in TRL 0.24) followed by its derivative, worked out by hand and checked against finite
// differences and TRL's autograd in tests/test_losses.cpp.
#include "metapo/align/losses.h"

#include <algorithm>
#include <cmath>

#include "metapo/core/error.h"

namespace metapo {
namespace {

struct LossInfo {
  LossType type;
  const char* name;
  bool uses_reference;
  bool length_normalized;
  bool uses_label_smoothing;
  bool margin_only;  // the policy enters only through the pair's (implicit-reward) margin
};

// One row per loss: the single place that names a loss and says which inputs it reads.
constexpr LossInfo kLosses[] = {
    {LossType::Sigmoid, "sigmoid", true, false, false, true},
    {LossType::Ipo, "ipo", true, true, false, true},
    {LossType::Hinge, "hinge", true, false, false, true},
    {LossType::Cdpo, "cdpo", true, false, true, true},
    {LossType::Robust, "robust", true, false, true, true},
    {LossType::Simpo, "simpo", false, true, true, true},
    {LossType::ExoPair, "exo_pair", true, false, true, true},
    {LossType::NcaPair, "nca_pair", true, false, false, false},
    {LossType::BcoPair, "bco_pair", true, false, false, false},
    {LossType::SppoHard, "sppo_hard", true, false, false, false},
    {LossType::ApoZero, "apo_zero", true, false, false, false},
    {LossType::ApoDown, "apo_down", true, false, false, false},
    {LossType::Discopop, "discopop", true, false, false, true},
    {LossType::SigmoidNorm, "sigmoid_norm", true, true, false, true},
};

const LossInfo& info(LossType type) {
  for (const auto& li : kLosses)
    if (li.type == type) return li;
  fail("loss type ", int(type), " has no entry in the loss table (src/align/losses.cpp)");
}

// Stable for any x: never exponentiates a positive argument (σ(±40) and log σ(−800) are fine).
double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

// log σ(x) = min(x, 0) − log1p(exp(−|x|)), the form torch's logsigmoid uses.
double log_sigmoid(double x) { return std::min(x, 0.0) - std::log1p(std::exp(-std::abs(x))); }

// Both smoothed-sigmoid losses have the same two terms: ℓ = a·(−log σ(x)) + b·(−log σ(−x)).
// dℓ/dx = −a·σ(−x) + b·σ(x).
struct Scalar {
  double value, dx;
};
Scalar smoothed_sigmoid(double x, double a, double b) {
  return {-a * log_sigmoid(x) - b * log_sigmoid(-x), -a * sigmoid(-x) + b * sigmoid(x)};
}

double per_token(double logp, int64_t len) { return logp / double(len); }

}  // namespace

LossType parse_loss(const std::string& name) {
  for (const auto& li : kLosses)
    if (name == li.name) return li.type;
  std::string valid;
  for (const auto& li : kLosses) valid += std::string(valid.empty() ? "" : ", ") + li.name;
  fail("--loss ", name, ": unknown loss (valid: ", valid, ")");
}

std::string loss_name(LossType type) { return info(type).name; }

const std::vector<LossType>& all_losses() {
  static const std::vector<LossType> all = [] {
    std::vector<LossType> v;
    for (const auto& li : kLosses) v.push_back(li.type);
    return v;
  }();
  return all;
}

bool loss_uses_reference(LossType type) { return info(type).uses_reference; }
bool loss_is_length_normalized(LossType type) { return info(type).length_normalized; }
bool loss_uses_label_smoothing(LossType type) { return info(type).uses_label_smoothing; }
bool loss_is_margin_only(LossType type) { return info(type).margin_only; }

void validate(const LossConfig& cfg) {
  const std::string name = loss_name(cfg.type);
  MP_CHECK(std::isfinite(cfg.beta) && cfg.beta > 0, "--beta ", cfg.beta, ": must be finite and > 0 (loss ", name, ")");
  const double ls = cfg.label_smoothing;
  MP_CHECK(std::isfinite(ls), "--label-smoothing ", ls, ": not a finite number");
  switch (cfg.type) {
    case LossType::Cdpo:
    case LossType::Robust:
    case LossType::ExoPair:
      // ε is a label-flip probability: 0 makes cdpo/robust plain DPO (use sigmoid) and EXO's log ε
      // infinite; 0.5 makes robust divide by zero and the preference meaningless.
      MP_CHECK(ls > 0 && ls < 0.5, "--label-smoothing ", ls, ": loss ", name, " needs 0 < label_smoothing < 0.5",
               cfg.type == LossType::ExoPair ? " (EXO recommends 1e-3)" : " (e.g. 0.1)");
      break;
    case LossType::Simpo:
      MP_CHECK(ls >= 0 && ls < 0.5, "--label-smoothing ", ls, ": loss simpo needs 0 <= label_smoothing < 0.5");
      break;
    default:
      MP_CHECK(ls == 0, "--label-smoothing ", ls, ": loss ", name,
               " does not use label smoothing (cdpo, robust, exo_pair and simpo do)");
  }
  if (cfg.type == LossType::Simpo)
    MP_CHECK(std::isfinite(cfg.simpo_gamma), "--simpo-gamma ", cfg.simpo_gamma, ": not a finite number");
  if (cfg.type == LossType::Discopop)
    MP_CHECK(std::isfinite(cfg.discopop_tau) && cfg.discopop_tau > 0, "--discopop-tau ", cfg.discopop_tau,
             ": must be > 0");
}

PairLossResult pair_loss(const LossConfig& cfg, const PairLogps& p) {
  const double beta = cfg.beta, eps = cfg.label_smoothing;
  if (loss_is_length_normalized(cfg.type))
    // TRL clamps an empty completion's length to 1 (DPO) or divides by zero (CPO); an empty response
    // is a data error either way, so say so instead.
    MP_CHECK(p.len_chosen >= 1 && p.len_rejected >= 1, "loss ", loss_name(cfg.type),
             " divides by response lengths, got len_chosen = ", p.len_chosen, ", len_rejected = ", p.len_rejected);

  // TRL's names: chosen/rejected log-ratios (policy − ref) and their difference.
  const double lr_c = p.policy_chosen - p.ref_chosen;
  const double lr_r = p.policy_rejected - p.ref_rejected;
  const double delta = lr_c - lr_r;
  const double x = beta * delta;  // the DPO logit; ∂x/∂policy_chosen = β, ∂x/∂policy_rejected = −β

  PairLossResult r;
  r.reward_chosen = beta * lr_c;
  r.reward_rejected = beta * lr_r;

  // Losses of x alone set dx; the rest set the two derivatives directly.
  double dx = 0;
  bool via_x = true;
  switch (cfg.type) {
    case LossType::Sigmoid: {  // −log σ(x)
      const Scalar s = smoothed_sigmoid(x, 1.0, 0.0);
      r.loss = s.value, dx = s.dx;
      break;
    }
    case LossType::Cdpo: {  // −(1−ε) log σ(x) − ε log σ(−x)
      const Scalar s = smoothed_sigmoid(x, 1.0 - eps, eps);
      r.loss = s.value, dx = s.dx;
      break;
    }
    case LossType::Robust: {  // [−(1−ε) log σ(x) + ε log σ(−x)] / (1 − 2ε)
      const Scalar s = smoothed_sigmoid(x, 1.0 - eps, -eps);
      r.loss = s.value / (1.0 - 2.0 * eps), dx = s.dx / (1.0 - 2.0 * eps);
      break;
    }
    case LossType::Hinge: {  // relu(1 − x); torch's relu has derivative 0 at the kink, so do we
      r.loss = std::max(0.0, 1.0 - x);
      dx = 1.0 - x > 0 ? -1.0 : 0.0;
      break;
    }
    case LossType::ExoPair: {
      // q = σ(x): ℓ = q (log q − log(1−ε)) + (1−q)(log(1−q) − log ε) = KL([q, 1−q] ‖ [1−ε, ε]).
      // dℓ/dq = log q − log(1−q) − log((1−ε)/ε) = x − log((1−ε)/ε), dq/dx = σ(x) σ(−x).
      const double q = sigmoid(x), qc = sigmoid(-x);
      r.loss = q * (log_sigmoid(x) - std::log1p(-eps)) + qc * (log_sigmoid(-x) - std::log(eps));
      dx = q * qc * (x - (std::log1p(-eps) - std::log(eps)));
      break;
    }
    case LossType::Discopop: {
      // ℓ = −log σ(x)·(1−m) + e^{−x}·m with m = σ(x/τ). e^{−x}·m is formed in log space so that a very
      // negative x gives a large finite number instead of inf·0.
      const double tau = cfg.discopop_tau;
      const double m = sigmoid(x / tau), dm = m * sigmoid(-x / tau) / tau;
      const double softplus_neg = -log_sigmoid(x);  // −log σ(x)
      const double exp_m = std::exp(-x + log_sigmoid(x / tau));
      const double exp_dm = std::exp(-x + log_sigmoid(x / tau) + log_sigmoid(-x / tau)) / tau;  // e^{−x}·dm
      r.loss = softplus_neg * (1.0 - m) + exp_m;
      dx = -sigmoid(-x) * (1.0 - m) - softplus_neg * dm - exp_m + exp_dm;
      break;
    }
    case LossType::Ipo: {
      // TRL divides each log-ratio by its response length (per-token average) before IPO's square:
      // ℓ = (Δc/|y_w| − Δr/|y_l| − 1/(2β))².
      const double u = per_token(lr_c, p.len_chosen) - per_token(lr_r, p.len_rejected) - 1.0 / (2.0 * beta);
      r.loss = u * u;
      r.d_policy_chosen = 2.0 * u / double(p.len_chosen);
      r.d_policy_rejected = -2.0 * u / double(p.len_rejected);
      via_x = false;
      break;
    }
    case LossType::SigmoidNorm: {  // −log σ(β(Δc/|y_w| − Δr/|y_l|))
      const double y = beta * (per_token(lr_c, p.len_chosen) - per_token(lr_r, p.len_rejected));
      const Scalar s = smoothed_sigmoid(y, 1.0, 0.0);
      r.loss = s.value;
      r.d_policy_chosen = s.dx * beta / double(p.len_chosen);
      r.d_policy_rejected = -s.dx * beta / double(p.len_rejected);
      via_x = false;
      break;
    }
    case LossType::NcaPair: {  // a = βΔc, b = βΔr: −log σ(a) − ½ log σ(−a) − ½ log σ(−b)
      const double a = beta * lr_c, b = beta * lr_r;
      r.loss = -log_sigmoid(a) - 0.5 * log_sigmoid(-a) - 0.5 * log_sigmoid(-b);
      r.d_policy_chosen = beta * (-sigmoid(-a) + 0.5 * sigmoid(a));
      r.d_policy_rejected = beta * 0.5 * sigmoid(b);
      via_x = false;
      break;
    }
    case LossType::BcoPair: {  // −log σ(a) − log σ(−b)
      const double a = beta * lr_c, b = beta * lr_r;
      r.loss = -log_sigmoid(a) - log_sigmoid(-b);
      r.d_policy_chosen = -beta * sigmoid(-a);
      r.d_policy_rejected = beta * sigmoid(b);
      via_x = false;
      break;
    }
    case LossType::SppoHard: {  // (Δc − 1/(2β))² + (Δr + 1/(2β))²
      const double ec = lr_c - 0.5 / beta, er = lr_r + 0.5 / beta;
      r.loss = ec * ec + er * er;
      r.d_policy_chosen = 2.0 * ec;
      r.d_policy_rejected = 2.0 * er;
      via_x = false;
      break;
    }
    case LossType::ApoZero: {  // (1 − σ(a)) + σ(b)
      const double a = beta * lr_c, b = beta * lr_r;
      r.loss = (1.0 - sigmoid(a)) + sigmoid(b);
      r.d_policy_chosen = -beta * sigmoid(a) * sigmoid(-a);
      r.d_policy_rejected = beta * sigmoid(b) * sigmoid(-b);
      via_x = false;
      break;
    }
    case LossType::ApoDown: {  // σ(a) + (1 − σ(β(Δc − Δr))) — TRL writes the second argument as x
      const double a = beta * lr_c;
      const double sx = sigmoid(x) * sigmoid(-x);
      r.loss = sigmoid(a) + (1.0 - sigmoid(x));
      r.d_policy_chosen = beta * sigmoid(a) * sigmoid(-a) - beta * sx;
      r.d_policy_rejected = beta * sx;
      via_x = false;
      break;
    }
    case LossType::Simpo: {
      // CPOTrainer: per-token average log-probs, no reference. z = β(π̄_w − π̄_l) − γ;
      // ℓ = −(1−ε) log σ(z) − ε log σ(−z). Its rewards are β·π̄ (what CPOTrainer logs).
      const double avg_c = per_token(p.policy_chosen, p.len_chosen);
      const double avg_r = per_token(p.policy_rejected, p.len_rejected);
      const double z = beta * (avg_c - avg_r) - cfg.simpo_gamma;
      const Scalar s = smoothed_sigmoid(z, 1.0 - eps, eps);
      r.loss = s.value;
      r.d_policy_chosen = s.dx * beta / double(p.len_chosen);
      r.d_policy_rejected = -s.dx * beta / double(p.len_rejected);
      r.reward_chosen = beta * avg_c;
      r.reward_rejected = beta * avg_r;
      via_x = false;
      break;
    }
  }
  if (via_x) {
    r.d_policy_chosen = beta * dx;
    r.d_policy_rejected = -beta * dx;
  }
  r.margin = r.reward_chosen - r.reward_rejected;
  return r;
}

ConfidencePairLoss confidence_pair_loss(const LossConfig& cfg, const PairLogps& p, double u) {
  const PairLogps sw{p.policy_rejected, p.policy_chosen, p.ref_rejected, p.ref_chosen, p.len_rejected, p.len_chosen};
  const PairLossResult r = pair_loss(cfg, p), q = pair_loss(cfg, sw);
  // The swapped pair's chosen response is this pair's rejected one.
  const double qc = q.d_policy_rejected, qr = q.d_policy_chosen;
  const double hi = 0.5 * (1.0 + u), lo = 0.5 * (1.0 - u);
  ConfidencePairLoss c;
  c.mixed = r;
  c.mixed.loss = hi * r.loss + lo * q.loss;
  c.mixed.d_policy_chosen = hi * r.d_policy_chosen + lo * qc;
  c.mixed.d_policy_rejected = hi * r.d_policy_rejected + lo * qr;
  c.du_chosen = 0.5 * (r.d_policy_chosen - qc);
  c.du_rejected = 0.5 * (r.d_policy_rejected - qr);
  return c;
}

}  // namespace metapo
