// LlamaConfig <-> Hugging Face config.json, and the INI model presets in configs/presets/.
//
// config.json comes in several dialects (transformers v4.x writes rope_theta + rope_scaling, v5 writes
// rope_parameters; older Llama-3.1 files say "type" where newer ones say "rope_type"; eos_token_id may
// be a list). We accept all of them, and refuse anything that would change the math and that metapo
// does not implement (another activation, MLP biases, an unknown RoPE type) instead of silently
// training a different model.
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>

#include "metapo/model/config_json.h"
#include "metapo/core/error.h"
#include "metapo/model/config.h"

namespace metapo {

using json = nlohmann::json;

namespace {

// Absent and null both mean "not set": transformers writes null for unset optional fields.
const json* get(const json& j, const std::string& key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

int64_t as_int(const json& v, const std::string& source, const std::string& key) {
  if (v.is_number_integer()) return v.get<int64_t>();
  // Some exporters write 4096.0; accept a float only when it is exactly an integer.
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return int64_t(d);
  }
  fail(source, ": ", key, " must be an integer, got ", v.dump());
}

double as_num(const json& v, const std::string& source, const std::string& key) {
  MP_CHECK(v.is_number(), source, ": ", key, " must be a number, got ", v.dump());
  return v.get<double>();
}

bool as_bool(const json& v, const std::string& source, const std::string& key) {
  MP_CHECK(v.is_boolean(), source, ": ", key, " must be true or false, got ", v.dump());
  return v.get<bool>();
}

std::string as_str(const json& v, const std::string& source, const std::string& key) {
  MP_CHECK(v.is_string(), source, ": ", key, " must be a string, got ", v.dump());
  return v.get<std::string>();
}

int64_t req_int(const json& j, const std::string& key, const std::string& source) {
  const json* v = get(j, key);
  MP_CHECK(v, source, ": missing required key ", key);
  return as_int(*v, source, key);
}

// Reads a RoPE dict: `where` is "rope_scaling" (v4) or "rope_parameters" (v5) for error messages.
RopeScaling parse_rope(const json& r, const std::string& where, const std::string& source) {
  MP_CHECK(r.is_object(), source, ": ", where, " must be an object or null, got ", r.dump());
  const json* t = get(r, "rope_type");
  if (!t) t = get(r, "type");  // the pre-4.45 spelling
  RopeScaling s;
  const std::string type = t ? as_str(*t, source, where + ".rope_type") : "default";
  auto num = [&](const char* key) {
    const json* v = get(r, key);
    MP_CHECK(v, source, ": ", where, " of type ", type, " needs ", key);
    return as_num(*v, source, where + "." + key);
  };
  if (type == "default") {
    s.type = "none";
  } else if (type == "linear") {
    s.type = "linear";
    s.factor = num("factor");
  } else if (type == "llama3") {
    s.type = "llama3";
    s.factor = num("factor");
    s.low_freq_factor = num("low_freq_factor");
    s.high_freq_factor = num("high_freq_factor");
    const json* o = get(r, "original_max_position_embeddings");
    MP_CHECK(o, source, ": ", where, " of type llama3 needs original_max_position_embeddings");
    s.original_max_position_embeddings =
        as_int(*o, source, where + ".original_max_position_embeddings");
  } else {
    fail(source, ": ", where, ".rope_type \"", type,
         "\" is not supported (metapo implements default, linear and llama3)");
  }
  return s;
}

}  // namespace

void LlamaConfig::validate(const std::string& source) const {
  MP_CHECK(model_type == "llama" || model_type == "mistral" || model_type == "qwen2", source,
           ": model_type \"", model_type, "\" is not supported (metapo trains llama, mistral, qwen2)");
  auto positive = [&](const char* name, int64_t v) {
    MP_CHECK(v > 0, source, ": ", name, " must be positive, got ", v);
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("intermediate_size", intermediate_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("num_key_value_heads", num_key_value_heads);
  positive("head_dim", head_dim);
  positive("max_position_embeddings", max_position_embeddings);
  MP_CHECK(num_attention_heads % num_key_value_heads == 0, source, ": num_attention_heads (",
           num_attention_heads, ") is not divisible by num_key_value_heads (", num_key_value_heads,
           ")");
  // transformers' Llama with attention_bias has q, k, v *and* o_proj biases; metapo's biases are
  // Qwen2's (q, k, v only), so a Llama with them would be read as another model.
  MP_CHECK(!attention_bias || model_type == "qwen2", source, ": attention_bias true is not supported for model_type ",
           model_type, " (transformers then adds q, k, v and o_proj biases; metapo has Qwen2's q/k/v biases only)");
  MP_CHECK(sliding_window >= 0, source, ": sliding_window must be >= 0, got ", sliding_window);
  MP_CHECK(rms_norm_eps > 0, source, ": rms_norm_eps must be positive, got ", rms_norm_eps);
  MP_CHECK(rope_theta > 0, source, ": rope_theta must be positive, got ", rope_theta);
  const RopeScaling& r = rope_scaling;
  MP_CHECK(r.type == "none" || r.type == "linear" || r.type == "llama3", source,
           ": rope_scaling type \"", r.type, "\" is not supported (none, linear, llama3)");
  if (r.type != "none") {
    MP_CHECK(r.factor > 0, source, ": rope_scaling factor must be positive, got ", r.factor);
  }
  if (r.type == "llama3") {
    // The llama3 ramp divides by (high - low): equal factors would make every frequency NaN.
    MP_CHECK(r.high_freq_factor > r.low_freq_factor, source,
             ": rope_scaling high_freq_factor (", r.high_freq_factor,
             ") must be greater than low_freq_factor (", r.low_freq_factor, ")");
    MP_CHECK(r.original_max_position_embeddings > 0, source,
             ": rope_scaling original_max_position_embeddings must be positive, got ",
             r.original_max_position_embeddings);
  }
  // The trainer appends these ids to sequences; an id outside the vocabulary would index past the
  // embedding table.
  MP_CHECK(bos_token_id >= 0 && bos_token_id < vocab_size, source, ": bos_token_id (", bos_token_id,
           ") is outside the vocabulary [0, ", vocab_size, ")");
  MP_CHECK(eos_token_id >= 0 && eos_token_id < vocab_size, source, ": eos_token_id (", eos_token_id,
           ") is outside the vocabulary [0, ", vocab_size, ")");
}

LlamaConfig config_from_json(const json& j, const std::string& source) {
  MP_CHECK(j.is_object(), source, ": expected a JSON object, got ", j.type_name());
  LlamaConfig c;
  const json* mt = get(j, "model_type");
  MP_CHECK(mt, source, ": missing required key model_type");
  c.model_type = as_str(*mt, source, "model_type");
  MP_CHECK(c.model_type == "llama" || c.model_type == "mistral" || c.model_type == "qwen2", source,
           ": model_type \"", c.model_type,
           "\" is not supported (metapo trains llama, mistral, qwen2)");

  c.vocab_size = req_int(j, "vocab_size", source);
  c.hidden_size = req_int(j, "hidden_size", source);
  c.intermediate_size = req_int(j, "intermediate_size", source);
  c.num_hidden_layers = req_int(j, "num_hidden_layers", source);
  c.num_attention_heads = req_int(j, "num_attention_heads", source);
  MP_CHECK(c.num_attention_heads > 0, source, ": num_attention_heads must be positive, got ",
           c.num_attention_heads);  // checked here because head_dim divides by it
  const json* v;
  c.num_key_value_heads = (v = get(j, "num_key_value_heads"))
                              ? as_int(*v, source, "num_key_value_heads")
                              : c.num_attention_heads;
  // Explicit head_dim (e.g. Mistral-Nemo) may differ from hidden / heads; HF floors the default.
  c.head_dim = (v = get(j, "head_dim")) ? as_int(*v, source, "head_dim")
                                        : c.hidden_size / c.num_attention_heads;
  if ((v = get(j, "max_position_embeddings")))
    c.max_position_embeddings = as_int(*v, source, "max_position_embeddings");
  if ((v = get(j, "rms_norm_eps"))) c.rms_norm_eps = as_num(*v, source, "rms_norm_eps");

  // RoPE: v5 keeps theta and the scaling in rope_parameters, v4 uses rope_theta + rope_scaling.
  if ((v = get(j, "rope_theta"))) c.rope_theta = as_num(*v, source, "rope_theta");
  if (const json* rp = get(j, "rope_parameters")) {
    c.rope_scaling = parse_rope(*rp, "rope_parameters", source);
    if ((v = get(*rp, "rope_theta")))
      c.rope_theta = as_num(*v, source, "rope_parameters.rope_theta");
  } else if (const json* rs = get(j, "rope_scaling")) {
    c.rope_scaling = parse_rope(*rs, "rope_scaling", source);
  }

  // Features metapo does not implement: refuse rather than train a different network.
  if ((v = get(j, "hidden_act"))) {
    const std::string act = as_str(*v, source, "hidden_act");
    MP_CHECK(act == "silu", source, ": hidden_act \"", act, "\" is not supported (only silu)");
  }
  if ((v = get(j, "mlp_bias")))
    MP_CHECK(!as_bool(*v, source, "mlp_bias"), source, ": mlp_bias true is not supported");

  // Qwen2 always has q/k/v biases (its config has no switch); Mistral never has them.
  if (c.model_type == "qwen2") {
    c.attention_bias = true;
  } else if (c.model_type == "llama" && (v = get(j, "attention_bias"))) {
    c.attention_bias = as_bool(*v, source, "attention_bias");
  }
  // HF class default is false for all three families.
  if ((v = get(j, "tie_word_embeddings")))
    c.tie_word_embeddings = as_bool(*v, source, "tie_word_embeddings");

  // Qwen2 carries a sliding_window value even when it is switched off by use_sliding_window.
  bool use_sw = c.model_type == "mistral";
  if (c.model_type == "qwen2" && (v = get(j, "use_sliding_window")))
    use_sw = as_bool(*v, source, "use_sliding_window");
  if (use_sw && (v = get(j, "sliding_window"))) c.sliding_window = as_int(*v, source, "sliding_window");

  if ((v = get(j, "bos_token_id"))) c.bos_token_id = as_int(*v, source, "bos_token_id");
  if ((v = get(j, "eos_token_id"))) {
    if (v->is_array()) {  // Llama-3-Instruct lists several stop tokens; the first is the EOS
      MP_CHECK(!v->empty(), source, ": eos_token_id is an empty list");
      c.eos_token_id = as_int((*v)[0], source, "eos_token_id[0]");
    } else {
      c.eos_token_id = as_int(*v, source, "eos_token_id");
    }
  }
  if ((v = get(j, "torch_dtype")) || (v = get(j, "dtype")))  // v5 renamed torch_dtype to dtype
    c.torch_dtype = as_str(*v, source, "torch_dtype");

  c.validate(source);
  return c;
}

json config_to_json(const LlamaConfig& c) {
  static const char* arch[][2] = {{"llama", "LlamaForCausalLM"},
                                  {"mistral", "MistralForCausalLM"},
                                  {"qwen2", "Qwen2ForCausalLM"}};
  std::string architecture;
  for (auto& a : arch)
    if (c.model_type == a[0]) architecture = a[1];
  MP_CHECK(!architecture.empty(), "config_to_json: model_type \"", c.model_type,
           "\" is not supported");

  json j;
  j["architectures"] = json::array({architecture});
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  // v4 reads rope_theta + rope_scaling directly; v5 converts them into rope_parameters on load.
  const RopeScaling& r = c.rope_scaling;
  if (r.type == "llama3") {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", r.factor},
                         {"low_freq_factor", r.low_freq_factor},
                         {"high_freq_factor", r.high_freq_factor},
                         {"original_max_position_embeddings", r.original_max_position_embeddings}};
  } else if (r.type == "linear") {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", r.factor}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  if (c.model_type == "llama") {
    j["attention_bias"] = c.attention_bias;
    j["mlp_bias"] = false;
  }
  if (c.model_type == "mistral") {
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  }
  if (c.model_type == "qwen2") {
    // Qwen2 slides only in layers >= max_window_layers; 0 makes the window apply everywhere, as
    // metapo's single sliding_window means.
    j["use_sliding_window"] = c.sliding_window > 0;
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
    j["max_window_layers"] = c.sliding_window > 0 ? int64_t(0) : c.num_hidden_layers;
  }
  j["hidden_act"] = "silu";
  j["initializer_range"] = 0.02;
  j["attention_dropout"] = 0.0;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["bos_token_id"] = c.bos_token_id;
  j["eos_token_id"] = c.eos_token_id;
  j["torch_dtype"] = c.torch_dtype;
  j["use_cache"] = true;
  return j;
}

// ---- INI presets ----
// A preset is the config.json keys under [model], one "key = value" per line ('#' or ';' comments).
// Dotted keys build nested objects (rope_scaling.rope_type = llama3), so the INI is turned into the
// same JSON and parsed by config_from_json: one set of rules and error messages for both.

namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// Types a value the way JSON would: bool, null, integer, number, else string. A malformed number
// ("12O") stays a string, so config_from_json reports "<key> must be an integer, got "12O"".
json ini_value(const std::string& s) {
  if (s == "true") return true;
  if (s == "false") return false;
  if (s.empty() || s == "null") return nullptr;
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') return s.substr(1, s.size() - 2);
  char* end = nullptr;
  errno = 0;
  long long i = std::strtoll(s.c_str(), &end, 10);
  if (*end == '\0' && errno == 0) return int64_t(i);
  double d = std::strtod(s.c_str(), &end);
  if (*end == '\0') return d;
  return s;
}

}  // namespace

LlamaConfig config_from_ini(const std::string& path) {
  std::ifstream in(path);
  MP_CHECK(in, path, ": cannot open model preset");
  json j = json::object();
  std::set<std::string> seen;
  std::string line, section;
  bool saw_model = false;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    line = trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[') {
      MP_CHECK(line.back() == ']', path, ":", lineno, ": bad section header \"", line, "\"");
      section = trim(line.substr(1, line.size() - 2));
      saw_model |= section == "model";
      continue;
    }
    if (section != "model") continue;  // other sections belong to other subcommands
    size_t eq = line.find('=');
    MP_CHECK(eq != std::string::npos, path, ":", lineno, ": expected key = value, got \"", line,
             "\"");
    const std::string key = trim(line.substr(0, eq));
    MP_CHECK(!key.empty(), path, ":", lineno, ": empty key");
    MP_CHECK(seen.insert(key).second, path, ":", lineno, ": key ", key, " is set twice");
    const json value = ini_value(trim(line.substr(eq + 1)));
    size_t dot = key.find('.');
    if (dot == std::string::npos) {
      j[key] = value;
    } else {
      json& obj = j[key.substr(0, dot)];
      MP_CHECK(obj.is_null() || obj.is_object(), path, ":", lineno, ": key ", key,
               " nests under a key that has a plain value");
      obj[key.substr(dot + 1)] = value;
    }
  }
  MP_CHECK(saw_model, path, ": no [model] section");
  return config_from_json(j, path);
}

}  // namespace metapo
