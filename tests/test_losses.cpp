// The per-pair losses: (1) values against a plain re-implementation of TRL's expressions written here,
// (2) the analytic gradients against central finite differences, (3) values, gradients and rewards
// against goldens produced by running TRL's own code (tools/make_loss_golden.py), (4) name parsing and
// config validation, plus TRL's logged metrics.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "metapo/align/losses.h"
#include "metapo/core/error.h"
#include "metapo/train/objective.h"
#include "metapo/train/reports.h"
#include "test_util.h"

using namespace metapo;
using namespace metapo::test;
using std::vector;

namespace {

// ---------- a plain transcription of TRL's formulas (naive forms; inputs keep |x| moderate) ----------
double logsig(double x) { return std::log(1.0 / (1.0 + std::exp(-x))); }
double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

double trl_reference_loss(const LossConfig& c, const PairLogps& p) {
  const double b = c.beta, ls = c.label_smoothing;
  const double chosen_logratios = p.policy_chosen - p.ref_chosen;
  const double rejected_logratios = p.policy_rejected - p.ref_rejected;
  const double delta_score = chosen_logratios - rejected_logratios;
  const double lc = double(p.len_chosen), lr = double(p.len_rejected);
  switch (c.type) {
    case LossType::Sigmoid:
      return -logsig(b * delta_score);
    case LossType::Hinge:
      return std::max(0.0, 1 - b * delta_score);
    case LossType::Ipo: {
      const double ipo_delta = chosen_logratios / lc - rejected_logratios / lr;
      return std::pow(ipo_delta - 1 / (2 * b), 2);
    }
    case LossType::Cdpo:
      return -logsig(b * delta_score) * (1 - ls) - logsig(-b * delta_score) * ls;
    case LossType::Robust:
      return (-(1 - ls) * logsig(b * delta_score) - (-ls * logsig(-b * delta_score))) / (1 - 2 * ls);
    case LossType::ExoPair: {
      const double qw = sig(b * delta_score), ql = sig(-b * delta_score);
      return qw * (logsig(b * delta_score) - std::log1p(-ls)) + ql * (logsig(-b * delta_score) - std::log(ls));
    }
    case LossType::NcaPair: {
      const double cr = b * chosen_logratios, rr = b * rejected_logratios;
      return -logsig(cr) - 0.5 * logsig(-cr) - 0.5 * logsig(-rr);
    }
    case LossType::BcoPair:
      return -logsig(b * chosen_logratios) - logsig(-b * rejected_logratios);
    case LossType::SppoHard:
      return std::pow(chosen_logratios - 0.5 / b, 2) + std::pow(rejected_logratios + 0.5 / b, 2);
    case LossType::ApoZero:
      return (1 - sig(b * chosen_logratios)) + sig(b * rejected_logratios);
    case LossType::ApoDown:
      return sig(b * chosen_logratios) + (1 - sig(b * (chosen_logratios - rejected_logratios)));
    case LossType::Discopop: {
      const double logits = delta_score * b;
      const double mod = sig(logits / c.discopop_tau);
      return -logsig(logits) * (1 - mod) + std::exp(-logits) * mod;
    }
    case LossType::SigmoidNorm:
      return -logsig(b * (chosen_logratios / lc - rejected_logratios / lr));
    case LossType::Simpo: {  // CPOTrainer.cpo_loss on get_batch_logps(average_log_prob=True)
      const double logits = p.policy_chosen / lc - p.policy_rejected / lr - c.simpo_gamma / b;
      return -logsig(b * logits) * (1 - ls) - logsig(-b * logits) * ls;
    }
  }
  return NAN;
}

// A setting each loss is used with (the TRL / paper defaults where they exist).
LossConfig typical_config(LossType t) {
  LossConfig c;
  c.type = t;
  if (t == LossType::Cdpo || t == LossType::Robust) c.label_smoothing = 0.1;
  if (t == LossType::ExoPair) c.label_smoothing = 1e-3;
  if (t == LossType::Simpo) c.beta = 2.0, c.simpo_gamma = 1.0;  // SimPO paper: β = 2, γ/β = 0.5
  validate(c);
  return c;
}

// Summed log-probs like a real model's: ~0.5-2.5 nats per token, the policy a few nats from the reference.
vector<PairLogps> random_pairs(int n, uint64_t seed) {
  Philox r(seed, 1, 2, 3);
  vector<PairLogps> v(static_cast<size_t>(n));
  for (auto& p : v) {
    p.len_chosen = 1 + int64_t(r.below(200));
    p.len_rejected = 1 + int64_t(r.below(200));
    p.ref_chosen = -double(p.len_chosen) * (0.5 + 2.0 * r.next_u32() / 4294967296.0);
    p.ref_rejected = -double(p.len_rejected) * (0.5 + 2.0 * r.next_u32() / 4294967296.0);
    p.policy_chosen = p.ref_chosen + 8.0 * r.normal();
    p.policy_rejected = p.ref_rejected + 8.0 * r.normal();
  }
  return v;
}

// |a - b| relative to |b|; exact zeros (hinge) compare equal.
double rel_err(double a, double b) { return a == b ? 0.0 : std::abs(a - b) / std::max(std::abs(b), 1e-300); }

class Losses : public ::testing::TestWithParam<LossType> {};

std::string param_name(const ::testing::TestParamInfo<LossType>& info) { return loss_name(info.param); }

}  // namespace

// ---------- (1) values against the transcription ----------
// Both sides are double; the transcription's naive log(1/(1+e^-x)) and the library's stable form
// differ by a few ulps of the terms. Relative to the loss that stays below 1e-12 unless the terms
// cancel (robust, whose two terms have opposite signs), so the error is measured against the larger
// term magnitude, |ℓ| + 1, which for these O(1)-O(100) losses is the scale that rounding works at.
TEST_P(Losses, ValueMatchesTrlTranscription) {
  const LossConfig c = typical_config(GetParam());
  double worst = 0;
  for (const PairLogps& p : random_pairs(64, 7)) {
    const double ref = trl_reference_loss(c, p);
    worst = std::max(worst, std::abs(pair_loss(c, p).loss - ref) / (std::abs(ref) + 1.0));
  }
  EXPECT_ERR_LT(worst, 1e-12, errname("loss vs transcription"));
}

// ---------- (2) gradients against central differences ----------
// h = 2^-14 (6e-5), a power of two so that pc ± h is exact and the step is exactly h. Rounding in ℓ
// (~1e-16 |ℓ|) over 2h is ~1e-12 absolute, against gradients as small as β/|y| ~ 1e-4 (sigmoid_norm);
// truncation h²|f'''|/6 is largest for discopop (f''' ~ β³/τ²): ~1e-9 absolute. The error is taken
// relative to the larger of the two partials; worst measured ~3e-9, so 1e-7 leaves a 30x margin.
TEST_P(Losses, GradientMatchesFiniteDifferences) {
  const LossConfig c = typical_config(GetParam());
  double worst = 0;
  for (PairLogps p : random_pairs(16, 11)) {
    const double x = c.beta * ((p.policy_chosen - p.ref_chosen) - (p.policy_rejected - p.ref_rejected));
    if (c.type == LossType::Hinge && std::abs(1.0 - x) < 1e-3) continue;  // the kink: no derivative
    vector<double> v = {p.policy_chosen, p.policy_rejected};
    auto f = [&] {
      PairLogps q = p;
      q.policy_chosen = v[0], q.policy_rejected = v[1];
      return pair_loss(c, q).loss;
    };
    const PairLossResult r = pair_loss(c, p);
    const vector<double> fd = fd_grad(v, f, std::ldexp(1.0, -14));
    worst = std::max(worst, rel_max_err(vector<double>{r.d_policy_chosen, r.d_policy_rejected}, fd));
  }
  EXPECT_ERR_LT(worst, 1e-7, errname("grad vs FD"));
}

// The DPO family pushes chosen up and rejected down, and TRL's rewards are β·(policy − ref) (or
// β·π̄ for simpo); margin is their difference.
TEST_P(Losses, RewardsAreTrls) {
  const LossConfig c = typical_config(GetParam());
  for (const PairLogps& p : random_pairs(8, 3)) {
    const PairLossResult r = pair_loss(c, p);
    if (c.type == LossType::Simpo) {
      EXPECT_DOUBLE_EQ(r.reward_chosen, c.beta * p.policy_chosen / double(p.len_chosen));
      EXPECT_DOUBLE_EQ(r.reward_rejected, c.beta * p.policy_rejected / double(p.len_rejected));
    } else {
      EXPECT_DOUBLE_EQ(r.reward_chosen, c.beta * (p.policy_chosen - p.ref_chosen));
      EXPECT_DOUBLE_EQ(r.reward_rejected, c.beta * (p.policy_rejected - p.ref_rejected));
    }
    EXPECT_EQ(r.margin, r.reward_chosen - r.reward_rejected);
  }
}

// ---------- weights as label confidences (MetaPO --meta-apply confidence) ----------
// ℓ(u) = (1+u)/2 ℓ + (1−u)/2 ℓ_swapped, built here from the pair with chosen and rejected swapped by
// hand; its gradient and ∂²ℓ/∂u∂policy against central differences (same step and bar as above).
TEST_P(Losses, ConfidenceMixesThePairWithItsSwappedSelf) {
  const LossConfig c = typical_config(GetParam());
  double worst_value = 0, worst_grad = 0, worst_du = 0;
  Philox r(5, 1, 2, 3);
  for (PairLogps p : random_pairs(16, 13)) {
    const double u = r.next_u32() / 4294967296.0;
    const double x = c.beta * ((p.policy_chosen - p.ref_chosen) - (p.policy_rejected - p.ref_rejected));
    if (c.type == LossType::Hinge && std::abs(std::abs(x) - 1.0) < 1e-3) continue;  // either kink
    const PairLogps sw{p.policy_rejected, p.policy_chosen, p.ref_rejected, p.ref_chosen, p.len_rejected, p.len_chosen};
    const ConfidencePairLoss cl = confidence_pair_loss(c, p, u);
    const double want = 0.5 * (1 + u) * pair_loss(c, p).loss + 0.5 * (1 - u) * pair_loss(c, sw).loss;
    worst_value = std::max(worst_value, std::abs(cl.mixed.loss - want) / (std::abs(want) + 1.0));
    EXPECT_EQ(cl.mixed.margin, pair_loss(c, p).margin);
    vector<double> v = {p.policy_chosen, p.policy_rejected};
    auto at = [&](double uu) {
      return [&, uu] {
        PairLogps q = p;
        q.policy_chosen = v[0], q.policy_rejected = v[1];
        return confidence_pair_loss(c, q, uu).mixed.loss;
      };
    };
    const vector<double> fd = fd_grad(v, at(u), std::ldexp(1.0, -14));
    worst_grad = std::max(worst_grad, rel_max_err(vector<double>{cl.mixed.d_policy_chosen, cl.mixed.d_policy_rejected}, fd));
    // ℓ is linear in u, so ∂²ℓ/∂u∂policy = ∇ℓ(1) − ∇ℓ(0).
    const vector<double> f1 = fd_grad(v, at(1.0), std::ldexp(1.0, -14)), f0 = fd_grad(v, at(0.0), std::ldexp(1.0, -14));
    worst_du = std::max(worst_du, rel_max_err(vector<double>{cl.du_chosen, cl.du_rejected},
                                              vector<double>{f1[0] - f0[0], f1[1] - f0[1]}));
  }
  EXPECT_ERR_LT(worst_value, 1e-12, errname("confidence loss vs its definition"));
  EXPECT_ERR_LT(worst_grad, 1e-7, errname("confidence grad vs FD"));
  EXPECT_ERR_LT(worst_du, 1e-7, errname("confidence d/du grad vs FD"));
}

INSTANTIATE_TEST_SUITE_P(All, Losses, ::testing::ValuesIn(all_losses()), param_name);

// For the sigmoid loss, confidence u is cdpo with label smoothing ε = (1−u)/2: u = 0 has no
// preference (the loss is smallest at margin 0), u = 1 is DPO.
TEST(Losses, SigmoidConfidenceIsCdpo) {
  LossConfig dpo, cdpo;
  cdpo.type = LossType::Cdpo;
  for (const PairLogps& p : random_pairs(8, 17))
    for (double u : {0.0, 0.3, 0.9, 1.0}) {
      cdpo.label_smoothing = 0.5 * (1 - u);
      const ConfidencePairLoss cl = confidence_pair_loss(dpo, p, u);
      const PairLossResult want = pair_loss(u == 1.0 ? dpo : cdpo, p);
      EXPECT_NEAR(cl.mixed.loss, want.loss, 1e-12 * (1 + std::abs(want.loss)));
      EXPECT_NEAR(cl.mixed.d_policy_chosen, want.d_policy_chosen, 1e-12);
      EXPECT_NEAR(cl.mixed.d_policy_rejected, want.d_policy_rejected, 1e-12);
    }
}

// Saturated sigmoids stay finite (the stable forms), where naive formulas would give inf or NaN.
TEST(Losses, ExtremeMarginsStayFinite) {
  for (LossType t : all_losses()) {
    const LossConfig c = typical_config(t);
    for (double d : {-2e4, -800.0, 800.0, 2e4}) {
      PairLogps p{-100.0 + d / 2, -100.0 - d / 2, -100.0, -100.0, 50, 50};
      const PairLossResult r = pair_loss(c, p);
      EXPECT_TRUE(std::isfinite(r.loss) && std::isfinite(r.d_policy_chosen) && std::isfinite(r.d_policy_rejected))
          << loss_name(t) << " at log-ratio gap " << d;
    }
  }
}

// ---------- (3) against TRL itself ----------
TEST(Losses, MatchesTrlGolden) {
  const std::string path = std::string(METAPO_TEST_DATA) + "/loss_golden.json";
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot open " << path << " (python3 tools/make_loss_golden.py writes it)";
  const nlohmann::json g = nlohmann::json::parse(in);

  vector<PairLogps> pairs;
  for (const auto& j : g["pairs"])
    pairs.push_back({j["policy_chosen"].get<double>(), j["policy_rejected"].get<double>(), j["ref_chosen"].get<double>(),
                     j["ref_rejected"].get<double>(), j["len_chosen"].get<int64_t>(), j["len_rejected"].get<int64_t>()});
  ASSERT_FALSE(pairs.empty());

  vector<std::string> seen;
  double worst_loss = 0, worst_grad = 0, worst_reward = 0;
  for (const auto& cs : g["cases"]) {
    const auto& jc = cs["config"];
    LossConfig c;
    c.type = parse_loss(jc["loss"].get<std::string>());
    c.beta = jc["beta"].get<double>();
    c.label_smoothing = jc["label_smoothing"].get<double>();
    c.simpo_gamma = jc["simpo_gamma"].get<double>();
    c.discopop_tau = jc["discopop_tau"].get<double>();
    validate(c);
    seen.push_back(loss_name(c.type));
    const auto& res = cs["results"];
    ASSERT_EQ(res.size(), pairs.size());
    double case_worst = 0;
    for (size_t i = 0; i < pairs.size(); ++i) {
      const PairLossResult r = pair_loss(c, pairs[i]);
      const auto& e = res[i];
      const double el = rel_err(r.loss, e["loss"].get<double>());
      const double eg = std::max(rel_err(r.d_policy_chosen, e["d_policy_chosen"].get<double>()),
                                 rel_err(r.d_policy_rejected, e["d_policy_rejected"].get<double>()));
      const double er = std::max(rel_err(r.reward_chosen, e["reward_chosen"].get<double>()),
                                 rel_err(r.reward_rejected, e["reward_rejected"].get<double>()));
      worst_loss = std::max(worst_loss, el), worst_grad = std::max(worst_grad, eg);
      worst_reward = std::max(worst_reward, er);
      case_worst = std::max({case_worst, el, eg, er});
      EXPECT_LT(std::max({el, eg, er}), 1e-9) << jc.dump() << " pair " << i << " (" << cs["source"] << ")";
    }
    std::printf("[err] golden %-60s %.3e\n", jc.dump().c_str(), case_worst);
  }
  // Both sides are double evaluations of the same expressions in a different order: ~1e-15 expected.
  EXPECT_ERR_LT(worst_loss, 1e-9, errname("loss vs TRL"));
  EXPECT_ERR_LT(worst_grad, 1e-9, errname("grad vs TRL autograd"));
  EXPECT_ERR_LT(worst_reward, 1e-9, errname("rewards vs TRL metrics"));
  // Every loss has a golden.
  for (LossType t : all_losses())
    EXPECT_NE(std::find(seen.begin(), seen.end(), loss_name(t)), seen.end()) << loss_name(t) << " has no golden";
}

// ---------- (4) names and validation ----------
TEST(Losses, NamesRoundTrip) {
  for (LossType t : all_losses()) EXPECT_EQ(parse_loss(loss_name(t)), t);
  EXPECT_EQ(parse_loss("sigmoid"), LossType::Sigmoid);
  EXPECT_EQ(parse_loss("simpo"), LossType::Simpo);
  EXPECT_EQ(all_losses().size(), 14u);
}

TEST(Losses, UnknownNameListsValidOnes) {
  const std::string msg = error_of([] { parse_loss("dpo"); });
  EXPECT_EQ(msg.rfind("--loss dpo: unknown loss (valid: sigmoid, ipo, hinge, cdpo, robust, simpo, ", 0), 0u) << msg;
  EXPECT_NE(msg.find("sigmoid_norm)"), std::string::npos) << msg;
  EXPECT_NE(error_of([] { parse_loss("Sigmoid"); }), "(no error)");  // names are exact, like TRL's
  EXPECT_NE(error_of([] { parse_loss(""); }), "(no error)");
}

TEST(Losses, ValidateRejectsBadSettings) {
  auto bad = [](LossType t, double beta, double ls, const char* needle) {
    LossConfig c;
    c.type = t, c.beta = beta, c.label_smoothing = ls;
    const std::string msg = error_of([&] { validate(c); });
    EXPECT_NE(msg.find(needle), std::string::npos) << loss_name(t) << ": " << msg;
  };
  bad(LossType::Sigmoid, 0.0, 0.0, "--beta 0: must be finite and > 0");
  bad(LossType::Ipo, -1.0, 0.0, "--beta -1");
  bad(LossType::Sigmoid, NAN, 0.0, "--beta");
  bad(LossType::Sigmoid, INFINITY, 0.0, "--beta inf: must be finite and > 0");
  bad(LossType::Cdpo, 0.1, 0.0, "needs 0 < label_smoothing < 0.5");
  bad(LossType::Robust, 0.1, 0.5, "needs 0 < label_smoothing < 0.5");
  bad(LossType::ExoPair, 0.1, 0.0, "EXO recommends 1e-3");
  bad(LossType::Simpo, 2.0, -0.1, "0 <= label_smoothing < 0.5");
  bad(LossType::Sigmoid, 0.1, 0.1, "does not use label smoothing");
  bad(LossType::Hinge, 0.1, 0.2, "does not use label smoothing");

  LossConfig d;
  d.type = LossType::Discopop, d.discopop_tau = 0;
  EXPECT_NE(error_of([&] { validate(d); }).find("--discopop-tau 0: must be > 0"), std::string::npos);
  LossConfig s;
  s.type = LossType::Simpo, s.simpo_gamma = INFINITY;
  EXPECT_NE(error_of([&] { validate(s); }).find("--simpo-gamma"), std::string::npos);

  for (LossType t : all_losses()) EXPECT_NO_THROW(typical_config(t)) << loss_name(t);
}

TEST(Losses, LengthNormalizedLossesNeedLengths) {
  const PairLogps p{-10, -12, -11, -11, 0, 5};
  for (LossType t : all_losses()) {
    const LossConfig c = typical_config(t);
    const std::string msg = error_of([&] { pair_loss(c, p); });
    if (loss_is_length_normalized(t))
      EXPECT_NE(msg.find("divides by response lengths, got len_chosen = 0"), std::string::npos) << msg;
    else
      EXPECT_EQ(msg, "(no error)") << loss_name(t);
  }
  EXPECT_FALSE(loss_uses_reference(LossType::Simpo));
  EXPECT_TRUE(loss_uses_reference(LossType::Sigmoid));
}

// ---------- TRL's logged metrics ----------
// What metrics.jsonl and eval log (PairStats through stats_json, the trainer's and eval's path),
// against values by hand; through an all-reduce's merge too.
TEST(Losses, PairStatsGiveTrlMetrics) {
  LossConfig c;
  const PairLogps a{-10, -20, -12, -19, 4, 5};  // rewards 0.2, -0.1: correct order
  const PairLogps b{-30, -10, -29, -12, 6, 2};   // rewards -0.1, 0.2: wrong order
  PairStats s, t;
  s.add(c, a, pair_loss(c, a), 1.0);
  t.add(c, b, pair_loss(c, b), 1.0);
  s.merge(t);
  const nlohmann::json m = stats_json(s, "");
  EXPECT_NEAR(m["rewards/chosen"].get<double>(), (0.2 - 0.1) / 2, 1e-15);
  EXPECT_NEAR(m["rewards/rejected"].get<double>(), (-0.1 + 0.2) / 2, 1e-15);
  EXPECT_EQ(m["rewards/accuracies"].get<double>(), 0.5);
  EXPECT_NEAR(m["rewards/margins"].get<double>(), (0.3 - 0.3) / 2, 1e-15);
  EXPECT_EQ(m["logps/chosen"].get<double>(), -20.0);
  EXPECT_EQ(m["logps/rejected"].get<double>(), -15.0);

  // simpo (CPOTrainer) logs per-token averages, as its loss uses them.
  LossConfig sc;
  sc.type = LossType::Simpo, sc.beta = 2.0;
  PairStats ss;
  ss.add(sc, a, pair_loss(sc, a), 1.0);
  EXPECT_EQ(stats_json(ss, "")["logps/chosen"].get<double>(), -10.0 / 4);
  EXPECT_EQ(stats_json(ss, "")["logps/rejected"].get<double>(), -20.0 / 5);
}
