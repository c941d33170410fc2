// Pipeline stages of LlamaModel (DESIGN §4), without MPI: a model cut into stages and run stage by stage
// (each stage's output handed to the next by the caller, gradients handed back) gives the whole model's
// log-probs, gradients and ghost dots; activation slots keep several forwards in flight (the 1F1B
// order: forwards A, B, then backward B, A) without changing anything; stage layouts, layer splits
// and their errors.
#include <gtest/gtest.h>

#include <cmath>

#include "metapo/core/error.h"
#include "metapo/model/llama.h"
#include "metapo/model/tp_layout.h"
#include "test_util.h"

using namespace metapo;
using namespace metapo::test;
using std::vector;

namespace {

LlamaConfig config(bool bias) {
  LlamaConfig c;
  c.vocab_size = 23, c.hidden_size = 16, c.intermediate_size = 24, c.num_hidden_layers = 3;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 6, c.rms_norm_eps = 1e-5;
  if (bias) c.model_type = "qwen2", c.attention_bias = true;
  return c;
}

PackedBatch batch(int which) {
  PackedBatch b;
  if (which == 0) {
    b.add({1, 5, 7, 2, 11, 3, 9});
    b.add({4, 8});
    b.add({12, 0, 9, 9, 22, 17});
  } else {
    b.add({3, 3, 14, 6});
    b.add({19, 2, 8, 8, 1});
  }
  return b;
}

struct WholeRun {
  vector<double> logp, grads, seq_dots;
};

// The whole model on batch b: logp, gradients of Σ dlogp·logp, ghost dots with ghat.
WholeRun whole(const LlamaConfig& c, const vector<double>& p, const PackedBatch& b, const vector<double>& dlogp,
               const vector<double>& ghat) {
  LlamaModel<double> m(c);
  const auto tg = next_token_targets(b, nullptr);
  WholeRun r;
  r.logp.resize(size_t(b.n_tokens()));
  r.grads.resize(p.size());
  m.forward(p.data(), b, tg.data(), r.logp.data());
  m.backward(p.data(), dlogp.data(), r.grads.data(), false, ghat.data(), &r.seq_dots);
  return r;
}

double max_rel(const vector<double>& a, const vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num = std::max(num, std::abs(a[i] - b[i])), den = std::max(den, std::abs(b[i]));
  return num / std::max(den, 1e-300);
}

class Stages : public ::testing::TestWithParam<bool> {};

TEST_P(Stages, ChainedStagesEqualTheWholeModelWithSlotsInFlight) {
  const LlamaConfig c = config(GetParam());
  const ParamLayout full(c);
  vector<double> p = randn<double>(full.total(), 3, 0.3);
  for (const auto& e : full.tensors())
    if (e.name.find("norm") != std::string::npos)
      for (size_t i = 0; i < e.numel; ++i) p[e.offset + i] += 1.0;
  const vector<double> ghat_full = randn<double>(full.total(), 5);
  const PackedBatch b[2] = {batch(0), batch(1)};
  vector<double> dlogp[2];
  WholeRun ref[2];
  for (int k = 0; k < 2; ++k) {
    dlogp[k] = randn<double>(size_t(b[k].n_tokens()), 7 + uint64_t(k));
    ref[k] = whole(c, p, b[k], dlogp[k], ghat_full);
  }
  // Three stages of one layer each: first (embedding), middle, last (norm + head).
  const vector<PipeStage> st = pipeline_stages(c.num_hidden_layers, 3);
  ASSERT_EQ(st.size(), 3u);
  vector<LlamaModel<double>> models;
  vector<vector<double>> params, ghats, grads;
  vector<vector<TpCopy>> maps;
  for (const PipeStage& s : st) {
    models.emplace_back(c, nullptr, s);
    maps.push_back(stage_shard_map(c, 1, 0, s));
    const size_t n = models.back().layout().total();
    params.emplace_back(n), ghats.emplace_back(n), grads.emplace_back(n);
    shard_split(maps.back(), n, p.data(), params.back().data());
    shard_split(maps.back(), n, ghat_full.data(), ghats.back().data());
    models.back().set_slots(2);
  }
  // The stages' buffers partition the whole buffer: every element exactly once.
  size_t covered = 0;
  for (const auto& m : maps)
    for (const TpCopy& r : m) covered += r.count;
  EXPECT_EQ(covered, full.total());

  // Forward A then B on every stage (slots 0 and 1), then backward B then A.
  vector<double> logp[2], seq_dots[2][3];
  const size_t C = size_t(c.hidden_size);
  for (int k = 0; k < 2; ++k) {
    const auto tg = next_token_targets(b[k], nullptr);
    const size_t n = size_t(b[k].n_tokens());
    vector<double> x(n * C), y(n * C);
    logp[k].resize(n);
    for (size_t s = 0; s < 3; ++s) {
      models[s].use_slot(k);
      const bool last = s == 2;
      models[s].forward_stage(params[s].data(), b[k], last ? tg.data() : nullptr, x.data(), last ? logp[k].data() : y.data());
      std::swap(x, y);
    }
  }
  // Activation memory (docs/training.md): per slot and layer n·(4C + 2 + QKV + Q + Hq + 3I) elements,
  // plus the stage output n·C, and on the last stage the final norm's n·C + n, the row LSE R and the
  // cached probabilities R·V (R = rows with a target); both slots are held now.
  for (size_t s = 0; s < 3; ++s) {
    size_t want = 0;
    for (int k = 0; k < 2; ++k) {
      const size_t n = size_t(b[k].n_tokens()), R = n - size_t(b[k].n_seqs());
      const size_t per_layer = n * (4 * C + 2 + size_t(c.qkv_dim() + c.q_dim() + c.num_attention_heads) +
                                    3 * size_t(c.intermediate_size));
      want += size_t(st[s].layer_end - st[s].layer_begin) * per_layer + n * C;
      if (st[s].last) want += n * C + n + R + R * size_t(c.vocab_size);
    }
    EXPECT_EQ(models[s].activation_bytes(), want * sizeof(double)) << "stage " << s;
  }
  for (int k = 1; k >= 0; --k) {
    const size_t n = size_t(b[k].n_tokens());
    vector<double> dy(dlogp[k]), dx(n * C);
    for (size_t s = 3; s-- > 0;) {
      models[s].use_slot(k);
      // Batch B's backward comes first and overwrites; A's accumulates.
      models[s].backward_stage(params[s].data(), dy.data(), grads[s].data(), /*accumulate=*/k == 0, ghats[s].data(),
                               &seq_dots[k][s], s > 0 ? dx.data() : nullptr);
      dy = dx;
    }
  }
  for (int k = 0; k < 2; ++k) {
    EXPECT_LT(max_rel(logp[k], ref[k].logp), 1e-13) << "batch " << k;
    vector<double> dots(ref[k].seq_dots.size(), 0.0);
    for (size_t s = 0; s < 3; ++s)
      for (size_t i = 0; i < dots.size(); ++i) dots[i] += seq_dots[k][s][i];
    EXPECT_LT(max_rel(dots, ref[k].seq_dots), 1e-12) << "batch " << k;
  }
  // Gradients: the stages' parts, put back in the whole layout, equal the sum of both whole runs.
  vector<double> g(full.total(), 0.0), want(full.total());
  for (size_t s = 0; s < 3; ++s)
    for (const TpCopy& r : maps[s])
      for (size_t i = 0; i < r.count; ++i) g[r.full + i] = grads[s][r.local + i];
  for (size_t i = 0; i < want.size(); ++i) want[i] = ref[0].grads[i] + ref[1].grads[i];
  EXPECT_LT(max_rel(g, want), 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Pipeline, Stages, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "qwen2_bias" : "llama"; });

TEST(PipelineStages, EvenSplitPutsTheRemainderFirstAndCountsAreChecked) {
  const vector<PipeStage> s = pipeline_stages(7, 3);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].layer_begin, 0);
  EXPECT_EQ(s[0].layer_end, 3);
  EXPECT_TRUE(s[0].first);
  EXPECT_FALSE(s[0].last);
  EXPECT_EQ(s[1].layer_begin, 3);
  EXPECT_EQ(s[1].layer_end, 5);
  EXPECT_FALSE(s[1].first || s[1].last);
  EXPECT_EQ(s[2].layer_begin, 5);
  EXPECT_EQ(s[2].layer_end, 7);
  EXPECT_TRUE(s[2].last);
  const vector<PipeStage> u = pipeline_stages(4, 2, {3, 1});
  EXPECT_EQ(u[0].layer_end, 3);
  EXPECT_EQ(u[1].layer_begin, 3);
  EXPECT_THROW(pipeline_stages(2, 3), Error);          // a stage without layers
  EXPECT_THROW(pipeline_stages(4, 2, {2, 1}), Error);  // counts do not sum to the layers
  EXPECT_THROW(pipeline_stages(4, 2, {4}), Error);     // one count for two stages
  EXPECT_THROW(pipeline_stages(4, 2, {4, 0}), Error);  // an empty stage
}

TEST(PipelineStages, StageLayoutsHoldOnlyTheirTensorsAndRejectASplitTiedHead) {
  LlamaConfig c = config(false);
  const ParamLayout first(c, {0, 1, true, false}), last(c, {1, 3, false, true});
  EXPECT_NE(first.find("model.embed_tokens.weight"), nullptr);
  EXPECT_EQ(first.find("lm_head.weight"), nullptr);
  EXPECT_EQ(first.final_norm, ParamLayout::npos);
  EXPECT_EQ(last.find("model.embed_tokens.weight"), nullptr);
  EXPECT_NE(last.find("model.layers.2.mlp.down_proj.weight"), nullptr);
  EXPECT_EQ(last.find("model.layers.0.mlp.down_proj.weight"), nullptr);
  EXPECT_EQ(first.total() + last.total(), ParamLayout(c).total());
  c.tie_word_embeddings = true;
  try {
    ParamLayout bad(c, {1, 3, false, true});
    FAIL() << "a tied head on a last stage without the embedding was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tie_word_embeddings"), std::string::npos) << e.what();
  }
}

}  // namespace
