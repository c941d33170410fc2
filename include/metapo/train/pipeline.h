// Pipeline parallelism (DESIGN §4) for LlamaModel: the 1F1B schedule of parallel/pipeline_schedule.h
// bound to the model's stage (forward_stage / backward_stage, its activation slots) and to packed
// micro-batches of token sequences.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/model/llama.h"

namespace metapo {

// One micro-batch, as every stage builds it (targets are read on the last stage only).
struct PipeMicro {
  PackedBatch batch;
  std::vector<int32_t> targets;
};

// Called on the last stage right after micro-batch m's forward, with its per-row logp; returns
// dL/dlogp per row (what LlamaModel::backward takes).
using PipeLossFn = std::function<std::vector<float>(size_t m, const std::vector<float>& logp)>;
using PipeLogpFn = std::function<void(size_t m, const std::vector<float>& logp)>;

// Forward and backward of every micro-batch of mbs in the 1F1B order over the pipeline group pp (null
// or one rank: the model is whole). grads is overwritten by the first backward and accumulated into by
// the others. With ghat, seq_dots[m] = the ghost dots (LlamaModel::backward) of micro-batch m over the
// whole model — every stage's share summed over pp — on every stage.
// On a device (model.device()) params, grads and ghat are memory there; loss still gets and returns host
// vectors.
void pipeline_train(LlamaModel<float>& model, Comm* pp, const float* params, float* grads,
                    const std::vector<PipeMicro>& mbs, const PipeLossFn& loss, const float* ghat = nullptr,
                    std::vector<std::vector<double>>* seq_dots = nullptr);

// Forward only: on_logp(m, logp) on the last stage for every micro-batch, in order.
void pipeline_forward(LlamaModel<float>& model, Comm* pp, const float* params, const std::vector<PipeMicro>& mbs,
                      const PipeLogpFn& on_logp);

}  // namespace metapo
