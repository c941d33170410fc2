// Golden test of one DPO micro-step against TRL: tools/make_dpo_golden.py ran TRL's own
// DPOTrainer._compute_loss (float64, on tests/data/golden/llama_gqa) on the preference pairs of
// tests/data/golden_dpo/pairs.json and recorded the batch loss, TRL's per-pair rewards and policy
// log-probs, and the gradient of the mean loss w.r.t. every parameter. The trainer's
// pair_micro_step<float> (packed forward, pair_loss, backward with coefficient 1/B per pair) must
// meet the per-quantity tolerances recorded beside the data (tolerances.json, derived from TRL's own
// fp32 error).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "metapo/io/hf_model.h"
#include "metapo/io/safetensors.h"
#include "metapo/train/dpo.h"
#include "test_util.h"

using namespace metapo;
using namespace metapo::test;
using std::vector;

namespace {

const std::string kDir = std::string(METAPO_TEST_DATA) + "/golden_dpo";

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  return nlohmann::json::parse(in);
}

// The golden values at full (F64) precision: SafetensorsReader::read converts to fp32, so the bytes
// are read here from the byte range the reader validated.
class F64File {
 public:
  explicit F64File(const std::string& path) : st_(path), in_(path, std::ios::binary) {
    uint64_t header = 0;
    in_.read(reinterpret_cast<char*>(&header), 8);  // little-endian, as the format specifies
    data_start_ = 8 + header;
  }
  bool has(const std::string& name) const { return st_.find(name) != nullptr; }
  vector<double> read(const std::string& name) {
    const SafetensorsEntry* e = st_.find(name);
    EXPECT_NE(e, nullptr) << name;
    if (!e) return {};
    EXPECT_EQ(e->dtype, "F64") << name;
    vector<double> v(e->numel);
    in_.seekg(std::streamoff(data_start_ + e->begin));
    in_.read(reinterpret_cast<char*>(v.data()), std::streamsize(e->numel * sizeof(double)));
    EXPECT_TRUE(in_) << name;
    return v;
  }
  const vector<SafetensorsEntry>& tensors() const { return st_.tensors(); }

 private:
  SafetensorsReader st_;
  std::ifstream in_;
  uint64_t data_start_ = 0;
};

PairSplit read_pairs(const nlohmann::json& j) {
  PairSplit s;
  const size_t B = j["prompt"].size();
  for (size_t i = 0; i < B; ++i) {
    s.prompt.push(j["prompt"][i].get<vector<int32_t>>());
    s.chosen.push(j["chosen"][i].get<vector<int32_t>>());
    s.rejected.push(j["rejected"][i].get<vector<int32_t>>());
    s.sample_id.push_back(int64_t(i));
  }
  s.ref_logp_chosen = j["ref_logps_chosen"].get<vector<double>>();
  s.ref_logp_rejected = j["ref_logps_rejected"].get<vector<double>>();
  return s;
}

class DpoGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(DpoGolden, OneMicroStepMatchesTrl) {
  const std::string L = GetParam();
  const nlohmann::json pairs = read_json(kDir + "/pairs.json");
  const nlohmann::json tol = read_json(kDir + "/tolerances.json");
  F64File expected(kDir + "/expected.safetensors");
  const HfModel hf = load_hf_model(std::string(METAPO_TEST_DATA) + "/" + pairs["model"].get<std::string>());
  const PairSplit s = read_pairs(pairs);
  const int64_t B = s.size();
  ASSERT_GE(B, 2);

  LossConfig loss;
  bool found = false;
  for (const auto& c : pairs["losses"])
    if (c["name"] == L) {
      loss.type = parse_loss(L);
      loss.beta = c["beta"].get<double>();
      loss.label_smoothing = c["label_smoothing"].get<double>();
      found = true;
    }
  ASSERT_TRUE(found) << L << " not in pairs.json";
  validate(loss);

  vector<int64_t> chunk(static_cast<size_t>(B));
  for (int64_t i = 0; i < B; ++i) chunk[size_t(i)] = i;
  LlamaModel<float> model(hf.config);
  // accumulate = false must overwrite every gradient entry: start from NaN so a missed one shows.
  vector<float> grads(hf.params.size(), std::numeric_limits<float>::quiet_NaN());
  const PairMicroResult r = pair_micro_step<float>(model, hf.params.data(), grads.data(), /*accumulate=*/false, s,
                                                   chunk, loss, Weighting::Uniform, WeightOptions{}, {}, 1.0 / double(B));
  ASSERT_EQ(r.in.size(), size_t(B));
  ASSERT_EQ(r.out.size(), size_t(B));

  auto check = [&](const std::string& q, const vector<double>& ours) {
    const std::string key = L + "." + q;
    const vector<double> ref = expected.read(key);
    ASSERT_EQ(ours.size(), ref.size()) << key;
    ASSERT_TRUE(tol.contains(key)) << key;
    EXPECT_ERR_LT(rel_max_err(ours, ref), tol[key]["tol"].get<double>(), errname(q));
  };
  vector<double> pc, pr, rc, rr;
  double loss_sum = 0;
  for (int64_t k = 0; k < B; ++k) {
    EXPECT_EQ(r.weights[size_t(k)], 1.0);
    EXPECT_EQ(r.in[size_t(k)].len_chosen, s.chosen.len(k));
    EXPECT_EQ(r.in[size_t(k)].len_rejected, s.rejected.len(k));
    pc.push_back(r.in[size_t(k)].policy_chosen), pr.push_back(r.in[size_t(k)].policy_rejected);
    rc.push_back(r.out[size_t(k)].reward_chosen), rr.push_back(r.out[size_t(k)].reward_rejected);
    loss_sum += r.out[size_t(k)].loss;
  }
  check("policy_logps_chosen", pc);
  check("policy_logps_rejected", pr);
  check("rewards_chosen", rc);
  check("rewards_rejected", rr);
  check("loss", {loss_sum / double(B)});  // TRL: per_sequence_loss.mean()

  // Gradients of the mean loss: recorded for the loss types listed in grad_losses (size budget).
  const auto gl = pairs["grad_losses"].get<vector<std::string>>();
  const bool with_grads = std::find(gl.begin(), gl.end(), L) != gl.end();
  int n_checked = 0;
  for (const TensorEntry& e : model.layout().tensors()) {
    const std::string key = "grad." + e.name;
    if (!with_grads) {
      EXPECT_FALSE(expected.has(L + "." + key)) << L << "." << key << " present but " << L << " not in grad_losses";
      continue;
    }
    check(key, vector<double>(grads.begin() + long(e.offset), grads.begin() + long(e.offset + e.numel)));
    ++n_checked;
  }
  if (with_grads) {
    EXPECT_EQ(n_checked, int(model.layout().tensors().size()));
    int n_golden = 0;  // and the golden has no gradient of a tensor the engine does not know
    for (const SafetensorsEntry& e : expected.tensors()) n_golden += e.name.rfind(L + ".grad.", 0) == 0;
    EXPECT_EQ(n_golden, n_checked);
  }
}

INSTANTIATE_TEST_SUITE_P(Losses, DpoGolden, ::testing::Values("sigmoid", "ipo", "robust"),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

}  // namespace
