// The preference objective (DESIGN §6) over the model or its pipeline: per micro-batch the pair losses
// against the stored reference log-probs, the per-pair weights a_i and the backward with a_i on each
// pair's loss; forward-only log-probs of pairs; the reference alignments bound to the model.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "metapo/align/losses.h"
#include "metapo/align/weighting.h"
#include "metapo/comm/comm.h"
#include "metapo/data/dataset.h"
#include "metapo/model/llama.h"
#include "metapo/train/pairs.h"

namespace metapo {

// The loss inputs of pair i of s with policy log-probs pc (chosen) and pr (rejected).
PairLogps pair_input(const PairSplit& s, int64_t i, double pc, double pr);

// Pair-level statistics over a set of pairs (sums; divide by n for means).
struct PairStats {
  double n = 0, weight_sum = 0, weighted_loss = 0, loss = 0, correct = 0, margin = 0;
  double reward_chosen = 0, reward_rejected = 0, logp_chosen = 0, logp_rejected = 0;
  double w_min = 1e300, w_max = -1e300, w_sq = 0;
  // logp_* are TRL's logps/*: summed log-probs, per-token averages for simpo (as CPOTrainer logs
  // the averages its loss uses).
  void add(const LossConfig& loss, const PairLogps& p, const PairLossResult& r, double w);
  void merge(const PairStats& o);
  // Collective over comm: the sums, minimum and maximum over its ranks (fixed-order sums).
  void allreduce(Comm& comm);
};

// One micro-batch of the preference objective: forward over the pairs `chunk` of s, pair losses and
// weights (a_i, constants w.r.t. θ), then backward with coefficient a_i * coef_scale on each pair's
// loss, into grads (accumulated unless accumulate is false). The trainer passes coef_scale = 1/B and
// rescales the summed gradient by B/Σa, which makes the step's gradient that of
// Σ_i a_i ℓ_i / Σ_i a_i over the global batch.
struct PairMicroResult {
  std::vector<PairLogps> in;
  std::vector<PairLossResult> out;
  std::vector<double> weights;
  std::vector<double> align;  // with ghat: ⟨ghat, ∇θ ℓ_k⟩ per pair (ghost products, a_k factor divided out);
                              // with loss.weights_as_confidence ⟨ghat, ∇θ ∂ℓ_k(u)/∂u⟩
  // loss.weights_as_confidence only, two per pair (chosen, rejected): the backward's coefficient of
  // the sequence (before coef_scale) and ∂²ℓ(u)/∂u∂log π(y) (confidence_pair_loss).
  std::vector<double> seq_coef, seq_du;
  int64_t tokens = 0;  // in the micro-batch
  int64_t scored = 0;  // rows with a target (response tokens): where the LM head runs
};
// The per-pair weights a_i of a micro-batch, from its pair inputs and losses (constants w.r.t. θ).
using WeightFn = std::function<std::vector<double>(const std::vector<PairLogps>&, const std::vector<PairLossResult>&)>;
template <typename T>
PairMicroResult pair_micro_step(LlamaModel<T>& model, const T* params, T* grads, bool accumulate,
                                const PairSplit& s, const std::vector<int64_t>& chunk, const LossConfig& loss,
                                const WeightFn& weigh, double coef_scale, const T* ghat = nullptr);
// Alignments ⟨ĝ, ∇θ ℓ_k⟩ of the pairs `chunk` by the reference methods of DESIGN §6: "exact" builds
// each pair's gradient with its own backward (grads is scratch), "fd" takes (ℓ_k(θ + hĝ) −
// ℓ_k(θ − hĝ)) / 2h with h = rel_step / max|ĝ| (scratch: a parameter-sized buffer).
template <typename T>
std::vector<double> pair_alignments_exact(LlamaModel<T>& model, const T* params, T* grads, size_t n_params,
                                          const PairSplit& s, const std::vector<int64_t>& chunk,
                                          const LossConfig& loss, const T* ghat);
template <typename T>
std::vector<double> pair_alignments_fd(LlamaModel<T>& model, const T* params, T* scratch, size_t n_params,
                                       const PairSplit& s, const std::vector<int64_t>& chunk,
                                       const LossConfig& loss, const T* ghat, double rel_step);

// The static weightings (uniform, wpo, margin, column): column holds the whole split's values.
template <typename T>
PairMicroResult pair_micro_step(LlamaModel<T>& model, const T* params, T* grads, bool accumulate,
                                const PairSplit& s, const std::vector<int64_t>& chunk, const LossConfig& loss,
                                Weighting weighting, const WeightOptions& wopt,
                                const std::vector<double>& column, double coef_scale);

// The preference objective over the micro-batches `chunks` of s (this rank's share of a global batch)
// through the pipeline pp (null: the whole model), as pair_micro_step does for one: per micro-batch
// the pair losses, the weights weigh(m, in, out) and the backward with a_i * coef_scale. Results (in,
// out, weights; align with ghat) are filled on the last stage; tokens on every stage.
using ChunkWeightFn = std::function<std::vector<double>(size_t m, const std::vector<PairLogps>&,
                                                        const std::vector<PairLossResult>&)>;
std::vector<PairMicroResult> pair_pipeline_step(LlamaModel<float>& model, Comm* pp, const float* params, float* grads,
                                                const PairSplit& s, const std::vector<std::vector<int64_t>>& chunks,
                                                const LossConfig& loss, const ChunkWeightFn& weigh, double coef_scale,
                                                const float* ghat = nullptr);
// Σ log π over each pair's chosen and rejected response tokens, forward only, in micro-batches cut
// by `mb` (pairs.h). The rows of idx are split over the ranks of comm (pair k on rank k mod size) and the
// result gathered on every rank. With tensor parallelism comm is the data-parallel communicator: the
// TP ranks of one replica process the same pairs (the model's collectives need them all). With a
// pipeline pp (else null) the micro-batches flow through the stages and the last stage's results are
// shared with the others.
// The pairs go in chunks of kLogpsChunkPairs per rank (one chunk for small splits); after each chunk
// every rank reports progress (core/progress.h: the trainer's hang watchdog, for which a long
// evaluation or reference pass is progress, not a hang).
constexpr size_t kLogpsChunkPairs = 256;
void pair_logps(LlamaModel<float>& model, Comm* pp, const float* params, const PairSplit& s,
                const std::vector<int64_t>& idx, const MicroBatching& mb, Comm& comm,
                std::vector<double>& chosen, std::vector<double>& rejected);

}  // namespace metapo
