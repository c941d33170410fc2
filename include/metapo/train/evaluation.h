// Evaluation of a model over a split, reference log-probs, and the margin trajectories of a few
// tracked training pairs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "metapo/comm/topology.h"
#include "metapo/train/objective.h"

namespace metapo {

// Unweighted base-loss statistics of the pairs (all of the split when limit == 0) against the stored
// reference log-probs.
PairStats evaluate_pairs(LlamaModel<float>& model, Comm* pp, const float* params, const PairSplit& s,
                         const LossConfig& loss, const MicroBatching& mb, int64_t limit, Comm& comm);

// Fills s.ref_logp_* with the reference model's log-probs when the file has none, or those of the
// pairs `stale` when it has them (pairs that --max-length changed after the file's were computed):
// the reference model sharded over topo's TP and PP groups, pairs split over its DP ranks, run on
// `device` (place_on_device).
void ensure_ref_logps(PairSplit& s, const std::string& split_name, const std::string& ref_dir,
                      const MicroBatching& mb, const Topology& topo, const std::vector<int64_t>& pp_layers = {},
                      const std::vector<int64_t>& stale = {}, Device device = Device::CPU);

// Up to k pairs of each group (clean/easy, clean/hard, flipped; or just the first 3k pairs when the
// split has no quality), in index order: deterministic.
std::vector<int64_t> tracked_pairs(const PairSplit& s, int64_t k);

// One line of RUN/trajectories.jsonl: the margins of the pairs idx at `step`, appended by the world
// root (collective over the data-parallel ranks and the pipeline).
void write_trajectories(LlamaModel<float>& model, Comm* pp, const float* params, const PairSplit& s,
                        const std::vector<int64_t>& idx, const LossConfig& loss, int64_t step, const MicroBatching& mb,
                        const Topology& topo, const std::string& path);

}  // namespace metapo
