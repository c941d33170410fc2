// RUN/run.json and RUN/metapo.json (train/run_files.h): what a writer writes its reader reads back
// unchanged, through a file; what the reader refuses names the file and the field.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "metapo/core/error.h"
#include "metapo/core/rng.h"
#include "metapo/meta/features.h"
#include "metapo/meta/pair_stats.h"
#include "metapo/train/run_files.h"
#include "test_util.h"

using metapo::test::error_of;

using namespace metapo;
using nlohmann::json;
using std::vector;
namespace fs = std::filesystem;

namespace {

std::string temp_dir(const std::string& stem) {
  const fs::path d = fs::temp_directory_path() / (stem + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

vector<double> values(size_t n, uint32_t id) {
  Philox r = make_rng(3, 0, id, RngPurpose::Bench);
  vector<double> v(n);
  for (double& x : v) x = 2.0 * r.uniform() - 1.0;  // full doubles: the JSON round trip must be exact
  return v;
}

TEST(RunFiles, RunRecordRoundTripsThroughTheFile) {
  RunRecord r;
  r.command = "train", r.command_line = "metapo train --model m --data d.h5 --out run";
  r.options = {{"loss", "simpo"}, {"beta", 2.5}, {"label_smoothing", 0.0}, {"simpo_gamma", 0.75},
               {"discopop_tau", 0.05}, {"seed", 7}, {"weighting", "uniform"}, {"lr", 1e-5}};
  r.parallel = RunLayout{8, 2, 2, 2, {{0, 1}, {1, 2}}};
  r.memory = RankMemory{1024, 1024, 512, -1};
  r.memory_per_stage = {RankMemory{1024, 1024, 512, 4096}, RankMemory{2048, 2048, 1024, 8192}};
  const std::string dir = temp_dir("run-record");
  write_run_record(dir, r);
  EXPECT_FALSE(fs::exists(dir + "/run.json.tmp"));
  const RunRecord b = read_run_record(dir + "/run.json");
  EXPECT_EQ(b.command, r.command);
  EXPECT_EQ(b.command_line, r.command_line);
  EXPECT_EQ(b.options, r.options);
  ASSERT_TRUE(b.parallel.has_value());
  EXPECT_EQ(b.parallel->world, 8);
  EXPECT_EQ(b.parallel->stage_layers, r.parallel->stage_layers);
  ASSERT_TRUE(b.memory.has_value());
  EXPECT_EQ(b.memory->optimizer_state, 512);
  EXPECT_EQ(b.memory->activations, -1);  // null in the file: not known yet
  ASSERT_EQ(b.memory_per_stage.size(), 2u);
  EXPECT_EQ(b.memory_per_stage[1].activations, 8192);
  // The flat layout the tools read with json.load: the options at the top level.
  const json j = json::parse(std::ifstream(dir + "/run.json"));
  EXPECT_EQ(j["beta"], 2.5);
  EXPECT_EQ(j["parallel"]["dp"], 2);
  EXPECT_EQ(j["memory_bytes"]["params"], 1024);
  const LossConfig lc = b.loss(dir + "/run.json", nullptr);
  EXPECT_EQ(lc.type, LossType::Simpo);
  EXPECT_EQ(lc.beta, 2.5);
  EXPECT_EQ(lc.simpo_gamma, 0.75);
  EXPECT_EQ(b.restarts, 0);
  EXPECT_FALSE(b.slurm.has_value());
  fs::remove_all(dir);
}

// Under Slurm the record carries the job (id, node list, Slurm's requeue count) and the run's own
// restart count; outside it, no "slurm" key at all.
TEST(RunFiles, RunRecordCarriesTheSlurmJobAndTheRestarts) {
  ::unsetenv("SLURM_JOB_ID");
  EXPECT_FALSE(SlurmJob::from_env().has_value());
  ::setenv("SLURM_JOB_ID", "4242", 1), ::setenv("SLURM_JOB_NAME", "metapo-train", 1);
  ::setenv("SLURM_JOB_NODELIST", "gpu[001-004]", 1), ::setenv("SLURM_RESTART_COUNT", "3", 1);
  ::setenv("SLURM_JOB_NUM_NODES", "4", 1), ::setenv("SLURM_NTASKS", "32", 1);
  const std::optional<SlurmJob> sl = SlurmJob::from_env();
  for (const char* v : {"SLURM_JOB_ID", "SLURM_JOB_NAME", "SLURM_JOB_NODELIST", "SLURM_RESTART_COUNT",
                        "SLURM_JOB_NUM_NODES", "SLURM_NTASKS"})
    ::unsetenv(v);
  ASSERT_TRUE(sl.has_value());
  EXPECT_EQ(sl->job_id, "4242");
  EXPECT_EQ(sl->node_list, "gpu[001-004]");
  EXPECT_EQ(sl->restart_count, 3);
  EXPECT_EQ(sl->ntasks, 32);
  RunRecord r;
  r.command = "sft", r.restarts = 5, r.slurm = sl;
  const std::string dir = temp_dir("run-record-slurm");
  write_run_record(dir, r);
  const RunRecord b = read_run_record(dir + "/run.json");
  EXPECT_EQ(b.restarts, 5);
  ASSERT_TRUE(b.slurm.has_value());
  EXPECT_EQ(b.slurm->job_name, "metapo-train");
  EXPECT_EQ(b.slurm->nodes, 4);
  EXPECT_EQ(b.slurm->restart_count, 3);
  EXPECT_FALSE(b.options.contains("slurm"));  // typed, not left among the options
  const json j = json::parse(std::ifstream(dir + "/run.json"));
  EXPECT_EQ(j["slurm"]["job_id"], "4242");
  EXPECT_EQ(j["restarts"], 5);
  fs::remove_all(dir);
}

TEST(RunFiles, RunRecordRefusalsNameTheFileAndTheField) {
  const json good = {{"command", "train"}, {"loss", "sigmoid"}, {"beta", 0.1},
                     {"parallel", {{"world", 2}, {"dp", 2}, {"tp", 1}, {"pp", 1}, {"stage_layers", {{0, 2}}}}}};
  auto broken = [&](auto&& edit) {
    json b = good;
    edit(b);
    return error_of([&] { parse_run_record(b, "r/run.json"); });
  };
  EXPECT_EQ(error_of([&] { parse_run_record(good, "r/run.json"); }), "(no error)");
  EXPECT_NE(broken([](json& b) { b["command"] = "eval"; }).find("r/run.json: command is \"eval\""), std::string::npos);
  EXPECT_NE(broken([](json& b) { b.erase("command"); }).find("r/run.json: missing field command"), std::string::npos);
  EXPECT_NE(broken([](json& b) { b["parallel"]["world"] = 3; }).find("expected world = dp * tp * pp"), std::string::npos);
  EXPECT_NE(broken([](json& b) { b["parallel"]["stage_layers"] = {{2, 0}}; }).find("stage_layers entry [2,0]"),
            std::string::npos);
  EXPECT_NE(broken([](json& b) { b["memory_bytes"] = {{"params", 1}}; }).find("missing field memory_bytes.grads"),
            std::string::npos);
  // The loss of an older file without simpo_gamma: the default, and a note saying so.
  RunRecord old = parse_run_record({{"command", "train"}, {"loss", "simpo"}, {"beta", 2.0}}, "r/run.json");
  vector<std::string> notes;
  EXPECT_EQ(old.loss("r/run.json", &notes).simpo_gamma, LossConfig{}.simpo_gamma);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_NE(notes[0].find("does not record simpo_gamma"), std::string::npos);
  RunRecord sft = parse_run_record({{"command", "sft"}}, "r/run.json");
  EXPECT_NE(error_of([&] { sft.loss("r/run.json", nullptr); }).find("a run of `metapo sft`"), std::string::npos);
  EXPECT_NE(error_of([] { read_run_record("/nonexistent/run.json"); }).find("/nonexistent/run.json not found"),
            std::string::npos);
  const std::string dir = temp_dir("run-record-bad");
  std::ofstream(dir + "/run.json") << "{\"command\": ";
  EXPECT_NE(error_of([&] { read_run_record(dir + "/run.json"); }).find("run.json: not valid JSON"), std::string::npos);
  fs::remove_all(dir);
}

TEST(RunFiles, MetaRunRoundTripsThroughTheFileBitForBit) {
  MetaRun run;
  run.net.n_features = kNumFeatures, run.net.hidden = 5, run.net.a_min = 1e-3;
  run.params = values(size_t(weight_net_layout(kNumFeatures, 5).total), 1);
  run.standardizer = values(3 * kNumFeatures, 2);
  for (int64_t f = 0; f < kNumFeatures; ++f) {  // counts, sums, sums of squares that fit them
    run.standardizer[size_t(f)] = double(10 + f);
    run.standardizer[size_t(2 * kNumFeatures + f)] += 50.0;
  }
  run.stat_rows = 3;
  run.pair_stats = values(3 * kPairStatFields, 3);
  for (int64_t r = 0; r < 3; ++r) run.pair_stats[size_t(r * kPairStatFields)] = double(r);  // observation counts
  run.features_used = "temporal";
  const std::string dir = temp_dir("meta-run");
  write_meta_run(dir, run);
  const MetaRun b = read_meta_run(dir + "/metapo.json");
  EXPECT_EQ(b.net.hidden, 5);
  EXPECT_EQ(b.net.a_min, 1e-3);
  EXPECT_EQ(b.params, run.params);
  EXPECT_EQ(b.standardizer, run.standardizer);
  EXPECT_EQ(b.stat_rows, 3);
  EXPECT_EQ(b.pair_stats, run.pair_stats);
  EXPECT_EQ(b.features_used, "temporal");
  EXPECT_EQ(to_json(b), to_json(run));
  // An unknown feature kind names the file and the field.
  run.features_used = "bogus";
  write_meta_run(dir, run);
  try {
    read_meta_run(dir + "/metapo.json");
    ADD_FAILURE() << "features_used \"bogus\" was read";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("metapo.json: features_used \"bogus\" is unknown"), std::string::npos) << m;
  }
  fs::remove_all(dir);
}

}  // namespace
