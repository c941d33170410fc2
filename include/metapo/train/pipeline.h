// Pipeline parallelism (DESIGN §4): the 1F1B schedule over the stages of one model replica.
//
// Every rank builds every micro-batch itself (each rank reads the dataset), so only the residual
// stream crosses stage boundaries: forward, stage s sends its output [n_tokens, hidden] to stage s+1;
// backward, stage s+1 sends dL/d(that) back. Messages are exactly n_tokens × hidden floats of the
// packed micro-batch (variable length, no padding to a maximum). Stage s of P runs
//   warm-up:  F(0) … F(w−1),                   w = min(P − s − 1, M)
//   steady:   F(w) B(0), F(w+1) B(1), …         (one forward, one backward)
//   cool-down: B(M−w) … B(M−1)
// so it holds at most P − s forwards at once (the model's activation slots), and the last stage runs
// each micro-batch's backward right after its forward. Sends are asynchronous and receives blocking;
// with this order every receive is matched by a send its peer reaches without waiting on us, so the
// schedule cannot deadlock. With one stage it is the plain loop F(0) B(0) F(1) B(1) …
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
void pipeline_train(LlamaModel<float>& model, Comm* pp, const float* params, float* grads,
                    const std::vector<PipeMicro>& mbs, const PipeLossFn& loss, const float* ghat = nullptr,
                    std::vector<std::vector<double>>* seq_dots = nullptr);

// Forward only: on_logp(m, logp) on the last stage for every micro-batch, in order.
void pipeline_forward(LlamaModel<float>& model, Comm* pp, const float* params, const std::vector<PipeMicro>& mbs,
                      const PipeLogpFn& on_logp);

}  // namespace metapo
