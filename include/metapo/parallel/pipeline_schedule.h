// The 1F1B pipeline schedule (DESIGN §4) over stage callbacks: it moves activations and their
// gradients between the stages and decides the order of forwards and backwards, and knows nothing of
// the model (as Megatron's forward-backward function takes a forward-step function). train/pipeline.h
// binds it to LlamaModel.
//
// Only the residual stream crosses a stage boundary: forward, stage s sends its output (boundary(m)
// floats, [n_tokens, hidden] of the packed micro-batch: variable length, no padding) to stage s+1;
// backward, stage s+1 sends the gradient with respect to it back. Stage s of P runs
//   warm-up:   F(0) … F(w−1),                  w = min(P − s − 1, M)
//   steady:    F(w) B(0), F(w+1) B(1), …        (one forward, one backward)
//   cool-down: B(M−w) … B(M−1)
// so it holds at most P − s forwards at once (pipeline_slots), and the last stage runs each
// micro-batch's backward right after its forward. Sends return once the previous send to the same
// peer has completed (Comm::send) and receives block; in this order every receive is matched by a
// send its peer reaches without waiting on us, so the schedule cannot deadlock. With one stage it is
// the plain loop F(0) B(0) F(1) B(1) …
#pragma once
#include <cstddef>
#include <functional>

#include "metapo/comm/comm.h"

namespace metapo {

struct StageFns {
  // Floats crossing the boundary for micro-batch m (the same forward and backward).
  std::function<size_t(size_t m)> boundary;
  // Forward of micro-batch m into activation slot `slot`. x_in: what the previous stage sent (null on
  // the first stage); x_out: what goes to the next stage, boundary(m) floats (null on the last).
  std::function<void(size_t m, int slot, const float* x_in, float* x_out)> forward;
  // Backward of micro-batch m from its slot. dy: the gradient with respect to x_out (null on the last
  // stage); dx: the gradient with respect to x_in, boundary(m) floats (null on the first).
  std::function<void(size_t m, int slot, const float* dy, float* dx)> backward;
};

// Activation slots stage s of P needs for M micro-batches: min(P − s, M), at least 1.
int pipeline_slots(int P, int s, size_t M);

// Forward and backward of micro-batches 0 … M−1 in the 1F1B order, stage pp->rank() of pp->size()
// (pp null: one stage); micro-batch m uses slot m mod pipeline_slots(P, s, M). Completes every send
// before it returns.
void run_1f1b(Comm* pp, size_t M, const StageFns& fns);

// Forwards only, in order, all in slot 0 (backward is not called).
void run_forward_only(Comm* pp, size_t M, const StageFns& fns);

}  // namespace metapo
