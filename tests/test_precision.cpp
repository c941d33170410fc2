// The model's storage precision (LlamaModel::set_precision): bf16 parameters are exactly an fp32 model
// on the rounded parameters; bf16 activations stay within recorded tolerances of fp32; recomputation
// stays bit-identical under bf16; bad combinations are refused.
#include <gtest/gtest.h>

#include <cmath>

#include "metapo/core/half.h"
#include "metapo/model/init.h"
#include "metapo/model/llama.h"
#include "test_util.h"

using namespace metapo;
using namespace metapo::test;
using std::vector;

namespace {

LlamaConfig config() {
  LlamaConfig c;
  c.vocab_size = 64, c.hidden_size = 32, c.intermediate_size = 88, c.num_hidden_layers = 3;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 8, c.max_position_embeddings = 128;
  return c;
}

PackedBatch batch() {
  PackedBatch b;
  b.add({1, 2, 3, 4, 5, 6, 7, 9, 11, 13}), b.add({8, 9, 10, 11, 12}), b.add({60, 3, 17, 22, 41, 5, 5, 2});
  return b;
}

struct Result {
  vector<float> logp, grads;
};

Result run(const LlamaConfig& c, const vector<float>& params, const Precision& p, Recompute rc = Recompute::None) {
  LlamaModel<float> m(c);
  m.set_precision(p);
  m.set_recompute(rc);
  const PackedBatch b = batch();
  const vector<int32_t> tg = next_token_targets(b, nullptr);
  Result r;
  r.logp.resize(size_t(b.n_tokens()));
  r.grads.resize(params.size());
  m.forward(params.data(), b, tg.data(), r.logp.data());
  vector<float> dlogp(r.logp.size());
  for (size_t t = 0; t < dlogp.size(); ++t) dlogp[t] = tg[t] >= 0 ? 0.1f * float(1 + t % 3) : 0.0f;
  m.backward(params.data(), dlogp.data(), r.grads.data(), false);
  return r;
}

}  // namespace

TEST(Precision, Bf16ParametersAreTheFp32ModelOnRoundedParameters) {
  const LlamaConfig c = config();
  const vector<float> params = init_params(c, 1, 0.1);
  vector<float> rounded(params.size());
  for (size_t i = 0; i < params.size(); ++i) rounded[i] = bf16_to_f32(f32_to_bf16(params[i]));
  const Precision bf16_params{DType::BF16, DType::F32, DType::F32};
  const Result a = run(c, params, bf16_params), b = run(c, rounded, Precision::fp32());
  EXPECT_EQ(a.logp, b.logp);
  EXPECT_EQ(a.grads, b.grads);  // gradients at the rounded parameters, in fp32
  EXPECT_NE(run(c, params, Precision::fp32()).logp, a.logp);  // the rounding does something
}

TEST(Precision, Bf16StorageStaysWithinItsToleranceOfFp32) {
  const LlamaConfig c = config();
  const vector<float> params = init_params(c, 2, 0.1);
  const Result f = run(c, params, Precision::fp32()), h = run(c, params, Precision::bf16());
  // bf16 keeps 8 significant bits (relative rounding up to 2^-8 = 3.9e-3 per stored value); over 3
  // layers and the LM head the log-probs moved 1.3e-3 and the gradients 1.5e-2 relative to their
  // largest value here (2026-12-06). The tolerances leave 8x and 3x margin; fp32 agrees with fp64 to
  // 1e-6 (test_model).
  EXPECT_ERR_LT(rel_max_err(h.logp, f.logp), 1e-2, errname("logp, bf16 vs fp32"));
  EXPECT_ERR_LT(rel_max_err(h.grads, f.grads), 5e-2, errname("grads, bf16 vs fp32"));
  EXPECT_GT(rel_max_err(h.logp, f.logp), 1e-5);  // bf16 activations are not fp32 ones
}

TEST(Precision, RecomputationIsBitIdenticalUnderBf16) {
  const LlamaConfig c = config();
  const vector<float> params = init_params(c, 3, 0.1);
  const Result none = run(c, params, Precision::bf16(), Recompute::None);
  for (Recompute rc : {Recompute::Selective, Recompute::Full}) {
    const Result r = run(c, params, Precision::bf16(), rc);
    EXPECT_EQ(r.logp, none.logp) << recompute_name(rc);
    EXPECT_EQ(r.grads, none.grads) << recompute_name(rc);
  }
}

TEST(Precision, ABackwardUsesItsOwnForwardsParametersAfterAnotherForward) {
  // Slot 0 runs a forward of P1, slot 1 a forward of P2, then slot 0's backward: its gradients are
  // those of P1 (the bf16 working copy is rounded again from P1), as in a model that saw P1 only.
  const LlamaConfig c = config();
  const vector<float> p1 = init_params(c, 4, 0.1), p2 = init_params(c, 5, 0.1);
  const PackedBatch b = batch();
  const vector<int32_t> tg = next_token_targets(b, nullptr);
  vector<float> logp(size_t(b.n_tokens())), dlogp(logp.size(), 0.1f), g(p1.size()), g_ref(p1.size());
  LlamaModel<float> m(c);
  m.set_precision(Precision::bf16());
  m.set_slots(2);
  m.forward(p1.data(), b, tg.data(), logp.data());
  m.use_slot(1);
  m.forward(p2.data(), b, tg.data(), logp.data());
  m.use_slot(0);
  m.backward(p1.data(), dlogp.data(), g.data(), false);
  LlamaModel<float> ref(c);
  ref.set_precision(Precision::bf16());
  ref.forward(p1.data(), b, tg.data(), logp.data());
  ref.backward(p1.data(), dlogp.data(), g_ref.data(), false);
  EXPECT_EQ(g, g_ref);
}

TEST(Precision, BadCombinationsAreRefused) {
  const LlamaConfig c = config();
  LlamaModel<float> f(c);
  EXPECT_EQ(error_of([&] { f.set_precision({DType::BF16, DType::BF16, DType::BF16}); }),
            "LlamaModel: precision bf16/bf16/bf16 (parameters and activations fp32 or bf16, gradients fp32)");
  LlamaModel<double> d(c);
  EXPECT_EQ(error_of([&] { d.set_precision(Precision::bf16()); }), "LlamaModel<double>: precision bf16 (fp64 only)");
  EXPECT_EQ(d.precision(), Precision::fp64());
  EXPECT_EQ(error_of([] { parse_precision("fp16"); }), "--precision fp16: unknown (valid: fp32, bf16)");
}
