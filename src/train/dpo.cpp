#include "metapo/train/dpo.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>

#include <nlohmann/json.hpp>

#include "metapo/comm/collectives.h"
#include "metapo/core/buffer.h"
#include "metapo/core/error.h"
#include "metapo/core/timer.h"
#include "metapo/io/dataset_h5.h"
#include "metapo/io/hf_model.h"
#include "metapo/train/analyze.h"
#include "metapo/train/metrics.h"
#include "metapo/train/pairs.h"
#include "metapo/train/pipeline.h"
#include "metapo/train/metapo.h"
#include "metapo/comm/mpi_comm.h"
#include "metapo/meta/features.h"

namespace fs = std::filesystem;

namespace metapo {

void PairStats::add(const PairLogps& p, const PairLossResult& r, double w) {
  n += 1, weight_sum += w, weighted_loss += w * r.loss, loss += r.loss;
  correct += r.reward_chosen > r.reward_rejected ? 1.0 : 0.0;
  margin += r.margin, reward_chosen += r.reward_chosen, reward_rejected += r.reward_rejected;
  logp_chosen += p.policy_chosen, logp_rejected += p.policy_rejected;
  w_min = std::min(w_min, w), w_max = std::max(w_max, w), w_sq += w * w;
}

void PairStats::merge(const PairStats& o) {
  n += o.n, weight_sum += o.weight_sum, weighted_loss += o.weighted_loss, loss += o.loss;
  correct += o.correct, margin += o.margin, reward_chosen += o.reward_chosen;
  reward_rejected += o.reward_rejected, logp_chosen += o.logp_chosen, logp_rejected += o.logp_rejected;
  w_min = std::min(w_min, o.w_min), w_max = std::max(w_max, o.w_max), w_sq += o.w_sq;
}

void PairStats::allreduce(MPI_Comm comm) {
  double sums[11] = {n, weight_sum, weighted_loss, loss, correct, margin, reward_chosen,
                     reward_rejected, logp_chosen, logp_rejected, w_sq};
  allreduce_sum(sums, 11, comm);
  n = sums[0], weight_sum = sums[1], weighted_loss = sums[2], loss = sums[3], correct = sums[4];
  margin = sums[5], reward_chosen = sums[6], reward_rejected = sums[7], logp_chosen = sums[8];
  logp_rejected = sums[9], w_sq = sums[10];
  MPI_Allreduce(MPI_IN_PLACE, &w_min, 1, MPI_DOUBLE, MPI_MIN, comm);
  MPI_Allreduce(MPI_IN_PLACE, &w_max, 1, MPI_DOUBLE, MPI_MAX, comm);
}

namespace {

// The TRL metric names of a PairStats (means over pairs); `prefix` is "" or "eval/".
nlohmann::json stats_json(const PairStats& s, const std::string& prefix) {
  const double n = std::max(s.n, 1.0);
  nlohmann::json j;
  j[prefix + "loss"] = s.weight_sum > 0 ? s.weighted_loss / s.weight_sum : 0.0;
  j[prefix + "rewards/chosen"] = s.reward_chosen / n;
  j[prefix + "rewards/rejected"] = s.reward_rejected / n;
  j[prefix + "rewards/accuracies"] = s.correct / n;
  j[prefix + "rewards/margins"] = s.margin / n;
  j[prefix + "logps/chosen"] = s.logp_chosen / n;
  j[prefix + "logps/rejected"] = s.logp_rejected / n;
  return j;
}

PairLogps pair_input(const PairSplit& s, int64_t i, double pc, double pr) {
  return {pc, pr, s.ref_logp_chosen[size_t(i)], s.ref_logp_rejected[size_t(i)], s.chosen.len(i),
          s.rejected.len(i)};
}

void check_compatible(const LlamaConfig& c, const DatasetInfo& info, const std::string& data) {
  MP_CHECK(info.vocab_size <= c.vocab_size, data, ": vocab_size ", info.vocab_size,
           " is larger than the model's vocab_size ", c.vocab_size, " (wrong tokenizer for this model?)");
}

// extra: keys added at the top level (the parallel layout, memory_bytes).
void write_run_json(const TrainConfig& cfg, const std::string& kind, const nlohmann::json& extra) {
  nlohmann::json j;
  j["command"] = kind;
  j["command_line"] = cfg.command_line;
  j["model"] = cfg.model_dir, j["data"] = cfg.data_path, j["seed"] = cfg.seed;
  j["loss"] = loss_name(cfg.loss.type), j["beta"] = cfg.loss.beta;
  j["label_smoothing"] = cfg.loss.label_smoothing;
  j["simpo_gamma"] = cfg.loss.simpo_gamma, j["discopop_tau"] = cfg.loss.discopop_tau;
  j["weighting"] = weighting_name(cfg.weighting);
  j["ref_model"] = cfg.ref_model_dir.empty() ? cfg.model_dir : cfg.ref_model_dir;
  j["batch_size"] = cfg.batch_size, j["micro_batch"] = cfg.micro_batch;
  j["lr"] = cfg.adam.lr, j["weight_decay"] = cfg.adam.weight_decay;
  for (const auto& [k, v] : extra.items()) j[k] = v;
  fs::create_directories(cfg.out_dir);
  std::ofstream(cfg.out_dir + "/run.json") << j.dump(2) << "\n";
}

// Up to k pairs of each group (clean/easy, clean/hard, flipped; or just the first 3k pairs when the
// split has no quality), in index order: deterministic.
std::vector<int64_t> tracked_pairs(const PairSplit& s, int64_t k) {
  std::vector<int64_t> out;
  if (k <= 0) return out;
  if (s.quality.empty()) {
    for (int64_t i = 0; i < std::min<int64_t>(3 * k, s.size()); ++i) out.push_back(i);
    return out;
  }
  auto diff = s.columns.find("difficulty");
  int64_t counts[3] = {0, 0, 0};
  for (int64_t i = 0; i < s.size(); ++i) {
    const bool clean = s.quality[size_t(i)] >= 0.5f;
    const bool hard = diff != s.columns.end() && diff->second[size_t(i)] >= 0.5f;
    const int g = clean ? (hard ? 1 : 0) : 2;
    if (counts[g] < k) out.push_back(i), ++counts[g];
  }
  return out;
}

void write_trajectories(LlamaModel<float>& model, Comm* pp, const float* params, const PairSplit& s,
                        const std::vector<int64_t>& idx, const LossConfig& loss, int64_t step, int64_t micro,
                        const Topology& topo, const std::string& path) {
  std::vector<double> c, r;
  pair_logps(model, pp, params, s, idx, micro, topo.dp_comm, c, r);
  if (!topo.is_root()) return;
  nlohmann::json j;
  j["step"] = step;
  auto diff = s.columns.find("difficulty");
  for (size_t k = 0; k < idx.size(); ++k) {
    const int64_t i = idx[k];
    const PairLogps p{c[k], r[k], s.ref_logp_chosen[size_t(i)], s.ref_logp_rejected[size_t(i)], s.chosen.len(i),
                      s.rejected.len(i)};
    nlohmann::json e;
    e["sample_id"] = s.sample_id[size_t(i)], e["margin"] = pair_loss(loss, p).margin;
    if (!s.quality.empty()) e["quality"] = s.quality[size_t(i)];
    if (diff != s.columns.end()) e["difficulty"] = diff->second[size_t(i)];
    j["pairs"].push_back(e);
  }
  std::ofstream(path, std::ios::app) << j.dump() << "\n";
}

int64_t total_steps(const TrainConfig& cfg, int64_t n) {
  MP_CHECK(cfg.batch_size <= n, "--batch-size ", cfg.batch_size, " is larger than the training split (", n,
           " examples)");
  return cfg.max_steps > 0 ? cfg.max_steps : cfg.epochs * (n / cfg.batch_size);
}

void check_batching(const TrainConfig& cfg, const Topology& topo) {
  MP_CHECK(cfg.batch_size > 0 && cfg.micro_batch > 0, "--batch-size and --micro-batch must be positive");
  MP_CHECK(cfg.batch_size % topo.dp == 0, "--batch-size ", cfg.batch_size,
           " is not divisible by the number of data-parallel ranks (", topo.dp, ")");
}

LrSchedule make_schedule(const TrainConfig& cfg, int64_t total) {
  LrSchedule s = cfg.sched;
  s.peak = cfg.adam.lr;
  s.total_steps = total;
  if (s.warmup_steps == 0 && cfg.warmup_ratio > 0) s.warmup_steps = int64_t(std::ceil(cfg.warmup_ratio * double(total)));
  return s;
}

// params (this rank's shard, possibly with ZeRO-1 padding past the layout's end) is assembled into the
// full buffer over the model replica (collective there); the world root saves it.
void save_final(const TrainConfig& cfg, const Topology& topo, const LlamaConfig& c, const ShardedModel& sm,
                const std::vector<float>& params) {
  const size_t n = ParamLayout(c).total();
  std::vector<float> full;
  if (sm.mp) {
    full.resize(n);
    shard_gather(sm.shard_map, n, topo.tp_rank == 0, *sm.mp, params.data(), full.data());
  } else {
    full.assign(params.begin(), params.begin() + long(n));
  }
  if (topo.is_root()) save_hf_model(cfg.out_dir + "/final", c, full, cfg.save_dtype);
  MPI_Barrier(topo.world);
}


// Memory per rank (docs/training.md): parameters and gradients are the padded local flat buffers
// (fp32), the optimizer state Adam's two moments of this rank's ZeRO-1 shard; activations as the model
// measured them (after a step, every activation slot of the pipeline schedule; < 0: not yet known).
struct RankMemory {
  double params = 0, grads = 0, optimizer_state = 0, activations = -1;
};

RankMemory rank_memory(const ZeroAdamW& opt, int64_t activations) {
  const double pb = double(opt.padded_size() * sizeof(float));
  return {pb, pb, double(opt.state_bytes()), double(activations)};
}

nlohmann::json memory_json(const RankMemory& m) {
  nlohmann::json j;
  j["params"] = int64_t(m.params), j["grads"] = int64_t(m.grads), j["optimizer_state"] = int64_t(m.optimizer_state);
  if (m.activations >= 0) j["activations"] = int64_t(m.activations); else j["activations"] = nullptr;
  return j;
}

// Every pipeline stage's figures as its rank with this rank's DP and TP coordinates has them, gathered
// on this rank's stage 0 (collective over pp_comm; the world root is a stage 0).
std::vector<RankMemory> stage_memory(const Topology& topo, const RankMemory& mine) {
  std::vector<RankMemory> all(size_t(topo.pp));
  static_assert(sizeof(RankMemory) == 4 * sizeof(double), "RankMemory travels as 4 doubles");
  MPI_Gather(&mine, 4, MPI_DOUBLE, all.data(), 4, MPI_DOUBLE, 0, topo.pp_comm);
  return all;
}

nlohmann::json parallel_json(const Topology& topo, const std::vector<int64_t>& pp_layers, int64_t n_layers) {
  nlohmann::json p;
  p["world"] = topo.world_size, p["dp"] = topo.dp, p["tp"] = topo.tp, p["pp"] = topo.pp;
  for (const PipeStage& st : pipeline_stages(n_layers, topo.pp, pp_layers))
    p["stage_layers"].push_back({st.layer_begin, st.layer_end});
  return p;
}

// The memory lines and the run.json keys: memory_bytes (the world root's, a first-stage rank) and with
// a pipeline memory_bytes_per_stage. Collective over pp_comm.
void report_memory(const TrainConfig& cfg, const std::string& kind, const Topology& topo, const LlamaConfig& c,
                   const RankMemory& mine) {
  const std::vector<RankMemory> st = stage_memory(topo, mine);
  if (!topo.is_root()) return;
  const double mib = 1024.0 * 1024.0;
  const std::vector<PipeStage> stages = pipeline_stages(c.num_hidden_layers, topo.pp, cfg.pp_layers);
  for (int s = 0; s < topo.pp; ++s) {
    const RankMemory& m = st[size_t(s)];
    char act[64] = "activations after the first step";
    if (m.activations >= 0) std::snprintf(act, sizeof act, "activations %.2f MiB", m.activations / mib);
    char where[96] = "";
    if (topo.pp > 1)
      std::snprintf(where, sizeof where, ", stage %d (layers %lld-%lld)", s, (long long)stages[size_t(s)].layer_begin,
                    (long long)stages[size_t(s)].layer_end - 1);
    std::printf("memory per rank (DP %d x PP %d x TP %d%s): params %.2f MiB, grads %.2f MiB, optimizer state %.2f MiB, %s\n",
                topo.dp, topo.pp, topo.tp, where, m.params / mib, m.grads / mib, m.optimizer_state / mib, act);
  }
  nlohmann::json extra;
  extra["parallel"] = parallel_json(topo, cfg.pp_layers, c.num_hidden_layers);
  extra["memory_bytes"] = memory_json(st[0]);
  if (topo.pp > 1)
    for (const RankMemory& m : st) extra["memory_bytes_per_stage"].push_back(memory_json(m));
  write_run_json(cfg, kind, extra);  // creates the run directory the log goes into
}

// What run_dpo and run_sft share around their steps: the model split into this rank's pipeline stage
// and TP shard, ZeRO-1 over DP (with its padding of the parameter and gradient buffers), run.json with
// the layout and the memory per rank, the metrics log, the per-step communication report and the save.
struct TrainRun {
  TrainRun(const TrainConfig& cfg, const Topology& topo, HfModel& hf, const char* kind, int64_t total)
      : cfg(cfg),
        topo(topo),
        config(hf.config),
        kind(kind),
        sm(shard_model(hf.config, std::move(hf.params), topo, cfg.pp_layers)),
        dp_comm(topo.dp_comm),
        opt(sm.model->layout(), cfg.adam, dp_comm, sm.mp.get(), sm.shard_map, topo.tp_rank == 0),
        grads(opt.padded_size()) {
    sm.params.resize(opt.padded_size(), 0.0f);  // ZeRO-1 padding (zeros, never read by the model)
    report_memory(cfg, kind, topo, config, rank_memory(opt, -1));
    log.emplace(cfg.out_dir + "/metrics.jsonl", topo.is_root(), total);
  }

  Comm* pipe() const { return sm.pp.get(); }

  // Count this step's communication only (not setup, evaluation or trajectories).
  void begin_step() {
    for (Comm* c : comms()) c->reset_volume();
  }
  std::vector<Comm*> comms() {
    std::vector<Comm*> v{&dp_comm};
    for (MpiComm* c : {sm.tp.get(), sm.pp.get(), sm.mp.get()})
      if (c) v.push_back(c);
    return v;
  }

  // The step's report: comm/<kind>_bytes, the bytes this rank (the world root: DP, TP and PP rank 0)
  // handed to each kind of collective over its DP, TP, PP and replica communicators (the model's TP
  // all-reduces go through the TP one, activations through the PP one); after the first step also the
  // measured activation memory, printed and added to run.json (collective over pp_comm).
  void report(nlohmann::json& j, int64_t step) {
    uint64_t mine[kNumCommOps] = {}, all[kNumCommOps];
    for (Comm* c : comms())
      for (int k = 0; k < kNumCommOps; ++k) mine[k] += c->volume().bytes[k];
    // And summed over every rank of the world (what the analytic count in docs/training.md gives).
    MPI_Allreduce(mine, all, kNumCommOps, MPI_UINT64_T, MPI_SUM, topo.world);
    for (int k = 0; k < kNumCommOps; ++k) {
      j[std::string("comm/") + kCommOpNames[k] + "_bytes"] = mine[k];
      j[std::string("comm_all/") + kCommOpNames[k] + "_bytes"] = all[k];
    }
    if (step == 0) {
      j["memory/activations_bytes"] = sm.model->activation_bytes();
      report_memory(cfg, kind, topo, config, rank_memory(opt, int64_t(sm.model->activation_bytes())));
    }
  }

  void save() { save_final(cfg, topo, config, sm, sm.params); }

  const TrainConfig& cfg;
  const Topology& topo;
  const LlamaConfig config;
  const std::string kind;
  ShardedModel sm;
  MpiComm dp_comm;
  ZeroAdamW opt;
  Buffer<float> grads;
  std::optional<MetricsLog> log;
};

}  // namespace

namespace {

// A micro-batch's pair losses and weights from its per-row logp (into r), and dL/dlogp per row with
// coefficient a_k · coef_scale on pair k's loss.
template <typename T>
std::vector<T> pair_dlogp(const PairSplit& s, const std::vector<int64_t>& chunk, const PackedBatch& batch,
                          const std::vector<int32_t>& targets, const std::vector<T>& logp, const LossConfig& loss,
                          const WeightFn& weigh, double coef_scale, PairMicroResult& r) {
  const std::vector<double> seq = sequence_logps(batch, logp);
  for (size_t k = 0; k < chunk.size(); ++k) {
    r.in.push_back(pair_input(s, chunk[k], seq[2 * k], seq[2 * k + 1]));
    r.out.push_back(pair_loss(loss, r.in.back()));
  }
  r.weights = weigh(r.in, r.out);
  std::vector<double> coef(2 * chunk.size());
  for (size_t k = 0; k < chunk.size(); ++k) {
    coef[2 * k] = r.weights[k] * coef_scale * r.out[k].d_policy_chosen;
    coef[2 * k + 1] = r.weights[k] * coef_scale * r.out[k].d_policy_rejected;
  }
  return expand_seq_coef<T>(batch, targets, coef);
}

// The backward ran with a_k·coef_scale on pair k: divide it out of the ghost dots to get ⟨ĝ, ∇θ ℓ_k⟩.
void pair_align(const std::vector<double>& seq_dots, double coef_scale, PairMicroResult& r) {
  for (size_t k = 0; k < r.weights.size(); ++k)
    r.align.push_back((seq_dots[2 * k] + seq_dots[2 * k + 1]) / (r.weights[k] * coef_scale));
}

}  // namespace

template <typename T>
PairMicroResult pair_micro_step(LlamaModel<T>& model, const T* params, T* grads, bool accumulate,
                                const PairSplit& s, const std::vector<int64_t>& chunk, const LossConfig& loss,
                                const WeightFn& weigh, double coef_scale, const T* ghat) {
  PairMicroResult r;
  const PairBatch pb = make_pair_batch(s, chunk);
  std::vector<T> logp(size_t(pb.batch.n_tokens()));
  model.forward(params, pb.batch, pb.targets.data(), logp.data());
  const std::vector<T> dlogp = pair_dlogp<T>(s, chunk, pb.batch, pb.targets, logp, loss, weigh, coef_scale, r);
  std::vector<double> seq_dots;
  model.set_ghost_group(2);  // only the pair sums are used (pair_align)
  model.backward(params, dlogp.data(), grads, accumulate, ghat, ghat ? &seq_dots : nullptr);
  model.set_ghost_group(1);
  if (ghat) pair_align(seq_dots, coef_scale, r);
  r.tokens = pb.batch.n_tokens();
  return r;
}

std::vector<std::vector<int64_t>> split_chunks(const std::vector<int64_t>& idx, int64_t micro) {
  std::vector<std::vector<int64_t>> out;
  for (size_t a = 0; a < idx.size(); a += size_t(micro))
    out.emplace_back(idx.begin() + long(a), idx.begin() + long(std::min(idx.size(), a + size_t(micro))));
  return out;
}

std::vector<PairMicroResult> pair_pipeline_step(LlamaModel<float>& model, Comm* pp, const float* params, float* grads,
                                                const PairSplit& s, const std::vector<std::vector<int64_t>>& chunks,
                                                const LossConfig& loss, const ChunkWeightFn& weigh, double coef_scale,
                                                const float* ghat) {
  std::vector<PairMicroResult> res(chunks.size());
  std::vector<PipeMicro> mbs;
  for (size_t m = 0; m < chunks.size(); ++m) {
    PairBatch pb = make_pair_batch(s, chunks[m]);
    res[m].tokens = pb.batch.n_tokens();
    res[m].scored = std::count_if(pb.targets.begin(), pb.targets.end(), [](int32_t t) { return t >= 0; });
    mbs.push_back({std::move(pb.batch), std::move(pb.targets)});
  }
  const PipeLossFn lf = [&](size_t m, const std::vector<float>& logp) {
    const WeightFn w = [&](const std::vector<PairLogps>& in, const std::vector<PairLossResult>& out) {
      return weigh(m, in, out);
    };
    return pair_dlogp<float>(s, chunks[m], mbs[m].batch, mbs[m].targets, logp, loss, w, coef_scale, res[m]);
  };
  std::vector<std::vector<double>> dots;
  model.set_ghost_group(2);  // only the pair sums are used (pair_align)
  pipeline_train(model, pp, params, grads, mbs, lf, ghat, ghat ? &dots : nullptr);
  model.set_ghost_group(1);
  if (ghat && model.stage().last)
    for (size_t m = 0; m < chunks.size(); ++m) pair_align(dots[m], coef_scale, res[m]);
  return res;
}

template <typename T>
PairMicroResult pair_micro_step(LlamaModel<T>& model, const T* params, T* grads, bool accumulate,
                                const PairSplit& s, const std::vector<int64_t>& chunk, const LossConfig& loss,
                                Weighting weighting, const WeightOptions& wopt,
                                const std::vector<double>& column, double coef_scale) {
  const WeightFn weigh = [&](const std::vector<PairLogps>& in, const std::vector<PairLossResult>& out) {
    std::vector<double> col;
    if (!column.empty())
      for (int64_t i : chunk) col.push_back(column[size_t(i)]);
    return static_pair_weights(weighting, in, out, col, wopt);
  };
  return pair_micro_step<T>(model, params, grads, accumulate, s, chunk, loss, weigh, coef_scale, nullptr);
}

template <typename T>
std::vector<double> pair_alignments_exact(LlamaModel<T>& model, const T* params, T* grads, size_t n_params,
                                          const PairSplit& s, const std::vector<int64_t>& chunk,
                                          const LossConfig& loss, const T* ghat) {
  std::vector<double> out;
  for (int64_t k : chunk) {
    pair_micro_step<T>(model, params, grads, false, s, {k}, loss, Weighting::Uniform, {}, {}, 1.0);
    double d = 0;
    for (size_t i = 0; i < n_params; ++i) d += double(grads[i]) * double(ghat[i]);
    out.push_back(d);
  }
  return out;
}

template <typename T>
std::vector<double> pair_alignments_fd(LlamaModel<T>& model, const T* params, T* scratch, size_t n_params,
                                       const PairSplit& s, const std::vector<int64_t>& chunk,
                                       const LossConfig& loss, const T* ghat, double rel_step) {
  double gmax = 0;
  for (size_t i = 0; i < n_params; ++i) gmax = std::max(gmax, std::abs(double(ghat[i])));
  std::vector<double> out(chunk.size(), 0.0);
  if (gmax == 0) return out;
  const double h = rel_step / gmax;
  const PairBatch pb = make_pair_batch(s, chunk);
  std::vector<T> logp(size_t(pb.batch.n_tokens()));
  std::vector<double> lp[2];
  for (int side = 0; side < 2; ++side) {
    const double sign = side == 0 ? 1.0 : -1.0;
    for (size_t i = 0; i < n_params; ++i) scratch[i] = T(double(params[i]) + sign * h * double(ghat[i]));
    model.forward(scratch, pb.batch, pb.targets.data(), logp.data());
    const std::vector<double> seq = sequence_logps(pb.batch, logp);
    for (size_t k = 0; k < chunk.size(); ++k)
      lp[side].push_back(pair_loss(loss, pair_input(s, chunk[k], seq[2 * k], seq[2 * k + 1])).loss);
  }
  for (size_t k = 0; k < chunk.size(); ++k) out[k] = (lp[0][k] - lp[1][k]) / (2 * h);
  return out;
}

#define INSTANTIATE_MICRO(T)                                                                                  \
  template PairMicroResult pair_micro_step<T>(LlamaModel<T>&, const T*, T*, bool, const PairSplit&,           \
                                              const std::vector<int64_t>&, const LossConfig&, const WeightFn&, \
                                              double, const T*);                                              \
  template PairMicroResult pair_micro_step<T>(LlamaModel<T>&, const T*, T*, bool, const PairSplit&,           \
                                              const std::vector<int64_t>&, const LossConfig&, Weighting,      \
                                              const WeightOptions&, const std::vector<double>&, double);       \
  template std::vector<double> pair_alignments_exact<T>(LlamaModel<T>&, const T*, T*, size_t, const PairSplit&, \
                                                        const std::vector<int64_t>&, const LossConfig&, const T*); \
  template std::vector<double> pair_alignments_fd<T>(LlamaModel<T>&, const T*, T*, size_t, const PairSplit&,    \
                                                     const std::vector<int64_t>&, const LossConfig&, const T*,  \
                                                     double);
INSTANTIATE_MICRO(float)
INSTANTIATE_MICRO(double)
#undef INSTANTIATE_MICRO

void pair_logps(LlamaModel<float>& model, Comm* pp, const float* params, const PairSplit& s,
                const std::vector<int64_t>& idx, int64_t micro, MPI_Comm comm, std::vector<double>& chosen,
                std::vector<double>& rejected) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  chosen.assign(idx.size(), 0.0), rejected.assign(idx.size(), 0.0);
  std::vector<size_t> mine;
  for (size_t k = size_t(rank); k < idx.size(); k += size_t(size)) mine.push_back(k);
  std::vector<PipeMicro> mbs;
  std::vector<size_t> first;  // position in `mine` of each micro-batch's first pair
  for (size_t a = 0; a < mine.size(); a += size_t(micro)) {
    const size_t z = std::min(mine.size(), a + size_t(micro));
    std::vector<int64_t> chunk;
    for (size_t k = a; k < z; ++k) chunk.push_back(idx[mine[k]]);
    PairBatch pb = make_pair_batch(s, chunk);
    mbs.push_back({std::move(pb.batch), std::move(pb.targets)});
    first.push_back(a);
  }
  pipeline_forward(model, pp, params, mbs, [&](size_t m, const std::vector<float>& logp) {
    const std::vector<double> seq = sequence_logps(mbs[m].batch, logp);
    for (size_t k = 0; 2 * k < seq.size(); ++k)
      chosen[mine[first[m] + k]] = seq[2 * k], rejected[mine[first[m] + k]] = seq[2 * k + 1];
  });
  // Every entry was filled by exactly one rank (the others hold 0): sums gather them, over DP and
  // then from the last pipeline stage to the others.
  allreduce_sum(chosen.data(), chosen.size(), comm);
  allreduce_sum(rejected.data(), rejected.size(), comm);
  if (pp && pp->size() > 1) pp->allreduce_sum(chosen.data(), chosen.size()), pp->allreduce_sum(rejected.data(), rejected.size());
}

PairStats evaluate_pairs(LlamaModel<float>& model, Comm* pp, const float* params, const PairSplit& s,
                         const LossConfig& loss, int64_t micro, int64_t limit, MPI_Comm comm) {
  MP_CHECK(s.has_ref(), "evaluation needs reference log-probs (run metapo precompute-ref)");
  const int64_t n = limit > 0 ? std::min(limit, s.size()) : s.size();
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) idx[size_t(i)] = i;
  std::vector<double> c, r;
  pair_logps(model, pp, params, s, idx, micro, comm, c, r);
  PairStats st;
  for (int64_t i = 0; i < n; ++i) {
    const PairLogps p = pair_input(s, i, c[size_t(i)], r[size_t(i)]);
    st.add(p, pair_loss(loss, p), 1.0);
  }
  return st;
}

ShardedModel shard_model(const LlamaConfig& c, std::vector<float>&& full, const Topology& topo,
                         const std::vector<int64_t>& pp_layers) {
  ShardedModel sm;
  const PipeStage stage = pipeline_stages(c.num_hidden_layers, topo.pp, pp_layers)[size_t(topo.pp_rank)];
  if (topo.tp == 1 && topo.pp == 1) {
    sm.model = std::make_unique<LlamaModel<float>>(c);
    sm.params = std::move(full);
    return sm;
  }
  if (topo.tp > 1) sm.tp = std::make_unique<MpiComm>(topo.tp_comm);
  if (topo.pp > 1) sm.pp = std::make_unique<MpiComm>(topo.pp_comm);
  sm.mp = std::make_unique<MpiComm>(topo.mp_comm);
  sm.model = std::make_unique<LlamaModel<float>>(c, sm.tp.get(), stage);
  sm.shard_map = stage_shard_map(c, topo.tp, topo.tp_rank, stage);
  sm.params.resize(sm.model->layout().total());
  shard_split(sm.shard_map, sm.params.size(), full.data(), sm.params.data());
  std::vector<float>().swap(full);  // the full copy is not needed again (save_final gathers)
  return sm;
}

void ensure_ref_logps(PairSplit& s, const std::string& split_name, const std::string& ref_dir, int64_t micro,
                      const Topology& topo, const std::vector<int64_t>& pp_layers) {
  if (s.has_ref()) return;
  if (topo.is_root())
    std::printf("%s: no reference log-probs in the dataset; computing them with %s\n", split_name.c_str(),
                ref_dir.c_str());
  HfModel ref = load_hf_model(ref_dir);
  ShardedModel sm = shard_model(ref.config, std::move(ref.params), topo, pp_layers);
  std::vector<int64_t> idx(static_cast<size_t>(s.size()));
  for (int64_t i = 0; i < s.size(); ++i) idx[size_t(i)] = i;
  // Over DP: the TP ranks of a replica score the same pairs together.
  pair_logps(*sm.model, sm.pp.get(), sm.params.data(), s, idx, micro, topo.dp_comm, s.ref_logp_chosen,
             s.ref_logp_rejected);
}

int run_dpo(const Topology& topo, const TrainConfig& cfg) {
  validate(cfg.loss);
  check_batching(cfg, topo);
  HfModel hf = load_hf_model(cfg.model_dir);
  const DatasetInfo info = read_dataset_info(cfg.data_path);
  check_compatible(hf.config, info, cfg.data_path);
  PairSplit train = read_pair_split(cfg.data_path, cfg.train_split);
  const bool use_meta = cfg.weighting == Weighting::Metapo;
  const bool do_eval = cfg.eval_every > 0 || use_meta;
  PairSplit val;
  if (do_eval) val = read_pair_split(cfg.data_path, cfg.val_split);
  const std::string ref_dir = cfg.ref_model_dir.empty() ? cfg.model_dir : cfg.ref_model_dir;
  ensure_ref_logps(train, cfg.train_split, ref_dir, cfg.micro_batch, topo, cfg.pp_layers);
  if (do_eval) ensure_ref_logps(val, cfg.val_split, ref_dir, cfg.micro_batch, topo, cfg.pp_layers);
  std::vector<double> column;
  if (cfg.weighting == Weighting::Column) {
    auto it = train.columns.find(cfg.weight_opt.column);
    MP_CHECK(it != train.columns.end(), cfg.data_path, ": /", cfg.train_split, "/columns/", cfg.weight_opt.column,
             " not found (needed by --weighting column)");
    column.assign(it->second.begin(), it->second.end());
  }

  const int64_t total = total_steps(cfg, train.size());
  const LrSchedule sched = make_schedule(cfg, total);
  TrainRun run(cfg, topo, hf, "train", total);
  LlamaModel<float>& model = *run.sm.model;
  Comm* pp = run.pipe();
  const bool last_stage = topo.last_stage();
  MpiComm& dp_comm = run.dp_comm;
  ZeroAdamW& opt = run.opt;
  std::vector<float>& params = run.sm.params;
  Buffer<float>& grads = run.grads;
  MetricsLog& log = *run.log;
  const double B = double(cfg.batch_size);
  std::unique_ptr<MetaPOState> meta;
  Buffer<float> ghat, hyper_scratch;
  if (use_meta) {
    MP_CHECK(cfg.meta.hypergrad == "ghost" || cfg.meta.hypergrad == "exact" || cfg.meta.hypergrad == "fd",
             "--hypergrad ", cfg.meta.hypergrad, ": unknown (valid: ghost, exact, fd)");
    // The reference methods take dot products and maxima over the flat buffer, which with TP or PP
    // would need their own reductions over the parts; ghost products are reduced inside the model
    // (TP) and over the pipeline (PP).
    MP_CHECK(topo.tp == 1 || cfg.meta.hypergrad == "ghost", "--hypergrad ", cfg.meta.hypergrad,
             " is not supported with --tp ", topo.tp, " (use --hypergrad ghost)");
    MP_CHECK(topo.pp == 1 || cfg.meta.hypergrad == "ghost", "--hypergrad ", cfg.meta.hypergrad,
             " is not supported with --pp ", topo.pp, " (use --hypergrad ghost)");
    int64_t max_id = 0;
    for (int64_t id : train.sample_id) max_id = std::max(max_id, id);
    // The pair statistics, the features and the weight net live on the last pipeline stage, where
    // the pair losses are (DESIGN §6); its DP ranks share the table.
    if (last_stage) meta = std::make_unique<MetaPOState>(cfg.meta, max_id, cfg.seed, dp_comm, topo.is_last_stage_root());
    ghat.resize(params.size());
  }

  auto run_eval = [&](int64_t step) {
    PairStats ev = evaluate_pairs(model, pp, params.data(), val, cfg.loss, cfg.micro_batch, cfg.eval_pairs, topo.dp_comm);
    nlohmann::json j = stats_json(ev, "eval/");
    j["step"] = step + 1;
    char line[256];
    std::snprintf(line, sizeof line, "eval  %5lld | loss %.4f | acc %.3f | margin %.3f", (long long)(step + 1),
                  j["eval/loss"].get<double>(), j["eval/rewards/accuracies"].get<double>(),
                  j["eval/rewards/margins"].get<double>());
    log.event(j, line);
  };

  const std::vector<int64_t> tracked = tracked_pairs(train, cfg.track_pairs);
  const std::string traj_path = cfg.out_dir + "/trajectories.jsonl";
  if (topo.is_root() && !tracked.empty()) std::ofstream(traj_path, std::ios::trunc);
  if (!tracked.empty())
    write_trajectories(model, pp, params.data(), train, tracked, cfg.loss, 0, cfg.micro_batch, topo, traj_path);

  for (int64_t step = 0; step < total; ++step) {
    Timer tm;
    run.begin_step();
    const std::vector<int64_t> mine = dp_share(global_batch(train.size(), cfg.batch_size, cfg.seed, step), topo.dp_rank, topo.dp);
    PairStats st;
    double tokens = 0, scored = 0;
    // MetaPO: the validation gradient at the current θ first, so the training backward can take
    // ghost products with it.
    // Phase times (seconds) of this step, logged as time/* so the MetaPO overhead can be read off.
    double t_refresh = 0, t_val = 0, t_meta = 0;
    Timer phase;
    if (use_meta) {
      const std::vector<int64_t> window = refresh_window(cfg.meta, train.size(), step);
      if (!window.empty()) {
        std::vector<double> c, r;
        pair_logps(model, pp, params.data(), train, window, cfg.micro_batch, topo.dp_comm, c, r);
        if (meta) meta->observe_refresh(train, window, c, r, cfg.loss, step);
      }
    }
    t_refresh = phase.seconds();
    const bool meta_step = use_meta && is_meta_step(cfg.meta, step);
    phase.reset();
    if (meta_step)
      validation_gradient(model, pp, params.data(), val, cfg.loss, cfg.meta.val_batch, cfg.micro_batch, cfg.seed, step,
                          topo, opt, cfg.meta.precondition, ghat.data());
    t_val = phase.seconds();
    phase.reset();
    const std::vector<std::vector<int64_t>> chunks = split_chunks(mine, cfg.micro_batch);
    // Backward with a_i / B; the step rescales by B / Σa once Σa over all ranks is known.
    ChunkWeightFn weigh;
    if (use_meta) {
      weigh = [&](size_t m, const std::vector<PairLogps>& in, const std::vector<PairLossResult>& out) {
        return meta->weights(train, chunks[m], in, out);
      };
    } else {
      weigh = [&](size_t m, const std::vector<PairLogps>& in, const std::vector<PairLossResult>& out) {
        std::vector<double> col;
        if (!column.empty())
          for (int64_t i : chunks[m]) col.push_back(column[size_t(i)]);
        return static_pair_weights(cfg.weighting, in, out, col, cfg.weight_opt);
      };
    }
    const bool ghost = meta_step && cfg.meta.hypergrad == "ghost";
    const std::vector<PairMicroResult> res =
        pair_pipeline_step(model, pp, params.data(), grads.data(), train, chunks, cfg.loss, weigh, 1.0 / B,
                           ghost ? ghat.data() : nullptr);
    std::vector<double> align;
    for (size_t m = 0; m < chunks.size(); ++m) {
      const PairMicroResult& r = res[m];
      tokens += double(r.tokens), scored += double(r.scored);
      if (!last_stage) continue;
      for (size_t k = 0; k < chunks[m].size(); ++k) st.add(r.in[k], r.out[k], r.weights[k]);
      if (meta_step && ghost) {
        align.insert(align.end(), r.align.begin(), r.align.end());
      } else if (meta_step) {
        // Reference methods (DESIGN §6), after the training backward so they only reuse scratch (one
        // rank holds the whole model: checked above).
        if (hyper_scratch.empty()) hyper_scratch.resize(params.size());
        const std::vector<double> a =
            cfg.meta.hypergrad == "exact"
                ? pair_alignments_exact<float>(model, params.data(), hyper_scratch.data(), params.size(), train,
                                               chunks[m], cfg.loss, ghat.data())
                : pair_alignments_fd<float>(model, params.data(), hyper_scratch.data(), params.size(), train,
                                            chunks[m], cfg.loss, ghat.data(), cfg.meta.fd_step);
        align.insert(align.end(), a.begin(), a.end());
      }
    }
    const double t_train = phase.seconds();
    st.allreduce(topo.dp_comm);
    // The pair statistics are the last stage's (the other stages hold zeros): share them, so every
    // stage knows Σa for the rescale and the root can log them.
    if (topo.pp > 1) st.allreduce(topo.pp_comm);
    phase.reset();
    if (meta) meta->end_step(step, meta_step ? &align : nullptr, cfg.batch_size, st.weight_sum);
    t_meta = phase.seconds();
    double counts[2] = {tokens, scored};
    MPI_Allreduce(MPI_IN_PLACE, counts, 2, MPI_DOUBLE, MPI_SUM, topo.dp_comm);
    tokens = counts[0], scored = counts[1];
    MP_CHECK(st.weight_sum > 0, "step ", step + 1, ": the pair weights of the batch sum to 0 (--weighting ",
             weighting_name(cfg.weighting), ")");
    phase.reset();
    // ZeRO-1: reduce-scatter, undo the a_i/B scaling of the backward with B/Σa (DESIGN §6: exact
    // global normalization of the weights), clip, update this rank's shard, all-gather.
    const double lr = sched.at(step);
    const double gnorm = opt.step(params.data(), grads.data(), lr, B / st.weight_sum, cfg.max_grad_norm);
    const double t_opt = phase.seconds();

    const double secs = tm.seconds();
    nlohmann::json j = stats_json(st, "");
    const double wmean = st.weight_sum / st.n;
    j["step"] = step + 1, j["epoch"] = double(step + 1) * B / double(train.size());
    j["lr"] = lr, j["grad_norm"] = gnorm, j["tokens_per_s"] = tokens / secs, j["step_time"] = secs;
    j["tokens"] = tokens, j["scored_tokens"] = scored;
    j["weights/mean"] = wmean, j["weights/std"] = std::sqrt(std::max(0.0, st.w_sq / st.n - wmean * wmean));
    j["weights/min"] = st.w_min, j["weights/max"] = st.w_max;
    // Effective sample size (Σa)² / Σa² of the global batch: B for equal weights, 1 when one pair
    // carries all the weight.
    const double ess = st.w_sq > 0 ? st.weight_sum * st.weight_sum / st.w_sq : 0.0;
    j["weights/ess"] = ess;
    if (meta_step) {
      double mg = meta ? meta->last_meta_grad_norm() : 0.0;  // the last stage's (zero elsewhere)
      if (topo.pp > 1) pp->allreduce_sum(&mg, 1);
      j["meta/grad_norm"] = mg;
    }
    j["time/train"] = t_train, j["time/optimizer"] = t_opt;
    if (use_meta) j["time/refresh"] = t_refresh, j["time/val_grad"] = t_val, j["time/meta_update"] = t_meta;
    run.report(j, step);
    char line[320];
    std::snprintf(line, sizeof line,
                  "step %5lld/%lld | loss %.4f | acc %.3f | margin %+.3f | w %.2f±%.2f ess %.1f | lr %.2e | gnorm %.3f | %.0f tok/s",
                  (long long)(step + 1), (long long)total, j["loss"].get<double>(),
                  j["rewards/accuracies"].get<double>(), j["rewards/margins"].get<double>(), wmean,
                  j["weights/std"].get<double>(), ess, lr, gnorm, tokens / secs);
    log.step(step, j, line);
    if (cfg.eval_every > 0 && ((step + 1) % cfg.eval_every == 0 || step + 1 == total)) run_eval(step);
    if (!tracked.empty() && cfg.track_every > 0 && ((step + 1) % cfg.track_every == 0 || step + 1 == total))
      write_trajectories(model, pp, params.data(), train, tracked, cfg.loss, step + 1, cfg.micro_batch, topo, traj_path);
  }
  run.save();
  if (use_meta) {
    // The weight net must be bit-identical on every rank that holds one, the last pipeline stage's
    // (same reduced gradients, same Adam; the TP ranks of a replica run the same meta computations on
    // the same inputs): check it element by element over those ranks (max == min) and fail loudly if
    // not. The split is collective over the world.
    MPI_Comm holders = MPI_COMM_NULL;
    MPI_Comm_split(topo.world, meta ? 0 : MPI_UNDEFINED, topo.world_rank, &holders);
    if (meta) {
      std::vector<double> hi = meta->net().params(), lo = hi;
      int n_holders = 1;
      MPI_Comm_size(holders, &n_holders);
      MPI_Allreduce(MPI_IN_PLACE, hi.data(), int(hi.size()), MPI_DOUBLE, MPI_MAX, holders);
      MPI_Allreduce(MPI_IN_PLACE, lo.data(), int(lo.size()), MPI_DOUBLE, MPI_MIN, holders);
      MPI_Comm_free(&holders);
      MP_CHECK(hi == lo, "MetaPO: the weight net differs between ranks");
      if (topo.is_last_stage_root() && n_holders > 1) {
        if (topo.tp == 1 && topo.pp == 1)
          std::printf("weight net identical on all %d data-parallel ranks (%lld parameters)\n", topo.dp,
                      (long long)hi.size());
        else if (topo.pp == 1)
          std::printf("weight net identical on all %d ranks (DP %d x TP %d, %lld parameters)\n", n_holders,
                      topo.dp, topo.tp, (long long)hi.size());
        else
          std::printf("weight net identical on all %d ranks of the last pipeline stage (DP %d x TP %d, %lld parameters)\n",
                      n_holders, topo.dp, topo.tp, (long long)hi.size());
        std::fflush(stdout);
      }
      // What `metapo analyze` needs: the weight net, the feature statistics and the final pair table
      // (the logical [N, S] array, gathered from its owners), written by the last stage.
      const std::vector<double> table = meta->table().gather_all();
      if (topo.is_last_stage_root()) {
        nlohmann::json j;
        j["format"] = "metapo-meta", j["format_version"] = kMetaRunFormatVersion;
        j["net"]["hidden"] = cfg.meta.hidden, j["net"]["a_min"] = cfg.meta.a_min;
        j["features_used"] = cfg.meta.features;
        j["net"]["n_features"] = kNumFeatures, j["net"]["params"] = meta->net().params();
        j["features"] = std::vector<std::string>(kFeatureNames.begin(), kFeatureNames.end());
        j["standardizer"] = meta->standardizer().state();
        j["pair_stats"]["fields"] = std::vector<std::string>(kPairStatFieldNames.begin(), kPairStatFieldNames.end());
        j["pair_stats"]["rows"] = meta->table().rows();
        j["pair_stats"]["data"] = table;
        std::ofstream(cfg.out_dir + "/metapo.json.partial") << j.dump() << "\n";
        fs::rename(cfg.out_dir + "/metapo.json.partial", cfg.out_dir + "/metapo.json");
      }
    }
    MPI_Barrier(topo.world);  // metapo.json is complete when any rank reports the run done
  }
  if (topo.is_root()) std::printf("wrote %s/final and %s/metrics.jsonl\n", cfg.out_dir.c_str(), cfg.out_dir.c_str());
  return 0;
}

int run_sft(const Topology& topo, const TrainConfig& cfg) {
  check_batching(cfg, topo);
  HfModel hf = load_hf_model(cfg.model_dir);
  const DatasetInfo info = read_dataset_info(cfg.data_path);
  check_compatible(hf.config, info, cfg.data_path);
  const SftSplit train = read_sft_split(cfg.data_path);
  const int64_t total = total_steps(cfg, train.size());
  const LrSchedule sched = make_schedule(cfg, total);
  TrainRun run(cfg, topo, hf, "sft", total);
  LlamaModel<float>& model = *run.sm.model;
  ZeroAdamW& opt = run.opt;
  std::vector<float>& params = run.sm.params;
  Buffer<float>& grads = run.grads;
  MetricsLog& log = *run.log;

  for (int64_t step = 0; step < total; ++step) {
    Timer tm;
    run.begin_step();
    const std::vector<int64_t> global = global_batch(train.size(), cfg.batch_size, cfg.seed, step);
    // Every rank reads the whole dataset, so the global count of answer tokens (the loss is their
    // mean, as in TRL's SFT) needs no communication.
    double n_answer = 0;
    for (int64_t i : global) n_answer += double(train.answer.len(i));
    MP_CHECK(n_answer > 0, "SFT batch ", step, " has no answer tokens");
    const std::vector<int64_t> mine = dp_share(global, topo.dp_rank, topo.dp);
    double nll = 0, tokens = 0;
    std::vector<PipeMicro> mbs;
    for (const std::vector<int64_t>& chunk : split_chunks(mine, cfg.micro_batch)) {
      PipeMicro mb;
      mb.batch = make_sft_batch(train, chunk, mb.targets);
      tokens += double(mb.batch.n_tokens());
      mbs.push_back(std::move(mb));
    }
    pipeline_train(model, run.pipe(), params.data(), grads.data(), mbs, [&](size_t m, const std::vector<float>& logp) {
      std::vector<float> dlogp(logp.size(), 0.0f);
      for (size_t t = 0; t < logp.size(); ++t)
        if (mbs[m].targets[t] >= 0) nll -= double(logp[t]), dlogp[t] = float(-1.0 / n_answer);
      return dlogp;
    });
    double sums[2] = {nll, tokens};
    allreduce_sum(sums, 2, topo.dp_comm);
    if (topo.pp > 1) run.pipe()->allreduce_sum(sums, 1);  // the NLL is the last stage's (0 elsewhere)
    const double lr = sched.at(step);
    const double gnorm = opt.step(params.data(), grads.data(), lr, 1.0, cfg.max_grad_norm);
    const double secs = tm.seconds();
    nlohmann::json j;
    j["step"] = step + 1, j["loss"] = sums[0] / n_answer, j["lr"] = lr, j["grad_norm"] = gnorm;
    j["tokens_per_s"] = sums[1] / secs, j["step_time"] = secs;
    run.report(j, step);
    char line[256];
    std::snprintf(line, sizeof line, "sft %5lld/%lld | loss %.4f | lr %.2e | gnorm %.3f | %.0f tok/s",
                  (long long)(step + 1), (long long)total, sums[0] / n_answer, lr, gnorm, sums[1] / secs);
    log.step(step, j, line);
  }
  run.save();
  if (topo.is_root()) std::printf("wrote %s/final and %s/metrics.jsonl\n", cfg.out_dir.c_str(), cfg.out_dir.c_str());
  return 0;
}

}  // namespace metapo
