// Llama-family model configuration, read from and written to Hugging Face config.json (config_json.h
// has the JSON side, so that the model compiles without a JSON library: tests/gpu builds it alone).
#pragma once
#include <cstdint>
#include <string>

namespace metapo {

// rope_scaling from config.json. "llama3" rescales the inverse frequencies piecewise (Llama-3.1);
// "none" leaves them as theta^(-2i/d).
struct RopeScaling {
  std::string type = "none";  // none | llama3 | linear
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  std::string model_type = "llama";  // llama | mistral | qwen2
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // == num_attention_heads for MHA, 1 for MQA
  int64_t head_dim = 0;             // from config.json when given, else hidden / heads
  int64_t max_position_embeddings = 2048;
  int64_t sliding_window = 0;  // 0: none (Mistral's is refused for longer sequences, not emulated)
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool attention_bias = false;  // q/k/v biases (always true for qwen2)
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  std::string torch_dtype = "float32";

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  int64_t qkv_dim() const { return q_dim() + 2 * kv_dim(); }

  // Throws metapo::Error naming `source` and the offending field.
  void validate(const std::string& source) const;
};

// Reads the [model] section of an INI preset (configs/presets/*.ini): config.json key names, one
// `key = value` per line; dotted keys nest (rope_scaling.rope_type = llama3).
LlamaConfig config_from_ini(const std::string& path);

}  // namespace metapo
