// LlamaConfig to and from a Hugging Face config.json object.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "metapo/model/config.h"

namespace metapo {

// Parses a Hugging Face config.json object; `source` names the file in error messages.
LlamaConfig config_from_json(const nlohmann::json& j, const std::string& source);
// The config.json that transformers loads (architectures, model_type, shapes, rope, dtype).
nlohmann::json config_to_json(const LlamaConfig& c);

}  // namespace metapo
