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

ZeroAdamW::ZeroAdamW(const ParamLayout& lay, const AdamWConfig& cfg, Comm& dp)
    : dp_(dp),
      n_(lay.total()),
      shard_(shard_of(lay.total(), dp.size())),
      opt_(lay, cfg, shard_ * size_t(dp.rank()), shard_ * size_t(dp.rank() + 1)),
      g_(shard_, 0.0f) {}

double ZeroAdamW::step(float* params, float* grads, double lr, double scale, double max_norm) {
  dp_.reduce_scatter_sum(grads, g_.data(), shard_);
  if (scale != 1.0) {
    const float f = float(scale);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < shard_; ++i) g_[i] *= f;
  }
  // The padding of the last shard is zero on every rank, so it adds nothing to the norm.
  double sq = grad_norm(g_.data(), shard_);
  sq *= sq;
  dp_.allreduce_sum(&sq, 1);
  const double norm = std::sqrt(sq);
  clip_grads(g_.data(), shard_, norm, max_norm);
  opt_.step(params + shard_begin(), g_.data(), lr);  // the valid part of the shard only
  dp_.allgather(params, shard_);
  return norm;
}

void ZeroAdamW::allreduce_preconditioned(float* g, bool precondition) {
  dp_.reduce_scatter_sum(g, g_.data(), shard_);
  if (precondition && opt_.steps_taken() > 0) {
    // ĝ = g / (√v̂ + ε): the direction Adam would step along.
    const std::vector<float>& v = opt_.exp_avg_sq();
    const float bc2 = float(1.0 - std::pow(opt_.config().beta2, double(opt_.steps_taken())));
    const float eps = float(opt_.config().eps);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < v.size(); ++i) g_[i] /= std::sqrt(v[i] / bc2) + eps;
  }
  std::copy(g_.begin(), g_.end(), g + shard_begin());
  dp_.allgather(g, shard_);
}

}  // namespace metapo
