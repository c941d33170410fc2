// ZeRO-1's data movement over flat fp32 buffers (DESIGN §4), knowing nothing of the model or of the
// optimizer: train/zero.h puts AdamW on top of it.
//
// A flat buffer of n values is padded to dp × shard with shard = ⌈n / dp⌉; rank r owns
// [r·shard, (r+1)·shard) ∩ [0, n). Buffers handed in must hold padded_size() floats with zeros in the
// padding. Gradients are reduce-scattered (rank r gets the sum of block r), scaled, and their norm
// taken over all shards; after the owner's update the blocks are all-gathered. With one rank nothing
// moves: the caller's buffer is the shard.
//
// Tensor and pipeline parallelism: the DP group is the ranks that hold the same part of the model.
// The gradient norm for clipping must be the whole model's, so the optional model-parallel group (the
// replica's TP × PP ranks) adds the parts' squared norms, with the runs that every TP rank holds a
// copy of (`replicated`, [begin, end) in the local buffer) counted on one rank only.
#pragma once
#include <cstddef>
#include <utility>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/core/memory.h"
#include "metapo/ops/ops.h"

namespace metapo {

class ZeroShards {
 public:
  // mp == nullptr (or one rank): the whole model is here, and `replicated` is ignored. Otherwise mp is
  // borrowed (must outlive this), and count_replicated says whether this rank counts the replicated
  // runs in the norm (TP rank 0).
  ZeroShards(size_t n, Comm& dp, Comm* mp = nullptr, const std::vector<std::pair<size_t, size_t>>& replicated = {},
             bool count_replicated = false);

  size_t n() const { return n_; }
  size_t padded_size() const { return shard_ * size_t(dp_.size()); }
  size_t shard_size() const { return shard_; }
  size_t shard_begin() const { return shard_ * size_t(dp_.rank()); }

  // Reduce-scatters grads[0, padded_size()) (grads is left undefined on more than one rank), scales
  // this rank's block by `scale` and returns the norm over all blocks (DP, TP and PP: every rank gets
  // the same). The block is then shard(grads).
  double reduce(float* grads, double scale);
  // This rank's reduced block: grads itself with one rank, else the reduce-scatter's output.
  float* shard(float* grads) { return dp_.size() == 1 ? grads : g_.data(); }

  // Sums g[0, padded_size()) over the ranks in two halves: reduce_scatter() returns this rank's block
  // of the sum (a caller may transform it in place), allgather_shard() gives every rank all blocks.
  float* reduce_scatter(float* g);
  void allgather_shard(float* g);

  // Every rank's block of buf[0, padded_size()) to all.
  void allgather(float* buf);

  // One data-parallel rank and the whole model here: nothing is communicated.
  bool local() const { return dp_.size() == 1 && !mp_; }
  // Where the scaling and the norm run (the CPU unless set): a device context only with one
  // data-parallel rank and the whole model here, where nothing is communicated.
  void set_context(const ops::Context& ctx);

 private:
  // Σ g² over this rank's reduced block, replicated runs skipped unless this rank counts them.
  double shard_sq_norm(const float* g) const;

  Comm& dp_;
  Comm* mp_;  // the model-parallel group; null: the whole model is here
  bool count_replicated_ = true;
  size_t n_, shard_;
  // Without count_replicated: the [begin, end) ranges of the block that count towards the norm (the
  // block minus the replicated runs), so every replicated element is counted exactly once.
  std::vector<std::pair<size_t, size_t>> norm_ranges_;
  std::vector<float> g_;  // this rank's reduced block
  ops::Context ctx_;      // where its arithmetic runs
  MemoryHandle g_mem_{Mem::Optimizer};
};

// L2 norm of a buffer, summed in double in a fixed order (the same on every rank and thread count).
double grad_norm(const float* g, size_t n, const ops::Context& ctx = {});

}  // namespace metapo
