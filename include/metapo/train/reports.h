// The run's report files and metric names: RUN/run.json (the configuration, the parallel layout and
// the memory per rank) and the TRL names of a step's pair statistics.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "metapo/comm/topology.h"
#include "metapo/model/config.h"
#include "metapo/train/dpo.h"
#include "metapo/train/zero.h"

namespace metapo {

// The TRL metric names of a PairStats (means over pairs); `prefix` is "" or "eval/".
nlohmann::json stats_json(const PairStats& s, const std::string& prefix);

// The run's configuration as RUN/run.json and a checkpoint's /state/config record it (kind "train" or
// "sft"; the preference-only keys for "train").
nlohmann::json run_config_json(const TrainConfig& cfg, const std::string& kind);

// Memory per rank (docs/training.md): parameters and gradients are the padded local flat buffers
// (fp32), the optimizer state Adam's two moments of this rank's ZeRO-1 shard; activations as the model
// measured them (after a step, every activation slot of the pipeline schedule; < 0: not yet known).
struct RankMemory {
  double params = 0, grads = 0, optimizer_state = 0, activations = -1;
};
RankMemory rank_memory(const ZeroAdamW& opt, int64_t activations);

// The memory lines and RUN/run.json (kind "train" or "sft"; the configuration, the layout,
// memory_bytes of the world root, a first-stage rank, and with a pipeline memory_bytes_per_stage).
// Collective over pp_comm; the world root writes.
void report_memory(const TrainConfig& cfg, const std::string& kind, const Topology& topo, const LlamaConfig& c,
                   const RankMemory& mine);

}  // namespace metapo
