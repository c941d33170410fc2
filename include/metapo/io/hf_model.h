// Hugging Face model directories: config.json + model.safetensors (or sharded
// model-0000x-of-0000y.safetensors listed by model.safetensors.index.json), in HF tensor names.
// This is how models enter metapo (`--init-from`) and leave it (`export`).
#pragma once
#include <string>
#include <vector>

#include "metapo/model/config.h"

namespace metapo {

struct HfModel {
  LlamaConfig config;
  std::vector<float> params;  // the flat buffer, in ParamLayout(config) order
};

// Reads and validates dir/config.json.
LlamaConfig load_hf_config(const std::string& dir);

// Reads config.json and every tensor of ParamLayout(config) (any of F32/BF16/F16/F64, converted to
// fp32). Every tensor must be present with exactly its shape; extra tensors are errors, except
// lm_head.weight in a tied model and rotary_emb.inv_freq buffers, which transformers may write.
HfModel load_hf_model(const std::string& dir);

// Writes config.json (torch_dtype = dtype), generation_config.json and model.safetensors, with dtype
// float32, bfloat16 or float16. Builds dir + ".partial" and renames it to dir; an existing `dir` is
// replaced only when it holds a config.json (a model directory), never any other directory.
void save_hf_model(const std::string& dir, const LlamaConfig& c, const std::vector<float>& params,
                   const std::string& dtype = "float32");

}  // namespace metapo
