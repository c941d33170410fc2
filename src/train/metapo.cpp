#include "metapo/train/metapo.h"

#include <algorithm>
#include <cmath>

#include "metapo/comm/collectives.h"
#include "metapo/core/error.h"
#include "metapo/meta/meta_grad.h"
#include "metapo/train/pairs.h"

namespace metapo {

MetaPOState::MetaPOState(const MetaConfig& cfg, int64_t max_sample_id, uint64_t seed, Comm& dp)
    : cfg_(cfg),
      dp_(dp),
      table_(max_sample_id, cfg.ema_rate, dp),
      net_(WeightNetConfig{kNumFeatures, cfg.hidden, cfg.a_min, seed}) {
  MP_CHECK(cfg.interval >= 1, "--meta-interval must be at least 1");
  MP_CHECK(cfg.warmup >= 0, "--meta-warmup must not be negative");
  MP_CHECK(cfg.lr > 0, "--meta-lr must be positive");
  MP_CHECK(cfg.ema_rate > 0 && cfg.ema_rate <= 1, "--stats-ema must be in (0, 1]");
  MP_CHECK(cfg.val_batch >= 1, "--meta-val-batch must be positive");
  std::vector<double> probe(kNumFeatures, 0.0);
  mask_features(probe, 1, cfg.features);  // rejects an unknown --meta-features before any step
  MP_CHECK(cfg.refresh_every >= 0 && cfg.refresh_pairs >= 0, "--stats-refresh-every and --stats-refresh-pairs must not be negative");
}

std::vector<double> MetaPOState::weights(const PairSplit& s, const std::vector<int64_t>& chunk,
                                         const std::vector<PairLogps>& in, const std::vector<PairLossResult>& out) {
  std::vector<int64_t> ids;
  for (int64_t i : chunk) ids.push_back(s.sample_id[size_t(i)]);
  const std::vector<PairStatRow> rows = table_.fetch(ids);
  std::vector<double> margin, loss;
  for (size_t k = 0; k < chunk.size(); ++k) {
    margin.push_back(out[k].margin), loss.push_back(out[k].loss);
    step_obs_.push_back({ids[k], 0, out[k].margin,
                         reference_deviation(in[k].policy_chosen, in[k].ref_chosen, in[k].len_chosen,
                                             in[k].policy_rejected, in[k].ref_rejected, in[k].len_rejected)});
  }
  const std::vector<double> raw = make_features(rows, margin, loss);
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
  return a;
}

void MetaPOState::end_step(int64_t step, const std::vector<double>* align, int64_t B, double global_sum_a) {
  if (align) {
    MP_CHECK(align->size() == step_a_.size(), "MetaPO: ", align->size(), " alignments for ", step_a_.size(), " pairs");
    const std::vector<double> g = lookahead_dLdw(*align, B);
    double ga = local_ga_sum(g, step_a_);
    dp_.allreduce_sum(&ga, 1);
    const std::vector<double> dA = dLda(g, step_a_, B, global_sum_a, ga);
    std::vector<double> a;
    net_.forward(step_x_, int64_t(step_a_.size()), a);  // the activations of the whole local batch
    std::vector<double> grad(size_t(net_.n_params()), 0.0);
    net_.backward(dA, grad);
    dp_.allreduce_sum(grad.data(), grad.size());
    double n2 = 0;
    for (double v : grad) n2 += v * v;
    last_grad_norm_ = std::sqrt(n2);
    adam_update(net_.params(), grad, adam_, cfg_.lr);
  }
  stdz_.update(step_raw_, dp_);  // the whole step's raw features in one collective
  for (PairObservation& o : step_obs_) o.step = step;
  table_.observe(step_obs_);
  step_obs_.clear(), step_x_.clear(), step_a_.clear(), step_raw_.clear();
}

std::vector<int64_t> refresh_window(const MetaConfig& cfg, int64_t N, int64_t step) {
  const int64_t n = std::min(cfg.refresh_pairs, N);
  std::vector<int64_t> idx;
  if (cfg.refresh_every <= 0 || n <= 0 || step % cfg.refresh_every != 0) return idx;
  const int64_t start = (step / cfg.refresh_every * n) % N;
  for (int64_t j = 0; j < n; ++j) idx.push_back((start + j) % N);
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

void validation_gradient(LlamaModel<float>& model, Comm* pp, const float* params, const PairSplit& val,
                         const LossConfig& loss, int64_t val_batch, int64_t micro, uint64_t seed, int64_t step,
                         const Topology& topo, ZeroAdamW& opt, bool precondition, float* ghat) {
  MP_CHECK(val_batch % topo.dp == 0, "--meta-val-batch ", val_batch, " is not divisible by the ", topo.dp,
           " data-parallel ranks");
  // Its own stream of validation batches: (seed + 1) keeps it apart from the training order.
  const std::vector<int64_t> mine = dp_share(global_batch(val.size(), val_batch, seed + 1, step), topo.dp_rank, topo.dp);
  const ChunkWeightFn uniform = [](size_t, const std::vector<PairLogps>& in, const std::vector<PairLossResult>&) {
    return std::vector<double>(in.size(), 1.0);
  };
  pair_pipeline_step(model, pp, params, ghat, val, split_chunks(mine, micro), loss, uniform, 1.0 / double(val_batch));
  // ĝ = g / (√v̂ + ε) when preconditioned: the direction Adam would step along, so alignments weigh
  // coordinates the way the policy update does.
  opt.allreduce_preconditioned(ghat, precondition);
}

}  // namespace metapo
