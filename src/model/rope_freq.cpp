#include "metapo/model/rope_freq.h"

#include <cmath>

#include "metapo/core/error.h"

namespace metapo {

std::vector<double> rope_inv_freq(const LlamaConfig& c) {
  const int64_t D = c.head_dim;
  std::vector<double> f(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) f[i] = 1.0 / std::pow(c.rope_theta, double(2 * i) / double(D));
  const RopeScaling& s = c.rope_scaling;
  if (s.type == "linear") {
    for (double& v : f) v /= s.factor;
  } else if (s.type == "llama3") {
    // Llama 3.1: wavelengths longer than old_ctx/low_freq_factor are slowed by `factor`, those
    // shorter than old_ctx/high_freq_factor are kept, and the band between is interpolated.
    const double old_ctx = double(s.original_max_position_embeddings);
    const double low_wl = old_ctx / s.low_freq_factor, high_wl = old_ctx / s.high_freq_factor;
    for (double& v : f) {
      const double wl = 2.0 * M_PI / v;
      if (wl > low_wl) {
        v /= s.factor;
      } else if (wl >= high_wl) {
        const double smooth = (old_ctx / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        v = (1.0 - smooth) * v / s.factor + smooth * v;
      }
    }
  } else {
    MP_CHECK(s.type == "none", "rope_scaling type '", s.type, "' is not supported");
  }
  return f;
}

}  // namespace metapo
