#include "metapo/train/zero.h"

#include <algorithm>
#include <cmath>

#include "metapo/core/error.h"

namespace metapo {

namespace {

size_t shard_of(size_t n, int dp) {
  MP_CHECK(dp >= 1, "ZeRO-1: ", dp, " data-parallel ranks");
  return (n + size_t(dp) - 1) / size_t(dp);
}

}  // namespace

ZeroAdamW::ZeroAdamW(const ParamLayout& lay, const AdamWConfig& cfg, Comm& dp, Comm* mp,
                     const std::vector<TpCopy>& replicated, bool count_replicated)
    : dp_(dp),
      mp_(mp && mp->size() > 1 ? mp : nullptr),
      count_replicated_(!mp_ || count_replicated),
      n_(lay.total()),
      shard_(shard_of(lay.total(), dp.size())),
      opt_(lay, cfg, shard_ * size_t(dp.rank()), shard_ * size_t(dp.rank() + 1)),
      // One DP rank reduces nothing: it works on the caller's buffer in place, with no copy.
      g_(dp.size() > 1 ? shard_ : 0, 0.0f) {
  g_mem_.track(g_);
  if (count_replicated_) return;
  // The complement of the replicated runs within this rank's shard [b, e), in shard offsets.
  std::vector<std::pair<size_t, size_t>> rep;
  for (const TpCopy& c : replicated)
    if (c.replicated) rep.emplace_back(c.local, c.local + c.count);
  std::sort(rep.begin(), rep.end());
  const size_t b = shard_begin(), e = b + shard_;
  size_t at = b;
  for (const auto& [lo, hi] : rep) {
    const size_t l = std::max(lo, b), h = std::min(hi, e);
    if (l >= h) continue;
    if (at < l) norm_ranges_.emplace_back(at - b, l - b);
    at = std::max(at, h);
  }
  if (at < e) norm_ranges_.emplace_back(at - b, e - b);
}

double ZeroAdamW::shard_sq_norm(const float* g) const {
  if (count_replicated_) {
    // Every run counts (no model parallelism, or TP rank 0): the plain path, bit-identical to before.
    const double n = grad_norm(g, shard_);
    return n * n;
  }
  double sq = 0;
  for (const auto& [lo, hi] : norm_ranges_) {
    const double n = grad_norm(g + lo, hi - lo);
    sq += n * n;
  }
  return sq;
}

double ZeroAdamW::reduce(float* grads, double scale) {
  const bool one = dp_.size() == 1;
  float* g = one ? grads : g_.data();
  if (!one) dp_.reduce_scatter_sum(grads, g, shard_);
  if (scale != 1.0) {
    const float f = float(scale);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < shard_; ++i) g[i] *= f;
  }
  // The padding of the last shard is zero on every rank, so it adds nothing to the norm.
  double sq = shard_sq_norm(g);
  if (!one) dp_.allreduce_sum(&sq, 1);
  // Then over the replica (TP and PP): every rank of a part holds the same DP sum, so all end equal.
  if (mp_) mp_->allreduce_sum(&sq, 1);
  return std::sqrt(sq);
}

void ZeroAdamW::apply(float* params, float* grads, double lr, double norm, double max_norm) {
  const bool one = dp_.size() == 1;
  float* g = one ? grads : g_.data();
  clip_grads(g, shard_, norm, max_norm);
  opt_.step(params + shard_begin(), g, lr);  // the valid part of the shard only
  if (!one) dp_.allgather(params, shard_);
}

void ZeroAdamW::allgather(float* params) {
  if (dp_.size() > 1) dp_.allgather(params, shard_);
}

double ZeroAdamW::step(float* params, float* grads, double lr, double scale, double max_norm) {
  const double norm = reduce(grads, scale);
  apply(params, grads, lr, norm, max_norm);
  return norm;
}

void ZeroAdamW::allreduce_preconditioned(float* g, bool precondition) {
  const bool one = dp_.size() == 1;
  float* s = one ? g : g_.data();
  if (!one) dp_.reduce_scatter_sum(g, s, shard_);
  if (precondition && opt_.steps_taken() > 0) {
    // ĝ = g / (√v̂' + ε) with v̂' the bias-corrected second moment Adam would hold if g were its next
    // gradient, (β2·v + (1 − β2)·g²) / (1 − β2^(t+1)): the direction Adam would step along. Taking g
    // into v̂' bounds every component (|ĝ_i| ≤ √((1 − β2^(t+1)) / (1 − β2))); with v alone, a
    // coordinate whose training gradients were near zero so far would get g_i / ε, up to 1e8 × g_i,
    // and its rounding noise would decide ĝ.
    const std::vector<float>& v = opt_.exp_avg_sq();
    const double b2 = opt_.config().beta2;
    const float bc2 = float(1.0 - std::pow(b2, double(opt_.steps_taken() + 1)));
    const float eps = float(opt_.config().eps), fb2 = float(b2), fb2c = float(1.0 - b2);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < v.size(); ++i) s[i] /= std::sqrt((fb2 * v[i] + fb2c * s[i] * s[i]) / bc2) + eps;
  }
  if (one) return;
  std::copy(g_.begin(), g_.end(), g + shard_begin());
  dp_.allgather(g, shard_);
}

}  // namespace metapo
