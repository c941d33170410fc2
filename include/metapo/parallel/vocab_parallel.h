// Tensor-parallel vocabulary (DESIGN §4): the embedding table and the LM head split by vocabulary rows
// over the ranks of a TP group, and the log-softmax of the target token computed from the shards with
// three reductions per row (max, sum-exp, target logit) instead of gathering [rows, V] logits.
//
// Contract for the caller (the model's TP forward/backward):
// - inputs that are not shards (h, dx, tokens, rows, targets, coef, lse) are replicated: identical on
//   every rank of the TP group, and every rank calls the collectives below in the same order;
// - the backward functions communicate nothing. What they add to dh (LM head) and to row_dot / rdot
//   (ghost dots) is this rank's PARTIAL sum over the vocabulary: the caller all-reduces it over the TP
//   group (Comm::allreduce_sum), so it can batch these reductions with other partial sums (row-parallel
//   layers, other ghost dots). Pass buffers that hold no replicated content yet (e.g. zero) or only
//   other partial sums, or the all-reduce counts that content tp times;
// - weight gradients (dW, dE) are shards like the weights: no reduction over TP.
//
// The model and kernels see communication only through Comm, so this layer builds without MPI.
#pragma once
#include <cstdint>

#include "metapo/comm/comm.h"
#include "metapo/ops/ops.h"

namespace metapo {

// How a vocabulary of V tokens is split over a TP group of tp ranks. The vocabulary is padded to
// Vp = ceil(V / tp) · tp rows so that every rank holds the same number of rows (equal shards, equal
// buffers); rank r holds global rows [begin, begin + rows) with begin = r · rows, of which
// [begin, begin + real) are real tokens and the rest padding. Padding sits at the end of the
// vocabulary (only the last ranks carry it; with V < tp · rows a rank may hold padding only, real = 0).
// Padded rows are zero in the weights, never read, never produce a logit, and get no gradient.
struct VocabShard {
  int64_t vocab = 0;   // V
  int64_t padded = 0;  // Vp = ceil(V / tp) · tp
  int64_t rows = 0;    // Vp / tp: rows of this rank's embedding / LM-head shard
  int64_t begin = 0;   // global token id of this rank's first row
  int64_t real = 0;    // real tokens among the rows: min(rows, max(0, V - begin))
  int tp_size = 1, tp_rank = 0;

  VocabShard() = default;
  VocabShard(int64_t vocab, int tp_size, int tp_rank);

  int64_t end() const { return begin + real; }  // one past this rank's last real token
  bool owns(int64_t token) const { return token >= begin && token < begin + real; }
};

// ---- embedding ----

// x[t] = E[tokens[t]] for the full table E from its shards: each rank writes the rows of the tokens
// it owns and zero for the others, then x [n, C] is all-reduced (sum) over tp — exact, since each
// element has one nonzero term — so x is replicated on return. E_local: [shard.rows, C]. Token ids
// must lie in [0, V) (checked).
template <typename T>
void vocab_parallel_embedding_forward(const ops::Context& ctx, T* x, const T* E_local, const int32_t* tokens, int64_t n, int64_t C,
                                      const VocabShard& shard, Comm& tp);

// dE_local[tokens[t] - begin] += dx[t] for the tokens this rank owns (dx: [n, C], replicated), in
// token order like ops::embedding_backward. No communication; padded rows are never touched.
template <typename T>
void vocab_parallel_embedding_backward(const ops::Context& ctx, T* dE_local, const T* dx, const int32_t* tokens, int64_t n, int64_t C,
                                       const VocabShard& shard);

// Ghost dots of the embedding shard: rdot[t] += ⟨Ĝ_local[tokens[t] - begin], dx[t]⟩ for owned tokens
// only, a partial sum: the caller all-reduces rdot over tp (each token is owned by exactly one rank).
template <typename T>
void vocab_parallel_embedding_ghost_dots(const ops::Context& ctx, const T* dx, const int32_t* tokens, const T* Ghat_local, int64_t n,
                                         int64_t C, const VocabShard& shard, double* rdot);

// ---- target log-probs through the vocab-parallel LM head ----

template <typename T>
struct VocabParallelLogprobParams {
  const T* h;  // [n, C] hidden states after the final norm (replicated)
  const T* W;  // [shard.rows, C] this rank's rows of the padded LM head (padded rows are not read)
  int64_t C;
  VocabShard shard;
  const int32_t* rows;     // [n_rows]: which rows of h have a target (replicated)
  const int32_t* targets;  // [n_rows]: global target token ids in [0, V) (checked)
  int64_t n_rows;
};

// logp[i] = log softmax(h[rows[i]] W_full^T)[targets[i]] and lse[i] (kept for backward), both
// replicated on return. Per row, over this rank's real logits only: local max m_r and
// s_r = Σ exp(z - m_r); then one all-reduce (max) of m_r gives M, one all-reduce (sum) of
// [s_r · exp(m_r - M) | target logit, 0 where another rank owns the target] gives S and z_target;
// lse = M + log S, logp = z_target - lse. Communication: 3 · n_rows doubles in two all-reduces.
// prob_cache: [n_rows, shard.real] or null; when given, receives this rank's softmax columns
// exp(z - lse) for the backward. With tp = 1 the numbers equal ops::logprob_forward bit for bit.
template <typename T>
void vocab_parallel_logprob_forward(const ops::Context& ctx, const VocabParallelLogprobParams<T>& p, Comm& tp,
                                    T* logp, T* lse, T* prob_cache);

// With dlogits_i = coef_i (onehot_i - softmax_i) restricted to this rank's real columns (the onehot
// only where this rank owns the target):
//   dh[rows[i]] += dlogits_i W_local          — PARTIAL: the caller all-reduces dh over tp;
//   dW_local (+)= Σ_i dlogits_iᵀ h[rows[i]]    — this rank's shard; padded rows are set to zero when
//                                                !accumulate and left untouched when accumulating;
//   row_dot[rows[i]] += ⟨dlogits_i, Ĝ_local h_i⟩ (when Ghat_local [shard.rows, C] is given)
//                                              — PARTIAL: the caller all-reduces row_dot over tp.
// g: coef, lse from the forward (global), prob_cache from the forward or null (the logits are
// recomputed; it is consumed), dh, dW = dW_local, accumulate, ghat = Ĝ_local and row_dot (both or
// neither). No communication.
template <typename T>
void vocab_parallel_logprob_backward(const ops::Context& ctx, const VocabParallelLogprobParams<T>& p,
                                     const ops::LogprobGrad<T>& g);

}  // namespace metapo
