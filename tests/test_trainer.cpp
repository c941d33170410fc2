// The trainer's gradient of the whole preference objective (pairs → packed forward → TRL loss →
// per-token coefficients → backward) against central finite differences in double, for several
// losses and for constant per-pair weights; plus the data order and the optimizer.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "metapo/train/dpo.h"
#include "metapo/train/optimizer.h"
#include "metapo/train/pairs.h"
#include "test_util.h"

using namespace metapo;
using namespace metapo::test;
using std::vector;

namespace {

LlamaConfig tiny() {
  LlamaConfig c;
  c.vocab_size = 11, c.hidden_size = 8, c.intermediate_size = 12, c.num_hidden_layers = 2;
  c.num_attention_heads = 2, c.num_key_value_heads = 1, c.head_dim = 4, c.rms_norm_eps = 1e-5;
  return c;
}

PairSplit tiny_pairs() {
  PairSplit s;
  const vector<vector<int32_t>> prompts = {{1, 4, 5}, {1, 7}, {1, 3, 3, 9}};
  const vector<vector<int32_t>> chosen = {{6, 2}, {8, 8, 2}, {10, 2}};
  const vector<vector<int32_t>> rejected = {{5, 5, 2}, {2}, {9, 4, 2}};
  for (size_t i = 0; i < prompts.size(); ++i) {
    s.prompt.push(prompts[i]), s.chosen.push(chosen[i]), s.rejected.push(rejected[i]);
    s.sample_id.push_back(int64_t(i));
    s.ref_logp_chosen.push_back(-2.0 - 0.3 * double(i));
    s.ref_logp_rejected.push_back(-2.5 + 0.2 * double(i));
  }
  s.columns["weight"] = {0.5f, 2.0f, 1.0f};
  return s;
}

vector<double> rich_params(const LlamaConfig& c) {
  const ParamLayout lay(c);
  vector<double> p = randn<double>(lay.total(), 17, 0.4);
  for (const auto& e : lay.tensors())
    if (e.name.find("norm") != std::string::npos)
      for (size_t i = 0; i < e.numel; ++i) p[e.offset + i] += 1.0;
  return p;
}

struct Case {
  std::string loss;
  double label_smoothing;
  bool column_weights;
};

class TrainerFD : public ::testing::TestWithParam<Case> {};

TEST_P(TrainerFD, GradientOfTheWholeObjectiveMatchesFiniteDifferences) {
  const Case cs = GetParam();
  const LlamaConfig c = tiny();
  const PairSplit s = tiny_pairs();
  LossConfig loss;
  loss.type = parse_loss(cs.loss);
  loss.beta = 0.5, loss.label_smoothing = cs.label_smoothing;
  const Weighting wt = cs.column_weights ? Weighting::Column : Weighting::Uniform;
  const vector<double> column = cs.column_weights ? vector<double>{0.5, 2.0, 1.0} : vector<double>{};
  const double wsum = cs.column_weights ? 3.5 : 3.0;
  const vector<int64_t> all = {0, 1, 2};
  LlamaModel<double> model(c);
  vector<double> p = rich_params(c);

  // L(θ) = Σ a_i ℓ_i(θ) / Σ a_i, evaluated independently of the trainer's backward.
  auto objective = [&] {
    vector<double> ch, rj;
    const PairBatch pb = make_pair_batch(s, all);
    vector<double> logp(size_t(pb.batch.n_tokens()));
    model.forward(p.data(), pb.batch, pb.targets.data(), logp.data());
    const vector<double> seq = sequence_logps(pb.batch, logp);
    double L = 0;
    for (size_t k = 0; k < 3; ++k) {
      PairLogps in{seq[2 * k], seq[2 * k + 1], s.ref_logp_chosen[k], s.ref_logp_rejected[k],
                   s.chosen.len(int64_t(k)), s.rejected.len(int64_t(k))};
      L += (column.empty() ? 1.0 : column[k]) * pair_loss(loss, in).loss;
    }
    return L / wsum;
  };
  // The trainer's gradient, in two micro-batches (accumulation) with coefficient 1/Σa.
  vector<double> g(p.size(), 123.0);
  pair_micro_step(model, p.data(), g.data(), false, s, {0, 1}, loss, wt, {}, column, 1.0 / wsum);
  pair_micro_step(model, p.data(), g.data(), true, s, {2}, loss, wt, {}, column, 1.0 / wsum);
  // Every 7th parameter (each tensor is hit; all of them would take seconds per case).
  vector<double> a, n;
  for (size_t i = 0; i < p.size(); i += 7) {
    const double x0 = p[i], h = 1e-6;
    p[i] = x0 + h;
    const double fp = objective();
    p[i] = x0 - h;
    const double fm = objective();
    p[i] = x0;
    a.push_back(g[i]), n.push_back((fp - fm) / (2 * h));
  }
  EXPECT_ERR_LT(rel_max_err(a, n), 1e-6, errname(cs.loss + (cs.column_weights ? " column" : " uniform")));
}

INSTANTIATE_TEST_SUITE_P(Losses, TrainerFD,
                         ::testing::Values(Case{"sigmoid", 0.0, false}, Case{"sigmoid", 0.0, true},
                                           Case{"cdpo", 0.2, false}, Case{"robust", 0.2, false},
                                           Case{"ipo", 0.0, false}, Case{"simpo", 0.0, true}));

TEST(Trainer, GlobalBatchesArePermutationSlicesAndDpSharesPartitionThem) {
  std::set<int64_t> seen;
  for (int64_t step = 0; step < 5; ++step) {  // epoch 0: 5 batches of 4 from 22 (2 dropped)
    const auto g = global_batch(22, 4, 7, step);
    ASSERT_EQ(g.size(), 4u);
    const auto a = dp_share(g, 0, 2), b = dp_share(g, 1, 2);
    EXPECT_EQ(vector<int64_t>({g[0], g[1]}), a);
    EXPECT_EQ(vector<int64_t>({g[2], g[3]}), b);
    for (int64_t i : g) EXPECT_TRUE(seen.insert(i).second) << "index repeated within an epoch";
  }
  EXPECT_EQ(global_batch(22, 4, 7, 2), global_batch(22, 4, 7, 2));  // pure function of the step
  EXPECT_NE(global_batch(22, 4, 7, 5), global_batch(22, 4, 7, 0));  // next epoch reshuffles
}

TEST(Trainer, AdamWMatchesAHandComputedStep) {
  LlamaConfig c = tiny();
  const ParamLayout lay(c);
  AdamWConfig cfg;
  cfg.lr = 0.1, cfg.weight_decay = 0.5;
  AdamW opt(lay, cfg);
  vector<float> p(lay.total(), 1.0f), g(lay.total(), 0.5f);
  opt.step(p.data(), g.data(), 0.1);
  // First step: m̂ = g, v̂ = g² → update lr * g / (|g| + eps) = 0.1; matrices also decay by lr*wd.
  const size_t norm = lay.layers[0].attn_norm, mat = lay.layers[0].wqkv;
  EXPECT_NEAR(p[norm], 1.0 - 0.1, 1e-6);
  EXPECT_NEAR(p[mat], 1.0 * (1 - 0.1 * 0.5) - 0.1, 1e-6);
}

TEST(Trainer, ScheduleWarmsUpThenDecays) {
  LrSchedule s;
  s.peak = 1.0, s.warmup_steps = 4, s.total_steps = 104, s.min_lr_ratio = 0.1;
  EXPECT_NEAR(s.at(0), 0.25, 1e-12);
  EXPECT_NEAR(s.at(3), 1.0, 1e-12);
  EXPECT_NEAR(s.at(4), 1.0, 1e-12);
  EXPECT_NEAR(s.at(54), 0.55, 1e-12);
  EXPECT_NEAR(s.at(104), 0.1, 1e-12);
  s.kind = "linear";
  EXPECT_NEAR(s.at(54), 0.5, 1e-12);
}

TEST(Trainer, ClippingScalesToTheMaxNorm) {
  vector<float> g = {3.0f, 4.0f};
  const double n = grad_norm(g.data(), 2);
  EXPECT_NEAR(n, 5.0, 1e-12);
  clip_grads(g.data(), 2, n, 1.0);
  EXPECT_NEAR(grad_norm(g.data(), 2), 1.0, 1e-5);
}

}  // namespace

namespace {

// The alignments the MetaPO step uses: pair_micro_step with ĝ returns ⟨ĝ, ∇θ ℓ_k⟩ per pair (ghost
// products, the a_k·coef_scale factor divided out); "exact" takes one backward per pair.
TEST(Trainer, PairAlignmentsFromGhostProductsEqualExactPerPairGradients) {
  const LlamaConfig c = tiny();
  const PairSplit s = tiny_pairs();
  LossConfig loss;
  loss.beta = 0.5;
  LlamaModel<double> model(c);
  vector<double> p = rich_params(c);
  const vector<double> ghat = randn<double>(p.size(), 21);
  const vector<int64_t> all = {0, 1, 2};
  const vector<double> a = {0.3, 1.7, 0.01};  // arbitrary weights: must be divided out exactly
  const WeightFn weigh = [&](const vector<PairLogps>&, const vector<PairLossResult>&) { return a; };
  vector<double> g(p.size());
  const PairMicroResult r = pair_micro_step<double>(model, p.data(), g.data(), false, s, all, loss, weigh, 0.25, ghat.data());
  vector<double> exact;
  for (int64_t k : all) {
    pair_micro_step<double>(model, p.data(), g.data(), false, s, {k}, loss, Weighting::Uniform, {}, {}, 1.0);
    exact.push_back(dot(g, ghat));
  }
  EXPECT_ERR_LT(rel_max_err(r.align, exact), 1e-9, errname("align"));
}

}  // namespace

namespace {

// The three hypergradient methods of DESIGN §6 agree: ghost (one backward), exact (a backward per
// pair), fd (central difference along ĝ; in double with h = 1e-6 / max|ĝ|: truncation ~(h|ĝ|)²).
TEST(Trainer, HypergradientMethodsAgree) {
  const LlamaConfig c = tiny();
  const PairSplit s = tiny_pairs();
  LossConfig loss;
  loss.beta = 0.5;
  LlamaModel<double> model(c);
  const vector<double> p = rich_params(c);
  const vector<double> ghat = randn<double>(p.size(), 22);
  const vector<int64_t> all = {0, 1, 2};
  const WeightFn ones = [](const vector<PairLogps>& in, const vector<PairLossResult>&) {
    return vector<double>(in.size(), 1.0);
  };
  vector<double> g(p.size()), scratch(p.size());
  const vector<double> ghost =
      pair_micro_step<double>(model, p.data(), g.data(), false, s, all, loss, ones, 1.0, ghat.data()).align;
  const vector<double> exact = pair_alignments_exact<double>(model, p.data(), scratch.data(), p.size(), s, all, loss, ghat.data());
  const vector<double> fd = pair_alignments_fd<double>(model, p.data(), scratch.data(), p.size(), s, all, loss, ghat.data(), 1e-6);
  EXPECT_ERR_LT(rel_max_err(ghost, exact), 1e-10, errname("ghost vs exact"));
  EXPECT_ERR_LT(rel_max_err(fd, exact), 1e-6, errname("fd vs exact"));
}

}  // namespace
