// The model shapes of the GPU test and benchmark, set here because those programs have no INI reader:
// tiny and bench-28m are configs/presets/tiny.ini and bench-28m.ini, 1.3b is configs/presets/gpu-1.3b.ini.
#pragma once
#include <string>

#include "metapo/core/error.h"
#include "metapo/model/config.h"

namespace metapo {

inline LlamaConfig gpu_shape(const std::string& name) {
  LlamaConfig c;
  c.rms_norm_eps = 1e-5, c.rope_theta = 10000;
  auto set = [&c](int64_t V, int64_t C, int64_t I, int64_t L, int64_t H, int64_t Hkv, int64_t D, int64_t max_pos) {
    c.vocab_size = V, c.hidden_size = C, c.intermediate_size = I, c.num_hidden_layers = L;
    c.num_attention_heads = H, c.num_key_value_heads = Hkv, c.head_dim = D, c.max_position_embeddings = max_pos;
  };
  if (name == "tiny")
    set(64, 128, 352, 4, 4, 2, 32, 512);
  else if (name == "bench-28m")
    set(8192, 512, 1408, 6, 8, 8, 64, 2048);
  else if (name == "1.3b")
    set(32000, 2048, 5632, 24, 16, 16, 128, 4096);
  else
    fail("--shape ", name, ": unknown (tiny, bench-28m, 1.3b)");
  return c;
}

}  // namespace metapo
