#include "metapo/train/optimizer.h"

#include <algorithm>
#include <cmath>

#include "metapo/core/error.h"
#include "metapo/ops/ops.h"

namespace metapo {

double LrSchedule::at(int64_t step) const {
  if (warmup_steps > 0 && step < warmup_steps) return peak * double(step + 1) / double(warmup_steps);
  const double span = double(std::max<int64_t>(1, total_steps - warmup_steps));
  const double prog = std::min(1.0, double(step - warmup_steps) / span);
  if (kind == "constant") return peak;
  if (kind == "linear") return peak * (1.0 - prog);
  MP_CHECK(kind == "cosine", "--lr-schedule ", kind, ": unknown (valid: cosine, linear, constant)");
  return peak * (min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + std::cos(M_PI * prog)));
}

AdamW::AdamW(const ParamLayout& lay, const AdamWConfig& cfg) : AdamW(lay, cfg, 0, lay.total()) {}

AdamW::AdamW(const ParamLayout& lay, const AdamWConfig& cfg, size_t begin, size_t end) : cfg_(cfg) {
  end = std::min(end, lay.total());
  const size_t n = end > begin ? end - begin : 0;
  decay_.assign(n, 0), m_.assign(n, 0.0f), v_.assign(n, 0.0f);
  mem_.set(int64_t(decay_.capacity() + (m_.capacity() + v_.capacity()) * sizeof(float)));
  // Weight decay on matrices only, as Hugging Face's Trainer does (norm weights and biases are 1-D).
  for (const TensorEntry& e : lay.tensors()) {
    if (e.shape.size() < 2) continue;
    const size_t b = std::max(begin, e.offset), z = std::min(begin + n, e.offset + e.numel);
    for (size_t i = b; i < z; ++i) decay_[i - begin] = 1;
  }
}

void AdamW::step(float* p, const float* g, double lr) {
  ++t_;
  const double bc1 = 1.0 - std::pow(cfg_.beta1, double(t_)), bc2 = 1.0 - std::pow(cfg_.beta2, double(t_));
  const float b1 = float(cfg_.beta1), b2 = float(cfg_.beta2);
  const float step_size = float(lr / bc1), inv_bc2_sqrt = float(1.0 / std::sqrt(bc2));
  const float eps = float(cfg_.eps), wd = float(lr * cfg_.weight_decay);
  // Decoupled decay (AdamW) where decay_ is set, before the Adam update.
  float* m = dev_ ? dm_.data() : m_.data();
  float* v = dev_ ? dv_.data() : v_.data();
  const uint8_t* decay = dev_ ? ddecay_.data() : decay_.data();
  ops::adamw_step(ctx_, ops::AdamW{p, g, m, v, decay, m_.size(), b1, b2, step_size, inv_bc2_sqrt, eps, wd});
}

void AdamW::place_on_device(const ops::Context& ctx) {
  ctx_ = ctx, dev_ = true;
  ddecay_ = ops::DeviceArray<uint8_t>(ctx.device, Mem::Optimizer);
  dm_ = ops::DeviceArray<float>(ctx.device, Mem::Optimizer);
  dv_ = ops::DeviceArray<float>(ctx.device, Mem::Optimizer);
  ddecay_.resize_for_overwrite(decay_.size()), dm_.resize_for_overwrite(m_.size()), dv_.resize_for_overwrite(v_.size());
  ops::to_device(ctx_, ddecay_.data(), decay_.data(), decay_.size());
  state_to_device();
}

void AdamW::state_to_host() {
  if (!dev_) return;
  ops::to_host(ctx_, m_.data(), dm_.data(), m_.size() * sizeof(float));
  ops::to_host(ctx_, v_.data(), dv_.data(), v_.size() * sizeof(float));
}

void AdamW::state_to_device() {
  if (!dev_) return;
  ops::to_device(ctx_, dm_.data(), m_.data(), m_.size() * sizeof(float));
  ops::to_device(ctx_, dv_.data(), v_.data(), v_.size() * sizeof(float));
}

double clip_grads(float* g, size_t n, double norm, double max_norm, const ops::Context& ctx) {
  if (max_norm <= 0 || !(norm > max_norm)) return 1.0;
  const float f = float(max_norm / (norm + 1e-6));
  ops::scale(ctx, g, f, n);
  return f;
}

}  // namespace metapo
