// The run's report files: RUN/run.json (configuration, layout, memory per rank) and the metric
// names of the step and evaluation lines.
#include "metapo/train/reports.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

#include "metapo/core/error.h"
#include "metapo/train/metapo.h"

namespace metapo {

namespace {

// The trace's path as run.json records it: absolute, so a resume from another working directory
// still recognises it (check_trace_path); "" stays "".
std::string absolute_path(const std::string& path) {
  if (path.empty()) return path;
  std::error_code ec;
  const std::filesystem::path p = std::filesystem::absolute(path, ec);
  return ec ? path : p.lexically_normal().string();
}

}  // namespace

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

nlohmann::json run_config_json(const TrainConfig& cfg, const std::string& kind) {
  nlohmann::json j;
  j["command"] = kind;
  j["command_line"] = cfg.command_line;
  j["model"] = cfg.model_dir, j["data"] = cfg.data_path, j["seed"] = cfg.seed;
  if (!cfg.data_fingerprint.empty()) j["data_fingerprint"] = cfg.data_fingerprint;
  j["train_split"] = cfg.train_split;
  if (kind == "train") {
    j["val_split"] = cfg.val_split;
    j["loss"] = loss_name(cfg.loss.type), j["beta"] = cfg.loss.beta;
    j["label_smoothing"] = cfg.loss.label_smoothing;
    j["simpo_gamma"] = cfg.loss.simpo_gamma, j["discopop_tau"] = cfg.loss.discopop_tau;
    j["weighting"] = weighting_name(cfg.weighting);
    j["ref_model"] = cfg.ref_model_dir.empty() ? cfg.model_dir : cfg.ref_model_dir;
    j["trust_stored_ref"] = cfg.trust_stored_ref;  // stored log-probs used whatever model they came from
    j["eval_every"] = cfg.eval_every, j["eval_pairs"] = cfg.eval_pairs;
    j["track_pairs"] = cfg.track_pairs, j["track_every"] = cfg.track_every;
    if (cfg.weighting == Weighting::Metapo) {
      const MetaConfig& m = cfg.meta;
      j["meta"] = {{"interval", m.interval}, {"warmup", m.warmup}, {"lr", m.lr}, {"ema_rate", m.ema_rate},
                   {"val_batch", m.val_batch}, {"penalty", meta_penalty(m)}, {"apply", m.apply}, {"precondition", m.precondition},
                   {"hidden", m.hidden}, {"a_min", m.a_min}, {"refresh_every", m.refresh_every},
                   {"refresh_pairs", m.refresh_pairs}, {"hypergrad", m.hypergrad}, {"features", m.features},
                   {"gate", m.gate}, {"gate_ema", m.gate_ema}, {"trace", absolute_path(m.trace_path)},
                   {"val_loss", loss_name(meta_validation_loss(cfg.loss).type)}};
    } else {
      j["weight_options"] = {{"wpo_alpha", cfg.weight_opt.wpo_alpha}, {"margin_tau", cfg.weight_opt.margin_tau},
                             {"column", cfg.weight_opt.column}};
    }
  }
  j["batch_size"] = cfg.batch_size, j["micro_batch"] = cfg.micro_batch, j["micro_batch_tokens"] = cfg.micro_batch_tokens;
  j["max_length"] = cfg.truncation.max_length, j["max_prompt_length"] = cfg.truncation.max_prompt_length;
  j["truncation_mode"] = cfg.truncation.keep_end ? "keep_end" : "keep_start";
  j["epochs"] = cfg.epochs, j["max_steps"] = cfg.max_steps;
  j["lr"] = cfg.adam.lr, j["weight_decay"] = cfg.adam.weight_decay;
  j["adam_beta1"] = cfg.adam.beta1, j["adam_beta2"] = cfg.adam.beta2, j["adam_eps"] = cfg.adam.eps;
  j["lr_schedule"] = cfg.sched.kind, j["warmup_steps"] = cfg.sched.warmup_steps, j["warmup_ratio"] = cfg.warmup_ratio;
  j["min_lr_ratio"] = cfg.sched.min_lr_ratio, j["max_grad_norm"] = cfg.max_grad_norm;
  j["save_dtype"] = cfg.save_dtype, j["save_every"] = cfg.save_every, j["save_every_minutes"] = cfg.save_every_minutes;
  j["keep"] = cfg.keep, j["max_time_s"] = cfg.max_time_s, j["max_skipped_steps"] = cfg.max_skipped_steps;
  j["resume"] = cfg.resume, j["recompute"] = recompute_name(cfg.recompute);
  j["precision"] = precision_name(cfg.precision);
  j["device"] = device_name(cfg.device), j["hang_timeout_s"] = cfg.hang_timeout_s;  // -1: auto
  return j;
}

RankMemory rank_memory(const ZeroAdamW& opt, int64_t activations) {
  const double pb = double(opt.padded_size() * sizeof(float));
  return {pb, pb, double(opt.state_bytes()), double(activations)};
}

// Every pipeline stage's figures as its rank with this rank's DP and TP coordinates has them, gathered
// on this rank's stage 0 (collective over pp_comm; the world root is a stage 0).
static std::vector<RankMemory> stage_memory(const Topology& topo, const RankMemory& mine) {
  std::vector<RankMemory> all(size_t(topo.pp));
  static_assert(sizeof(RankMemory) == 4 * sizeof(double), "RankMemory travels as 4 doubles");
  std::vector<uint8_t> bytes;
  std::vector<size_t> counts;
  topo.pp_comm().gather(&mine, sizeof mine, bytes, counts, 0);
  if (!bytes.empty()) std::memcpy(all.data(), bytes.data(), std::min(bytes.size(), all.size() * sizeof(RankMemory)));
  return all;
}

// The memory lines and the run.json keys: memory_bytes (the world root's, a first-stage rank) and with
// a pipeline memory_bytes_per_stage. Collective over pp_comm.
// Every rank's high-water marks, on the world root (collective over the world).
static std::vector<RankPeak> gather_peaks(const Topology& topo) {
  constexpr int kFields = 5 + kNumMem;
  const MemBytes b = mem_peak();
  int64_t mine[kFields] = {topo.world_rank, topo.dp_rank, topo.pp_rank, topo.tp_rank, mem_peak_total()};
  for (int k = 0; k < kNumMem; ++k) mine[5 + k] = b[size_t(k)];
  std::vector<int64_t> all(size_t(topo.world_size * kFields));
  std::vector<uint8_t> bytes;
  std::vector<size_t> counts;
  topo.world_comm().gather(mine, sizeof mine, bytes, counts, 0);
  if (!bytes.empty()) std::memcpy(all.data(), bytes.data(), std::min(bytes.size(), all.size() * sizeof(int64_t)));
  std::vector<RankPeak> out(size_t(topo.world_size));
  for (size_t r = 0; r < out.size(); ++r) {
    const int64_t* f = &all[r * kFields];
    RankPeak& p = out[r];
    p.rank = f[0], p.dp = f[1], p.pp = f[2], p.tp = f[3], p.total = f[4];
    for (int k = 0; k < kNumMem; ++k) p.bytes[size_t(k)] = f[5 + k];
  }
  return out;
}

void report_memory(const TrainConfig& cfg, const std::string& kind, const Topology& topo, const LlamaConfig& c,
                   const RankMemory& mine, int64_t restarts, bool print_peaks, bool write_record) {
  const std::vector<RankMemory> st = stage_memory(topo, mine);
  const std::vector<RankPeak> peaks = gather_peaks(topo);
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
  for (int s = 0; s < topo.pp && print_peaks; ++s) {
    // The largest mark of each category over the stage's ranks (DP and TP), as `metapo plan` gives it.
    MemBytes most{};
    int64_t total = 0;
    for (const RankPeak& p : peaks)
      if (p.pp == s) {
        for (int k = 0; k < kNumMem; ++k) most[size_t(k)] = std::max(most[size_t(k)], p.bytes[size_t(k)]);
        total = std::max(total, p.total);
      }
    std::string line = str_cat("memory high-water per rank", topo.pp > 1 ? str_cat(", stage ", s) : std::string(), ":");
    char buf[64];
    for (int k = 0; k < kNumMem; ++k) {
      if (Mem(k) == Mem::Other && most[size_t(k)] == 0) continue;
      std::snprintf(buf, sizeof buf, " %s %.2f,", mem_name(Mem(k)), double(most[size_t(k)]) / mib);
      line += buf;
    }
    std::snprintf(buf, sizeof buf, " total %.2f MiB", double(total) / mib);
    std::printf("%s%s\n", line.c_str(), buf);
  }
  if (!write_record) return;
  RunRecord r;
  r.options = run_config_json(cfg, kind);
  r.command = kind, r.command_line = cfg.command_line;
  RunLayout l;
  l.world = topo.world_size, l.dp = topo.dp, l.tp = topo.tp, l.pp = topo.pp;
  for (const PipeStage& p : stages) l.stage_layers.emplace_back(p.layer_begin, p.layer_end);
  r.parallel = l;
  r.memory = st[0];
  if (topo.pp > 1) r.memory_per_stage = st;
  r.memory_peak = peaks;
  r.restarts = restarts, r.slurm = SlurmJob::from_env();
  write_run_record(cfg.out_dir, r);  // creates the run directory the log goes into
}

}  // namespace metapo
