// metapo plan: memory per device by category and FLOPs per step for a model and a device count, and
// the DP x PP x TP layouts (with a recomputation mode) that fit. The arithmetic is train/memory_plan.h;
// docs/scaling.md explains it. With --data, the largest micro-batch and the micro-batch count come
// from the trainer's own batching over that dataset (the steps a run with these options would take),
// so the plan can be held against a run's measured high-water marks.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>

#include <nlohmann/json.hpp>

#include "metapo/cli/commands.h"
#include "metapo/core/error.h"
#include "metapo/io/dataset_h5.h"
#include "metapo/io/hf_model.h"
#include "metapo/train/evaluation.h"
#include "metapo/train/memory_plan.h"
#include "metapo/train/metapo.h"
#include "metapo/train/pairs.h"

namespace fs = std::filesystem;

namespace metapo::cli {

namespace {

// A model directory (config.json), a preset or configs/models/ name, or an .ini / .json path.
LlamaConfig plan_model(const std::string& m) {
  if (fs::is_directory(m) && fs::exists(fs::path(m) / "config.json")) return load_hf_config(m);
  try {
    return preset_config(m);
  } catch (const Error& e) {
    std::string what = e.what();
    if (what.rfind("--preset ", 0) == 0) what = what.substr(9);
    throw Error("--model " + what + "; or a model directory with a config.json");
  }
}

// What the trainer's batching makes of a dataset: the largest micro-batch (tokens and scored rows)
// and the most micro-batches one rank runs through one pipeline call, over the steps of a run.
struct DataShape {
  int64_t max_tokens = 0, max_rows = 0, max_micro = 0, pairs = 0, bytes = 0;
  int64_t bwd_tokens = 0, bwd_rows = 0;  // of the micro-batches that also run a backward
  int64_t ref_tokens = 0, ref_rows = 0;  // of the reference model's scoring
};

// backward: the pass trains (its micro-batch count sets the 1F1B slots, its sizes the workspace).
void take(const PairSplit& s, const std::vector<std::vector<int64_t>>& chunks, bool backward, DataShape& d) {
  if (backward) d.max_micro = std::max(d.max_micro, int64_t(chunks.size()));
  for (const std::vector<int64_t>& c : chunks) {
    int64_t t = 0, rows = 0;
    for (int64_t i : c) t += pair_tokens(s, i), rows += s.chosen.len(i) + s.rejected.len(i);
    d.max_tokens = std::max(d.max_tokens, t), d.max_rows = std::max(d.max_rows, rows);
    if (backward) d.bwd_tokens = std::max(d.bwd_tokens, t), d.bwd_rows = std::max(d.bwd_rows, rows);
  }
}

// A training step's (or a validation gradient's) micro-batches on every DP rank: dp_share, then
// micro_batches, as the trainer cuts them. Their count sets the 1F1B slots.
void scan(const PairSplit& s, const std::vector<int64_t>& global, int dp, const MicroBatching& mb, DataShape& d) {
  const TokensOf tok = [&](int64_t i) { return pair_tokens(s, i); };
  for (int r = 0; r < dp; ++r) take(s, micro_batches(dp_share(global, r, dp, tok, mb), tok, mb), true, d);
}

// A forward-only pass over the pairs idx (evaluation, trajectories, refresh): pair_logps deals them
// round-robin over the DP ranks; one slot.
void scan_logps(const PairSplit& s, const std::vector<int64_t>& idx, int dp, const MicroBatching& mb, DataShape& d) {
  for (int r = 0; r < dp; ++r) {
    std::vector<int64_t> mine;
    for (size_t k = size_t(r); k < idx.size(); k += size_t(dp)) mine.push_back(idx[k]);
    take(s, micro_batches(mine, [&](int64_t i) { return pair_tokens(s, i); }, mb), false, d);
  }
}

struct Passes {  // the run's forward-only passes besides the steps (train's options of the same names)
  int64_t eval_every = 0, eval_pairs = 0, track_pairs = 4, refresh_every = 0, refresh_pairs = 0;
};

// The dataset's splits, read once for every layout planned.
struct PlanData {
  std::string path;
  PairSplit train, val;  // val only when the run reads it (MetaPO or evaluations)
};

DataShape data_shape(const PlanData& pd, int dp, const MicroBatching& mb, int64_t batch, int64_t steps,
                     bool metapo, int64_t val_batch, uint64_t seed, const Passes& ps) {
  DataShape d;
  const std::string& path = pd.path;
  const PairSplit& train = pd.train;
  MP_CHECK(batch > 0 && batch <= train.size() && batch % dp == 0, "--batch-size ", batch,
           " must be positive, at most the training split (", train.size(), " pairs) and divisible by DP ", dp);
  check_token_budget(train.size(), [&](int64_t i) { return pair_tokens(train, i); }, train.sample_id, mb,
                     path + ": /train");
  for (int64_t step = 0; step < steps; ++step) scan(train, global_batch(train.size(), batch, seed, step), dp, mb, d);
  for (int64_t id : train.sample_id) d.pairs = std::max(d.pairs, id + 1);
  // Without stored reference log-probs the run scores every pair with the reference model first
  // (forward only), and then holds them.
  auto all = [](int64_t n) {
    std::vector<int64_t> idx(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) idx[size_t(i)] = i;
    return idx;
  };
  const int64_t ref_bytes = train.has_ref() ? 0 : 2 * int64_t(sizeof(double)) * train.size();
  DataShape ref;
  if (!train.has_ref()) scan_logps(train, all(train.size()), dp, mb, ref);
  d.bytes = memory_bytes(train) + ref_bytes;
  scan_logps(train, tracked_pairs(train, ps.track_pairs), dp, mb, d);
  if (metapo && ps.refresh_every > 0) {
    MetaConfig mc;
    mc.refresh_every = ps.refresh_every, mc.refresh_pairs = ps.refresh_pairs;
    for (int64_t step = 0; step < steps; ++step)
      scan_logps(train, refresh_window(mc, train.size(), step, global_batch(train.size(), batch, seed, step)), dp, mb, d);
  }
  if (metapo || ps.eval_every > 0) {
    const PairSplit& val = pd.val;
    check_token_budget(val.size(), [&](int64_t i) { return pair_tokens(val, i); }, val.sample_id, mb, path + ": /val");
    if (metapo) {
      MP_CHECK(val_batch > 0 && val_batch <= val.size() && val_batch % dp == 0, "--meta-val-batch ", val_batch,
               " must be positive, at most the validation split (", val.size(), " pairs) and divisible by DP ", dp);
      for (int64_t step = 0; step < steps; ++step) scan(val, global_batch(val.size(), val_batch, seed + 1, step), dp, mb, d);
    }
    if (ps.eval_every > 0) scan_logps(val, all(ps.eval_pairs > 0 ? std::min(ps.eval_pairs, val.size()) : val.size()), dp, mb, d);
    if (!val.has_ref()) scan_logps(val, all(val.size()), dp, mb, ref);
    d.bytes += memory_bytes(val) + (val.has_ref() ? 0 : 2 * int64_t(sizeof(double)) * val.size());
  }
  d.ref_tokens = ref.max_tokens, d.ref_rows = ref.max_rows;
  return d;
}

std::string gib(int64_t b) {
  char s[32];
  std::snprintf(s, sizeof s, "%.2f", double(b) / double(int64_t(1) << 30));
  return s;
}

// The tables' unit: GiB, or MiB for a model whose largest layout stays under 1 GiB (the tests' sizes).
struct Unit {
  const char* name = "GiB";
  double bytes = double(int64_t(1) << 30);
  std::string operator()(int64_t b) const {
    char s[32];
    std::snprintf(s, sizeof s, "%.2f", double(b) / bytes);
    return s;
  }
};

struct Candidate {
  int tp, pp, dp;
  Recompute rc;
  std::vector<StagePlan> stages;
  int64_t peak = 0;
  double headroom = 0;
};

}  // namespace

int cmd_plan(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo plan options");
  std::string model, memory, reserve, recompute, precision, weighting, data, tp_s, pp_s, pp_layers_s;
  int64_t gpus = 1, per_node = 8, micro_tokens = 4096, micro_batches = 0, pairs = 0, seq_len = 4096;
  int64_t batch = 32, micro = 8, steps = 0, val_batch = 8, show = 3, tokens_per_step = 0;
  uint64_t seed = 0;
  double min_headroom = 0.2;
  Passes passes;
  desc.add_options()
    ("model", po::value(&model)->required(), "model shape: a model directory, a name from configs/models/ or configs/presets/, or an .ini / config.json path")
    ("gpus", po::value(&gpus)->default_value(1), "devices (ranks) in all")
    ("gpus-per-node", po::value(&per_node)->default_value(8), "devices per node: TP stays inside a node")
    ("gpu-memory", po::value(&memory)->default_value("80GiB"), "memory per device (80GiB: an H100 80GB; 141GB, 24GiB, ...; GB = 10^9 bytes, GiB = 2^30)")
    ("tp", po::value(&tp_s)->default_value("auto"), "tensor-parallel size, or auto: every divisor that fits the model and the node")
    ("pp", po::value(&pp_s)->default_value("auto"), "pipeline stages, or auto: every divisor of the rest")
    ("pp-layers", po::value(&pp_layers_s)->default_value(""), "layers per stage, comma-separated (with a fixed --pp)")
    ("recompute", po::value(&recompute)->default_value("all"), "none | selective | full, or all: plan each")
    ("micro-batch-tokens", po::value(&micro_tokens)->default_value(4096), "tokens of the largest micro-batch")
    ("micro-batches", po::value(&micro_batches)->default_value(0), "micro-batches per rank and step (0: enough to fill the pipeline)")
    ("precision", po::value(&precision)->default_value("bf16"), "bf16 (the CUDA design: bf16 weights, activations and messages, fp32 gradients and master weights) or fp32 (the CPU trainer)")
    ("reserve", po::value(&reserve)->default_value("auto"), "per device, outside the plan's buffers (CUDA context, cuBLAS/cuDNN workspaces, NCCL): auto = 3GiB with bf16, 0 with fp32")
    ("weighting", po::value(&weighting)->default_value("metapo"), "metapo (the validation gradient and the pair table) or uniform")
    ("pairs", po::value(&pairs)->default_value(100000), "training pairs (the pair table's rows) without --data")
    ("seq-len", po::value(&seq_len)->default_value(4096), "sequence length for the FLOPs (attention)")
    ("tokens-per-step", po::value(&tokens_per_step)->default_value(0), "tokens per optimizer step for the FLOPs (0: one micro-batch per DP rank per pipeline stage)")
    ("min-headroom", po::value(&min_headroom)->default_value(0.2), "a layout fits when this share of the device memory is left")
    ("show", po::value(&show)->default_value(3), "per-category tables of the first N layouts that fit")
    ("data", po::value(&data), "dataset .h5: micro-batches, pair count and dataset bytes as a run of `metapo train` over it would have them")
    ("batch-size", po::value(&batch)->default_value(32), "with --data: pairs per step, as train takes it")
    ("micro-batch", po::value(&micro)->default_value(8), "with --data and --micro-batch-tokens 0: pairs per micro-batch")
    ("max-steps", po::value(&steps)->default_value(0), "with --data: steps (0: one epoch)")
    ("meta-val-batch", po::value(&val_batch)->default_value(8), "with --data and --weighting metapo: validation pairs per meta step")
    ("seed", po::value(&seed)->default_value(0), "with --data: the run's data order seed")
    ("eval-every", po::value(&passes.eval_every)->default_value(0), "with --data: the run's evaluations (their micro-batches count too)")
    ("eval-pairs", po::value(&passes.eval_pairs)->default_value(0), "with --data: validation pairs per evaluation (0: all)")
    ("track-pairs", po::value(&passes.track_pairs)->default_value(4), "with --data: the run's tracked pairs per group (train's default 4)")
    ("stats-refresh-every", po::value(&passes.refresh_every)->default_value(0), "with --data: MetaPO's refresh passes")
    ("stats-refresh-pairs", po::value(&passes.refresh_pairs)->default_value(0), "with --data: pairs per refresh");
  po::variables_map vm;
  if (!parse_args("plan", "metapo plan --model CONFIG --gpus N [--gpu-memory 80GiB] [--tp T --pp P --recompute R --micro-batch-tokens N]",
                  desc, argc, argv, vm, ctx))
    return 0;
  // Validate everything before any work.
  const LlamaConfig c = plan_model(model);
  c.validate("--model " + model);
  MP_CHECK(gpus >= 1 && gpus <= std::numeric_limits<int>::max(), "--gpus ", gpus, ": must be in [1, 2^31)");
  MP_CHECK(per_node >= 1, "--gpus-per-node must be positive");
  const int64_t device = int64_t(parse_bytes(memory, "--gpu-memory"));
  MP_CHECK(device > 0, "--gpu-memory must be positive");
  MP_CHECK(precision == "bf16" || precision == "fp32", "--precision ", precision, ": unknown (valid: bf16, fp32)");
  MP_CHECK(weighting == "metapo" || weighting == "uniform", "--weighting ", weighting, ": unknown (valid: metapo, uniform)");
  MP_CHECK(micro_tokens >= 0 && micro_batches >= 0 && seq_len > 0 && show >= 0 && steps >= 0, "--micro-batch-tokens, --micro-batches, --show and --max-steps must be >= 0, --seq-len positive");
  MP_CHECK(micro_tokens > 0 || !data.empty(), "--micro-batch-tokens 0 (pair counts) needs --data to size the micro-batches");
  MP_CHECK(min_headroom >= 0 && min_headroom < 1, "--min-headroom must be in [0, 1)");
  MP_CHECK(pairs >= 0 && tokens_per_step >= 0, "--pairs and --tokens-per-step must be >= 0");
  MP_CHECK(batch > 0 && micro > 0 && val_batch > 0, "--batch-size, --micro-batch and --meta-val-batch must be positive");
  MP_CHECK(passes.eval_every >= 0 && passes.eval_pairs >= 0 && passes.track_pairs >= 0 && passes.refresh_every >= 0 &&
               passes.refresh_pairs >= 0,
           "--eval-every, --eval-pairs, --track-pairs, --stats-refresh-every and --stats-refresh-pairs must be >= 0");
  const int64_t reserve_bytes =
      reserve == "auto" ? (precision == "bf16" ? int64_t(3) << 30 : 0) : int64_t(parse_bytes(reserve, "--reserve"));
  std::vector<Recompute> modes;
  if (recompute == "all")
    modes = {Recompute::None, Recompute::Selective, Recompute::Full};
  else
    modes = {parse_recompute(recompute)};
  auto sizes = [&](const std::string& s, const char* opt) {
    std::vector<int> v;
    if (s == "auto") {  // the divisors of --gpus, in O(sqrt(gpus))
      std::vector<int> high;
      for (int64_t k = 1; k * k <= gpus; ++k)
        if (gpus % k == 0) {
          v.push_back(int(k));
          if (k * k != gpus) high.push_back(int(gpus / k));
        }
      v.insert(v.end(), high.rbegin(), high.rend());
      return v;
    }
    char* end = nullptr;
    const long x = std::strtol(s.c_str(), &end, 10);
    MP_CHECK(end && *end == '\0' && x >= 1, opt, " ", s, ": not a positive integer or auto");
    MP_CHECK(gpus % x == 0, opt, " ", s, " does not divide --gpus ", gpus);
    return std::vector<int>{int(x)};
  };
  const std::vector<int> tps = sizes(tp_s, "--tp"), pps = sizes(pp_s, "--pp");
  // A tensor-parallel group stays inside a node: its ranks are consecutive, so its size divides the
  // node's devices (or the whole job fits one node).
  auto tp_in_node = [&](int tp) { return tp <= per_node && (per_node % tp == 0 || gpus <= per_node); };
  if (tps.size() == 1) {
    const int tp = tps[0];
    MP_CHECK(tp_in_node(tp), "--tp ", tp, ": a tensor-parallel group must stay inside a node of --gpus-per-node ",
             per_node, " (its size must divide it)");
    MP_CHECK(c.num_attention_heads % tp == 0 && c.num_key_value_heads % tp == 0 && c.intermediate_size % tp == 0,
             "--tp ", tp, " does not divide the model's attention heads (", c.num_attention_heads, "), KV heads (",
             c.num_key_value_heads, ") and intermediate size (", c.intermediate_size, ")");
  }
  std::vector<int64_t> pp_layers;
  if (!pp_layers_s.empty()) {
    MP_CHECK(pps.size() == 1, "--pp-layers needs a fixed --pp");
    pp_layers = parse_pp_layers(pp_layers_s, pps[0]);
    int64_t sum = 0;
    for (int64_t n : pp_layers) sum += n;
    MP_CHECK(sum == c.num_hidden_layers, "--pp-layers ", pp_layers_s, ": ", sum, " layers, the model has ",
             c.num_hidden_layers);
  }

  PlanInput base;
  base.config = c;
  base.precision = precision == "bf16" ? PlanPrecision::bf16() : PlanPrecision::fp32();
  base.metapo = weighting == "metapo";
  base.runtime_reserve = reserve_bytes;
  base.micro_batches = micro_batches;
  base.pairs = pairs;
  PlanData pd;
  if (!data.empty()) {
    pd.path = data, pd.train = read_pair_split(data, "train");
    if (base.metapo || passes.eval_every > 0) pd.val = read_pair_split(data, "val");
  }
  std::vector<Candidate> all;
  int64_t data_micro_tokens = 0;  // with --micro-batch-tokens 0: the largest micro-batch --data gives
  for (int tp : tps)
    for (int pp : pps) {
      if (gpus % (int64_t(tp) * pp) != 0) continue;
      const int dp = int(gpus / (int64_t(tp) * pp));
      // TP must split the heads, KV heads and the MLP, and stay in a node; a stage needs a layer.
      if (tps.size() > 1 && (!tp_in_node(tp) || c.num_attention_heads % tp || c.num_key_value_heads % tp ||
                             c.intermediate_size % tp))
        continue;
      if (pps.size() > 1 && pp > c.num_hidden_layers) continue;
      PlanInput in = base;
      in.dp = dp, in.tp = tp, in.pp = pp, in.pp_layers = pp_layers;
      in.micro_tokens = micro_tokens;
      if (!data.empty()) {
        const int64_t run_steps = steps > 0 ? steps : std::max<int64_t>(1, pd.train.size() / batch);
        const DataShape d = data_shape(pd, dp, MicroBatching{micro, micro_tokens}, batch, run_steps, in.metapo,
                                       val_batch, seed, passes);
        in.micro_tokens = d.max_tokens, in.micro_rows = d.max_rows, in.pairs = d.pairs, in.data_bytes = d.bytes;
        data_micro_tokens = std::max(data_micro_tokens, d.max_tokens);
        in.backward_tokens = d.bwd_tokens, in.backward_rows = d.bwd_rows;
        in.ref_tokens = d.ref_tokens, in.ref_rows = d.ref_rows;
        if (micro_batches == 0) in.micro_batches = d.max_micro;
        if (ctx.topo.is_root() && pps.size() == 1 && tps.size() == 1)
          std::printf("%s over %lld steps at DP %d: the largest micro-batch has %lld tokens and %lld scored rows; at most %lld micro-batches per rank and step\n",
                      data.c_str(), (long long)run_steps, dp, (long long)d.max_tokens, (long long)d.max_rows,
                      (long long)d.max_micro);
      }
      // A layout the model cannot take (a tied LM head on a later pipeline stage): skipped when the
      // layouts are searched, an error when asked for.
      try {
        plan_memory(in);
      } catch (const Error&) {
        if (tps.size() > 1 || pps.size() > 1) continue;
        throw;
      }
      for (Recompute rc : modes) {
        in.recompute = rc;
        Candidate k{tp, pp, dp, rc, plan_memory(in)};
        for (const StagePlan& s : k.stages) k.peak = std::max(k.peak, s.total);
        k.headroom = 1.0 - double(k.peak) / double(device);
        all.push_back(std::move(k));
      }
    }
  MP_CHECK(!all.empty(), "no layout of ", gpus, " devices splits this model (heads ", c.num_attention_heads, ", KV heads ",
           c.num_key_value_heads, ", layers ", c.num_hidden_layers, ")");
  // Fitting layouts first; among them the least recomputation, then the most data parallelism (the
  // least communication per step), then the most headroom.
  std::stable_sort(all.begin(), all.end(), [&](const Candidate& a, const Candidate& b) {
    const bool fa = a.headroom >= min_headroom, fb = b.headroom >= min_headroom;
    if (fa != fb) return fa;
    if (a.rc != b.rc) return int(a.rc) < int(b.rc);
    if (a.dp != b.dp) return a.dp > b.dp;
    return a.headroom > b.headroom;
  });
  if (!ctx.topo.is_root()) return 0;

  const int64_t shown_micro = micro_tokens > 0 ? micro_tokens : data_micro_tokens;
  const int64_t step_tokens = tokens_per_step > 0 ? tokens_per_step : shown_micro * gpus;
  const double flops = plan_step_flops(c, step_tokens, seq_len);
  std::printf("model %s: %lld parameters, %lld layers, hidden %lld, %lld heads (%lld KV), vocab %lld\n", model.c_str(),
              (long long)ParamLayout(c).total(), (long long)c.num_hidden_layers, (long long)c.hidden_size,
              (long long)c.num_attention_heads, (long long)c.num_key_value_heads, (long long)c.vocab_size);
  std::printf("%lld device%s of %s GiB, %s, micro-batches of %lld tokens, %s; a layout fits with >= %.0f%% headroom\n",
              (long long)gpus, gpus == 1 ? "" : "s", gib(device).c_str(), precision.c_str(), (long long)shown_micro,
              base.metapo ? "MetaPO" : "uniform DPO", 100 * min_headroom);
  std::printf("FLOPs per step of %lld tokens (sequences of %lld): %.3g (forward + backward); MetaPO adds its validation gradient and about one forward for the ghost products\n",
              (long long)step_tokens, (long long)seq_len, flops);
  int fitting = 0;
  int64_t largest = 0;
  for (const Candidate& k : all) fitting += k.headroom >= min_headroom, largest = std::max(largest, k.peak);
  Unit unit;
  if (largest < (int64_t(1) << 30)) unit.name = "MiB", unit.bytes = double(int64_t(1) << 20);
  std::printf("\n%4s %4s %4s %-10s %12s %9s\n", "tp", "pp", "dp", "recompute", (std::string("peak ") + unit.name).c_str(), "headroom");
  // Every layout that fits; of the others the five closest to fitting.
  std::vector<const Candidate*> near;
  for (const Candidate& k : all)
    if (k.headroom < min_headroom) near.push_back(&k);
  std::stable_sort(near.begin(), near.end(), [](const Candidate* a, const Candidate* b) { return a->headroom > b->headroom; });
  if (near.size() > 5) near.resize(5);
  for (const Candidate& k : all)
    if (k.headroom >= min_headroom)
      std::printf("%4d %4d %4d %-10s %12s %8.1f%%\n", k.tp, k.pp, k.dp, recompute_name(k.rc), unit(k.peak).c_str(), 100 * k.headroom);
  if (fitting == 0) std::printf("(no layout fits with %.0f%% headroom)\n", 100 * min_headroom);
  for (const Candidate* k : near)
    std::printf("%4d %4d %4d %-10s %12s %8.1f%%  (does not fit)\n", k->tp, k->pp, k->dp, recompute_name(k->rc),
                unit(k->peak).c_str(), 100 * k->headroom);
  if (all.size() - size_t(fitting) > near.size())
    std::printf("(%zu more layouts do not fit)\n", all.size() - size_t(fitting) - near.size());
  int shown = 0;
  for (const Candidate& k : all) {
    if (shown >= show || (k.headroom < min_headroom && fitting > 0)) break;
    ++shown;
    std::printf("\nTP %d x PP %d x DP %d, --recompute %s: %s per device by stage\n%-8s", k.tp, k.pp, k.dp,
                recompute_name(k.rc), unit.name, "stage");
    for (int m = 1; m < kNumMem; ++m) std::printf(" %11s", mem_name(Mem(m)));
    std::printf(" %11s %11s\n", "reserve", "total");
    for (size_t s = 0; s < k.stages.size(); ++s) {
      std::printf("%-8zu", s);
      for (int m = 1; m < kNumMem; ++m) std::printf(" %11s", unit(k.stages[s].bytes[size_t(m)]).c_str());
      std::printf(" %11s %11s\n", unit(reserve_bytes).c_str(), unit(k.stages[s].total).c_str());
    }
  }
  nlohmann::json j;
  j["layouts"] = nlohmann::json::array();
  for (const Candidate& k : all) {
    if (k.headroom < min_headroom) continue;
    nlohmann::json l;
    l["tp"] = k.tp, l["pp"] = k.pp, l["dp"] = k.dp, l["recompute"] = recompute_name(k.rc);
    l["micro_batch_tokens"] = micro_tokens, l["peak_bytes"] = k.peak, l["headroom"] = k.headroom;
    for (const StagePlan& s : k.stages) {
      nlohmann::json st;
      for (int m = 0; m < kNumMem; ++m) st[mem_name(Mem(m))] = s.bytes[size_t(m)];
      st["total"] = s.total;
      l["stages"].push_back(st);
    }
    j["layouts"].push_back(l);
  }
  j["flops_per_step"] = flops, j["device_bytes"] = device, j["reserve_bytes"] = reserve_bytes;
  std::cout << "\n" << j.dump() << std::endl;
  return 0;
}

}  // namespace metapo::cli
