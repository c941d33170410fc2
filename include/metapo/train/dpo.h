// Preference optimization (DPO and its loss family) and supervised fine-tuning over the process grid
// world = DP x PP x TP: each model replica is split into PP pipeline stages of contiguous layers and
// each stage over its TP ranks (each rank holds its stage_shard_map shard), micro-batches flow through
// the stages in the 1F1B order (train/pipeline.h), each replica takes its share of every global batch,
// and gradients are summed over the DP ranks (bit-identically on every rank) before the optimizer step.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "metapo/align/losses.h"
#include "metapo/align/weighting.h"
#include "metapo/comm/comm.h"
#include "metapo/comm/topology.h"
#include "metapo/core/dtype.h"
#include "metapo/data/dataset.h"
#include "metapo/model/llama.h"
#include "metapo/model/tp_layout.h"
#include "metapo/train/evaluation.h"
#include "metapo/train/meta_config.h"
#include "metapo/train/objective.h"
#include "metapo/train/optimizer.h"
#include "metapo/train/sharded_model.h"

namespace metapo {

struct TrainConfig {
  std::string model_dir, data_path, out_dir, ref_model_dir;  // ref: defaults to model_dir
  bool trust_stored_ref = false;  // stored reference log-probs used whatever model they came from
  std::string train_split = "train", val_split = "val";
  LossConfig loss;
  Weighting weighting = Weighting::Uniform;
  WeightOptions weight_opt;
  int64_t batch_size = 32;  // pairs (or SFT examples) per optimizer step, over all ranks
  int64_t micro_batch = 8;  // per rank per forward/backward
  // > 0: micro-batches of whole pairs up to this many tokens instead of micro_batch pairs (pairs.h)
  int64_t micro_batch_tokens = 0;
  Truncation truncation;  // --max-length, --max-prompt-length, --truncation-mode (dataset.h)
  int64_t epochs = 1, max_steps = 0;  // max_steps > 0 overrides epochs
  int64_t eval_every = 0, eval_pairs = 0;  // eval_pairs 0: the whole val split
  // Margin trajectories of a few training pairs (K per group: clean/easy, clean/hard, flipped when the
  // dataset has quality and difficulty) into RUN/trajectories.jsonl every track_every steps (0: off).
  int64_t track_pairs = 0, track_every = 10;
  AdamWConfig adam;
  LrSchedule sched;
  double warmup_ratio = 0.0;  // used when sched.warmup_steps == 0
  double max_grad_norm = 1.0;
  uint64_t seed = 0;
  MetaConfig meta;
  std::string save_dtype = "auto";  // resolve_save_dtype
  std::vector<int64_t> pp_layers;  // layers per pipeline stage (--pp-layers); empty: an even split
  // Checkpoints (docs/training.md "Checkpoints and resume"): RUN/step_XXXXXXXX.h5 every save_every
  // steps and every save_every_minutes (0: off), the newest `keep` kept (0: all); resume "" (a new
  // run), "auto" (the newest valid checkpoint of RUN, or a new run when there is none) or a checkpoint
  // file or run directory; max_time_s > 0: checkpoint and exit kExitCheckpointed before the run has
  // been going that long. max_skipped_steps: steps skipped for a non-finite loss or gradient norm
  // (in all) before the run stops with an error.
  int64_t save_every = 0;
  double save_every_minutes = 30;
  int64_t keep = 2;
  std::string resume;
  double max_time_s = 0;
  int64_t max_skipped_steps = 10;
  // --hang-timeout (train/watchdog.h): > 0 seconds, 0 off, < 0 auto.
  double hang_timeout_s = -1;
  Recompute recompute = Recompute::None;  // --recompute: what each layer keeps for its backward
  Precision precision;                     // --precision: the model's storage precision (fp32, bf16)
  // --device: where the model runs (forward, backward, the reference log-probs); with one
  // data-parallel rank ZeRO-1 AdamW too, else it stays on the host (ShardedModel, train/zero.h).
  Device device = Device::CPU;
  std::string command_line;  // recorded in RUN/run.json
  // The training split as the file holds it (before --max-length): recorded in RUN/run.json, where
  // `metapo analyze` checks the data it is given against it. Set by run_dpo.
  std::string data_fingerprint;

  MicroBatching micro() const { return {micro_batch, micro_batch_tokens}; }
};

// SIGUSR1 and SIGTERM ask a run to checkpoint after its step and exit 124 (docs/training.md). run_dpo
// and run_sft install the handlers; main installs them before MPI starts, so that a signal that
// arrives during a slow start is kept rather than ending the process.
void install_train_stop_handlers();
int run_dpo(const Topology& topo, const TrainConfig& cfg);
int run_sft(const Topology& topo, const TrainConfig& cfg);

}  // namespace metapo
