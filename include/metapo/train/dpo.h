// Preference optimization (DPO and its loss family) and supervised fine-tuning over the process grid
// world = DP x PP x TP: each model replica is split into PP pipeline stages of contiguous layers and
// each stage over its TP ranks (each rank holds its stage_shard_map shard), micro-batches flow through
// the stages in the 1F1B order (train/pipeline.h), each replica takes its share of every global batch,
// and gradients are summed over the DP ranks (bit-identically on every rank) before the optimizer step.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "metapo/align/losses.h"
#include "metapo/align/weighting.h"
#include "metapo/comm/mpi_comm.h"
#include "metapo/comm/topology.h"
#include "metapo/data/dataset.h"
#include "metapo/model/llama.h"
#include "metapo/model/tp_layout.h"
#include "metapo/train/optimizer.h"

namespace metapo {

// MetaPO (DESIGN §6): per-pair weights from a weight net over temporal pair statistics, learned by a
// first-order bilevel update on validation batches.
struct MetaConfig {
  int64_t interval = 1;     // a meta update every `interval` steps ...
  int64_t warmup = 0;       // ... from this step on
  double lr = 1e-3;         // Adam on the weight net
  double ema_rate = 0.1;    // λ of the pair statistics
  int64_t val_batch = 8;    // validation pairs per meta update (all ranks)
  double penalty = 0.5;     // ρ of the trust region (ρ/2B) Σ (w̃ − 1)² around uniform weights
  bool precondition = true; // ĝ_V = g_V / (√v̂ + ε) with the policy optimizer's second moment
  int64_t hidden = 32;
  double a_min = 1e-3;
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
  double fd_step = 1e-3;  // fd: θ ± h ĝ with h = fd_step / max|ĝ|
  // Diagnostics: on every meta step, one JSON line per step in this file with every pair's sample
  // id, raw and standardized features, weight and alignment s_i ("": off).
  std::string trace_path;
};

struct TrainConfig {
  std::string model_dir, data_path, out_dir, ref_model_dir;  // ref: defaults to model_dir
  std::string train_split = "train", val_split = "val";
  LossConfig loss;
  Weighting weighting = Weighting::Uniform;
  WeightOptions weight_opt;
  int64_t batch_size = 32;  // pairs (or SFT examples) per optimizer step, over all ranks
  int64_t micro_batch = 8;  // per rank per forward/backward
  int64_t epochs = 1, max_steps = 0;  // max_steps > 0 overrides epochs
  int64_t eval_every = 0, eval_pairs = 0;  // eval_pairs 0: the whole val split
  // Margin trajectories of a few training pairs (K per group: clean/easy, clean/hard, flipped when the
  // dataset has quality and difficulty) into RUN/trajectories.jsonl every track_every steps (0: off).
  int64_t track_pairs = 0, track_every = 10;
  AdamWConfig adam;
  LrSchedule sched;
  double warmup_ratio = 0.0;  // used when sched.warmup_steps == 0
  double max_grad_norm = 1.0;
  uint64_t seed = 0;
  MetaConfig meta;
  std::string save_dtype = "float32";
  std::vector<int64_t> pp_layers;  // layers per pipeline stage (--pp-layers); empty: an even split
  std::string command_line;  // recorded in RUN/run.json
};

// Pair-level statistics over a set of pairs (sums; divide by n for means).
struct PairStats {
  double n = 0, weight_sum = 0, weighted_loss = 0, loss = 0, correct = 0, margin = 0;
  double reward_chosen = 0, reward_rejected = 0, logp_chosen = 0, logp_rejected = 0;
  double w_min = 1e300, w_max = -1e300, w_sq = 0;
  void add(const PairLogps& p, const PairLossResult& r, double w);
  void merge(const PairStats& o);
  void allreduce(MPI_Comm comm);
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
  std::vector<double> align;  // with ghat: ⟨ghat, ∇θ ℓ_k⟩ per pair (ghost products, a_k factor divided out)
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

// One rank's share of a model (DESIGN §4): its pipeline stage (pipeline_stages(layers, topo.pp,
// pp_layers)[topo.pp_rank]), split over topo.tp_comm, and the rank's stage_shard_map shard of the
// parameters; with tp = pp = 1 the whole model (no communicator, exactly the single-process model).
// Every rank must be handed the same full buffer. The communicators are members so they live as long
// as the model that borrows them.
struct ShardedModel {
  std::unique_ptr<MpiComm> tp;  // null when topo.tp == 1
  std::unique_ptr<MpiComm> pp;  // the pipeline (this rank's peers in the other stages); null when pp == 1
  std::unique_ptr<MpiComm> mp;  // the whole replica (TP x PP); null when tp == pp == 1
  std::unique_ptr<LlamaModel<float>> model;
  std::vector<float> params;    // the local layout (model->layout().total() elements)
  std::vector<TpCopy> shard_map;  // stage_shard_map of this rank (empty when tp == pp == 1)
};
// `full` is consumed (moved from when tp == pp == 1, released otherwise) so a rank does not keep both.
ShardedModel shard_model(const LlamaConfig& c, std::vector<float>&& full, const Topology& topo,
                         const std::vector<int64_t>& pp_layers = {});

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
// `idx` in micro-batches of at most `micro`.
std::vector<std::vector<int64_t>> split_chunks(const std::vector<int64_t>& idx, int64_t micro);

// Σ log π over each pair's chosen and rejected response tokens, forward only, micro-batches of
// `micro` pairs. The rows of idx are split over the ranks of comm (pair k on rank k mod size) and the
// result gathered on every rank. With tensor parallelism comm is the data-parallel communicator: the
// TP ranks of one replica process the same pairs (the model's collectives need them all). With a
// pipeline pp (else null) the micro-batches flow through the stages and the last stage's results are
// shared with the others.
void pair_logps(LlamaModel<float>& model, Comm* pp, const float* params, const PairSplit& s,
                const std::vector<int64_t>& idx, int64_t micro, MPI_Comm comm,
                std::vector<double>& chosen, std::vector<double>& rejected);

// Unweighted base-loss statistics of the pairs (all of the split when limit == 0) against the stored
// reference log-probs.
PairStats evaluate_pairs(LlamaModel<float>& model, Comm* pp, const float* params, const PairSplit& s,
                         const LossConfig& loss, int64_t micro, int64_t limit, MPI_Comm comm);

// Fills s.ref_logp_* with the reference model's log-probs when the file has none (the reference
// model sharded over topo's TP and PP groups, pairs split over its DP ranks).
void ensure_ref_logps(PairSplit& s, const std::string& split_name, const std::string& ref_dir,
                      int64_t micro, const Topology& topo, const std::vector<int64_t>& pp_layers = {});

int run_dpo(const Topology& topo, const TrainConfig& cfg);
int run_sft(const Topology& topo, const TrainConfig& cfg);

}  // namespace metapo
