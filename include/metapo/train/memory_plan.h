// `metapo plan`'s arithmetic: the bytes each pipeline stage's ranks hold, per memory accountant
// category (core/memory.h), for a model, a layout, a recomputation mode and the largest micro-batch.
// The formulas are the allocations of the training step written out: the same buffers, the same
// shapes (the model's local config under TP, the ZeRO-1 shard, the 1F1B slots, one send copy per
// pipeline neighbour), so on the CPU, in fp32, a run's high-water marks (run.json
// memory_peak_bytes_per_rank) come out within a few percent of them (tests/cli/memory_plan.sh).
// docs/scaling.md derives them.
#pragma once
#include <cstdint>
#include <vector>

#include "metapo/core/memory.h"
#include "metapo/model/config.h"
#include "metapo/model/llama.h"

namespace metapo {

// Bytes per element of what a run stores. The CPU trainer is fp32 throughout; the CUDA backend
// (design) keeps bf16 parameters, activations and messages with fp32 gradients and an fp32 master
// copy in the optimizer.
struct PlanPrecision {
  int64_t param = 4, grad = 4, master = 0, act = 4;  // master: 0 when the parameters are the master copy
  static PlanPrecision fp32() { return {}; }
  static PlanPrecision bf16() { return {2, 4, 4, 2}; }
};

struct PlanInput {
  LlamaConfig config;
  int dp = 1, tp = 1, pp = 1;
  std::vector<int64_t> pp_layers;  // --pp-layers (empty: even)
  Recompute recompute = Recompute::None;
  int64_t micro_tokens = 4096;     // tokens of the largest micro-batch
  int64_t micro_rows = -1;         // its scored rows (response tokens); -1: all of them
  // The largest micro-batch that also runs a backward (the workspace's size: forward-only passes such
  // as evaluation allocate none); -1: the same as above.
  int64_t backward_tokens = -1, backward_rows = -1;
  // The largest micro-batch the reference model scores before training (no stored reference
  // log-probs); 0: none.
  int64_t ref_tokens = 0, ref_rows = 0;
  int64_t micro_batches = 0;       // per rank and step (0: enough to fill the pipeline)
  PlanPrecision precision;
  bool metapo = false;             // the validation gradient and the pair table
  int64_t pairs = 0;               // training pairs (the pair table's rows: the largest sample id + 1)
  int64_t data_bytes = 0;          // the dataset held by every rank
  int64_t prob_cache_bytes = int64_t(256) << 20;  // LlamaModel's LM-head probability cache budget
  int64_t runtime_reserve = 0;     // per device, outside the accountant (CUDA context, libraries)
};

// One stage's ranks (the largest of their DP and TP ranks), per category.
struct StagePlan {
  int64_t layer_begin = 0, layer_end = 0;
  MemBytes bytes{};
  int64_t total = 0;  // the sum, plus the runtime reserve
};

std::vector<StagePlan> plan_memory(const PlanInput& in);

// Model FLOPs of a training step over `tokens` tokens in sequences of seq_len (forward + backward,
// the count of train_flops), and what MetaPO adds per meta step: the validation gradient over
// val_tokens and the ghost products (about one forward of the training tokens).
double plan_step_flops(const LlamaConfig& c, int64_t tokens, int64_t seq_len);

}  // namespace metapo
