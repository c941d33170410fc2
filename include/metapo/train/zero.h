// ZeRO-1 AdamW over the data-parallel ranks (DESIGN §4): the AdamW moments (the fp32 master weights
// too, where parameters are kept in a lower precision) are sharded; gradients are reduce-scattered,
// each rank updates its shard, and the parameters are all-gathered. The data movement is
// parallel/zero.h's ZeroShards over the flat local buffer; this class adds the optimizer. With one
// rank it is plain AdamW, bit for bit.
//
// Tensor and pipeline parallelism: each rank runs its own ZeroAdamW over the DP ranks that hold the
// same part of the model (its TP shard of its pipeline stage: the local layout); the gradient norm for
// clipping is the whole model's (ZeroShards).
#pragma once
#include <cstddef>
#include <utility>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/model/layout.h"
#include "metapo/model/tp_layout.h"
#include "metapo/parallel/zero.h"
#include "metapo/train/optimizer.h"

namespace metapo {

class ZeroAdamW {
 public:
  // mp == nullptr (or one rank): the whole model is here, and `replicated` is ignored. Otherwise mp is
  // this rank's model replica (borrowed, must outlive the optimizer), `replicated` the runs of the local
  // buffer that other TP ranks hold copies of (local offsets and counts; stage_shard_map's replicated
  // entries), and count_replicated whether this rank counts them (TP rank 0).
  ZeroAdamW(const ParamLayout& lay, const AdamWConfig& cfg, Comm& dp, Comm* mp = nullptr,
            const std::vector<TpCopy>& replicated = {}, bool count_replicated = false);

  size_t n_params() const { return z_.n(); }
  size_t padded_size() const { return z_.padded_size(); }
  size_t shard_size() const { return z_.shard_size(); }
  size_t shard_begin() const { return z_.shard_begin(); }
  // Bytes of optimizer state (first and second moments) held by this rank.
  size_t state_bytes() const { return 2 * opt_.size() * sizeof(float); }

  // One optimizer step. grads[0, padded_size()): this rank's gradient (summed over its micro-batches);
  // it is reduce-scattered over the ranks (grads is left undefined), multiplied by `scale`, clipped
  // to `max_norm` (≤ 0: no clipping) by the norm over all shards (DP, TP and PP), and the rank's shard of params is
  // updated and all-gathered. Returns the gradient norm before clipping (after scaling).
  double step(float* params, float* grads, double lr, double scale, double max_norm);
  // step() in two halves, so a caller can look at the norm (every rank gets the same) and skip the
  // update on all ranks when it is not finite: reduce() reduce-scatters and scales this rank's
  // gradient and returns the global norm; apply() clips by it, updates the shard and all-gathers.
  // Calling reduce() without apply() leaves parameters, moments and the step count untouched.
  double reduce(float* grads, double scale);
  void apply(float* params, float* grads, double lr, double norm, double max_norm);

  // Sums g[0, padded_size()) over the ranks (a reduce-scatter and an all-gather, the volume of one
  // all-reduce) and, when `precondition` and a step has been taken, divides it by √v̂ + ε of Adam's
  // second moment on the way (MetaPO's preconditioned validation gradient, DESIGN §6). Every rank
  // ends with the same g.
  void allreduce_preconditioned(float* g, bool precondition);

  int64_t steps_taken() const { return opt_.steps_taken(); }
  const AdamWConfig& config() const { return opt_.config(); }
  // This rank's shard of the moments: local-layout elements [shard_begin(), shard_begin() + size) with
  // size = min(shard_size(), n_params() - shard_begin()) (a checkpoint's /optimizer).
  std::vector<float>& exp_avg() { return opt_.exp_avg(); }
  std::vector<float>& exp_avg_sq() { return opt_.exp_avg_sq(); }
  void set_steps_taken(int64_t t) { opt_.set_steps_taken(t); }
  // Collective over DP: every rank's shard of params[0, padded_size()) to all (a checkpoint's read).
  void allgather(float* params);

  // With one data-parallel rank and the whole model here (nothing to communicate), moves the
  // optimizer onto ctx's device and returns true: step, reduce, apply and allreduce_preconditioned
  // then take device pointers, and the moments live there (exp_avg() / exp_avg_sq() are the host
  // copies state_to_host refreshes for a checkpoint and state_to_device loads from one). Otherwise
  // returns false and the optimizer stays on the host. ctx is borrowed.
  bool place_on_device(const ops::Context& ctx);
  bool on_device() const { return opt_.on_device(); }
  void state_to_host() { opt_.state_to_host(); }
  void state_to_device() { opt_.state_to_device(); }

 private:
  ZeroShards z_;
  AdamW opt_;
};

}  // namespace metapo
