#include "metapo/train/metapo.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "metapo/core/error.h"
#include "metapo/io/checkpoint.h"
#include "metapo/meta/meta_grad.h"
#include "metapo/train/pairs.h"

namespace metapo {

void validate(const MetaConfig& cfg) {
  MP_CHECK(cfg.interval >= 1, "--meta-interval must be at least 1");
  MP_CHECK(cfg.warmup >= 0, "--meta-warmup must not be negative");
  MP_CHECK(std::isnan(cfg.lr) || (cfg.lr > 0 && std::isfinite(cfg.lr)), "--meta-lr must be finite and positive (got ",
           cfg.lr, ")");
  MP_CHECK(cfg.ema_rate > 0 && cfg.ema_rate <= 1, "--stats-ema must be in (0, 1]");
  MP_CHECK(cfg.val_batch >= 1, "--meta-val-batch must be positive");
  MP_CHECK(std::isnan(cfg.penalty) || (cfg.penalty >= 0 && std::isfinite(cfg.penalty)),
           "--meta-penalty must be finite and >= 0 (got ", cfg.penalty, ")");
  MP_CHECK(cfg.apply == "scale" || cfg.apply == "confidence", "--meta-apply ", cfg.apply,
           ": unknown (valid: scale, confidence)");
  MP_CHECK(cfg.hidden >= 1, "--meta-hidden must be at least 1");
  MP_CHECK(cfg.a_min >= 0 && cfg.a_min < 1, "--weight-floor must be in [0, 1) (got ", cfg.a_min, ")");
  MP_CHECK(cfg.gate >= 0 && std::isfinite(cfg.gate), "--meta-gate must be finite and >= 0 (got ", cfg.gate, ")");
  MP_CHECK(cfg.gate_ema > 0 && cfg.gate_ema <= 1, "--meta-gate-ema must be in (0, 1] (got ", cfg.gate_ema, ")");
  std::vector<double> probe(kNumFeatures, 0.0);
  mask_features(probe, 1, cfg.features);  // rejects an unknown --meta-features
  MP_CHECK(cfg.refresh_every >= 0 && cfg.refresh_pairs >= 0, "--stats-refresh-every and --stats-refresh-pairs must not be negative");
  // One without the other refreshes nothing: a mistake, not a setting.
  MP_CHECK((cfg.refresh_every > 0) == (cfg.refresh_pairs > 0), "--stats-refresh-every ", cfg.refresh_every,
           " and --stats-refresh-pairs ", cfg.refresh_pairs, ": a refresh needs both (or neither) to be positive");
  MP_CHECK(cfg.hypergrad == "ghost" || cfg.hypergrad == "exact" || cfg.hypergrad == "fd", "--hypergrad ", cfg.hypergrad,
           ": unknown (valid: ghost, exact, fd)");
  if (!cfg.trace_path.empty()) {
    const std::filesystem::path p(cfg.trace_path);
    const std::filesystem::path dir = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
    MP_CHECK(!std::filesystem::is_directory(p), "--meta-trace ", cfg.trace_path, ": is a directory");
    MP_CHECK(std::filesystem::is_directory(dir) || !std::filesystem::exists(dir), "--meta-trace ", cfg.trace_path,
             ": ", dir.string(), " is not a directory");
  }
}

MetaPOState::MetaPOState(const MetaConfig& cfg, int64_t max_sample_id, uint64_t seed, Comm& dp, bool writes_trace,
                         bool resuming)
    : cfg_(cfg),
      dp_(dp),
      writes_trace_(writes_trace && !cfg.trace_path.empty()),
      table_(max_sample_id, cfg.ema_rate, dp),
      // As confidences the weights start near 1 (σ(3) = 0.95: the plain loss, nearly), not at ½
      // (which would smooth every label by ε = ¼ once the gate opens, before the net has learned).
      net_(WeightNetConfig{kNumFeatures, cfg.hidden, cfg.a_min, seed, cfg.apply == "confidence" ? 3.0 : 0.0}) {
  validate(cfg);
  MP_CHECK(!std::isnan(cfg.lr), "MetaPOState: the meta learning rate is not resolved (meta_lr())");
  gate_.gamma = cfg.gate > 0 ? 0.0 : 1.0;
  if (writes_trace_ && !resuming) {
    std::ofstream f(cfg.trace_path, std::ios::trunc);
    MP_CHECK(f.good(), "--meta-trace ", cfg.trace_path, ": cannot be written");
  }
}

void MetaPOState::begin_step(const PairSplit& s, const std::vector<int64_t>& mine) {
  std::vector<int64_t> ids;
  for (int64_t i : mine) ids.push_back(s.sample_id[size_t(i)]);
  const std::vector<PairStatRow> rows = table_.fetch(ids);
  fetched_.clear();
  for (size_t k = 0; k < ids.size(); ++k) fetched_[ids[k]] = rows[k];
}

std::vector<double> MetaPOState::weights(const PairSplit& s, const std::vector<int64_t>& chunk,
                                         const std::vector<PairLogps>& in, const std::vector<PairLossResult>& out) {
  std::vector<int64_t> ids;
  for (int64_t i : chunk) ids.push_back(s.sample_id[size_t(i)]);
  std::vector<PairStatRow> rows;
  if (fetched_.empty()) {
    rows = table_.fetch(ids);
  } else {
    for (int64_t id : ids) {
      const auto it = fetched_.find(id);
      MP_CHECK(it != fetched_.end(), "MetaPO: pair ", id, " was not fetched by begin_step");
      rows.push_back(it->second);
    }
  }
  std::vector<PairNow> now;
  for (size_t k = 0; k < chunk.size(); ++k) {
    now.push_back({out[k].margin, out[k].loss,
                   logp_gap(in[k].policy_chosen, in[k].len_chosen, in[k].policy_rejected, in[k].len_rejected)});
    step_obs_.push_back({ids[k], 0, out[k].margin,
                         reference_deviation(in[k].policy_chosen, in[k].ref_chosen, in[k].len_chosen,
                                             in[k].policy_rejected, in[k].ref_rejected, in[k].len_rejected)});
  }
  const std::vector<double> raw = make_features(rows, now);
  // Standardized with the statistics of the earlier steps only: this step's features go in at
  // end_step, all at once, so a pair's input does not depend on the micro-batching or on the number
  // of data-parallel ranks (only on the global batch).
  std::vector<double> x = stdz_.standardize(raw);
  step_raw_.insert(step_raw_.end(), raw.begin(), raw.end());
  mask_features(x, int64_t(chunk.size()), cfg_.features);
  std::vector<double> a;
  net_.forward(x, int64_t(chunk.size()), a);
  step_x_.insert(step_x_.end(), x.begin(), x.end());
  step_a_.insert(step_a_.end(), a.begin(), a.end());
  return applied_weights(a, gate_.gamma);
}

void MetaPOState::end_step(int64_t step, const std::vector<double>* align, int64_t B, double global_sum_applied) {
  fetched_.clear();  // the table changes below
  if (align) {
    MP_CHECK(align->size() == step_a_.size(), "MetaPO: ", align->size(), " alignments for ", step_a_.size(), " pairs");
    if (!cfg_.trace_path.empty()) write_trace(step, *align);
    // One all-reduce for the sums of the normalization, the gate's correlation and Σa of the net's
    // own weights (the policy step used a^γ, whose sum the trainer passed).
    double sums[kGateSums];
    local_gate_sums(step_a_, *align, sums);
    dp_.allreduce_sum(sums, kGateSums);
    const double global_sum_a = gate_.gamma == 1.0 ? global_sum_applied : sums[0];
    // Scale-free alignments, then the look-ahead gradient with the trust region around uniform
    // weights (docs/metapo.md, "Diagnosis" and "The meta objective").
    std::vector<double> g = lookahead_dLdw(rms_normalized(*align, sums[3], B), B);
    std::vector<double> dA;
    if (cfg_.apply == "confidence") {
      // No normalization: each a_i is the pair's own label confidence, and the trust region is
      // around 1 (the plain loss).
      dA = std::move(g);
      for (size_t i = 0; i < dA.size(); ++i) dA[i] += meta_penalty(cfg_) * (step_a_[i] - 1.0) / double(B);
    } else {
      add_uniform_penalty(g, step_a_, B, global_sum_a, meta_penalty(cfg_));
      double ga = local_ga_sum(g, step_a_);
      dp_.allreduce_sum(&ga, 1);
      dA = dLda(g, step_a_, B, global_sum_a, ga);
    }
    std::vector<double> a;
    net_.forward(step_x_, int64_t(step_a_.size()), a);  // the activations of the whole local batch
    std::vector<double> grad(size_t(net_.n_params()), 0.0);
    net_.backward(dA, grad);
    dp_.allreduce_sum(grad.data(), grad.size());
    double n2 = 0;
    for (double v : grad) n2 += v * v;
    last_grad_norm_ = std::sqrt(n2);
    adam_update(net_.params(), grad, adam_, cfg_.lr);
    // The gate sees this step's weights (made before the step's alignments were known, by the net
    // of the earlier steps) against the alignments: an out-of-sample test of the net's predictions.
    if (cfg_.gate > 0) {
      gate_update(gate_, correlation_from_sums(sums, B), cfg_.gate_ema, B);
      gate_.gamma = gate_gamma(gate_, cfg_.gate);
    }
  }
  stdz_.update(step_raw_, dp_);  // the whole step's raw features in one collective
  for (PairObservation& o : step_obs_) o.step = step;
  table_.observe(step_obs_);
  step_obs_.clear(), step_x_.clear(), step_a_.clear(), step_raw_.clear();
}

void MetaPOState::discard_step() {
  step_obs_.clear(), step_x_.clear(), step_a_.clear(), step_raw_.clear();
  fetched_.clear();
}

namespace {

// One pair of the trace, gathered over the data-parallel ranks as raw bytes.
struct TraceRecord {
  double sample_id;
  double raw[kNumFeatures], x[kNumFeatures];  // raw and standardized features
  double a, s;                                // weight and alignment
};

}  // namespace

void MetaPOState::write_trace(int64_t step, const std::vector<double>& align) {
  const size_t n = step_a_.size();
  std::vector<TraceRecord> mine(n);
  for (size_t k = 0; k < n; ++k) {
    TraceRecord& r = mine[k];
    r.sample_id = double(step_obs_[k].sample_id), r.a = step_a_[k], r.s = align[k];
    std::copy_n(&step_raw_[k * kNumFeatures], kNumFeatures, r.raw);
    std::copy_n(&step_x_[k * kNumFeatures], kNumFeatures, r.x);
  }
  std::vector<uint8_t> bytes;
  std::vector<size_t> counts;
  dp_.allgatherv(mine.data(), n * sizeof(TraceRecord), bytes, counts);  // collective: every rank gathers
  if (!writes_trace_) return;
  std::vector<TraceRecord> all(bytes.size() / sizeof(TraceRecord));
  std::memcpy(all.data(), bytes.data(), bytes.size());
  std::vector<int64_t> ids;
  std::vector<double> raw, x, a, s;
  for (const TraceRecord& r : all) {
    ids.push_back(int64_t(r.sample_id)), a.push_back(r.a), s.push_back(r.s);
    raw.insert(raw.end(), r.raw, r.raw + kNumFeatures), x.insert(x.end(), r.x, r.x + kNumFeatures);
  }
  nlohmann::json j;
  j["step"] = step + 1;
  j["sample_id"] = ids, j["raw"] = raw, j["x"] = x, j["a"] = a, j["s"] = s;
  j["gamma"] = gate_.gamma;  // the policy step trained on a^gamma (the significance gate)
  append_whole(cfg_.trace_path, j.dump() + "\n");
}

std::vector<int64_t> refresh_window(const MetaConfig& cfg, int64_t N, int64_t step, const std::vector<int64_t>& batch) {
  const int64_t n = std::min(cfg.refresh_pairs, N);
  std::vector<int64_t> idx;
  if (cfg.refresh_every <= 0 || n <= 0 || step % cfg.refresh_every != 0) return idx;
  const std::unordered_set<int64_t> in_batch(batch.begin(), batch.end());
  const int64_t start = (step / cfg.refresh_every * n) % N;
  for (int64_t j = 0; j < n; ++j)
    if (!in_batch.count((start + j) % N)) idx.push_back((start + j) % N);
  return idx;
}

void MetaPOState::observe_refresh(const PairSplit& s, const std::vector<int64_t>& idx, const std::vector<double>& c,
                                  const std::vector<double>& r, const LossConfig& loss, int64_t step) {
  const int64_t n = int64_t(idx.size());
  std::vector<PairObservation> obs;
  for (int64_t j = dp_.rank(); j < n; j += dp_.size()) {
    const int64_t i = idx[size_t(j)];
    const PairLogps p{c[size_t(j)], r[size_t(j)], s.ref_logp_chosen[size_t(i)], s.ref_logp_rejected[size_t(i)],
                      s.chosen.len(i), s.rejected.len(i)};
    obs.push_back({s.sample_id[size_t(i)], step, pair_loss(loss, p).margin,
                   reference_deviation(p.policy_chosen, p.ref_chosen, p.len_chosen, p.policy_rejected, p.ref_rejected,
                                       p.len_rejected)});
  }
  table_.observe(obs);
}

LossConfig meta_validation_loss(const LossConfig& loss) {
  LossConfig v = loss;
  v.weights_as_confidence = false;  // the validation batch is unweighted
  if (v.type == LossType::ApoDown) v.type = LossType::Sigmoid;  // β as trained; apo_down reads nothing else
  return v;
}

void validation_gradient(LlamaModel<float>& model, Comm* pp, const float* params, const PairSplit& val,
                         const LossConfig& loss, int64_t val_batch, const MicroBatching& mb, uint64_t seed, int64_t step,
                         const Topology& topo, ZeroAdamW& opt, bool precondition, float* ghat,
                         float* model_grads) {
  MP_CHECK(val_batch % topo.dp == 0, "--meta-val-batch ", val_batch, " is not divisible by the ", topo.dp,
           " data-parallel ranks");
  // Its own stream of validation batches: (seed + 1) keeps it apart from the training order.
  const TokensOf tokens_of = [&](int64_t i) { return pair_tokens(val, i); };
  const std::vector<int64_t> mine =
      dp_share(global_batch(val.size(), val_batch, seed + 1, step), topo.dp_rank, topo.dp, tokens_of, mb);
  const ChunkWeightFn uniform = [](size_t, const std::vector<PairLogps>& in, const std::vector<PairLossResult>&) {
    return std::vector<double>(in.size(), 1.0);
  };
  float* g = model_grads ? model_grads : ghat;
  pair_pipeline_step(model, pp, params, g, val, micro_batches(mine, tokens_of, mb), loss, uniform, 1.0 / double(val_batch));
  if (g != ghat) ops::to_host(model.context(), ghat, g, model.layout().total() * sizeof(float));
  // ĝ = g / (√v̂ + ε) when preconditioned: the direction Adam would step along, so alignments weigh
  // coordinates the way the policy update does.
  opt.allreduce_preconditioned(ghat, precondition);
}

}  // namespace metapo
