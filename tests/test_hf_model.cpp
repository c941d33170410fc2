// Hugging Face model directories (save/load round trips, sharded checkpoints, damaged directories)
// and the config readers (config.json dialects, INI presets).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "metapo/model/config_json.h"
#include "metapo/core/error.h"
#include "metapo/core/half.h"
#include "metapo/io/hf_model.h"
#include "metapo/model/tp_layout.h"
#include "metapo/io/safetensors.h"
#include "metapo/model/layout.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace metapo;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("metapo_hf_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

template <typename F>
void expect_error(F f, std::vector<std::string> parts) {
  try {
    f();
    FAIL() << "no metapo::Error thrown";
  } catch (const Error& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "message \"" << e.what() << "\" lacks \"" << p << "\"";
  }
}

// Llama-3.1 style: GQA, untied, llama3 RoPE scaling, head_dim (16) != hidden / heads (12).
LlamaConfig llama_gqa() {
  LlamaConfig c;
  c.model_type = "llama";
  c.vocab_size = 50;
  c.hidden_size = 48;
  c.intermediate_size = 80;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 128};
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  return c;
}

// Qwen2 style: tied head, q/k/v biases, MQA.
LlamaConfig qwen2_tied() {
  LlamaConfig c;
  c.model_type = "qwen2";
  c.vocab_size = 40;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 1;
  c.head_dim = 8;
  c.max_position_embeddings = 128;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = 1e6;
  c.attention_bias = true;
  c.tie_word_embeddings = true;
  c.bos_token_id = 3;
  c.eos_token_id = 4;
  return c;
}

void expect_config_eq(const LlamaConfig& a, const LlamaConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
  EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
  EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
  EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings,
            b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_id, b.eos_token_id);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
}

std::vector<float> random_params(const LlamaConfig& c, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> p(ParamLayout(c).total());
  for (auto& x : p) x = dist(gen);
  return p;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

// The layout's tensors as writer input.
std::vector<SafetensorsTensor> tensors_of(const LlamaConfig& c, const std::vector<float>& p) {
  const ParamLayout lay(c);  // must outlive the loop: tensors() is a reference into it
  std::vector<SafetensorsTensor> t;
  for (const auto& e : lay.tensors()) t.push_back({e.name, e.shape, p.data() + e.offset});
  return t;
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }
std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Saves a small valid llama model into dir and returns its parameters.
std::vector<float> save_llama(const std::string& dir) {
  auto p = random_params(llama_gqa(), 7);
  save_hf_model(dir, llama_gqa(), p);
  return p;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Round trips

TEST(HfModel, LlamaGqaUntiedLlama3RoundTrip) {
  TempDir tmp;
  const LlamaConfig c = llama_gqa();
  ASSERT_NE(c.head_dim, c.hidden_size / c.num_attention_heads);
  const auto p = random_params(c, 1);
  const std::string dir = tmp / "nested/out/model";  // parents are created
  save_hf_model(dir, c, p);
  EXPECT_TRUE(fs::exists(dir + "/config.json"));
  EXPECT_TRUE(fs::exists(dir + "/generation_config.json"));
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(dir + ".partial"));

  HfModel m = load_hf_model(dir);
  expect_config_eq(m.config, c);
  EXPECT_TRUE(same_bits(m.params, p));
  // Exactly the layout's tensors, untied head included, as F32.
  SafetensorsReader r(dir + "/model.safetensors");
  const ParamLayout lay(c);
  EXPECT_EQ(r.tensors().size(), lay.tensors().size());
  EXPECT_NE(r.find("lm_head.weight"), nullptr);
  EXPECT_EQ(r.find("model.layers.1.self_attn.k_proj.weight")->shape,
            (std::vector<int64_t>{32, 48}));
  EXPECT_EQ(r.find("model.norm.weight")->dtype, "F32");
}

TEST(HfModel, Qwen2TiedBiasRoundTripBF16) {
  TempDir tmp;
  const LlamaConfig c = qwen2_tied();
  auto p = random_params(c, 2);
  for (auto& x : p) x = bf16_to_f32(f32_to_bf16(x));  // representable, so the round trip is exact
  save_hf_model(tmp / "q", c, p, "bfloat16");

  HfModel m = load_hf_model(tmp / "q");
  LlamaConfig want = c;
  want.torch_dtype = "bfloat16";
  expect_config_eq(m.config, want);
  EXPECT_TRUE(same_bits(m.params, p));
  SafetensorsReader r(tmp / "q/model.safetensors");
  EXPECT_EQ(r.find("lm_head.weight"), nullptr);  // tied: transformers does not save it either
  EXPECT_EQ(r.find("model.layers.0.self_attn.q_proj.bias")->shape, (std::vector<int64_t>{32}));
  EXPECT_EQ(r.find("model.layers.0.self_attn.v_proj.bias")->dtype, "BF16");
}

TEST(HfModel, ConfigJsonIsWhatTransformersLoads) {
  TempDir tmp;
  save_hf_model(tmp / "m", llama_gqa(), random_params(llama_gqa(), 3), "float16");
  json j = read_json(tmp / "m/config.json");
  EXPECT_EQ(j["architectures"], json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j["model_type"], "llama");
  EXPECT_EQ(j["head_dim"], 16);
  EXPECT_EQ(j["num_key_value_heads"], 2);
  EXPECT_EQ(j["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(j["rope_scaling"]["original_max_position_embeddings"], 128);
  EXPECT_EQ(j["attention_bias"], false);
  EXPECT_EQ(j["mlp_bias"], false);
  EXPECT_EQ(j["hidden_act"], "silu");
  EXPECT_EQ(j["torch_dtype"], "float16");
  EXPECT_EQ(j["use_cache"], true);
  json g = read_json(tmp / "m/generation_config.json");
  EXPECT_EQ(g["bos_token_id"], 1);
  EXPECT_EQ(g["eos_token_id"], 2);
  EXPECT_EQ(SafetensorsReader(tmp / "m/model.safetensors").find("model.norm.weight")->dtype, "F16");

  LlamaConfig q = qwen2_tied();
  json jq = config_to_json(q);
  EXPECT_EQ(jq["architectures"], json::array({"Qwen2ForCausalLM"}));
  EXPECT_TRUE(jq["rope_scaling"].is_null());
  EXPECT_EQ(jq["use_sliding_window"], false);
  q.model_type = "mistral";
  q.attention_bias = false;
  q.sliding_window = 64;
  json jm = config_to_json(q);
  EXPECT_EQ(jm["architectures"], json::array({"MistralForCausalLM"}));
  EXPECT_EQ(jm["sliding_window"], 64);
  expect_config_eq(config_from_json(jm, "mistral"), q);
}

TEST(HfModel, ShardedIndex) {
  TempDir tmp;
  const LlamaConfig c = llama_gqa();
  const auto p = random_params(c, 4);
  save_hf_model(tmp / "m", c, p);  // for config.json
  fs::remove(tmp / "m/model.safetensors");
  auto all = tensors_of(c, p);
  const size_t half = all.size() / 2;
  std::vector<SafetensorsTensor> a(all.begin(), all.begin() + half), b(all.begin() + half, all.end());
  write_safetensors(tmp / "m/model-00001-of-00002.safetensors", a, "F32");
  write_safetensors(tmp / "m/model-00002-of-00002.safetensors", b, "BF16");
  json index = {{"metadata", {{"total_size", p.size() * 4}}}, {"weight_map", json::object()}};
  for (const auto& t : a) index["weight_map"][t.name] = "model-00001-of-00002.safetensors";
  for (const auto& t : b) index["weight_map"][t.name] = "model-00002-of-00002.safetensors";
  write_text(tmp / "m/model.safetensors.index.json", index.dump(2));

  HfModel m = load_hf_model(tmp / "m");
  const ParamLayout lay(c);
  for (size_t i = 0; i < all.size(); ++i) {
    const TensorEntry& e = lay.tensors()[i];
    for (size_t k = 0; k < e.numel; ++k) {
      const float x = p[e.offset + k], want = i < half ? x : bf16_to_f32(f32_to_bf16(x));
      ASSERT_EQ(m.params[e.offset + k], want) << e.name;
    }
  }

  // An index that points a tensor at a shard without it.
  index["weight_map"][b[0].name] = "model-00001-of-00002.safetensors";
  write_text(tmp / "m/model.safetensors.index.json", index.dump(2));
  expect_error([&] { load_hf_model(tmp / "m"); },
               {"model.safetensors.index.json", b[0].name, "model-00001-of-00002"});
  // An index naming a shard that is not there.
  index["weight_map"][b[0].name] = "model-00009-of-00009.safetensors";
  write_text(tmp / "m/model.safetensors.index.json", index.dump(2));
  expect_error([&] { load_hf_model(tmp / "m"); }, {"model-00009-of-00009.safetensors", "no such file"});
}

TEST(HfModel, TiedLmHeadAndInvFreqAreIgnored) {
  TempDir tmp;
  const LlamaConfig c = qwen2_tied();
  const auto p = random_params(c, 5);
  save_hf_model(tmp / "q", c, p);
  auto t = tensors_of(c, p);
  std::vector<float> inv_freq(c.head_dim / 2, 1.0f);
  t.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}, p.data()});
  t.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", {c.head_dim / 2}, inv_freq.data()});
  write_safetensors(tmp / "q/model.safetensors", t, "F32");
  EXPECT_TRUE(same_bits(load_hf_model(tmp / "q").params, p));

  // Any other unknown tensor is an error (here an MLP bias, which these models do not have).
  t.push_back({"model.layers.0.mlp.up_proj.bias", {c.intermediate_size}, p.data()});
  write_safetensors(tmp / "q/model.safetensors", t, "F32");
  expect_error([&] { load_hf_model(tmp / "q"); },
               {"model.safetensors", "model.layers.0.mlp.up_proj.bias", "not part of"});
}

TEST(HfModel, SaveReplacesModelDirButNothingElse) {
  TempDir tmp;
  const LlamaConfig c = llama_gqa();
  save_hf_model(tmp / "m", c, random_params(c, 6));
  const auto p2 = random_params(c, 7);
  save_hf_model(tmp / "m/", c, p2);  // trailing slash: still replaces m, not m/.partial
  EXPECT_TRUE(same_bits(load_hf_model(tmp / "m").params, p2));
  EXPECT_FALSE(fs::exists(tmp / "m.partial"));
  EXPECT_FALSE(fs::exists(tmp / "m.old"));
  EXPECT_FALSE(fs::exists(tmp / "m/.partial"));

  fs::create_directories(tmp / "precious");
  write_text(tmp / "precious/notes.txt", "keep me");
  expect_error([&] { save_hf_model(tmp / "precious", c, p2); }, {"precious", "not a model directory"});
  EXPECT_TRUE(fs::exists(tmp / "precious/notes.txt"));

  expect_error([&] { save_hf_model(tmp / "x", c, p2, "int8"); }, {"int8"});
  expect_error([&] { save_hf_model(tmp / "x", c, std::vector<float>(10)); }, {"10 parameters"});
  EXPECT_FALSE(fs::exists(tmp / "x"));
}

// A save from a source model keeps what save_pretrained of the loaded model would: the tokenizer's
// files, generation_config.json, and the config.json keys metapo does not manage; metapo's own keys
// (here torch_dtype) win, and another spelling of one of them (dtype) is not carried over.
TEST(HfModel, SaveFromASourceKeepsTheTokenizerAndTheConfigKeys) {
  TempDir tmp;
  const LlamaConfig c = llama_gqa();
  save_hf_model(tmp / "src", c, random_params(c, 8), "bfloat16");
  nlohmann::json cj = nlohmann::json::parse(read_text(tmp / "src/config.json"));
  cj["pad_token_id"] = 0;
  cj["eos_token_id"] = {c.eos_token_id, 5};
  cj["dtype"] = "bfloat16";
  cj["custom_field"] = {{"a", 1}};
  write_text(tmp / "src/config.json", cj.dump(2));
  write_text(tmp / "src/generation_config.json", R"({"do_sample": true, "temperature": 0.6, "eos_token_id": [2, 5]})");
  write_text(tmp / "src/tokenizer.json", "{\"model\": {}}");
  write_text(tmp / "src/chat_template.jinja", "{{ messages }}");
  write_text(tmp / "src/notes.txt", "not a tokenizer file");
  const auto p = random_params(c, 9);
  save_hf_model(tmp / "out", c, p, "float32", tmp / "src");
  EXPECT_EQ(read_text(tmp / "out/tokenizer.json"), read_text(tmp / "src/tokenizer.json"));
  EXPECT_EQ(read_text(tmp / "out/chat_template.jinja"), "{{ messages }}");
  EXPECT_FALSE(fs::exists(tmp / "out/notes.txt"));
  const auto gen = nlohmann::json::parse(read_text(tmp / "out/generation_config.json"));
  EXPECT_EQ(gen["temperature"], 0.6);
  EXPECT_EQ(gen["do_sample"], true);
  const auto oj = nlohmann::json::parse(read_text(tmp / "out/config.json"));
  EXPECT_EQ(oj["pad_token_id"], 0);
  EXPECT_EQ(oj["eos_token_id"], nlohmann::json({c.eos_token_id, 5}));
  EXPECT_EQ(oj["custom_field"]["a"], 1);
  EXPECT_EQ(oj["torch_dtype"], "float32");
  EXPECT_FALSE(oj.contains("dtype"));
  // It reads back as the same model with the same weights.
  const HfModel back = load_hf_model(tmp / "out");
  expect_config_eq(back.config, [&] { LlamaConfig f = c; f.torch_dtype = "float32"; return f; }());
  EXPECT_TRUE(same_bits(back.params, p));
  // An eos_token_id list whose first id is not the model's is the model's id alone.
  cj["eos_token_id"] = {7, c.eos_token_id};
  write_text(tmp / "src/config.json", cj.dump(2));
  EXPECT_EQ(load_hf_config(tmp / "src").eos_token_id, 7);
  save_hf_model(tmp / "out2", c, p, "float32", tmp / "src");
  EXPECT_EQ(nlohmann::json::parse(read_text(tmp / "out2/config.json"))["eos_token_id"], c.eos_token_id);
}

// The end tokens generate() stops at: config.json's and generation_config.json's, numbers or lists,
// without repeats or ids outside the vocabulary.
TEST(HfModel, ModelEosIdsReadsBothFiles) {
  TempDir tmp;
  const LlamaConfig c = llama_gqa();
  save_hf_model(tmp / "m", c, random_params(c, 8));
  EXPECT_EQ(model_eos_ids(tmp / "m", c.vocab_size), std::vector<int64_t>{c.eos_token_id});
  nlohmann::json cj = nlohmann::json::parse(read_text(tmp / "m/config.json"));
  cj["eos_token_id"] = {c.eos_token_id, 5};
  write_text(tmp / "m/config.json", cj.dump());
  write_text(tmp / "m/generation_config.json", R"({"eos_token_id": [5, 7, 100000]})");
  EXPECT_EQ(model_eos_ids(tmp / "m", c.vocab_size), (std::vector<int64_t>{c.eos_token_id, 5, 7}));
  fs::remove(tmp / "m/generation_config.json");
  EXPECT_EQ(model_eos_ids(tmp / "m", c.vocab_size), (std::vector<int64_t>{c.eos_token_id, 5}));
}

// transformers' Llama with attention_bias has an o_proj bias too, which metapo's model has not:
// refused, not read as another model.
TEST(HfModel, LlamaWithAttentionBiasIsRefused) {
  LlamaConfig c = llama_gqa();
  c.attention_bias = true;
  expect_error([&] { c.validate("config.json"); }, {"attention_bias true is not supported for model_type llama", "o_proj"});
  c.model_type = "qwen2";
  EXPECT_NO_THROW(c.validate("config.json"));
}

// ---------------------------------------------------------------------------------------------
// Damaged model directories: each error names the file and the tensor or key.

TEST(HfModel, MissingTensor) {
  TempDir tmp;
  const LlamaConfig c = llama_gqa();
  const auto p = save_llama(tmp / "m");
  auto t = tensors_of(c, p);
  t.erase(t.begin() + 3);  // model.layers.0.self_attn.k_proj.weight
  const ParamLayout lay(c);
  ASSERT_EQ(lay.tensors()[3].name, "model.layers.0.self_attn.k_proj.weight");
  write_safetensors(tmp / "m/model.safetensors", t, "F32");
  expect_error([&] { load_hf_model(tmp / "m"); },
               {"model.safetensors", "model.layers.0.self_attn.k_proj.weight", "missing"});
}

TEST(HfModel, WrongShape) {
  TempDir tmp;
  const LlamaConfig c = llama_gqa();
  const auto p = save_llama(tmp / "m");
  auto t = tensors_of(c, p);
  for (auto& x : t)
    if (x.name == "model.layers.1.mlp.down_proj.weight") x.shape = {48, 79};
  write_safetensors(tmp / "m/model.safetensors", t, "F32");
  expect_error([&] { load_hf_model(tmp / "m"); },
               {"model.safetensors", "model.layers.1.mlp.down_proj.weight", "expected [48, 80]",
                "file has [48, 79]"});
}

TEST(HfModel, TruncatedFile) {
  TempDir tmp;
  save_llama(tmp / "m");
  const std::string f = tmp / "m/model.safetensors";
  std::string last;  // the tensor at the end of the data section is the one cut short
  uint64_t end = 0;
  {
    SafetensorsReader r(f);
    for (const auto& e : r.tensors())
      if (e.end > end) end = e.end, last = e.name;
  }
  fs::resize_file(f, fs::file_size(f) - 100);
  expect_error([&] { load_hf_model(tmp / "m"); }, {f, last, "run past the end of the file"});
}

TEST(HfModel, BadJsonInConfig) {
  TempDir tmp;
  save_llama(tmp / "m");
  write_text(tmp / "m/config.json", "{\"model_type\": \"llama\", \"vocab_size\": 50,");
  expect_error([&] { load_hf_model(tmp / "m"); }, {"config.json", "bad JSON", "parse error"});
}

TEST(HfModel, BadJsonSafetensorsHeader) {
  TempDir tmp;
  save_llama(tmp / "m");
  std::ofstream out(tmp / "m/model.safetensors", std::ios::binary);
  out.write("\x10\0\0\0\0\0\0\0", 8);
  out << "{\"model.norm\": [";  // 16 bytes, not JSON
  out.close();
  expect_error([&] { load_hf_model(tmp / "m"); }, {"model.safetensors", "bad JSON header"});
}

TEST(HfModel, MissingConfigKey) {
  TempDir tmp;
  save_llama(tmp / "m");
  json j = read_json(tmp / "m/config.json");
  j.erase("intermediate_size");
  write_text(tmp / "m/config.json", j.dump());
  expect_error([&] { load_hf_model(tmp / "m"); }, {"config.json", "intermediate_size", "missing"});
  j["intermediate_size"] = "80";
  write_text(tmp / "m/config.json", j.dump());
  expect_error([&] { load_hf_config(tmp / "m"); },
               {"config.json", "intermediate_size must be an integer", "\"80\""});
}

TEST(HfModel, UnknownModelType) {
  TempDir tmp;
  save_llama(tmp / "m");
  json j = read_json(tmp / "m/config.json");
  j["model_type"] = "gpt2";
  write_text(tmp / "m/config.json", j.dump());
  expect_error([&] { load_hf_model(tmp / "m"); }, {"config.json", "model_type", "gpt2"});
}

TEST(HfModel, MissingDirectoryConfigOrWeights) {
  TempDir tmp;
  expect_error([&] { load_hf_model(tmp / "nope"); }, {"nope", "does not exist"});
  fs::create_directories(tmp / "empty");
  expect_error([&] { load_hf_model(tmp / "empty"); }, {"empty/config.json", "missing"});
  save_llama(tmp / "m");
  fs::remove(tmp / "m/model.safetensors");
  expect_error([&] { load_hf_model(tmp / "m"); }, {"m", "no model.safetensors"});
}

TEST(HfModel, UnsupportedDtype) {
  TempDir tmp;
  save_llama(tmp / "m");
  // Rewrite model.norm.weight as I32 by hand (same byte count as F32, so the header is valid).
  const std::string f = tmp / "m/model.safetensors";
  std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
  uint64_t n = 0;
  io.read(reinterpret_cast<char*>(&n), 8);
  std::string header(n, '\0');
  io.read(&header[0], n);
  json h = json::parse(header);
  h["model.norm.weight"]["dtype"] = "I32";
  std::string nh = h.dump();
  ASSERT_LE(nh.size(), n);
  nh.resize(n, ' ');
  io.seekp(8);
  io.write(nh.data(), n);
  io.close();
  expect_error([&] { load_hf_model(tmp / "m"); },
               {"model.safetensors", "model.norm.weight", "unsupported dtype I32"});
}

// ---------------------------------------------------------------------------------------------
// Config readers

TEST(Config, HeadsNotDivisibleByKvHeads) {
  json j = config_to_json(llama_gqa());
  j["num_attention_heads"] = 12;
  j["num_key_value_heads"] = 5;
  expect_error([&] { config_from_json(j, "config.json /x/config.json"); },
               {"config.json /x/config.json: num_attention_heads (12) is not divisible by "
                "num_key_value_heads (5)"});
}

TEST(Config, JsonDialects) {
  // v5 style: theta and llama3 scaling inside rope_parameters; dtype instead of torch_dtype; eos list;
  // head_dim null and num_key_value_heads absent fall back to the defaults.
  json j = {{"model_type", "llama"}, {"vocab_size", 128}, {"hidden_size", 64},
            {"intermediate_size", 96}, {"num_hidden_layers", 1}, {"num_attention_heads", 4},
            {"head_dim", nullptr}, {"eos_token_id", {7, 9}}, {"dtype", "bfloat16"},
            {"rope_parameters", {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 32.0},
                                 {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                                 {"original_max_position_embeddings", 8192}}}};
  LlamaConfig c = config_from_json(j, "v5");
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.eos_token_id, 7);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.tie_word_embeddings, false);
  EXPECT_EQ(c.attention_bias, false);

  // v4.4x with the old "type" key, and linear scaling.
  j.erase("rope_parameters");
  j["rope_theta"] = 10000.0;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  c = config_from_json(j, "v4");
  EXPECT_EQ(c.rope_scaling.type, "linear");
  EXPECT_EQ(c.rope_scaling.factor, 2.0);
  EXPECT_EQ(config_to_json(c)["rope_scaling"]["rope_type"], "linear");

  // rope_parameters "default" means no scaling.
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  c = config_from_json(j, "v5");
  EXPECT_EQ(c.rope_scaling.type, "none");
  EXPECT_EQ(c.rope_theta, 1e6);

  j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_error([&] { config_from_json(j, "cfg.json"); }, {"cfg.json", "rope_parameters", "yarn"});
  j.erase("rope_parameters");
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  expect_error([&] { config_from_json(j, "cfg.json"); }, {"cfg.json", "low_freq_factor"});
}

TEST(Config, FamilyDefaults) {
  json base = {{"vocab_size", 128}, {"hidden_size", 64}, {"intermediate_size", 96},
               {"num_hidden_layers", 1}, {"num_attention_heads", 4}, {"num_key_value_heads", 2}};
  json q = base;
  q["model_type"] = "qwen2";
  q["sliding_window"] = 4096;
  q["use_sliding_window"] = false;
  LlamaConfig c = config_from_json(q, "q");
  EXPECT_TRUE(c.attention_bias);  // Qwen2 always has q/k/v biases
  EXPECT_EQ(c.sliding_window, 0);
  q["use_sliding_window"] = true;
  EXPECT_EQ(config_from_json(q, "q").sliding_window, 4096);

  json m = base;
  m["model_type"] = "mistral";
  m["sliding_window"] = nullptr;
  EXPECT_EQ(config_from_json(m, "m").sliding_window, 0);
  m["sliding_window"] = 32;
  c = config_from_json(m, "m");
  EXPECT_EQ(c.sliding_window, 32);
  EXPECT_FALSE(c.attention_bias);
  expect_config_eq(config_from_json(config_to_json(c), "m"), c);

  json l = base;
  l["model_type"] = "llama";
  l["hidden_act"] = "gelu";
  expect_error([&] { config_from_json(l, "l.json"); }, {"l.json", "hidden_act", "gelu"});
  l["hidden_act"] = "silu";
  l["mlp_bias"] = true;
  expect_error([&] { config_from_json(l, "l.json"); }, {"l.json", "mlp_bias"});
  l["mlp_bias"] = false;
  l["eos_token_id"] = 128;
  expect_error([&] { config_from_json(l, "l.json"); }, {"l.json", "eos_token_id (128)"});
  l["eos_token_id"] = 2;
  l["num_hidden_layers"] = 0;
  expect_error([&] { config_from_json(l, "l.json"); }, {"l.json", "num_hidden_layers must be positive"});
}

TEST(Config, FromIniTinyPreset) {
  const LlamaConfig c = config_from_ini(METAPO_TEST_DATA "/../../configs/presets/tiny.ini");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 64);
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.intermediate_size, 352);
  EXPECT_EQ(c.num_hidden_layers, 4);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, "none");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 2);
}

TEST(Config, FromIniErrors) {
  TempDir tmp;
  expect_error([&] { config_from_ini(tmp / "absent.ini"); }, {"absent.ini", "cannot open"});

  const std::string good =
      "[model]\nmodel_type = llama\nvocab_size = 64\nhidden_size = 32\nintermediate_size = 64\n"
      "num_hidden_layers = 2\nnum_attention_heads = 4\n";
  const std::string ini = tmp / "p.ini";
  write_text(ini, good + "rope_scaling.rope_type = llama3\nrope_scaling.factor = 8\n"
                         "rope_scaling.low_freq_factor = 1\nrope_scaling.high_freq_factor = 4\n"
                         "rope_scaling.original_max_position_embeddings = 128\n[train]\nlr = x\n");
  LlamaConfig c = config_from_ini(ini);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 128);

  write_text(ini, "[model]\nmodel_type = llama\nvocab_size = 64\nhidden_size = 32\n"
                  "num_hidden_layers = 2\nnum_attention_heads = 4\n");
  expect_error([&] { config_from_ini(ini); }, {"p.ini", "intermediate_size", "missing"});
  write_text(ini, good + "rms_norm_eps = 1e-5x\n");
  expect_error([&] { config_from_ini(ini); }, {"p.ini", "rms_norm_eps must be a number", "1e-5x"});
  write_text(ini, good + "num_key_value_heads = 2.5\n");
  expect_error([&] { config_from_ini(ini); }, {"p.ini", "num_key_value_heads must be an integer"});
  write_text(ini, good + "vocab_size = 65\n");
  expect_error([&] { config_from_ini(ini); }, {"p.ini", "vocab_size", "twice"});
  write_text(ini, good + "garbage line\n");
  expect_error([&] { config_from_ini(ini); }, {"p.ini:8", "expected key = value"});
  write_text(ini, "[train]\nlr = 1\n");
  expect_error([&] { config_from_ini(ini); }, {"p.ini", "no [model] section"});
}

// ---------------------------------------------------------------------------------------------
// Sharded reads: a rank reads only its runs of the flat buffer (HfModelReader::read_runs), and gets
// exactly what reading everything and cutting its shard out gives, for every TP rank and pipeline
// stage, from one F32 file and from an index over an F32 and a BF16 shard.

namespace {

void expect_shards_match_full_read(const std::string& dir, const LlamaConfig& c) {
  const HfModelReader reader(dir);
  const std::vector<float> full = reader.read_all();
  for (int tp : {1, 2}) {
    for (int pp : {1, 2}) {
      if (pp > 1 && c.tie_word_embeddings) continue;  // not supported (ParamLayout throws)
      const std::vector<PipeStage> stages = pipeline_stages(c.num_hidden_layers, pp, {});
      for (int s = 0; s < pp; ++s) {
        for (int r = 0; r < tp; ++r) {
          const std::vector<TpCopy> map = stage_shard_map(c, tp, r, stages[size_t(s)]);
          const size_t local_total = ParamLayout(tp_local_config(c, tp), stages[size_t(s)]).total();
          std::vector<float> want(local_total), got(local_total, 0.0f);
          shard_split(map, local_total, full.data(), want.data());
          reader.read_runs(map, got.data());
          ASSERT_TRUE(same_bits(got, want)) << dir << ": tp " << tp << " rank " << r << ", stage " << s << " of " << pp;
        }
      }
    }
  }
}

}  // namespace

TEST(HfModel, ShardedReadsEqualTheFullReadCutIntoShards) {
  TempDir tmp;
  const LlamaConfig c = llama_gqa();
  const auto p = random_params(c, 11);
  save_hf_model(tmp / "one", c, p);
  expect_shards_match_full_read(tmp / "one", c);

  // An index over two files of different dtypes, the split in the middle of a layer.
  save_hf_model(tmp / "two", c, p);
  fs::remove(tmp / "two/model.safetensors");
  auto all = tensors_of(c, p);
  const size_t half = all.size() / 2 + 1;
  std::vector<SafetensorsTensor> a(all.begin(), all.begin() + half), b(all.begin() + half, all.end());
  write_safetensors(tmp / "two/model-00001-of-00002.safetensors", a, "F32");
  write_safetensors(tmp / "two/model-00002-of-00002.safetensors", b, "BF16");
  json index = {{"weight_map", json::object()}};
  for (const auto& t : a) index["weight_map"][t.name] = "model-00001-of-00002.safetensors";
  for (const auto& t : b) index["weight_map"][t.name] = "model-00002-of-00002.safetensors";
  write_text(tmp / "two/model.safetensors.index.json", index.dump(2));
  expect_shards_match_full_read(tmp / "two", c);

  // A tied model with biases (Qwen2, 2 KV heads so that TP 2 applies; vocab 40 pads to even rows):
  // the head reads the embedding's rows (TP only).
  LlamaConfig q = qwen2_tied();
  q.num_key_value_heads = 2, q.vocab_size = 41;
  save_hf_model(tmp / "qwen", q, random_params(q, 12));
  expect_shards_match_full_read(tmp / "qwen", q);
}

// A run that crosses tensor boundaries is read piece by piece; a diverged value in a rank's runs is
// an error naming the tensor and how many of the values this rank read were bad.
TEST(HfModel, ReadRunsAcrossTensorsAndNonFiniteValues) {
  TempDir tmp;
  const LlamaConfig c = llama_gqa();
  auto p = random_params(c, 13);
  save_hf_model(tmp / "m", c, p);
  const HfModelReader reader(tmp / "m");
  const size_t from = 5, n = ParamLayout(c).total() - 9;
  std::vector<float> got(n);
  reader.read_runs({{from, 0, n, false}}, got.data());
  ASSERT_TRUE(std::memcmp(got.data(), p.data() + from, n * 4) == 0);

  const ParamLayout lay(c);  // outlives w (a pointer into it)
  const TensorEntry* w = lay.find("model.layers.1.mlp.down_proj.weight");
  ASSERT_NE(w, nullptr);
  p[w->offset + 3] = std::numeric_limits<float>::quiet_NaN();
  save_hf_model(tmp / "m", c, p);
  const HfModelReader bad(tmp / "m");
  std::vector<float> part(10);
  expect_error([&] { bad.read_runs({{w->offset, 0, 10, false}}, part.data()); },
               {"model.safetensors", "model.layers.1.mlp.down_proj.weight", "holds 1 non-finite values (of 10 read by this rank)"});
  bad.read_runs({{w->offset + 4, 0, 10, false}}, part.data());  // not this rank's NaN: fine
  expect_error([&] { load_hf_model(tmp / "m"); }, {"holds 1 non-finite values (of " + std::to_string(w->numel) + ")"});
}
