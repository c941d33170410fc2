// The meta-gradient chain of DESIGN §6, bilevel update step 3, as pure functions of one rank's pairs
// and the already all-reduced global sums. No MPI here: the trainer reduces the two scalars (Σa and
// Σ g·a) and the final dL/dφ over DP with its Comm.
//
// One meta step on a rank holding pairs i ∈ local of a global batch of B pairs:
//   a      = net.forward(X)                          raw weights, local [n]
//   Σa     = allreduce(local_a_sum(a))               one scalar, also needed for the loss weights
//   w̃      = normalized_weights(a, B, Σa)            w̃_i = B a_i / Σa, so Σ_global w̃ = B
//   s_i    = ⟨ĝ_V, ∇θ ℓ_i⟩                            alignments from the training backward (step 2)
//   ŝ      = rms_normalized(s, allreduce(Σ s²), B)   scale-free alignments
//   g      = lookahead_dLdw(ŝ, B)                    g_i = ∂L_V/∂w̃_i ≈ −(η/B) ŝ_i, η = 1
//   add_uniform_penalty(g, a, B, Σa, ρ)              g_i += ρ (w̃_i − 1) / B
//   Σga    = allreduce(local_ga_sum(g, a))
//   dL/da  = dLda(g, a, B, Σa, Σga)
//   grad   = 0; net.backward(dL/da, grad); grad = allreduce(grad); adam_update(φ, grad, ...)
// Because Σa and Σga are global, the concatenation of every rank's dL/da is exactly the single-rank
// dL/da of the whole batch, and the all-reduced grad is exactly dL_V/dφ.
#pragma once
#include <cstdint>
#include <vector>

namespace metapo {

// Σ_i a_i over the local pairs, in index order (reduce it over DP for Σa).
double local_a_sum(const std::vector<double>& a);

// w̃_i = B a_i / Σa for the local pairs. B: global batch size, global_sum_a: Σa over the global batch
// (must be > 0; a_min > 0 guarantees it).
std::vector<double> normalized_weights(const std::vector<double>& a, int64_t B, double global_sum_a);

// First-order one-step look-ahead: with θ' = θ − η Σ_i w̃_i ∇ℓ_i / B,
//   ∂L_V(θ')/∂w̃_i ≈ −(η/B) ⟨∇L_V, ∇ℓ_i⟩ = −(η/B) s_i.
// η (the inner learning rate) only scales the meta-gradient, and Adam on φ is invariant to that scale
// (up to its ε), so the trainer passes the default η = 1 rather than the current θ learning rate.
std::vector<double> lookahead_dLdw(const std::vector<double>& s, int64_t B, double eta = 1.0);

// Σ_i g_i a_i over the local pairs, in index order (reduce it over DP for Σga).
double local_ga_sum(const std::vector<double>& g, const std::vector<double>& a);

// Scale-free alignments (docs/metapo.md, "Diagnosis"): s_i / rms(s), with the root mean square
// √(Σ s² / n) over the global batch (global_sum_sq = Σ s², n = B); zeros stay zeros, an all-zero
// batch stays zero. The meta step then no longer depends on the scale of s, which shrinks by orders
// of magnitude over training, so the penalty below has one meaning at every step.
std::vector<double> rms_normalized(const std::vector<double>& s, double global_sum_sq, int64_t B);

// Adds the gradient of the trust region (ρ / 2B) Σ_i (w̃_i − 1)² around uniform weights to g = ∂L/∂w̃
// of the local pairs. Because Σ_i w̃_i² = B² / ESS, this penalizes a small effective sample size; with
// unit-RMS alignments the weights the net can reach move from 1 in proportion to E[ŝ | features] / ρ,
// so they stay near uniform while the meta signal is weak or pure noise.
void add_uniform_penalty(std::vector<double>& g, const std::vector<double>& a, int64_t B, double global_sum_a,
                         double rho);

// Backpropagates g = ∂L/∂w̃ through the normalization to the raw weights of the local pairs:
//   L = Σ_i g_i w̃_i,  w̃_i = B a_i / Σa   ⇒   ∂L/∂a_j = (B/Σa) (g_j − Σga / Σa)
// with Σa = global_sum_a and Σga = global_sum_ga reduced over the global batch.
std::vector<double> dLda(const std::vector<double>& g, const std::vector<double>& a, int64_t B,
                         double global_sum_a, double global_sum_ga);

// The significance gate (docs/metapo.md, "The significance gate"). The net learns its weights a_i as
// before; the policy trains on a_i^γ (γ ∈ [0, 1)), and γ follows how well the net's weights have been predicting
// the alignments: per meta step, c = corr(a, s) over the global batch (the weights were made before
// the step's alignments existed, so c is an out-of-sample test), its running mean m̂ and second moment
// (bias-corrected EMAs of rate α over meta steps), and the t statistic
//   T = m̂ / √(var · S),  var = max(v̂ − m̂², 1/(B − 1)),  S = Σ_k w_k² of the EMA's normalized weights,
// i.e. the running mean against its own standard error (the variance floor is that of a correlation of
// B independent pairs, so a few early steps cannot make it small). γ = 1 − 1/T² once T > Z,
// else 0: uniform weights (plain DPO) until the weights have predicted the alignments better than
// chance by Z standard errors, then the weights as learned, shrunk by the share of T² that is noise
// (E[T²] = 1 + signal², the positive-part James–Stein factor).
struct GateState {
  double m = 0, v = 0;  // EMAs of c and c²
  int64_t n = 0;        // meta steps taken in (with a defined c)
  double t = 0;         // the current T
  double gamma = 1;     // the exponent weights() applies
};

// The sums one all-reduce gives the meta step: Σa, Σa², Σs, Σs², Σas over the local pairs.
constexpr int kGateSums = 5;
void local_gate_sums(const std::vector<double>& a, const std::vector<double>& s, double* sums);

// Pearson's correlation of a and s over the global batch of B pairs from the all-reduced sums; NaN
// where either has no spread (every weight the same, as at the first step, or every s zero).
double correlation_from_sums(const double* sums, int64_t B);

// Takes in one meta step's correlation c (a NaN is skipped) and updates T.
void gate_update(GateState& st, double c, double alpha, int64_t B);

// γ = 1 − 1/T² where T > max(Z, 1); 0 otherwise.
double gate_gamma(const GateState& st, double Z);

// The weights the policy trains on: a_i^γ (a itself when γ = 1, all ones when γ = 0).
std::vector<double> applied_weights(const std::vector<double>& a, double gamma);

}  // namespace metapo
