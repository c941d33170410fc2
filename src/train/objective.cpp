// The preference objective (DESIGN §6): pair losses and weights per micro-batch, their backward
// through the model or the pipeline, and forward-only log-probs of pairs.
#include "metapo/train/objective.h"

#include <algorithm>
#include <cmath>

#include "metapo/meta/reference_hypergrad.h"
#include "metapo/train/pairs.h"
#include "metapo/train/pipeline.h"
#include "metapo/core/error.h"
#include "metapo/core/progress.h"

namespace metapo {

void PairStats::add(const LossConfig& cfg, const PairLogps& p, const PairLossResult& r, double w) {
  n += 1, weight_sum += w, weighted_loss += w * r.loss, loss += r.loss;
  correct += r.reward_chosen > r.reward_rejected ? 1.0 : 0.0;  // strict, as TRL's (chosen > rejected)
  margin += r.margin, reward_chosen += r.reward_chosen, reward_rejected += r.reward_rejected;
  const bool avg = cfg.type == LossType::Simpo;
  logp_chosen += avg ? p.policy_chosen / double(p.len_chosen) : p.policy_chosen;
  logp_rejected += avg ? p.policy_rejected / double(p.len_rejected) : p.policy_rejected;
  w_min = std::min(w_min, w), w_max = std::max(w_max, w), w_sq += w * w;
}

void PairStats::merge(const PairStats& o) {
  n += o.n, weight_sum += o.weight_sum, weighted_loss += o.weighted_loss, loss += o.loss;
  correct += o.correct, margin += o.margin, reward_chosen += o.reward_chosen;
  reward_rejected += o.reward_rejected, logp_chosen += o.logp_chosen, logp_rejected += o.logp_rejected;
  w_min = std::min(w_min, o.w_min), w_max = std::max(w_max, o.w_max), w_sq += o.w_sq;
}

void PairStats::allreduce(Comm& comm) {
  double sums[11] = {n, weight_sum, weighted_loss, loss, correct, margin, reward_chosen,
                     reward_rejected, logp_chosen, logp_rejected, w_sq};
  comm.allreduce_sum(sums, 11);
  n = sums[0], weight_sum = sums[1], weighted_loss = sums[2], loss = sums[3], correct = sums[4];
  margin = sums[5], reward_chosen = sums[6], reward_rejected = sums[7], logp_chosen = sums[8];
  logp_rejected = sums[9], w_sq = sums[10];
  comm.allreduce_min(&w_min, 1);
  comm.allreduce_max(&w_max, 1);
}

PairLogps pair_input(const PairSplit& s, int64_t i, double pc, double pr) {
  return {pc, pr, s.ref_logp_chosen[size_t(i)], s.ref_logp_rejected[size_t(i)], s.chosen.len(i),
          s.rejected.len(i)};
}

namespace {

// A micro-batch's pair losses and weights from its per-row logp (into r), and dL/dlogp per row with
// coefficient a_k · coef_scale on pair k's loss. `ghost`: the backward also takes ghost dots.
template <typename T>
std::vector<T> pair_dlogp(const PairSplit& s, const std::vector<int64_t>& chunk, const PackedBatch& batch,
                          const std::vector<int32_t>& targets, const std::vector<T>& logp, const LossConfig& loss,
                          const WeightFn& weigh, double coef_scale, bool ghost, PairMicroResult& r) {
  const std::vector<double> seq = sequence_logps(batch, logp);
  for (size_t k = 0; k < chunk.size(); ++k) {
    r.in.push_back(pair_input(s, chunk[k], seq[2 * k], seq[2 * k + 1]));
    r.out.push_back(pair_loss(loss, r.in.back()));
  }
  r.weights = weigh(r.in, r.out);
  std::vector<double> coef(2 * chunk.size());
  if (loss.weights_as_confidence) {
    // ℓ(u) per pair, u = the weight clamped to [0, 1]. A sequence's ghost dot is its coefficient times
    // ⟨ĝ, ∇ log π(y)⟩, so a coefficient of exactly 0 (ℓ(u) at its minimum) would lose the latter:
    // with ghost dots, keep it at least 1e-6 of the larger of the two losses' derivatives (a negligible
    // change of a meta step's gradient), with the sign of ∂ℓ(u)/∂u's derivative where it is 0, so that
    // a margin-only loss keeps the same ratio du / coef on both sequences of the pair (what pair sums
    // of the dots rely on: ghost_group).
    r.seq_coef.resize(2 * chunk.size()), r.seq_du.resize(2 * chunk.size());
    for (size_t k = 0; k < chunk.size(); ++k) {
      const ConfidencePairLoss c = confidence_pair_loss(loss, r.in[k], std::clamp(r.weights[k], 0.0, 1.0));
      const double d[2] = {c.mixed.d_policy_chosen, c.mixed.d_policy_rejected};
      const double du[2] = {c.du_chosen, c.du_rejected};
      const double full[2] = {r.out[k].d_policy_chosen, r.out[k].d_policy_rejected};
      for (int j = 0; j < 2; ++j) {
        const double tiny = ghost ? 1e-6 * (std::abs(full[j]) + std::abs(full[j] - 2.0 * du[j])) : 0.0;
        const double sign = d[j] != 0 ? d[j] : du[j];
        r.seq_coef[2 * k + j] = std::abs(d[j]) >= tiny ? d[j] : (sign < 0 ? -tiny : tiny);
        r.seq_du[2 * k + j] = du[j];
        coef[2 * k + j] = coef_scale * r.seq_coef[2 * k + j];
      }
      r.out[k].loss = c.mixed.loss;
    }
  } else {
    for (size_t k = 0; k < chunk.size(); ++k) {
      coef[2 * k] = r.weights[k] * coef_scale * r.out[k].d_policy_chosen;
      coef[2 * k + 1] = r.weights[k] * coef_scale * r.out[k].d_policy_rejected;
    }
  }
  return expand_seq_coef<T>(batch, targets, coef);
}

// How many adjacent sequences one ghost dot may cover (LlamaModel::set_ghost_group). pair_align needs
// per pair Σ_y du_y / coef_y · dot_y: pair sums suffice when du / coef is the same on both sequences,
// which holds for the base loss (du = coef) and, with weights as confidences, for losses in which
// the policy enters through the margin only. Otherwise every sequence keeps its own dot.
int ghost_group(const LossConfig& loss) {
  return loss.weights_as_confidence && !loss_is_margin_only(loss.type) ? 1 : 2;
}

// The backward ran with a_k·coef_scale on pair k: divide it out of the ghost dots to get ⟨ĝ, ∇θ ℓ_k⟩.
// With weights as confidences, each sequence's dot is divided by its own coefficient, giving
// ⟨ĝ, ∇ log π(y)⟩, and the alignment is that of ∂ℓ(u)/∂u: Σ_y du_y ⟨ĝ, ∇ log π(y)⟩.
void pair_align(const std::vector<double>& seq_dots, double coef_scale, PairMicroResult& r) {
  if (!r.seq_du.empty()) {
    for (size_t k = 0; k < r.weights.size(); ++k) {
      double s = 0;
      for (size_t j = 2 * k; j < 2 * k + 2; ++j)
        if (r.seq_du[j] != 0) s += r.seq_du[j] * seq_dots[j] / (r.seq_coef[j] * coef_scale);
      r.align.push_back(s);
    }
    return;
  }
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
  const std::vector<T> dlogp =
      pair_dlogp<T>(s, chunk, pb.batch, pb.targets, logp, loss, weigh, coef_scale, ghat != nullptr, r);
  std::vector<double> seq_dots;
  model.set_ghost_group(ghost_group(loss));
  model.backward(params, dlogp.data(), grads, accumulate, ghat, ghat ? &seq_dots : nullptr);
  model.set_ghost_group(1);
  if (ghat) pair_align(seq_dots, coef_scale, r);
  r.tokens = pb.batch.n_tokens();
  return r;
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
    return pair_dlogp<float>(s, chunks[m], mbs[m].batch, mbs[m].targets, logp, loss, w, coef_scale, ghat != nullptr,
                             res[m]);
  };
  std::vector<std::vector<double>> dots;
  model.set_ghost_group(ghost_group(loss));
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

// The reference alignments of meta/reference_hypergrad.h, bound to the model and the pairs.
template <typename T>
std::vector<double> pair_alignments_exact(LlamaModel<T>& model, const T* params, T* grads, size_t n_params,
                                          const PairSplit& s, const std::vector<int64_t>& chunk,
                                          const LossConfig& loss, const T* ghat) {
  std::vector<T> g0;
  const std::function<void(int64_t, T*)> pair_grad = [&](int64_t k, T* g) {
    if (!loss.weights_as_confidence) {
      pair_micro_step<T>(model, params, g, false, s, {chunk[size_t(k)]}, loss, Weighting::Uniform, {}, {}, 1.0);
      return;
    }
    // ∇θ ∂ℓ(u)/∂u = ∇θ ℓ(1) − ∇θ ℓ(0): ℓ(u) is linear in u.
    const auto at = [](double u) {
      return WeightFn([u](const std::vector<PairLogps>& in, const std::vector<PairLossResult>&) {
        return std::vector<double>(in.size(), u);
      });
    };
    g0.resize(n_params);
    pair_micro_step<T>(model, params, g, false, s, {chunk[size_t(k)]}, loss, at(1.0), 1.0);
    pair_micro_step<T>(model, params, g0.data(), false, s, {chunk[size_t(k)]}, loss, at(0.0), 1.0);
    for (size_t j = 0; j < n_params; ++j) g[j] -= g0[j];
  };
  return exact_alignments<T>(int64_t(chunk.size()), pair_grad, grads, n_params, ghat);
}

template <typename T>
std::vector<double> pair_alignments_fd(LlamaModel<T>& model, const T* params, T* scratch, size_t n_params,
                                       const PairSplit& s, const std::vector<int64_t>& chunk,
                                       const LossConfig& loss, const T* ghat, double rel_step) {
  const PairBatch pb = make_pair_batch(s, chunk);
  std::vector<T> logp(size_t(pb.batch.n_tokens()));
  const std::function<std::vector<double>(const T*)> losses = [&](const T* theta) {
    model.forward(theta, pb.batch, pb.targets.data(), logp.data());
    const std::vector<double> seq = sequence_logps(pb.batch, logp);
    std::vector<double> l;
    for (size_t k = 0; k < chunk.size(); ++k) {
      const PairLogps p = pair_input(s, chunk[k], seq[2 * k], seq[2 * k + 1]);
      // With weights as confidences the alignment is that of ∂ℓ(u)/∂u = ℓ(1) − ℓ(0).
      l.push_back(loss.weights_as_confidence
                      ? confidence_pair_loss(loss, p, 1.0).mixed.loss - confidence_pair_loss(loss, p, 0.0).mixed.loss
                      : pair_loss(loss, p).loss);
    }
    return l;
  };
  return fd_alignments<T>(int64_t(chunk.size()), losses, params, scratch, n_params, ghat, rel_step);
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
                const std::vector<int64_t>& idx, const MicroBatching& mb, Comm& comm, std::vector<double>& chosen,
                std::vector<double>& rejected) {
  const int rank = comm.rank(), size = comm.size();
  chosen.assign(idx.size(), 0.0), rejected.assign(idx.size(), 0.0);
  // Chunks of kLogpsChunkPairs per rank, the same number on every rank (the collectives match).
  const size_t chunk = kLogpsChunkPairs * size_t(size);
  for (size_t c0 = 0; c0 < idx.size(); c0 += chunk) {
    const size_t c1 = std::min(idx.size(), c0 + chunk);
    std::vector<int64_t> mine;  // positions in idx
    for (size_t k = c0 + size_t(rank); k < c1; k += size_t(size)) mine.push_back(int64_t(k));
    const std::vector<std::vector<int64_t>> pos =
        micro_batches(mine, [&](int64_t k) { return pair_tokens(s, idx[size_t(k)]); }, mb);
    std::vector<PipeMicro> mbs;
    for (const std::vector<int64_t>& p : pos) {
      std::vector<int64_t> part;
      for (int64_t k : p) part.push_back(idx[size_t(k)]);
      PairBatch pb = make_pair_batch(s, part);
      mbs.push_back({std::move(pb.batch), std::move(pb.targets)});
    }
    pipeline_forward(model, pp, params, mbs, [&](size_t m, const std::vector<float>& logp) {
      const std::vector<double> seq = sequence_logps(mbs[m].batch, logp);
      for (size_t k = 0; 2 * k < seq.size(); ++k)
        chosen[size_t(pos[m][k])] = seq[2 * k], rejected[size_t(pos[m][k])] = seq[2 * k + 1];
    });
    if (c1 < idx.size()) {
      // In step over the DP ranks (whose chunks are otherwise independent): a rank that is done
      // early waits for one chunk, not for the others' whole pass, before the progress report.
      comm.barrier();
      report_progress();
    }
  }
  // Every entry was filled by exactly one rank (the others hold 0): sums gather them, over DP and
  // then from the last pipeline stage to the others.
  comm.allreduce_sum(chosen.data(), chosen.size());
  comm.allreduce_sum(rejected.data(), rejected.size());
  if (pp && pp->size() > 1) pp->allreduce_sum(chosen.data(), chosen.size()), pp->allreduce_sum(rejected.data(), rejected.size());
  report_progress();
}

}  // namespace metapo
