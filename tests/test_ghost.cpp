// Ghost dot products (DESIGN §6): per-sequence ⟨ĝ, ∇θ ℓ_s⟩ from one backward equals the "exact" dots
// of explicit per-sequence gradients (a separate backward per sequence), in fp32 to 1e-4 relative,
// for every kind of parameter: linear weights, biases, norm weights, embedding, LM head, tied head.
#include <gtest/gtest.h>

#include <set>

#include "metapo/model/llama.h"
#include "test_util.h"

using namespace metapo;
using namespace metapo::test;
using std::vector;

namespace {

LlamaConfig config(bool qwen_tied) {
  LlamaConfig c;
  c.vocab_size = 23, c.hidden_size = 16, c.intermediate_size = 24, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 6, c.rms_norm_eps = 1e-5;
  if (qwen_tied) c.model_type = "qwen2", c.attention_bias = true, c.tie_word_embeddings = true;
  return c;
}

std::string kind_of(const std::string& name) {
  if (name.find("bias") != std::string::npos) return "bias";
  if (name.find("norm") != std::string::npos) return "norm";
  if (name.find("embed_tokens") != std::string::npos) return "embedding";
  if (name.find("lm_head") != std::string::npos) return "lm_head";
  return "linear";
}

class Ghost : public ::testing::TestWithParam<bool> {};

TEST_P(Ghost, EqualsExactPerSequenceDotsForEveryKindOfParameter) {
  const bool tied = GetParam();
  const LlamaConfig c = config(tied);
  const ParamLayout lay(c);
  vector<float> p = cast<float>(randn<double>(lay.total(), 3, 0.3));
  for (const auto& e : lay.tensors())
    if (e.name.find("norm") != std::string::npos)
      for (size_t i = 0; i < e.numel; ++i) p[e.offset + i] += 1.0f;
  PackedBatch b;
  b.add({1, 5, 7, 2, 11, 3, 9});
  b.add({4, 8});
  b.add({12, 0, 9, 9, 22, 17});
  vector<uint8_t> mask = {0, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1};
  const auto tg = next_token_targets(b, mask.data());
  const vector<float> coef = cast<float>(randn<double>(size_t(b.n_tokens()), 4));
  const vector<double> ghat_full = randn<double>(lay.total(), 5);
  LlamaModel<float> m(c);
  vector<float> lp(size_t(b.n_tokens())), g(lay.total());

  std::set<std::string> kinds;
  for (const auto& e : lay.tensors()) kinds.insert(kind_of(e.name));
  if (tied) kinds.insert("tied head");  // the embedding tensor also receives the head's gradient
  for (const std::string& kind : kinds) {
    // ĝ restricted to one kind of parameter (for "tied head": the tied embedding tensor, whose
    // dots then cover both its embedding and its LM-head use).
    vector<float> ghat(lay.total(), 0.0f);
    for (const auto& e : lay.tensors()) {
      const std::string k = kind_of(e.name);
      if (k == kind || (kind == "tied head" && k == "embedding"))
        for (size_t i = 0; i < e.numel; ++i) ghat[e.offset + i] = float(ghat_full[e.offset + i]);
    }
    // Ghost: one backward.
    vector<double> ghost;
    m.forward(p.data(), b, tg.data(), lp.data());
    m.backward(p.data(), coef.data(), g.data(), false, ghat.data(), &ghost);
    // Exact: one backward per sequence with the other sequences' coefficients zeroed.
    vector<double> exact;
    for (int64_t s = 0; s < b.n_seqs(); ++s) {
      vector<float> cs(coef.size(), 0.0f);
      for (int64_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t) cs[size_t(t)] = coef[size_t(t)];
      m.forward(p.data(), b, tg.data(), lp.data());
      m.backward(p.data(), cs.data(), g.data(), false);
      double d = 0;
      for (size_t i = 0; i < g.size(); ++i) d += double(g[i]) * double(ghat[i]);
      exact.push_back(d);
    }
    ASSERT_EQ(ghost.size(), exact.size());
    EXPECT_ERR_LT(rel_max_err(ghost, exact), 1e-4, errname(kind));
  }
}

INSTANTIATE_TEST_SUITE_P(Models, Ghost, ::testing::Values(false, true));

}  // namespace
