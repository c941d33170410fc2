// The run directory's two JSON records, each with one writer and one typed reader:
//   RUN/run.json     RunRecord  the command, the run's whole configuration, the parallel layout and
//                               the memory per rank (docs/training.md)
//   RUN/metapo.json  MetaRun    the trained weight net, the feature standardizer and the final pair
//                               table, what `metapo analyze` reads (docs/metapo.md)
// Readers check every field they use and name the file and the field in their errors; writers
// replace the file atomically (a temporary name, fsync, rename).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "metapo/core/memory.h"
#include "metapo/align/losses.h"
#include "metapo/meta/features.h"
#include "metapo/meta/pair_stats.h"
#include "metapo/meta/weight_net.h"

namespace metapo {

// ---- RUN/run.json ---------------------------------------------------------------------------------

// Memory per rank (docs/training.md): parameters and gradients are the padded local flat buffers
// (fp32), the optimizer state Adam's two moments of this rank's ZeRO-1 shard; activations as the model
// measured them (after a step, every activation slot of the pipeline schedule; < 0: not yet known).
struct RankMemory {
  double params = 0, grads = 0, optimizer_state = 0, activations = -1;
};

// One rank's high-water marks from the memory accountant (core/memory.h): bytes[k] for category k
// (mem_name), total the high-water mark of their sum.
struct RankPeak {
  int64_t rank = 0, dp = 0, pp = 0, tp = 0;
  MemBytes bytes{};
  int64_t total = 0;
};

// The parallel layout: world = dp * tp * pp ranks; stage_layers[s] = [first, end) layers of stage s.
struct RunLayout {
  int64_t world = 1, dp = 1, tp = 1, pp = 1;
  std::vector<std::pair<int64_t, int64_t>> stage_layers;
};

// The Slurm job a run belongs to, from the environment sbatch and srun set (absent outside Slurm).
struct SlurmJob {
  std::string job_id, job_name, node_list;  // SLURM_JOB_ID, SLURM_JOB_NAME, SLURM_JOB_NODELIST
  int64_t restart_count = 0;                // SLURM_RESTART_COUNT: how often Slurm requeued the job
  int64_t nodes = 0, ntasks = 0;            // SLURM_JOB_NUM_NODES, SLURM_NTASKS
  static std::optional<SlurmJob> from_env();
};
nlohmann::json to_json(const SlurmJob& s);

struct RunRecord {
  std::string command;       // "train" or "sft"
  std::string command_line;  // as the user typed it
  nlohmann::json options;    // every other configuration key (run_config_json), flat, as the file has them
  std::optional<RunLayout> parallel;          // written once the layout is known
  std::optional<RankMemory> memory;           // the world root's (a first-stage rank)
  std::vector<RankMemory> memory_per_stage;   // with a pipeline: every stage's DP 0 / TP 0 rank
  std::vector<RankPeak> memory_peak;          // every rank's high-water marks (memory_peak_bytes_per_rank)
  int64_t restarts = 0;                       // how often this run directory was started again (--resume)
  std::optional<SlurmJob> slurm;              // the job of the latest start, under Slurm

  // The loss a `train` run used (loss, beta, label_smoothing; simpo_gamma and discopop_tau where
  // recorded). Settings an older file does not record but the loss reads keep their defaults, and a
  // line saying so is appended to `notes` (so the fallback is never silent). path: for the errors.
  LossConfig loss(const std::string& path, std::vector<std::string>* notes) const;
};

nlohmann::json to_json(const RunRecord& r);
// Checks that the file is an object with command "train" or "sft" and well-formed layout and memory
// entries where present; errors name `path`.
RunRecord parse_run_record(const nlohmann::json& j, const std::string& path);
RunRecord read_run_record(const std::string& path);
void write_run_record(const std::string& dir, const RunRecord& r);  // dir/run.json

// ---- RUN/metapo.json ------------------------------------------------------------------------------

// The format this build reads and writes (written by `train --weighting metapo` at the end).
constexpr const char* kMetaRunFormat = "metapo-meta";
constexpr int64_t kMetaRunFormatVersion = 2;  // 2: eight features (logp_gap)

struct MetaRun {
  WeightNetConfig net;               // n_features (= kNumFeatures), hidden, a_min
  std::vector<double> params;        // φ, WeightNetLayout order
  std::vector<double> standardizer;  // FeatureStandardizer::state(): [count[F], sum[F], sumsq[F]]
  int64_t stat_rows = 0;             // N of the logical [N, S] pair table
  std::vector<double> pair_stats;    // [N, S] row-major, row = sample id, S = kPairStatFields
  std::string features_used = "all"; // --meta-features of the run (absent in older files: all)

  WeightNet make_net() const;
  FeatureStandardizer make_standardizer() const;
  // The stored rows of these sample ids. Ids at or past stat_rows were never trained on (e.g. a val
  // split): they get an unseen row (n = 0), whose temporal features standardize to 0.
  std::vector<PairStatRow> rows_of(const std::vector<int64_t>& sample_ids) const;
};

nlohmann::json to_json(const MetaRun& run);
// Checks format, version, feature and field names, sizes and finiteness; every error names `path`
// and the field ("runs/x/metapo.json: net.params has 10 values, expected 1345 ...").
MetaRun parse_meta_run(const nlohmann::json& j, const std::string& path);
// Reads and parses the file; a missing file says that only `train --weighting metapo` writes it.
MetaRun read_meta_run(const std::string& path);
void write_meta_run(const std::string& dir, const MetaRun& run);  // dir/metapo.json

}  // namespace metapo
