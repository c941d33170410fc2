// MetaPO at training time (DESIGN §6): the distributed pair-statistics table, the feature
// standardizer, the weight net and its Adam state, and the meta update. Every method marked
// collective must be called by all data-parallel ranks in the same order.
#pragma once
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "metapo/align/losses.h"
#include "metapo/comm/comm.h"
#include "metapo/data/dataset.h"
#include "metapo/meta/features.h"
#include "metapo/meta/meta_grad.h"
#include "metapo/meta/pair_stats.h"
#include "metapo/meta/weight_net.h"
#include "metapo/comm/topology.h"
#include "metapo/train/meta_config.h"
#include "metapo/train/objective.h"
#include "metapo/train/zero.h"

namespace metapo {

// Whether `step` takes a meta update (every interval steps from warmup on). Every pipeline stage
// needs this (the validation gradient and the ghost products run on all of them); the MetaPO state
// itself lives on the last stage.
inline bool is_meta_step(const MetaConfig& cfg, int64_t step) {
  return step >= cfg.warmup && (step - cfg.warmup) % cfg.interval == 0;
}

// The training pairs the forward-only refresh (MetaConfig::refresh_every) scores at `step`: a window
// of refresh_pairs rotating through the n pairs of the split, less the step's own global batch `batch`
// (the step observes those at the same parameters: a second observation of one margin would pass for
// history, n >= 2 with trend and volatility 0); empty on steps without a refresh. The trainer and
// `metapo plan` both take it from here.
std::vector<int64_t> refresh_window(const MetaConfig& cfg, int64_t n, int64_t step, const std::vector<int64_t>& batch);

// Checks every MetaPO option (--meta-*, --stats-*, --weight-floor, --meta-trace: not a directory, in
// a folder that exists or is yet to be made) with one error line naming the option; the CLI calls it before the run directory is made,
// and MetaPOState's constructor again.
void validate(const MetaConfig& cfg);

class MetaPOState {
 public:
  // writes_trace: this rank writes --meta-trace (one rank of the whole job: with TP the ranks of a
  // replica hold the same state, and every data-parallel group gathers its own copy).
  // resuming: --meta-trace continues (the trainer truncates it to the checkpoint's size) instead of
  // being started empty.
  MetaPOState(const MetaConfig& cfg, int64_t max_sample_id, uint64_t seed, Comm& dp, bool writes_trace = true,
              bool resuming = false);

  bool is_meta_step(int64_t step) const { return metapo::is_meta_step(cfg_, step); }

  // Collective over the data-parallel ranks. Fetches the history of this rank's pairs of the step
  // (mine) in one exchange before its micro-batches, so the weights() calls of the step communicate
  // nothing and the ranks may run different numbers of micro-batches (--micro-batch-tokens). The
  // table does not change within a step, so the rows are those weights() would fetch itself.
  void begin_step(const PairSplit& s, const std::vector<int64_t>& mine);

  // Collective unless begin_step fetched the pairs. Weights a_i of one micro-batch: fetches the pairs' history, builds the features and
  // standardizes them with the running statistics as of the start of the step (earlier steps only),
  // runs the weight net. Keeps the raw and standardized features and the observations for
  // end_step(). The weights thus depend on the global batch, not on how it is split into
  // micro-batches or over data-parallel ranks.
  std::vector<double> weights(const PairSplit& s, const std::vector<int64_t>& chunk,
                              const std::vector<PairLogps>& in, const std::vector<PairLossResult>& out);

  // Collective. After all micro-batches of `step`: with align (⟨ĝ_V, ∇ℓ_i⟩ of every local pair, in
  // the order the weights were made) the meta update — g_i = −s_i/B, dL/da through the global
  // normalization, dφ through the net, summed over ranks, Adam — then the step's raw features go
  // into the standardizer's running statistics (one all-reduce over the ranks) and the step's
  // observations into the table. global_sum_applied = Σ over the global batch of B pairs of the
  // weights weights() returned (a^γ under the significance gate; a without it). With align, the
  // gate's statistics take in the step and γ for the next step is set.
  void end_step(int64_t step, const std::vector<double>* align, int64_t B, double global_sum_applied);
  // Local. A skipped step (non-finite loss or gradient norm): forgets the step's features, weights
  // and observations, so the table, the standardizer and the net stay as they were.
  void discard_step();

  // Collective. The forward-only refresh: the pairs idx = refresh_window(...) scored under the current
  // parameters (chosen/rejected: their policy log-probs, pair_logps) are recorded now (each rank
  // passing its share).
  void observe_refresh(const PairSplit& s, const std::vector<int64_t>& idx, const std::vector<double>& chosen,
                       const std::vector<double>& rejected, const LossConfig& loss, int64_t step);

  WeightNet& net() { return net_; }
  PairStatsTable& table() { return table_; }
  FeatureStandardizer& standardizer() { return stdz_; }
  AdamState& adam() { return adam_; }  // the weight net's optimizer (checkpoints)
  double last_meta_grad_norm() const { return last_grad_norm_; }
  GateState& gate() { return gate_; }  // the significance gate (checkpoints, metrics)

 private:
  MetaConfig cfg_;
  Comm& dp_;
  bool writes_trace_;  // this rank writes cfg_.trace_path
  PairStatsTable table_;
  FeatureStandardizer stdz_;
  WeightNet net_;
  AdamState adam_;
  std::vector<double> step_raw_, step_x_, step_a_;  // raw and standardized features [n, F], weights of this step
  std::vector<PairObservation> step_obs_;
  std::unordered_map<int64_t, PairStatRow> fetched_;  // begin_step's rows by sample id
  double last_grad_norm_ = 0;
  GateState gate_;
  // Collective over dp: gathers the step's pairs and, on the writing rank, appends one line.
  void write_trace(int64_t step, const std::vector<double>& align);
};

// The loss whose validation gradient g_V MetaPO's alignments measure against: the training loss,
// except for apo_down, whose own term σ(βΔ_w) falls as the chosen (correct) responses lose
// probability, so that its g_V rewards the pairs that push correct answers down, the flipped ones
// (measured: weight AUC 0.05 on sort at 40% flips). For it, DPO's sigmoid loss at the same β, which
// measures the preference alone (docs/metapo.md "The validation objective").
LossConfig meta_validation_loss(const LossConfig& loss);

// Collective. g_V = ∇θ of the mean base loss over a validation batch (global batch `val_batch`,
// drawn from (seed, step)), summed over the data-parallel ranks, optionally divided by √v̂ + ε of the
// policy's AdamW (Adam preconditioning, on each rank's ZeRO-1 shard). Written into
// ghat[0, opt.padded_size()) (the model's layout: with TP and PP the rank's local part; zero padding).
// Through the pipeline pp (null: the whole model is here); collective over all stages. On a device
// params is the model's device copy and model_grads a device buffer of the layout's size the backward
// writes, copied into ghat (host) for the all-reduce; on the CPU model_grads is null (or ghat).
void validation_gradient(LlamaModel<float>& model, Comm* pp, const float* params, const PairSplit& val,
                         const LossConfig& loss, int64_t val_batch, const MicroBatching& mb, uint64_t seed, int64_t step,
                         const Topology& topo, ZeroAdamW& opt, bool precondition, float* ghat,
                         float* model_grads = nullptr);

}  // namespace metapo
