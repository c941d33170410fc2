// The whole decoder: gradients of a weighted sum of token log-probs against central finite differences
// in double (every parameter of tiny models covering each architecture option), the fp32 model
// against the double one, packing invariance and bit-exact determinism.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "metapo/core/error.h"
#include "metapo/model/init.h"
#include "metapo/model/llama.h"
#include "test_util.h"

using namespace metapo;
using namespace metapo::test;
using std::vector;

namespace {

LlamaConfig tiny_config(const std::string& variant) {
  LlamaConfig c;
  c.vocab_size = 13, c.hidden_size = 8, c.intermediate_size = 12, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 4, c.rms_norm_eps = 1e-5;
  if (variant == "qwen2_tied_bias_mqa") {
    c.model_type = "qwen2", c.attention_bias = true, c.tie_word_embeddings = true;
    c.num_key_value_heads = 1;
  } else if (variant == "llama3_rope_headdim") {
    c.head_dim = 6;  // != hidden / heads
    c.rope_theta = 500000, c.rope_scaling.type = "llama3", c.rope_scaling.factor = 8;
    c.rope_scaling.original_max_position_embeddings = 4;
  } else if (variant == "mha") {
    c.num_key_value_heads = 4;
  }
  return c;
}

PackedBatch small_batch() {
  PackedBatch b;
  b.add({1, 5, 7, 2, 11, 3});
  b.add({4});
  b.add({12, 0, 9, 9});
  return b;
}

// Parameters drawn so norms, biases and every matrix are far from trivial.
template <typename T>
vector<T> rich_params(const LlamaConfig& c, uint64_t seed) {
  const ParamLayout lay(c);
  vector<double> p = randn<double>(lay.total(), seed, 0.4);
  for (const auto& e : lay.tensors())
    if (e.name.find("norm") != std::string::npos)
      for (size_t i = 0; i < e.numel; ++i) p[e.offset + i] += 1.0;
  return cast<T>(p);
}

class ModelFD : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelFD, GradientMatchesFiniteDifferencesForEveryParameter) {
  const LlamaConfig c = tiny_config(GetParam());
  LlamaModel<double> m(c);
  const PackedBatch b = small_batch();
  vector<uint8_t> mask = {0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1};
  const vector<int32_t> tg = next_token_targets(b, mask.data());
  const vector<double> coef = randn<double>(size_t(b.n_tokens()), 7);
  vector<double> p = rich_params<double>(c, 3);
  vector<double> logp(size_t(b.n_tokens()));
  auto objective = [&] {
    m.forward(p.data(), b, tg.data(), logp.data());
    return dot(coef, logp);
  };
  objective();
  vector<double> g(p.size(), 0.0);
  m.backward(p.data(), coef.data(), g.data());
  const vector<double> fd = fd_grad(p, objective);
  // Per tensor, so a failure names the tensor.
  for (const auto& e : m.layout().tensors()) {
    vector<double> a(g.begin() + e.offset, g.begin() + e.offset + e.numel);
    vector<double> n(fd.begin() + e.offset, fd.begin() + e.offset + e.numel);
    EXPECT_ERR_LT(rel_max_err(a, n), 1e-6, errname(e.name));
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, ModelFD,
                         ::testing::Values("gqa", "mha", "qwen2_tied_bias_mqa", "llama3_rope_headdim"));

TEST(Model, Fp32AgreesWithDouble) {
  const LlamaConfig c = tiny_config("gqa");
  const PackedBatch b = small_batch();
  const vector<int32_t> tg = next_token_targets(b, nullptr);
  const vector<double> pd = rich_params<double>(c, 5);
  const vector<float> pf = cast<float>(pd);
  vector<double> ld(b.n_tokens()), gd(pd.size(), 0.0), ones(b.n_tokens(), 1.0);
  vector<float> lf(b.n_tokens()), gf(pd.size(), 0.0f), onesf(b.n_tokens(), 1.0f);
  LlamaModel<double> md(c);
  LlamaModel<float> mf(c);
  md.forward(pd.data(), b, tg.data(), ld.data());
  md.backward(pd.data(), ones.data(), gd.data());
  mf.forward(pf.data(), b, tg.data(), lf.data());
  mf.backward(pf.data(), onesf.data(), gf.data());
  EXPECT_ERR_LT(rel_max_err(lf, ld), 1e-5, errname("logp"));
  EXPECT_ERR_LT(rel_max_err(gf, gd), 1e-4, errname("grad"));
}

TEST(Model, PackingDoesNotChangeResults) {
  // A sequence scored alone and inside a pack gives the same log-probs (attention never crosses
  // sequences, positions restart at 0).
  const LlamaConfig c = tiny_config("gqa");
  const vector<float> p = rich_params<float>(c, 9);
  LlamaModel<float> m(c);
  const PackedBatch b = small_batch();
  vector<float> all(b.n_tokens());
  auto tg = next_token_targets(b, nullptr);
  m.forward(p.data(), b, tg.data(), all.data());
  for (int64_t s = 0; s < b.n_seqs(); ++s) {
    PackedBatch one;
    one.add(vector<int32_t>(b.tokens.begin() + b.cu_seqlens[s], b.tokens.begin() + b.cu_seqlens[s + 1]));
    vector<float> lp(one.n_tokens());
    auto t1 = next_token_targets(one, nullptr);
    m.forward(p.data(), one, t1.data(), lp.data());
    for (int64_t t = 0; t < one.n_tokens(); ++t) EXPECT_NEAR(lp[t], all[b.cu_seqlens[s] + t], 2e-6);
  }
}

TEST(Model, RunsAreBitIdentical) {
  const LlamaConfig c = tiny_config("qwen2_tied_bias_mqa");
  const vector<float> p = init_params(c, 1);
  const PackedBatch b = small_batch();
  auto tg = next_token_targets(b, nullptr);
  vector<float> ones(b.n_tokens(), 1.0f);
  vector<vector<float>> grads;
  for (int run = 0; run < 2; ++run) {
    LlamaModel<float> m(c);
    vector<float> lp(b.n_tokens()), g(p.size(), 0.0f);
    m.forward(p.data(), b, tg.data(), lp.data());
    m.backward(p.data(), ones.data(), g.data());
    grads.push_back(g);
  }
  EXPECT_EQ(grads[0], grads[1]);
}

// param_count (the size checks before anything is allocated) is the layout's total for every variant
// and layer count, 1 to 6.
TEST(Model, ParamCountIsTheLayoutsTotal) {
  for (const std::string v : {"llama", "qwen2_tied_bias_mqa", "llama3_rope_headdim", "mha"})
    for (int64_t layers = 1; layers <= 6; ++layers) {
      LlamaConfig c = tiny_config(v);
      c.num_hidden_layers = layers;
      EXPECT_EQ(param_count(c), ParamLayout(c).total()) << v << ", " << layers << " layers";
    }
}

TEST(Model, BadInputsAreClearErrors) {
  const LlamaConfig c = tiny_config("gqa");
  const vector<float> p = init_params(c, 1);
  LlamaModel<float> m(c);
  PackedBatch b;
  b.add({1, 2, 13});  // 13 is outside the vocabulary of 13
  auto tg = next_token_targets(b, nullptr);
  vector<float> lp(3), g(p.size());
  try {
    m.forward(p.data(), b, tg.data(), lp.data());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id 13"), std::string::npos) << e.what();
  }
  EXPECT_THROW(m.backward(p.data(), lp.data(), g.data()), Error);  // no forward to go back through
}

}  // namespace

namespace {

TEST(Model, OverwritingBackwardEqualsAccumulatingIntoZeros) {
  for (const std::string variant : {"gqa", "qwen2_tied_bias_mqa"}) {
    const LlamaConfig c = tiny_config(variant);
    const vector<float> p = rich_params<float>(c, 4);
    const PackedBatch b = small_batch();
    auto tg = next_token_targets(b, nullptr);
    const vector<float> coef = randn<float>(size_t(b.n_tokens()), 5);
    LlamaModel<float> m(c);
    vector<float> lp(b.n_tokens());
    vector<float> zeroed(p.size(), 0.0f), garbage = randn<float>(p.size(), 6, 100.0);
    m.forward(p.data(), b, tg.data(), lp.data());
    m.backward(p.data(), coef.data(), zeroed.data(), true);
    m.forward(p.data(), b, tg.data(), lp.data());
    m.backward(p.data(), coef.data(), garbage.data(), false);
    EXPECT_EQ(zeroed, garbage) << variant;
    // A second accumulating backward doubles the gradient.
    m.forward(p.data(), b, tg.data(), lp.data());
    m.backward(p.data(), coef.data(), garbage.data(), true);
    for (size_t i = 0; i < p.size(); ++i) ASSERT_NEAR(garbage[i], 2 * zeroed[i], 1e-5 * (1 + std::abs(zeroed[i])));
  }
}

}  // namespace

// Activation recomputation runs the same kernels on the same inputs, so selective and full give the
// same bits as keeping everything: log-probs, gradients (overwriting and accumulating backwards over
// two micro-batches) and ghost dots; and they hold fewer activation bytes, full the fewest.
TEST(Model, RecomputationIsBitIdenticalAndKeepsLess) {
  for (const std::string variant : {"gqa", "qwen2_tied_bias_mqa", "llama3_rope_headdim"}) {
    const LlamaConfig c = tiny_config(variant);
    const vector<float> p = rich_params<float>(c, 5);
    const vector<float> ghat = randn<float>(p.size(), 6, 0.3);
    const PackedBatch b1 = small_batch();
    PackedBatch b2;
    b2.add({3, 8, 8, 1, 0, 6, 2});
    b2.add({10, 4});
    struct Result {
      vector<float> logp, grads;
      vector<double> dots;
      size_t bytes = 0;
    };
    auto run = [&](Recompute r) {
      LlamaModel<float> m(c);
      m.set_recompute(r);
      m.set_prob_cache_budget(0);
      Result out;
      out.grads.assign(p.size(), 0.0f);
      for (const PackedBatch* b : {&b1, const_cast<const PackedBatch*>(&b2)}) {
        const vector<int32_t> tg = next_token_targets(*b, nullptr);
        vector<float> logp(size_t(b->n_tokens()));
        m.forward(p.data(), *b, tg.data(), logp.data());
        out.bytes = std::max(out.bytes, m.activation_bytes());
        vector<float> dlogp(logp.size());
        for (size_t t = 0; t < dlogp.size(); ++t) dlogp[t] = 0.1f * float(t % 5) - 0.2f;
        vector<double> dots;
        m.backward(p.data(), dlogp.data(), out.grads.data(), b != &b1, ghat.data(), &dots);
        out.logp.insert(out.logp.end(), logp.begin(), logp.end());
        out.dots.insert(out.dots.end(), dots.begin(), dots.end());
      }
      return out;
    };
    const Result none = run(Recompute::None), sel = run(Recompute::Selective), full = run(Recompute::Full);
    for (const Result* r : {&sel, &full}) {
      const char* name = r == &sel ? "selective" : "full";
      EXPECT_EQ(std::memcmp(r->logp.data(), none.logp.data(), none.logp.size() * 4), 0) << variant << " " << name;
      EXPECT_EQ(std::memcmp(r->grads.data(), none.grads.data(), none.grads.size() * 4), 0) << variant << " " << name;
      EXPECT_EQ(r->dots, none.dots) << variant << " " << name;
    }
    EXPECT_LT(sel.bytes, none.bytes) << variant;
    EXPECT_LT(full.bytes, sel.bytes) << variant;
  }
  EXPECT_EQ(parse_recompute("full"), Recompute::Full);
  EXPECT_THROW(parse_recompute("some"), Error);
}
