// Checkpoints of the training state (see the header and docs/formats.md "Checkpoints").
#include "metapo/model/config_json.h"
#include "metapo/train/train_state.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "metapo/io/checkpoint.h"
#include "metapo/model/layout.h"
#include "metapo/ops/ops.h"
#include "metapo/train/metapo.h"

namespace fs = std::filesystem;

namespace metapo {

namespace {

// The runs of tensor e (an entry of the full layout) in a rank's local buffer, restricted to the
// local window [lo, hi) and placed at (local offset − lo) of the caller's buffer. map: the rank's
// stage_shard_map, sorted by full offset; empty: the local buffer is the full one. skip_replicated:
// leave out the runs other TP ranks also hold (writers other than TP rank 0); uncount_replicated: keep
// them but out of the checksum (readers other than TP rank 0).
std::vector<FlatRun> tensor_runs(const TensorEntry& e, const std::vector<TpCopy>& map, size_t lo, size_t hi,
                                 bool skip_replicated, bool uncount_replicated) {
  std::vector<FlatRun> runs;
  auto add = [&](size_t full, size_t local, size_t count, bool replicated) {
    const size_t a = std::max(local, lo), b = std::min(local + count, hi);
    if (a >= b) return;
    if (replicated && skip_replicated) return;
    runs.push_back({full + (a - local) - e.offset, b - a, a - lo, !(replicated && uncount_replicated)});
  };
  if (map.empty()) {
    add(e.offset, e.offset, e.numel, false);
    return runs;
  }
  auto it = std::lower_bound(map.begin(), map.end(), e.offset,
                             [](const TpCopy& c, size_t off) { return c.full + c.count <= off; });
  for (; it != map.end() && it->full < e.offset + e.numel; ++it) {
    MP_CHECK(it->full >= e.offset && it->full + it->count <= e.offset + e.numel, "checkpoint: shard run crosses ",
             e.name);
    add(it->full, it->local, it->count, it->replicated);
  }
  return runs;
}

std::vector<uint64_t> dims_of(const TensorEntry& e) { return std::vector<uint64_t>(e.shape.begin(), e.shape.end()); }

std::vector<FlatRun> whole(size_t n, bool counted = true) {
  return n ? std::vector<FlatRun>{{0, n, 0, counted}} : std::vector<FlatRun>{};
}

std::vector<TpCopy> sorted_map(const ShardedModel& sm) {
  std::vector<TpCopy> m = sm.shard_map;
  std::sort(m.begin(), m.end(), [](const TpCopy& a, const TpCopy& b) { return a.full < b.full; });
  return m;
}

// The world rank of the MetaPO state's writer (the last stage's DP 0 / TP 0 rank).
int meta_root(const Topology& topo) {
  int32_t r = topo.is_last_stage_root() ? topo.world_rank : -1;
  topo.world_comm().allreduce(&r, 1, ReduceOp::Max);
  return r;
}

// Sizes of the run's files as rank 0 sees them (every writer flushes per line; the barrier orders
// their last appends before the fsync and the stat).
nlohmann::json file_sizes(const TrainState& st) {
  st.topo->world_comm().barrier();
  nlohmann::json j = nlohmann::json::object();
  if (st.topo->is_root())
    for (const auto& [key, path] : st.files) {
      // Made durable first, so that a crash after the checkpoint cannot leave the file shorter than
      // the size the checkpoint records (a resume cuts it back to that size).
      fsync_file(path);
      std::error_code ec;
      const auto n = fs::file_size(path, ec);
      j[key] = ec ? int64_t(0) : int64_t(n);
    }
  return nlohmann::json::parse(broadcast_string(st.topo->world_comm(), j.dump(), 0));
}

bool finite_all(const std::vector<double>& v) {
  for (double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

uint64_t step_of(const std::string& name) {  // step_XXXXXXXX.h5 -> XXXXXXXX; UINT64_MAX if not one
  if (name.size() < 9 || name.compare(0, 5, "step_") != 0 || name.compare(name.size() - 3, 3, ".h5") != 0)
    return UINT64_MAX;
  const std::string digits = name.substr(5, name.size() - 8);
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) return UINT64_MAX;
  return std::stoull(digits);
}

}  // namespace

bool all_finite(const float* x, size_t n) { return ops::all_finite(ops::Context{}, x, n); }

std::string checkpoint_name(int64_t step) {
  char b[32];
  std::snprintf(b, sizeof b, "step_%08lld.h5", (long long)step);
  return b;
}

int64_t checkpoint_step(const std::string& path) {
  const uint64_t s = step_of(fs::path(path).filename().string());
  return s == UINT64_MAX ? -1 : int64_t(s);
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<uint64_t, std::string>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const uint64_t s = step_of(name);
    if (s != UINT64_MAX && e.is_regular_file(ec)) found.emplace_back(s, e.path().string());
  }
  std::sort(found.rbegin(), found.rend());
  std::vector<std::string> out;
  for (auto& [s, p] : found) out.push_back(p);
  return out;
}

std::string save_checkpoint(TrainState& st, const std::string& dir, int64_t keep) {
  const Topology& topo = *st.topo;
  ShardedModel& sm = *st.sm;
  ZeroAdamW& opt = *st.opt;
  const size_t n_local = sm.model->layout().total();
  // With the optimizer on a device its state and the parameters are the device copies.
  if (opt.on_device()) sm.params_to_host();
  opt.state_to_host();
  // Nothing non-finite is ever written: check the whole state first, on every rank.
  bool ok = all_finite(sm.params.data(), n_local) && all_finite(opt.exp_avg().data(), opt.exp_avg().size()) &&
            all_finite(opt.exp_avg_sq().data(), opt.exp_avg_sq().size());
  if (st.meta) ok = ok && finite_all(st.meta->net().params()) && finite_all(st.meta->adam().m) && finite_all(st.meta->adam().v);
  int32_t all_ok = ok ? 1 : 0;
  topo.world_comm().allreduce(&all_ok, 1, ReduceOp::Min);
  MP_CHECK(all_ok, dir, ": refusing to write the checkpoint of step ", st.step, ": the training state holds non-finite values");

  st.file_sizes = file_sizes(st);
  // The MetaPO state first (a gather over the last stage's DP ranks): its size enters the room the
  // file needs, which is checked before anything is written.
  std::vector<double> table, net, m, v, stdz, gate(4, 0.0);
  int64_t counts[3] = {0, 0, 0};  // rows of the table, weight-net parameters, Adam steps
  const int root = st.uses_meta ? meta_root(topo) : 0;
  if (st.uses_meta) {
    // Written by the last stage's root from its (replicated) state; the table gathered from its owners.
    if (st.meta) {
      const GateState& g = st.meta->gate();
      gate = {g.m, g.v, double(g.n), g.gamma};
      table = st.meta->table().gather_all();  // collective over the last stage's DP ranks
      net = st.meta->net().params(), stdz = st.meta->standardizer().state();
      AdamState& a = st.meta->adam();
      m = a.m.empty() ? std::vector<double>(net.size(), 0.0) : a.m;
      v = a.v.empty() ? std::vector<double>(net.size(), 0.0) : a.v;
      counts[0] = st.meta->table().rows(), counts[1] = int64_t(net.size()), counts[2] = a.t;
    }
    topo.world_comm().broadcast(counts, sizeof counts, root);
  }
  const uint64_t N = uint64_t(counts[0]), P = uint64_t(counts[1]);
  const ParamLayout full(st.config);
  // The room the file needs: the model and AdamW's two moments in float32, the MetaPO arrays in
  // float64, for HDF5's headers, checksums and the JSON strings 4 KiB an array and 1 MiB (measured:
  // under 0.5 KiB an array and 60 KiB of strings for the tiny preset), and the metadata's reserve.
  const uint64_t arrays = 3 * full.tensors().size() + 24;
  const uint64_t expected = 3 * uint64_t(full.total()) * sizeof(float) +
                            (st.uses_meta ? (3 * P + 4 + 3 * kNumFeatures + N * kPairStatFields) * sizeof(double) : 0) +
                            4096 * arrays + (1u << 20) + CheckpointFile::kMetadataRoom;
  const std::string name = checkpoint_name(st.step), final_path = dir + "/" + name, partial = final_path + ".partial";
  {
    // A full disk is found before the file exists: once HDF5 writes, a failure is not always seen by
    // every rank at the same point (CheckpointFile::close).
    uint64_t room = topo.is_root() ? free_bytes(dir) : 0;
    topo.world_comm().broadcast(&room, sizeof room, 0);
    if (room != UINT64_MAX && room < expected) {
      const std::vector<std::string> ck = list_checkpoints(dir);
      char need[96];
      std::snprintf(need, sizeof need, "it needs about %.1f MiB and the file system has %.1f MiB free",
                    double(expected) / 1048576.0, double(room) / 1048576.0);
      throw Error(str_cat(dir, ": no room for the checkpoint of step ", st.step, " (", name, "): ", need, "; ",
                          ck.empty() ? std::string("no checkpoint was written")
                                     : "the newest checkpoint is " + ck.front() + " (free some space, then --resume auto)"));
    }
  }
  // A write that fails leaves no partial file behind (the root removes it once the file is closed or
  // given up: the guard outlives f).
  struct RemoveUnlessDone {
    std::string path;
    bool root, done = false;
    ~RemoveUnlessDone() {
      std::error_code ec;
      if (!done && root) fs::remove(path, ec);
    }
  } guard{partial, topo.is_root()};
  CheckpointFile f = CheckpointFile::create(partial, topo.world_comm());
  const std::vector<TpCopy> map = sorted_map(sm);
  const bool tp0 = topo.tp_rank == 0;
  // Each rank writes its TP/PP part of the model and of AdamW's moments as hyperslabs, and of those
  // its ZeRO-1 window [lo, hi): the replicas share the model's writing, each element written once
  // (the copies of replicated tensors by TP rank 0 only).
  const size_t lo = std::min(opt.shard_begin(), n_local), hi = std::min(opt.shard_begin() + opt.shard_size(), n_local);
  for (const TensorEntry& e : full.tensors())
    f.write<float>("/model/" + e.name, dims_of(e), tensor_runs(e, map, lo, hi, !tp0, false), sm.params.data() + lo, true);
  for (const char* which : {"exp_avg", "exp_avg_sq"}) {
    const std::vector<float>& mo = std::string(which) == "exp_avg" ? opt.exp_avg() : opt.exp_avg_sq();
    MP_CHECK(mo.size() == hi - lo, "checkpoint: ZeRO shard of ", mo.size(), " elements, expected ", hi - lo);
    for (const TensorEntry& e : full.tensors())
      f.write<float>(std::string("/optimizer/") + which + "/" + e.name, dims_of(e), tensor_runs(e, map, lo, hi, !tp0, false),
                     mo.data(), true);
  }
  f.write_int("/optimizer/step", opt.steps_taken());
  if (st.uses_meta) {
    const bool mine = topo.world_rank == root;
    f.write<double>("/meta/net", {P}, mine ? whole(P) : std::vector<FlatRun>{}, net.data(), mine);
    f.write<double>("/meta/adam/m", {P}, mine ? whole(P) : std::vector<FlatRun>{}, m.data(), mine);
    f.write<double>("/meta/adam/v", {P}, mine ? whole(P) : std::vector<FlatRun>{}, v.data(), mine);
    f.write_int("/meta/adam/t", counts[2]);
    f.write<double>("/meta/gate", {4}, mine ? whole(4) : std::vector<FlatRun>{}, gate.data(), mine);  // m, v, n, γ
    f.write<double>("/meta/feature_stats", {3, uint64_t(kNumFeatures)}, mine ? whole(3 * kNumFeatures) : std::vector<FlatRun>{},
                    stdz.data(), mine);
    f.write<double>("/meta/pair_stats", {N, uint64_t(kPairStatFields)},
                    mine ? whole(N * kPairStatFields) : std::vector<FlatRun>{}, table.data(), mine);
    nlohmann::json names;
    names["features"] = std::vector<std::string>(kFeatureNames.begin(), kFeatureNames.end());
    names["pair_stats"] = std::vector<std::string>(kPairStatFieldNames.begin(), kPairStatFieldNames.end());
    names["feature_stats"] = {"count", "sum", "sum_of_squares"};
    f.write_string("/meta/columns", names.dump());
  }
  nlohmann::json layout;
  layout["dp"] = topo.dp, layout["tp"] = topo.tp, layout["pp"] = topo.pp, layout["world"] = topo.world_size;
  layout["pp_layers"] = st.pp_layers;
  f.write_int("/state/format_version", kCheckpointFormatVersion);
  f.write_string("/state/kind", st.kind);
  f.write_int("/state/step", st.step);
  f.write_int("/state/consumed_samples", st.consumed_samples);
  f.write_int("/state/skipped_steps", st.skipped_steps);
  f.write_int("/state/seed", st.run_config.value("seed", int64_t(0)));
  f.write_string("/state/config", st.run_config.dump());
  f.write_string("/state/model_config", config_to_json(st.config).dump());
  f.write_string("/state/dataset_fingerprint", st.data_fingerprint);
  f.write_string("/state/layout", layout.dump());
  f.write_string("/state/files", st.file_sizes.dump());
  f.close();
  guard.done = true;
  if (topo.is_root()) {
    fs::rename(partial, final_path);
    write_file_atomic(dir, "latest", name + "\n");  // fsyncs the directory (the rename with it)
    if (keep > 0) {
      const std::vector<std::string> all = list_checkpoints(dir);
      for (size_t k = size_t(keep); k < all.size(); ++k) {
        std::error_code ec;
        if (!fs::equivalent(all[k], final_path, ec)) fs::remove(all[k], ec);  // never the one just written
      }
    }
  }
  topo.world_comm().barrier();
  return final_path;
}

void load_checkpoint(TrainState& st, const std::string& path) {
  const Topology& topo = *st.topo;
  ShardedModel& sm = *st.sm;
  ZeroAdamW& opt = *st.opt;
  CheckpointFile f = CheckpointFile::open(path, topo.world_comm());
  auto incompatible = [&](bool ok, const std::string& why) {
    if (!ok) throw CheckpointIncompatible(path + ": " + why);
  };
  incompatible(f.exists("/state/format_version"), "not a metapo checkpoint (no /state/format_version)");
  const int64_t version = f.read_int("/state/format_version");
  incompatible(version == kCheckpointFormatVersion, str_cat("checkpoint format version ", version, "; this metapo reads version ",
                                                            kCheckpointFormatVersion));
  // Scalars nothing below reads are read for their checksums alone: a damaged file is corrupt.
  for (const char* name : {"/state/seed", "/state/layout", "/meta/columns"})
    if (f.exists(name)) name == std::string("/state/seed") ? (void)f.read_int(name) : (void)f.read_string(name);
  const std::string kind = f.read_string("/state/kind");
  incompatible(kind == st.kind, str_cat("a checkpoint of `metapo ", kind, "`, not of `metapo ", st.kind, "`"));
  const nlohmann::json have = nlohmann::json::parse(f.read_string("/state/model_config")), want = config_to_json(st.config);
  for (const auto& [k, v] : want.items())
    incompatible(have.contains(k) && have[k] == v,
                 str_cat("written for another model (", k, " ", have.contains(k) ? have[k].dump() : "absent", ", this model has ",
                         v.dump(), ")"));
  // The run's options, recorded in /state/config; one that lacks a key is not checked on it.
  const nlohmann::json was = nlohmann::json::parse(f.read_string("/state/config"), nullptr, false);
  auto same_option = [&](const nlohmann::json& old_cfg, const nlohmann::json& now, const char* key, const char* option) {
    if (!old_cfg.is_object() || !now.is_object() || !old_cfg.contains(key) || !now.contains(key)) return;
    incompatible(old_cfg[key] == now[key], str_cat("written by a run with ", option, " ", old_cfg[key].dump(), " (this run: ",
                                                   now[key].dump(), "); resume with the same value"));
  };
  // The cut of the sequences before the fingerprint: another one changes the data too, and this
  // names the option.
  same_option(was, st.run_config, "max_length", "--max-length");
  same_option(was, st.run_config, "max_prompt_length", "--max-prompt-length");
  same_option(was, st.run_config, "truncation_mode", "--truncation-mode");
  const std::string fp = f.read_string("/state/dataset_fingerprint");
  incompatible(fp == st.data_fingerprint, str_cat("written for another dataset (training split fingerprint ", fp,
                                                  ", this run's data has ", st.data_fingerprint, ")"));
  const bool has_meta = f.exists("/meta/net");
  incompatible(has_meta == st.uses_meta, has_meta ? "written by a run with --weighting metapo (this run has another weighting)"
                                                  : "written without --weighting metapo (this run uses it)");
  // The options the data order depends on (a resume under others would replay or skip pairs), and
  // those that give the stored weight net and pair statistics their meaning.
  same_option(was, st.run_config, "batch_size", "--batch-size");
  same_option(was, st.run_config, "seed", "--seed");
  // The objective: a resume under another one would leave no record of what the first steps used.
  same_option(was, st.run_config, "loss", "--loss");
  same_option(was, st.run_config, "beta", "--beta");
  // The loss's own parameters only where the loss reads them (the same loss on both sides now).
  const std::string loss = st.run_config.is_object() ? st.run_config.value("loss", std::string()) : std::string();
  if (!loss.empty()) {
    const LossType type = parse_loss(loss);
    if (loss_uses_label_smoothing(type)) same_option(was, st.run_config, "label_smoothing", "--label-smoothing");
    if (type == LossType::Simpo) same_option(was, st.run_config, "simpo_gamma", "--simpo-gamma");
    if (type == LossType::Discopop) same_option(was, st.run_config, "discopop_tau", "--discopop-tau");
  }
  same_option(was, st.run_config, "weighting", "--weighting");
  if (st.uses_meta && was.is_object() && was.contains("meta") && st.run_config.contains("meta")) {
    same_option(was["meta"], st.run_config["meta"], "features", "--meta-features");
    same_option(was["meta"], st.run_config["meta"], "apply", "--meta-apply");
    same_option(was["meta"], st.run_config["meta"], "ema_rate", "--stats-ema");
    // The validation objective is not an option; a checkpoint of a metapo that had another one (its
    // loss's own, before apo_down's became sigmoid's) continues under this one's, which is said.
    const nlohmann::json& wm = was["meta"];
    const std::string now = st.run_config["meta"].value("val_loss", std::string());
    const std::string then = wm.contains("val_loss") ? wm.value("val_loss", std::string()) : was.value("loss", std::string());
    if (topo.is_root() && !now.empty() && !then.empty() && now != then)
      std::printf("note: %s: MetaPO's validation objective was the %s loss when this checkpoint was written; this metapo "
                  "uses the %s loss with --loss %s (docs/metapo.md \"The validation objective\"), from here on\n",
                  path.c_str(), then.c_str(), now.c_str(), was.value("loss", std::string()).c_str());
  }
  const int64_t ck_step = f.read_int("/state/step");
  incompatible(st.total_steps <= 0 || ck_step <= st.total_steps,
               str_cat("at step ", ck_step, ", past this run's ", st.total_steps,
                       " steps (--max-steps / --epochs); resume with at least as many"));

  const size_t n_local = sm.model->layout().total();
  const ParamLayout full(st.config);
  const std::vector<TpCopy> map = sorted_map(sm);
  const bool tp0 = topo.tp_rank == 0;
  // Each rank reads its ZeRO-1 window of its part of the model; the all-gather over DP completes it.
  const size_t lo = std::min(opt.shard_begin(), n_local), hi = std::min(opt.shard_begin() + opt.shard_size(), n_local);
  for (const TensorEntry& e : full.tensors())
    f.read<float>("/model/" + e.name, dims_of(e), tensor_runs(e, map, lo, hi, false, !tp0), sm.params.data() + lo, true);
  for (const char* which : {"exp_avg", "exp_avg_sq"}) {
    std::vector<float>& m = std::string(which) == "exp_avg" ? opt.exp_avg() : opt.exp_avg_sq();
    for (const TensorEntry& e : full.tensors())
      f.read<float>(std::string("/optimizer/") + which + "/" + e.name, dims_of(e), tensor_runs(e, map, lo, hi, false, !tp0),
                    m.data(), true);
  }
  opt.set_steps_taken(f.read_int("/optimizer/step"));
  opt.allgather(sm.params.data());
  opt.state_to_device();  // the parameters follow in TrainRun::start (ShardedModel::params_to_device)
  if (st.uses_meta) {
    const std::vector<uint64_t> ps = f.shape("/meta/pair_stats"), ns = f.shape("/meta/net");
    const uint64_t N = ps.empty() ? 0 : ps[0], P = ns.empty() ? 0 : ns[0];
    const bool mine = st.meta != nullptr, counted = topo.is_last_stage_root();
    if (mine) {
      incompatible(int64_t(N) == st.meta->table().rows(), str_cat("/meta/pair_stats has ", N, " rows, this dataset's table ",
                                                                  st.meta->table().rows()));
      incompatible(int64_t(P) == st.meta->net().n_params(), str_cat("/meta/net has ", P, " parameters, this weight net (--meta-hidden) ",
                                                                     st.meta->net().n_params()));
    }
    std::vector<double> net(mine ? P : 0), m(net.size()), v(net.size()), stdz(mine ? 3 * kNumFeatures : 0),
        table(mine ? N * kPairStatFields : 0);
    auto runs = [&](size_t n) { return mine ? std::vector<FlatRun>{{0, n, 0, counted}} : std::vector<FlatRun>{}; };
    f.read<double>("/meta/net", {P}, runs(P), net.data(), counted);
    f.read<double>("/meta/adam/m", {P}, runs(P), m.data(), counted);
    f.read<double>("/meta/adam/v", {P}, runs(P), v.data(), counted);
    const int64_t t = f.read_int("/meta/adam/t");
    f.read<double>("/meta/feature_stats", {3, uint64_t(kNumFeatures)}, runs(3 * kNumFeatures), stdz.data(), counted);
    f.read<double>("/meta/pair_stats", {N, uint64_t(kPairStatFields)}, runs(N * kPairStatFields), table.data(), counted);
    // The significance gate's state (m, v, n, γ); checkpoints written before it have none.
    std::vector<double> gate(mine ? 4 : 0, 0.0);
    const bool has_gate = f.exists("/meta/gate");
    if (has_gate) f.read<double>("/meta/gate", {4}, runs(4), gate.data(), counted);
    if (mine) {
      if (has_gate) {
        GateState& g = st.meta->gate();
        g.m = gate[0], g.v = gate[1], g.n = int64_t(gate[2]), g.gamma = gate[3];
      }
      st.meta->net().params() = net;
      AdamState& a = st.meta->adam();
      a.t = t;
      if (t > 0) a.m = m, a.v = v; else a.m.clear(), a.v.clear();
      st.meta->standardizer().load_state(stdz);
      st.meta->table().load_all(table);
    }
  }
  st.step = f.read_int("/state/step");
  st.consumed_samples = f.read_int("/state/consumed_samples");
  st.skipped_steps = f.read_int("/state/skipped_steps");
  st.file_sizes = nlohmann::json::parse(f.read_string("/state/files"));
  f.close();
}

std::string resolve_checkpoint(const std::string& path) {
  if (!fs::is_directory(path)) return path;
  std::ifstream in(path + "/latest");
  std::string name;
  MP_CHECK(in && (in >> name) && !name.empty(), path, ": no `latest` file (not a run directory with checkpoints?)");
  return path + "/" + name;
}

LlamaConfig read_checkpoint_config(const std::string& path) {
  SelfComm self;
  CheckpointFile f = CheckpointFile::open(path, self);
  MP_CHECK(f.exists("/state/model_config"), path, ": not a metapo checkpoint (no /state/model_config)");
  const int64_t version = f.read_int("/state/format_version");
  MP_CHECK(version == kCheckpointFormatVersion, path, ": checkpoint format version ", version,
           "; this metapo reads version ", kCheckpointFormatVersion);
  const LlamaConfig config =
      config_from_json(nlohmann::json::parse(f.read_string("/state/model_config")), path + ": /state/model_config");
  f.close();
  return config;
}

void read_checkpoint_model(const std::string& path, Comm& comm, const LlamaConfig& config, size_t lo, size_t hi,
                           float* part) {
  CheckpointFile f = CheckpointFile::open(path, comm);
  const ParamLayout lay(config);
  for (const TensorEntry& e : lay.tensors()) {
    // This rank's window of the tensor (none: an empty read, every rank makes the same calls).
    const size_t a = std::max(lo, e.offset), b = std::min(hi, e.offset + e.numel);
    std::vector<FlatRun> runs;
    if (a < b) runs.push_back({a - e.offset, b - a, a - lo, true});
    f.read<float>("/model/" + e.name, dims_of(e), runs, part, true);
  }
  f.close();
}

}  // namespace metapo
