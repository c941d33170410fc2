// AdamW over the flat parameter buffer, the learning-rate schedule and global-norm clipping.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "metapo/core/memory.h"
#include "metapo/model/layout.h"
#include "metapo/ops/ops.h"
#include "metapo/parallel/zero.h"  // grad_norm

namespace metapo {

struct AdamWConfig {
  double lr = 1e-4;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;  // decoupled; applied to matrices only (not norm weights or biases)
};

// Linear warmup to the peak, then cosine decay to min_lr_ratio * peak at total_steps
// (schedule "cosine"), or constant after warmup ("constant"), or linear decay to 0 ("linear", TRL's
// default). step counts from 0.
struct LrSchedule {
  std::string kind = "cosine";
  double peak = 1e-4;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  double min_lr_ratio = 0.1;
  double at(int64_t step) const;
};

class AdamW {
 public:
  AdamW(const ParamLayout& lay, const AdamWConfig& cfg);
  // State for the flat range [begin, end) of the layout only (end is clipped to the layout's size; an
  // empty range is allowed): a ZeRO-1 shard. step() then takes pointers to the range's first element.
  AdamW(const ParamLayout& lay, const AdamWConfig& cfg, size_t begin, size_t end);
  // One update with learning rate lr; the step counter (for bias correction) advances.
  void step(float* params, const float* grads, double lr);
  size_t size() const { return m_.size(); }
  int64_t steps_taken() const { return t_; }
  void set_steps_taken(int64_t t) { t_ = t; }  // resuming from a checkpoint
  const AdamWConfig& config() const { return cfg_; }
  const ops::Context& context() const { return ctx_; }  // where the update runs
  // The moments as checkpoints read and write them (host memory). On a device they are copies:
  // state_to_host refreshes them, state_to_device makes them the state again.
  std::vector<float>& exp_avg() { return m_; }
  const std::vector<float>& exp_avg() const { return m_; }
  std::vector<float>& exp_avg_sq() { return v_; }
  const std::vector<float>& exp_avg_sq() const { return v_; }
  // The second moment where the update keeps it (the device copy on a device).
  const float* exp_avg_sq_data() const { return dev_ ? dv_.data() : v_.data(); }

  // Moves the update onto ctx's device: the moments and the mask are copied there and step() then
  // takes device pointers. ctx is borrowed and must outlive the optimizer.
  void place_on_device(const ops::Context& ctx);
  bool on_device() const { return dev_; }
  void state_to_host();    // the device moments into exp_avg() / exp_avg_sq(); nothing off a device
  void state_to_device();  // exp_avg() / exp_avg_sq() onto the device; nothing off a device

 private:
  AdamWConfig cfg_;
  std::vector<uint8_t> decay_;  // per element: 1 where weight decay applies
  std::vector<float> m_, v_;
  int64_t t_ = 0;
  MemoryHandle mem_{Mem::Optimizer};  // the moments and the mask
  ops::Context ctx_;
  bool dev_ = false;
  ops::DeviceArray<uint8_t> ddecay_;
  ops::DeviceArray<float> dm_, dv_;
};

// Scales grads by max_norm / norm when norm > max_norm (max_norm <= 0: never). Returns the factor.
double clip_grads(float* grads, size_t n, double norm, double max_norm, const ops::Context& ctx = {});

}  // namespace metapo
