// The run's report files and metric names: RUN/run.json (the configuration, the parallel layout and
// the memory per rank) and the TRL names of a step's pair statistics.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "metapo/comm/topology.h"
#include "metapo/model/config.h"
#include "metapo/train/dpo.h"
#include "metapo/train/run_files.h"
#include "metapo/train/zero.h"

namespace metapo {

// The TRL metric names of a PairStats (means over pairs); `prefix` is "" or "eval/".
nlohmann::json stats_json(const PairStats& s, const std::string& prefix);

// The run's configuration as RUN/run.json and a checkpoint's /state/config record it (kind "train" or
// "sft"; the preference-only keys for "train"). RunRecord (run_files.h) is the file's typed form.
nlohmann::json run_config_json(const TrainConfig& cfg, const std::string& kind);

// This rank's figures (RankMemory, run_files.h).
RankMemory rank_memory(const ZeroAdamW& opt, int64_t activations);

// The memory lines and RUN/run.json (kind "train" or "sft"; the configuration, the layout,
// memory_bytes of the world root, a first-stage rank, and with a pipeline memory_bytes_per_stage).
// Every rank's high-water marks from the memory accountant go into memory_peak_bytes_per_rank; with
// print_peaks, one line per pipeline stage gives the largest of its ranks' marks per category.
// Collective over the world; the world root writes.
// restarts: how often the run directory was started again (RunRecord::restarts); the Slurm job comes
// from the environment. write_record false: the lines only (run.json stays as it is).
void report_memory(const TrainConfig& cfg, const std::string& kind, const Topology& topo, const LlamaConfig& c,
                   const RankMemory& mine, int64_t restarts, bool print_peaks = false, bool write_record = true);

}  // namespace metapo
