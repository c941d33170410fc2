// Golden test against PyTorch + transformers: tools/make_golden.py wrote tiny random HF models, packed
// inputs, and the float64 truth (token log-probs and the gradient of the masked summed log-prob);
// the fp32 engine must meet the per-quantity tolerances recorded beside the data (tolerances.json,
// derived from PyTorch's own fp32 error).
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "metapo/io/hf_model.h"
#include "metapo/io/safetensors.h"
#include "metapo/model/llama.h"
#include "test_util.h"

using namespace metapo;
using namespace metapo::test;
using std::vector;

namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  return nlohmann::json::parse(in);
}

class Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Golden, LogprobsAndGradientsMatchTransformers) {
  const std::string dir = std::string(METAPO_TEST_DATA) + "/golden/" + GetParam();
  const HfModel hf = load_hf_model(dir);
  const nlohmann::json inputs = read_json(dir + "/inputs.json");
  const nlohmann::json tol = read_json(dir + "/tolerances.json");
  SafetensorsReader expected(dir + "/expected.safetensors");

  PackedBatch b;
  vector<uint8_t> mask;
  for (size_t s = 0; s < inputs["sequences"].size(); ++s) {
    b.add(inputs["sequences"][s].get<vector<int32_t>>());
    for (int m : inputs["loss_mask"][s]) mask.push_back(uint8_t(m));
  }
  // Every row with a next token is scored (token_logps covers t >= 1 of each sequence); the
  // objective weights row t by mask[t + 1].
  const vector<int32_t> targets = next_token_targets(b, nullptr);
  LlamaModel<float> model(hf.config);
  vector<float> logp(size_t(b.n_tokens())), dlogp(size_t(b.n_tokens()), 0.0f);
  model.forward(hf.params.data(), b, targets.data(), logp.data());

  vector<float> token_logps;
  double objective = 0;
  for (int64_t s = 0; s < b.n_seqs(); ++s)
    for (int64_t t = b.cu_seqlens[s]; t + 1 < b.cu_seqlens[s + 1]; ++t) {
      token_logps.push_back(logp[size_t(t)]);
      if (mask[size_t(t + 1)]) objective += logp[size_t(t)], dlogp[size_t(t)] = 1.0f;
    }
  auto check = [&](const std::string& key, const vector<float>& ours) {
    const vector<float> ref = expected.read(key);
    ASSERT_EQ(ours.size(), ref.size()) << key;
    EXPECT_ERR_LT(rel_max_err(ours, ref), tol[key]["tol"].get<double>(), GetParam() + " " + key);
  };
  check("token_logps", token_logps);
  check("objective", {float(objective)});

  vector<float> grads(hf.params.size(), 0.0f);
  model.backward(hf.params.data(), dlogp.data(), grads.data());
  int n_checked = 0;
  for (const TensorEntry& e : model.layout().tensors()) {
    if (hf.config.tie_word_embeddings && e.name == "lm_head.weight") continue;
    check("grad." + e.name, vector<float>(grads.begin() + e.offset, grads.begin() + e.offset + e.numel));
    ++n_checked;
  }
  EXPECT_EQ(n_checked, int(model.layout().tensors().size()));
}

INSTANTIATE_TEST_SUITE_P(Models, Golden, ::testing::Values("llama_gqa", "qwen2_tied", "mistral_mha"));

}  // namespace
