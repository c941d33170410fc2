#include "metapo/parallel/zero.h"

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

ZeroShards::ZeroShards(size_t n, Comm& dp, Comm* mp, const std::vector<std::pair<size_t, size_t>>& replicated,
                       bool count_replicated)
    : dp_(dp),
      mp_(mp && mp->size() > 1 ? mp : nullptr),
      count_replicated_(!mp_ || count_replicated),
      n_(n),
      shard_(shard_of(n, dp.size())),
      // One DP rank reduces nothing: it works on the caller's buffer in place, with no copy.
      g_(dp.size() > 1 ? shard_ : 0, 0.0f) {
  g_mem_.track(g_);
  if (count_replicated_) return;
  // The complement of the replicated runs within this rank's block [b, e), in block offsets.
  std::vector<std::pair<size_t, size_t>> rep = replicated;
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

double ZeroShards::shard_sq_norm(const float* g) const {
  if (count_replicated_) {
    // Every run counts (no model parallelism, or TP rank 0): the plain path.
    const double n = grad_norm(g, shard_, ctx_);
    return n * n;
  }
  double sq = 0;
  for (const auto& [lo, hi] : norm_ranges_) {
    const double n = grad_norm(g + lo, hi - lo, ctx_);
    sq += n * n;
  }
  return sq;
}

double ZeroShards::reduce(float* grads, double scale) {
  const bool one = dp_.size() == 1;
  float* g = shard(grads);
  if (!one) dp_.reduce_scatter_sum(grads, g, shard_);
  if (scale != 1.0) {
    ops::scale(ctx_, g, float(scale), shard_);
  }
  // The padding of the last block is zero on every rank, so it adds nothing to the norm.
  double sq = shard_sq_norm(g);
  if (!one) dp_.allreduce_sum(&sq, 1);
  // Then over the replica (TP and PP): every rank of a part holds the same DP sum, so all end equal.
  if (mp_) mp_->allreduce_sum(&sq, 1);
  return std::sqrt(sq);
}

float* ZeroShards::reduce_scatter(float* g) {
  float* s = shard(g);
  if (dp_.size() > 1) dp_.reduce_scatter_sum(g, s, shard_);
  return s;
}

void ZeroShards::allgather_shard(float* g) {
  if (dp_.size() == 1) return;
  ops::copy(ctx_, g + shard_begin(), g_.data(), int64_t(g_.size()));
  dp_.allgather(g, shard_);
}

void ZeroShards::allgather(float* buf) {
  if (dp_.size() > 1) dp_.allgather(buf, shard_);
}

void ZeroShards::set_context(const ops::Context& ctx) {
  MP_CHECK(ctx.device == Device::CPU || local(), "ZeRO-1 on ", device_name(ctx.device),
           ": only with one data-parallel rank and the whole model (the collectives move host memory)");
  ctx_ = ctx;
}

double grad_norm(const float* g, size_t n, const ops::Context& ctx) {
  // Blocks summed in a fixed order: the same norm whatever the thread count.
  return std::sqrt(ops::sum_squares(ctx, g, n));
}

}  // namespace metapo
