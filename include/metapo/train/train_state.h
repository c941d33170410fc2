// The training state a run holds and a checkpoint walks (DESIGN §7, docs/formats.md "Checkpoints"):
// the counters, this rank's model shard, its ZeRO-1 shard of the AdamW moments with the step count,
// MetaPO's weight net, its Adam, the feature standardizer and the pair-statistics table, and how far
// the run's files had got. The parts are borrowed from the trainer, which owns them.
//
// A checkpoint is one HDF5 file of full logical arrays (io/checkpoint.h), so it reads back under any
// DP × TP × PP layout: /model/<tensor> and /optimizer/{exp_avg,exp_avg_sq}/<tensor> by Hugging Face
// tensor name, /meta/... and /state/....
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "metapo/comm/topology.h"
#include "metapo/core/error.h"
#include "metapo/model/config.h"
#include "metapo/train/sharded_model.h"
#include "metapo/train/zero.h"

namespace metapo {

class MetaPOState;

constexpr int64_t kCheckpointFormatVersion = 2;  // 2: the one-multiply checksum (docs/formats.md)
// The exit status of a run that stopped early on a signal or --max-time after writing a checkpoint:
// "checkpointed, requeue me" (docs/training.md).
constexpr int kExitCheckpointed = 124;
// The exit status of a start that found its run directory held by another start past
// METAPO_LOCK_WAIT_S (a restart while the ranks of a killed launcher are still ending): transient,
// "requeue as a failure" (EX_TEMPFAIL).
constexpr int kExitLocked = 75;

struct TrainState {
  std::string kind;                // "train" or "sft"
  int64_t step = 0;                // optimizer steps done (skipped ones included)
  int64_t consumed_samples = 0;    // training examples of those steps
  int64_t skipped_steps = 0;       // steps skipped for a non-finite loss or gradient norm
  // The run's append-only files (a key such as "metrics.jsonl", the path) and their sizes in bytes, by
  // key, when the checkpoint was taken; a run resumed in place cuts them back to these sizes, so each
  // step is in them once.
  std::vector<std::pair<std::string, std::string>> files;
  nlohmann::json file_sizes = nlohmann::json::object();

  const Topology* topo = nullptr;
  LlamaConfig config;
  std::vector<int64_t> pp_layers;
  ShardedModel* sm = nullptr;
  ZeroAdamW* opt = nullptr;
  bool uses_meta = false;         // MetaPO: the same on every rank
  MetaPOState* meta = nullptr;    // on the ranks that hold it (the last pipeline stage)
  nlohmann::json run_config;      // what run.json records; stored, shown by `h5ls`; what fixes the data
                                  // order and the pair weights' meaning is compared on a resume
  int64_t total_steps = 0;        // this run's steps: a checkpoint past them is refused
  std::string data_fingerprint;   // of the training split; a resume on other data is refused
};

// A checkpoint that is readable but belongs to another run (format version, command, model shape,
// dataset, weighting): `--resume auto` stops at it instead of falling back to an older one.
class CheckpointIncompatible : public Error {
 public:
  explicit CheckpointIncompatible(const std::string& msg) : Error(msg) {}
};

std::string checkpoint_name(int64_t step);  // step_XXXXXXXX.h5
// The complete checkpoints of a run directory (step_*.h5, not .partial), newest first.
std::vector<std::string> list_checkpoints(const std::string& dir);
// The step of a checkpoint file by its name (step_XXXXXXXX.h5); -1 for another name.
int64_t checkpoint_step(const std::string& path);

// Collective over the world. Writes dir/step_XXXXXXXX.h5 through .partial (closed, fsynced, renamed),
// then dir/latest, fsyncs dir, and keeps the newest `keep` checkpoints (keep <= 0: all). Refuses, on
// every rank and before the file is made, a state with non-finite values. Returns the path.
std::string save_checkpoint(TrainState& st, const std::string& dir, int64_t keep);
// Collective over the world. Restores every part of st from path; the counters and file sizes too.
// Throws CheckpointIncompatible or (unreadable, truncated, corrupt) Error, on every rank alike.
void load_checkpoint(TrainState& st, const std::string& path);

// The model of a checkpoint (for `metapo export`). Collective over comm: every rank reads the model
// config and the flat buffer's elements [lo, hi) (ParamLayout order) into part (hi - lo floats); the
// ranks' windows must together cover the model (the checksums are checked over all of them).
LlamaConfig read_checkpoint_config(const std::string& path);
void read_checkpoint_model(const std::string& path, Comm& comm, const LlamaConfig& config, size_t lo, size_t hi,
                           float* part);
// A run directory's `latest` checkpoint (or path itself when it is a file).
std::string resolve_checkpoint(const std::string& path);

// Whether every value is finite (the threaded scan the checkpoint and final/ guards use).
bool all_finite(const float* x, size_t n);

}  // namespace metapo
