// The trainer's gradient of the whole preference objective (pairs → packed forward → TRL loss →
// per-token coefficients → backward) against central finite differences in double, for several
// losses and for constant per-pair weights; plus the data order, the optimizer, and whole MetaPO runs
// (run_dpo in this process, an MPI singleton) under two micro-batchings.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "metapo/comm/comm.h"
#include "metapo/comm/topology.h"
#include "metapo/data/synth.h"
#include "metapo/io/dataset_h5.h"
#include "metapo/io/hf_model.h"
#include "metapo/model/config.h"
#include "metapo/model/init.h"
#include "metapo/train/dpo.h"
#include "metapo/train/metapo.h"
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

// With weights as label confidences (--meta-apply confidence) the alignment is that of ∂ℓ(u)/∂u. The
// ghost path divides each sequence's dot by its own coefficient, which depends on u; exact and fd do
// not. Weights from 0 to 1, and every loss: those whose policy term is the margin alone share the
// ratio du / coef on both sequences and take pair sums of the dots (ghost group 2), the others
// (nca_pair, bco_pair, sppo_hard, apo_*) per-sequence dots; hinge at u = 0 has a zero coefficient
// inside its margin (the floored coefficient must keep the pair's ratio).
TEST(Trainer, ConfidenceHypergradientMethodsAgree) {
  const LlamaConfig c = tiny();
  const PairSplit s = tiny_pairs();
  for (LossType type : all_losses()) {
    LossConfig loss;
    loss.type = type, loss.beta = 0.5, loss.weights_as_confidence = true;
    if (loss_uses_label_smoothing(type)) loss.label_smoothing = 0.1;  // exo_pair is 0 without it
    LlamaModel<double> model(c);
    const vector<double> p = rich_params(c);
    const vector<double> ghat = randn<double>(p.size(), 23);
    const vector<int64_t> all = {0, 1, 2};
    const WeightFn spread = [](const vector<PairLogps>& in, const vector<PairLossResult>&) {
      vector<double> w;
      for (size_t k = 0; k < in.size(); ++k) w.push_back(double(k) / 2.0);  // 0, ½, 1
      return w;
    };
    vector<double> g(p.size()), scratch(p.size());
    const vector<double> ghost =
        pair_micro_step<double>(model, p.data(), g.data(), false, s, all, loss, spread, 1.0, ghat.data()).align;
    const vector<double> exact =
        pair_alignments_exact<double>(model, p.data(), scratch.data(), p.size(), s, all, loss, ghat.data());
    const vector<double> fd =
        pair_alignments_fd<double>(model, p.data(), scratch.data(), p.size(), s, all, loss, ghat.data(), 1e-6);
    EXPECT_ERR_LT(rel_max_err(ghost, exact), 1e-10, errname("ghost vs exact, ") + loss_name(type));
    EXPECT_ERR_LT(rel_max_err(fd, exact), 1e-6, errname("fd vs exact, ") + loss_name(type));
    // Not the base loss's alignments (which the same pairs give without the flag; for some losses, e.g.
    // apo_zero, ℓ(1) − ℓ(0) has the base loss's gradient).
    if (type != LossType::Sigmoid && type != LossType::Ipo) continue;
    loss.weights_as_confidence = false;
    const vector<double> base =
        pair_alignments_exact<double>(model, p.data(), scratch.data(), p.size(), s, all, loss, ghat.data());
    EXPECT_GT(rel_max_err(base, exact), 1e-3);
  }
}

}  // namespace

namespace {

// A made-up MetaPO step over 16 pairs: 8 of them (every pair comes back, with history), their
// log-probs and losses, and alignments (with `related`, partly the margin: something for the gate to
// see). Draws from r in a fixed order.
struct MadeUpStep {
  std::vector<int64_t> batch;
  std::vector<PairLogps> in;
  std::vector<PairLossResult> out;
  std::vector<double> align;
};
MadeUpStep made_up_step(Philox& r, int64_t step, bool related) {
  MadeUpStep m{{}, std::vector<PairLogps>(8), std::vector<PairLossResult>(8), std::vector<double>(8)};
  for (int64_t k = 0; k < 8; ++k) m.batch.push_back((step * 8 + k * 3) % 16);
  for (size_t k = 0; k < 8; ++k) {
    m.in[k] = {-10 + r.normal(), -12 + r.normal(), -11, -11, 5, 6};
    m.out[k].margin = 0.1 * (m.in[k].policy_chosen - m.in[k].policy_rejected), m.out[k].loss = 0.7 + 0.1 * r.normal();
    m.align[k] = r.normal() + (related ? m.out[k].margin : 0.0);
  }
  return m;
}

// MetaPOState alone (SelfComm, no model): the weights of a step are made with the standardizer as of
// the start of the step, whatever the micro-batches it comes in; the step's features enter the
// statistics at end_step. Several steps with meta updates (made-up alignments), so the net moves and
// the pairs gather history: one micro-batch of 8 and four of 2 give bit-identical weights, nets and
// statistics.
TEST(Trainer, MetaPOWeightsOfAStepDoNotDependOnItsMicroBatches) {
  PairSplit s;
  for (int64_t i = 0; i < 16; ++i) s.sample_id.push_back(100 + i);
  MetaConfig mc;
  mc.lr = 0.05;
  mc.gate = 0;  // the net's own weights, so that the comparison sees them differ between pairs
  SelfComm c1, c2;
  MetaPOState one(mc, 115, 7, c1), four(mc, 115, 7, c2);
  Philox r(3, 1, 2, 3);
  double spread = 0;  // the largest difference between two weights of a batch
  for (int64_t step = 0; step < 6; ++step) {
    const auto [batch, in, out, align] = made_up_step(r, step, false);
    const std::vector<double> a1 = one.weights(s, batch, in, out);
    const double before = four.standardizer().count(kFeatMargin);
    std::vector<double> a4;
    for (size_t m = 0; m < 8; m += 2) {
      const std::vector<int64_t> chunk(batch.begin() + long(m), batch.begin() + long(m + 2));
      const std::vector<PairLogps> ci(in.begin() + long(m), in.begin() + long(m + 2));
      const std::vector<PairLossResult> co(out.begin() + long(m), out.begin() + long(m + 2));
      const std::vector<double> a = four.weights(s, chunk, ci, co);
      a4.insert(a4.end(), a.begin(), a.end());
      EXPECT_EQ(four.standardizer().count(kFeatMargin), before) << "statistics changed within step " << step;
    }
    EXPECT_EQ(a1, a4) << "step " << step;
    for (double a : a1) spread = std::max(spread, std::abs(a - a1[0]));
    double sum_a = 0;
    for (double a : a1) sum_a += a;
    one.end_step(step, &align, 8, sum_a);
    four.end_step(step, &align, 8, sum_a);
    EXPECT_EQ(four.standardizer().count(kFeatMargin), before + 8) << "step " << step;
    EXPECT_EQ(one.standardizer().state(), four.standardizer().state()) << "step " << step;
    EXPECT_EQ(one.net().params(), four.net().params()) << "step " << step;
  }
  EXPECT_GT(one.standardizer().count(kFeatMarginEma), 0) << "no pair got history";
  EXPECT_GT(spread, 1e-3) << "the weights never differed between pairs: the comparison would be trivial";
}


// The significance gate changes what the policy trains on, not what the weight net learns: with a
// gate that never opens (Z huge) weights() returns 1 for every pair while the net, the standardizer
// and the gate's statistics evolve exactly as without the gate; with --meta-gate off γ stays 1 and
// the weights are the net's own.
TEST(Trainer, MetaPOGateChangesTheAppliedWeightsNotTheNet) {
  PairSplit s;
  for (int64_t i = 0; i < 16; ++i) s.sample_id.push_back(i);
  MetaConfig plain, gated;
  plain.lr = gated.lr = 0.05;
  plain.gate = 0, gated.gate = 1e9;
  SelfComm c1, c2;
  MetaPOState p(plain, 15, 7, c1), g(gated, 15, 7, c2);
  Philox r(3, 1, 2, 3);
  double spread = 0;
  for (int64_t step = 0; step < 6; ++step) {
    const auto [batch, in, out, align] = made_up_step(r, step, true);
    const std::vector<double> ap = p.weights(s, batch, in, out), ag = g.weights(s, batch, in, out);
    EXPECT_EQ(ag, std::vector<double>(8, 1.0)) << "step " << step;
    for (double a : ap) spread = std::max(spread, std::abs(a - ap[0]));
    double sum_p = 0;
    for (double a : ap) sum_p += a;
    p.end_step(step, &align, 8, sum_p);
    g.end_step(step, &align, 8, 8.0);
    EXPECT_EQ(p.net().params(), g.net().params()) << "step " << step;
    EXPECT_EQ(p.standardizer().state(), g.standardizer().state()) << "step " << step;
    EXPECT_EQ(p.gate().gamma, 1.0);
    EXPECT_EQ(g.gate().gamma, 0.0);
  }
  EXPECT_GT(spread, 1e-3) << "the weights never differed between pairs: the comparison would be trivial";
  EXPECT_GT(g.gate().n, 0) << "the gate took in no correlation";
  EXPECT_EQ(p.gate().n, 0) << "without --meta-gate no statistics are kept";
}

}  // namespace

namespace {

// run_dpo needs MPI (its Topology splits MPI_COMM_WORLD): initialized on first use (a singleton
// without a launcher), finalized after the last test.
class MpiOnDemand : public ::testing::Environment {
 public:
  void TearDown() override {
    int init = 0, fin = 0;
    MPI_Initialized(&init), MPI_Finalized(&fin);
    if (init && !fin) MPI_Finalize();
  }
};
[[maybe_unused]] const auto* const kMpiOnDemand = ::testing::AddGlobalTestEnvironment(new MpiOnDemand);

void ensure_mpi() {
  int init = 0, provided = 0;
  MPI_Initialized(&init);
  if (!init) MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
}

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  std::vector<nlohmann::json> v;
  for (std::string line; std::getline(f, line);)
    if (!line.empty()) v.push_back(nlohmann::json::parse(line));
  return v;
}

// --meta-lr not given: kMetaLrBudget over the number of steps is_meta_step selects, counted here one
// by one; a given value is kept.
TEST(Trainer, MetaLearningRateByTheRunsLength) {
  for (int64_t interval : {1, 3, 4})
    for (int64_t warmup : {0, 5, 10})
      for (int64_t total : {1, 5, 10, 11, 125, 375}) {
        MetaConfig mc;
        mc.interval = interval, mc.warmup = warmup;
        int64_t n = 0;
        for (int64_t step = 0; step < total; ++step) n += is_meta_step(mc, step);
        EXPECT_EQ(meta_updates(mc, total), n) << interval << " " << warmup << " " << total;
        EXPECT_EQ(meta_lr(mc, total), kMetaLrBudget / double(std::max<int64_t>(n, 1)));
        mc.lr = 5e-4;
        EXPECT_EQ(meta_lr(mc, total), 5e-4);
      }
  MetaConfig mc;
  EXPECT_DOUBLE_EQ(meta_lr(mc, 375), 1e-3);  // 3 epochs of 4000 pairs at batch 32
  EXPECT_DOUBLE_EQ(meta_lr(mc, 125), 3e-3);  // one epoch
  mc.interval = 4;
  EXPECT_DOUBLE_EQ(meta_lr(mc, 376), 0.375 / 94);
}

// MetaPO's weights, and so the whole run, depend on the global batch only: one rank with micro-batch 2
// (4 micro-batches per step) and with micro-batch 8 (one) give the same per-step losses, weights and
// weight net, up to fp32 summation order in the packed forwards and the gradient accumulation. The
// feature standardizer takes each step's features in once, at the end of the step (DESIGN §6); when it
// took each micro-batch in before standardizing it, the later micro-batches of a step were standardized
// with the earlier ones' statistics. The refresh pass gives pairs history from the second step on, so
// the temporal features and their statistics take part; the reference is another model, so margins
// are nonzero from the first step.
TEST(Trainer, MetaPORunDependsOnTheGlobalBatchNotOnTheMicroBatching) {
  ensure_mpi();
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("metapo-test-trainer-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const LlamaConfig c = config_from_ini(METAPO_TEST_DATA "/../../configs/presets/tiny.ini");
  save_hf_model((dir / "policy").string(), c, init_params(c, 1));
  save_hf_model((dir / "ref").string(), c, init_params(c, 2));
  Topology topo = Topology::create(1, 1);
  {
    SynthConfig sc;
    sc.task = "sort", sc.flip = 0.25, sc.seed = 3;
    sc.n_train = 32, sc.n_val = 16, sc.n_test = 0, sc.n_sft = 0;
    Dataset d = make_synth(sc);
    // The reference log-probs once, into the file, so both runs read the same values.
    for (auto& [name, split] : d.pairs) ensure_ref_logps(split, name, (dir / "ref").string(), MicroBatching{8, 0}, topo);
    write_dataset((dir / "data.h5").string(), d);
  }
  auto train = [&](int64_t micro) {
    TrainConfig cfg;
    cfg.model_dir = (dir / "policy").string(), cfg.ref_model_dir = (dir / "ref").string();
    cfg.data_path = (dir / "data.h5").string();
    cfg.out_dir = (dir / ("micro" + std::to_string(micro))).string();
    cfg.weighting = Weighting::Metapo;
    cfg.batch_size = 8, cfg.micro_batch = micro, cfg.max_steps = 12;  // 3 epochs of 32 pairs
    cfg.sched.peak = 1e-3, cfg.sched.warmup_steps = 1;
    cfg.seed = 5;
    cfg.meta.val_batch = 8, cfg.meta.refresh_every = 1, cfg.meta.refresh_pairs = 16;
    cfg.meta.gate = 0;  // the weights as learned: a 12-step run would keep the significance gate shut
    // The rate this test's tolerances were set at (by the run's length a 12-step run would take
    // 0.375/12, which amplifies the fp32 summation-order differences of the micro-batchings 30-fold).
    cfg.meta.lr = 1e-3;
    EXPECT_EQ(run_dpo(topo, cfg), 0);
    return cfg.out_dir;
  };
  const std::string r2 = train(2), r8 = train(8);
  const std::vector<nlohmann::json> m2 = read_jsonl(r2 + "/metrics.jsonl"), m8 = read_jsonl(r8 + "/metrics.jsonl");
  ASSERT_EQ(m2.size(), 12u);
  ASSERT_EQ(m8.size(), 12u);
  double loss = 0, wmean = 0, wstd = 0, max_std = 0;
  for (size_t k = 0; k < m2.size(); ++k) {
    const double l8 = m8[k]["loss"].get<double>();
    loss = std::max(loss, std::abs(m2[k]["loss"].get<double>() - l8) / std::abs(l8));
    wmean = std::max(wmean, std::abs(m2[k]["weights/mean"].get<double>() - m8[k]["weights/mean"].get<double>()));
    wstd = std::max(wstd, std::abs(m2[k]["weights/std"].get<double>() - m8[k]["weights/std"].get<double>()));
    max_std = std::max(max_std, m8[k]["weights/std"].get<double>());
  }
  EXPECT_GT(max_std, 1e-3) << "the weight net never moved: the weights would agree trivially";
  EXPECT_ERR_LT(loss, 1e-6, errname("per-step loss, micro 2 vs 8 (relative)"));
  EXPECT_ERR_LT(wmean, 1e-6, errname("per-step weights/mean, micro 2 vs 8"));
  EXPECT_ERR_LT(wstd, 1e-6, errname("per-step weights/std, micro 2 vs 8"));
  auto net = [](const std::string& run) {
    nlohmann::json j;
    std::ifstream(run + "/metapo.json") >> j;
    return j["net"]["params"].get<std::vector<double>>();
  };
  EXPECT_ERR_LT(rel_max_err(net(r2), net(r8)), 1e-4, errname("weight-net parameters, micro 2 vs 8"));
  fs::remove_all(dir);
}

}  // namespace
