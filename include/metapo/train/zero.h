// ZeRO-1 over the data-parallel ranks (DESIGN §4): the AdamW moments (the fp32 master weights too,
// where parameters are kept in a lower precision) are sharded; gradients are reduce-scattered, each
// rank updates its shard, and the parameters are all-gathered.
//
// The flat buffer of n parameters is padded to dp × shard with shard = ⌈n / dp⌉; rank r owns
// [r·shard, (r+1)·shard) ∩ [0, n). Parameter and gradient buffers handed in must hold padded_size()
// floats with zeros in the padding (the model never writes past n). With one rank it is plain AdamW,
// bit for bit.
//
// Tensor parallelism: each TP rank runs its own ZeroAdamW over the DP ranks of its shard (the local
// layout of tp_layout.h). Only the gradient norm for clipping crosses TP groups: it must be the norm of
// the whole model, so the optional TP communicator adds the shards' squared norms, with the runs that
// every TP rank holds a copy of (norm weights, TpCopy::replicated) counted on TP rank 0 only.
#pragma once
#include <cstddef>
#include <utility>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/model/layout.h"
#include "metapo/model/tp_layout.h"
#include "metapo/train/optimizer.h"

namespace metapo {

class ZeroAdamW {
 public:
  // tp == nullptr (or one rank): no tensor parallelism, and `replicated` is ignored. Otherwise tp is
  // this rank's TP group (borrowed, must outlive the optimizer) and `replicated` the runs of the local
  // buffer that are replicated over it (local offsets and counts; tp_shard_map's replicated entries).
  ZeroAdamW(const ParamLayout& lay, const AdamWConfig& cfg, Comm& dp, Comm* tp = nullptr,
            const std::vector<TpCopy>& replicated = {});

  size_t n_params() const { return n_; }
  size_t padded_size() const { return shard_ * size_t(dp_.size()); }
  size_t shard_size() const { return shard_; }
  size_t shard_begin() const { return shard_ * size_t(dp_.rank()); }
  // Bytes of optimizer state (first and second moments) held by this rank.
  size_t state_bytes() const { return 2 * opt_.size() * sizeof(float); }

  // One optimizer step. grads[0, padded_size()): this rank's gradient (summed over its micro-batches);
  // it is reduce-scattered over the ranks (grads is left undefined), multiplied by `scale`, clipped
  // to `max_norm` (≤ 0: no clipping) by the norm over all shards (DP and TP), and the rank's shard of params is
  // updated and all-gathered. Returns the gradient norm before clipping (after scaling).
  double step(float* params, float* grads, double lr, double scale, double max_norm);

  // Sums g[0, padded_size()) over the ranks (a reduce-scatter and an all-gather, the volume of one
  // all-reduce) and, when `precondition` and a step has been taken, divides it by √v̂ + ε of Adam's
  // second moment on the way (MetaPO's preconditioned validation gradient, DESIGN §6). Every rank
  // ends with the same g.
  void allreduce_preconditioned(float* g, bool precondition);

  int64_t steps_taken() const { return opt_.steps_taken(); }
  const AdamWConfig& config() const { return opt_.config(); }

 private:
  // Σ g² over this rank's reduced shard, replicated runs skipped on TP ranks other than 0.
  double shard_sq_norm(const float* g) const;

  Comm& dp_;
  Comm* tp_;  // null: no tensor parallelism
  size_t n_, shard_;
  // With TP on ranks other than 0: the [begin, end) ranges of g_ that count towards the norm (the
  // shard minus the replicated runs), so every replicated element is counted exactly once.
  std::vector<std::pair<size_t, size_t>> norm_ranges_;
  AdamW opt_;
  std::vector<float> g_;  // this rank's reduced gradient shard
};

}  // namespace metapo
