#pragma once
#include <cstdint>
#include <vector>

#include "metapo/model/config.h"

namespace metapo {

// Random parameters as transformers initializes a Llama: matrices ~ N(0, std^2) (std = 0.02, HF's
// initializer_range), norm weights 1, biases 0. Tensor k draws from Philox(seed, k, Init), so the
// result is the same on any machine and thread count.
std::vector<float> init_params(const LlamaConfig& c, uint64_t seed, double std = 0.02);

}  // namespace metapo
