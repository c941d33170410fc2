// Rotary inverse frequencies of a model configuration.
#pragma once
#include <vector>

#include "metapo/model/config.h"

namespace metapo {

// inv_freq[i] = theta^(-2i/D), i < D/2, then rope_scaling applied (llama3: piecewise rescaling of
// long wavelengths as in Llama 3.1; linear: divided by factor). Computed in double.
std::vector<double> rope_inv_freq(const LlamaConfig& c);

}  // namespace metapo
