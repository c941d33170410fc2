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

double ZeroShards::reduce(float* grads, double scale) {
  const bool one = dp_.size() == 1;
  float* g = shard(grads);
  if (!one) dp_.reduce_scatter_sum(grads, g, shard_);
  if (scale != 1.0) {
    const float f = float(scale);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < shard_; ++i) g[i] *= f;
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
  std::copy(g_.begin(), g_.end(), g + shard_begin());
  dp_.allgather(g, shard_);
}

void ZeroShards::allgather(float* buf) {
  if (dp_.size() > 1) dp_.allgather(buf, shard_);
}

double grad_norm(const float* g, size_t n) {
  // Blocks summed in a fixed order: the same norm whatever the thread count.
  constexpr size_t kBlock = 1 << 16;
  const size_t nb = (n + kBlock - 1) / kBlock;
  std::vector<double> part(nb, 0.0);
#pragma omp parallel for schedule(static)
  for (size_t b = 0; b < nb; ++b) {
    double s = 0;
    for (size_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) s += double(g[i]) * double(g[i]);
    part[b] = s;
  }
  double s = 0;
  for (double x : part) s += x;
  return std::sqrt(s);
}

}  // namespace metapo
