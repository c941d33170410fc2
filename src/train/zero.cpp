#include "metapo/train/zero.h"

#include <cmath>

#include "metapo/ops/ops.h"

namespace metapo {

namespace {

// The runs other TP ranks hold copies of, as [begin, end) of the local buffer.
std::vector<std::pair<size_t, size_t>> replicated_ranges(const std::vector<TpCopy>& runs) {
  std::vector<std::pair<size_t, size_t>> out;
  for (const TpCopy& c : runs)
    if (c.replicated) out.emplace_back(c.local, c.local + c.count);
  return out;
}

}  // namespace

ZeroAdamW::ZeroAdamW(const ParamLayout& lay, const AdamWConfig& cfg, Comm& dp, Comm* mp,
                     const std::vector<TpCopy>& replicated, bool count_replicated)
    : z_(lay.total(), dp, mp, replicated_ranges(replicated), count_replicated),
      opt_(lay, cfg, z_.shard_begin(), z_.shard_begin() + z_.shard_size()) {}

double ZeroAdamW::reduce(float* grads, double scale) { return z_.reduce(grads, scale); }

void ZeroAdamW::apply(float* params, float* grads, double lr, double norm, double max_norm) {
  float* g = z_.shard(grads);
  clip_grads(g, z_.shard_size(), norm, max_norm, opt_.context());
  opt_.step(params + shard_begin(), g, lr);  // the valid part of the shard only
  z_.allgather(params);
}

void ZeroAdamW::allgather(float* params) { z_.allgather(params); }

bool ZeroAdamW::place_on_device(const ops::Context& ctx) {
  if (!z_.local()) return false;
  z_.set_context(ctx);
  opt_.place_on_device(ctx);
  return true;
}

double ZeroAdamW::step(float* params, float* grads, double lr, double scale, double max_norm) {
  const double norm = reduce(grads, scale);
  apply(params, grads, lr, norm, max_norm);
  return norm;
}

void ZeroAdamW::allreduce_preconditioned(float* g, bool precondition) {
  float* s = z_.reduce_scatter(g);
  if (precondition && opt_.steps_taken() > 0) {
    // ĝ = g / (√v̂' + ε) with v̂' the bias-corrected second moment Adam would hold if g were its next
    // gradient, (β2·v + (1 − β2)·g²) / (1 − β2^(t+1)): the direction Adam would step along. Taking g
    // into v̂' bounds every component (|ĝ_i| ≤ √((1 − β2^(t+1)) / (1 − β2))); with v alone, a
    // coordinate whose training gradients were near zero so far would get g_i / ε, up to 1e8 × g_i,
    // and its rounding noise would decide ĝ.
    const double b2 = opt_.config().beta2;
    const float bc2 = float(1.0 - std::pow(b2, double(opt_.steps_taken() + 1)));
    const float eps = float(opt_.config().eps), fb2 = float(b2), fb2c = float(1.0 - b2);
    ops::adam_precondition(opt_.context(), s, opt_.exp_avg_sq_data(), opt_.size(), fb2, fb2c, bc2, eps);
  }
  z_.allgather_shard(g);
}

}  // namespace metapo
