// Target-token log-probabilities through the LM head without keeping a [tokens, vocab] probability
// tensor: the forward keeps the log-sum-exp of each row, the backward recomputes the softmax rows one
// chunk at a time and takes an upstream coefficient per row (dL/dlogp), so the cross-entropy is split
// into a forward and a backward half with the pair loss in between.
//
// When the caller gives a probability cache (within its memory budget), the forward stores the
// softmax rows there and the backward reuses them instead of recomputing the head GEMM.
#pragma once
#include <cstdint>

namespace metapo::cpu {

template <typename T>
struct LogprobParams {
  const T* h;  // [n, C] hidden states after the final norm
  const T* W;  // [V, C] LM head
  int64_t C, V;
  const int32_t* rows;     // [n_rows]: which rows of h have a target
  const int32_t* targets;  // [n_rows]: the target token of each such row
  int64_t n_rows;
};

// logp[i] = log softmax(h[rows[i]] W^T)[targets[i]]; lse[i] kept for backward.
// prob_cache: [n_rows, V] or null.
template <typename T>
void logprob_forward(const LogprobParams<T>& p, T* logp, T* lse, T* prob_cache);

// dh[rows[i]] += (coef_i (onehot - softmax_i)) W ; dW += sum_i (coef_i (onehot - softmax_i))^T h[rows[i]]
// (dW = ... when !accumulate). Rows with coef 0 are still counted (their contribution is exactly
// zero). The cache, when given, is consumed (overwritten).
// With Ghat (a [V, C] tensor) given, also adds to row_dot[rows[i]] row i's part of ⟨Ghat, dW⟩:
// ⟨dlogits_i, Ghat h_i⟩ (one extra GEMM per chunk: dlogits Ghat, [rows, C]). When segments of h's rows
// are given as well (seg [n_seg + 1], the starts of the groups whose sum is all the caller needs, as
// for linear_backward_ghost) and rows is increasing, only each segment's sum is formed: the rows of a
// segment within a chunk put their whole dot on the segment's first scored row of the chunk, and dW
// and the dots come from one fused kernel (weight_grad_ghost) instead of two GEMMs.
template <typename T>
void logprob_backward(const LogprobParams<T>& p, const T* coef, const T* lse, T* prob_cache, T* dh,
                      T* dW, bool accumulate = true, const T* Ghat = nullptr, double* row_dot = nullptr,
                      const int64_t* seg = nullptr, int64_t n_seg = 0);

// ---- vocabulary shards (the vocab-parallel LM head, parallel/vocab_parallel.h) ----
// Here p.W holds only the vocabulary columns [vocab_begin, vocab_begin + p.V) (p.V may be 0), and
// targets stay global token ids: a target outside the shard has no logit here.

// Per row, over the shard's logits z only: row_max = max z (-inf when p.V == 0),
// row_sumexp = Σ exp(z - row_max), target_logit = z[target - vocab_begin], or 0 when another shard
// owns the target. prob_cache ([n_rows, p.V] or null) receives exp(z - row_max), not yet normalized:
// the caller scales each row by exp(row_max - lse) once the global lse is known. The same row loop as
// logprob_forward, so one shard covering the whole vocabulary gives its numbers bit for bit.
template <typename T>
void logprob_forward_shard(const LogprobParams<T>& p, int64_t vocab_begin, T* row_max, T* row_sumexp,
                           T* target_logit, T* prob_cache);

// logprob_backward restricted to the shard, given the global lse (or a normalized prob_cache
// [n_rows, p.V]): dlogits = coef (onehot - softmax) on the shard's columns, the onehot only where the
// shard owns the target. dh and row_dot receive this shard's part only (partial sums over shards);
// dW is the shard's [p.V, C] gradient. logprob_backward is this with vocab_begin = 0.
template <typename T>
void logprob_backward_shard(const LogprobParams<T>& p, int64_t vocab_begin, const T* coef, const T* lse,
                            T* prob_cache, T* dh, T* dW, bool accumulate = true, const T* Ghat = nullptr,
                            double* row_dot = nullptr, const int64_t* seg = nullptr, int64_t n_seg = 0);

// Combining the shards' partial results (vocab-parallel log-probs) once the TP group has reduced them.
// Given gmax[i] = max over shards of row_max[i]: red[i] = row_sumexp[i] · exp(row_max[i] - gmax[i]) (0
// for a shard with no logits) and red[n + i] = target_logit[i], for the group's sum.
template <typename T>
void logprob_shard_partials(const T* row_max, const T* row_sumexp, const T* target_logit, const double* gmax,
                            double* red, int64_t n);
// With red summed over the group: lse = gmax + log(red[i]), logp = red[n + i] - lse; a shard's cache of
// exp(z - row_max) (V columns, may be null) becomes softmax. For one shard this is bit for bit the
// arithmetic of logprob_forward.
template <typename T>
void logprob_shard_finish(const T* row_max, const T* row_sumexp, const double* gmax, const double* red, T* lse,
                          T* logp, T* prob_cache, int64_t n, int64_t V);

}  // namespace metapo::cpu
