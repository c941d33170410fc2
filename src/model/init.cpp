#include "metapo/model/init.h"

#include "metapo/core/rng.h"
#include "metapo/model/layout.h"

namespace metapo {

std::vector<float> init_params(const LlamaConfig& c, uint64_t seed, double std) {
  const ParamLayout lay(c);
  std::vector<float> p(lay.total(), 0.0f);
  for (size_t k = 0; k < lay.tensors().size(); ++k) {
    const TensorEntry& e = lay.tensors()[k];
    float* dst = p.data() + e.offset;
    if (e.shape.size() == 1) {
      // Vectors: norm weights start at 1, biases at 0.
      const float v = e.name.find("norm") != std::string::npos ? 1.0f : 0.0f;
      for (size_t i = 0; i < e.numel; ++i) dst[i] = v;
      continue;
    }
    Philox rng = make_rng(seed, k, 0, RngPurpose::Init);
    for (size_t i = 0; i < e.numel; ++i) dst[i] = float(std * rng.normal());
  }
  return p;
}

}  // namespace metapo
