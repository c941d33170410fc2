#include "metapo/parallel/vocab_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "metapo/core/error.h"
#include "metapo/kernels/embedding.h"
#include "metapo/kernels/logprob.h"

namespace metapo {

VocabShard::VocabShard(int64_t V, int tp, int r) {
  MP_CHECK(V >= 1, "VocabShard: vocabulary size must be positive, got ", V);
  MP_CHECK(tp >= 1, "VocabShard: tensor-parallel size must be positive, got ", tp);
  MP_CHECK(r >= 0 && r < tp, "VocabShard: rank ", r, " is outside the tensor-parallel group [0, ", tp, ")");
  vocab = V, tp_size = tp, tp_rank = r;
  rows = (V + tp - 1) / tp;
  padded = rows * tp;
  begin = rows * r;
  real = std::min(rows, std::max<int64_t>(0, V - begin));
}

namespace {

void check_group(const VocabShard& s, const Comm& tp, const char* who) {
  MP_CHECK(s.tp_size == tp.size() && s.tp_rank == tp.rank(), who, ": the vocabulary shard is for rank ", s.tp_rank,
           " of ", s.tp_size, " but the communicator is rank ", tp.rank(), " of ", tp.size());
}

// Checked before any parallel loop (an exception must not leave an OpenMP region). The ids are
// replicated, so every rank throws alike and none is left waiting in a collective.
void check_tokens(const int32_t* tokens, int64_t n, int64_t V, const char* who) {
  for (int64_t t = 0; t < n; ++t)
    MP_CHECK(tokens[t] >= 0 && tokens[t] < V, who, ": token id ", tokens[t], " at position ", t,
             " is outside the vocabulary [0, ", V, ")");
}

template <typename T>
cpu::LogprobParams<T> local_params(const VocabParallelLogprobParams<T>& p) {
  // Only the real rows: padded rows produce no logit (as if they were -inf) and no gradient.
  return cpu::LogprobParams<T>{p.h, p.W, p.C, p.shard.real, p.rows, p.targets, p.n_rows};
}

}  // namespace

// ---- embedding ----

template <typename T>
void vocab_parallel_embedding_forward(T* x, const T* E_local, const int32_t* tokens, int64_t n, int64_t C,
                                      const VocabShard& s, Comm& tp) {
  check_group(s, tp, "vocab_parallel_embedding_forward");
  check_tokens(tokens, n, s.vocab, "vocab_parallel_embedding_forward");
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    if (s.owns(tokens[t]))
      std::memcpy(x + t * C, E_local + (int64_t(tokens[t]) - s.begin) * C, sizeof(T) * C);
    else
      std::fill(x + t * C, x + (t + 1) * C, T(0));
  }
  // Adding zeros is exact: x equals the single-rank lookup bit for bit.
  tp.allreduce_sum(x, size_t(n * C));
}

template <typename T>
void vocab_parallel_embedding_backward(T* dE_local, const T* dx, const int32_t* tokens, int64_t n, int64_t C,
                                       const VocabShard& s) {
  check_tokens(tokens, n, s.vocab, "vocab_parallel_embedding_backward");
  // Another rank's rows are skipped (dx is replicated: that rank adds them).
  cpu::embedding_backward(dE_local, dx, tokens, n, C, s.begin, s.begin + s.real);
}

template <typename T>
void vocab_parallel_embedding_ghost_dots(const T* dx, const int32_t* tokens, const T* Ghat_local, int64_t n,
                                         int64_t C, const VocabShard& s, double* rdot) {
  check_tokens(tokens, n, s.vocab, "vocab_parallel_embedding_ghost_dots");
  cpu::embedding_ghost_dots(dx, tokens, Ghat_local, n, C, rdot, s.begin, s.begin + s.real);
}

// ---- target log-probs ----

template <typename T>
void vocab_parallel_logprob_forward(const VocabParallelLogprobParams<T>& p, Comm& tp, T* logp, T* lse,
                                    T* prob_cache) {
  check_group(p.shard, tp, "vocab_parallel_logprob_forward");
  check_tokens(p.targets, p.n_rows, p.shard.vocab, "vocab_parallel_logprob_forward (targets)");
  const int64_t nr = p.n_rows;
  const size_t n = static_cast<size_t>(nr);
  std::vector<T> mx(n), se(n), tl(n);
  cpu::logprob_forward_shard(local_params(p), p.shard.begin, mx.data(), se.data(), tl.data(), prob_cache);

  // In double: the all-reduces are double, and the rescaling exp(m_r - M) of a float sum loses nothing.
  std::vector<double> gmax(n), red(2 * n);
  for (size_t i = 0; i < n; ++i) gmax[i] = double(mx[i]);
  tp.allreduce_max(gmax.data(), n);
  for (size_t i = 0; i < n; ++i) {
    // A rank with no real logits (mx = -inf, se = 0) adds nothing; the guard avoids -inf - -inf.
    red[i] = se[i] > 0 ? double(se[i]) * std::exp(double(mx[i]) - gmax[i]) : 0.0;
    red[n + i] = double(tl[i]);  // the owner's logit, 0 elsewhere: the sum is exact
  }
  tp.allreduce_sum(red.data(), 2 * n);

  // The same arithmetic as cpu::logprob_forward when tp = 1 (M = m, S = s, exp(0) = 1): bit for bit.
  for (size_t i = 0; i < n; ++i) {
    lse[i] = T(gmax[i]) + std::log(T(red[i]));
    logp[i] = T(red[n + i]) - lse[i];
  }
  if (prob_cache && p.shard.real > 0) {
    // The cache holds exp(z - m_r); softmax = exp(z - m_r) · exp(m_r - M) / S. For tp = 1 the factor
    // is 1/S, rounded once from double (exact for a division), like the single-rank 1/sum.
    const int64_t V = p.shard.real;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nr; ++i) {
      const T f = se[i] > 0 ? T(std::exp(double(mx[i]) - gmax[i]) / red[i]) : T(0);
      T* row = prob_cache + i * V;
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) row[v] *= f;
    }
  }
}

template <typename T>
void vocab_parallel_logprob_backward(const VocabParallelLogprobParams<T>& p, const T* coef, const T* lse,
                                     T* prob_cache, T* dh, T* dW_local, bool accumulate, const T* Ghat_local,
                                     double* row_dot) {
  check_tokens(p.targets, p.n_rows, p.shard.vocab, "vocab_parallel_logprob_backward (targets)");
  MP_CHECK(!Ghat_local == !row_dot, "vocab_parallel_logprob_backward: Ghat_local and row_dot go together");
  const VocabShard& s = p.shard;
  if (!accumulate) std::fill(dW_local + s.real * p.C, dW_local + s.rows * p.C, T(0));  // padding: zero
  cpu::logprob_backward_shard(local_params(p), s.begin, coef, lse, prob_cache, dh, dW_local, accumulate,
                              Ghat_local, row_dot);
}

// ---- instantiations ----

template void vocab_parallel_embedding_forward<float>(float*, const float*, const int32_t*, int64_t, int64_t,
                                                      const VocabShard&, Comm&);
template void vocab_parallel_embedding_forward<double>(double*, const double*, const int32_t*, int64_t, int64_t,
                                                       const VocabShard&, Comm&);
template void vocab_parallel_embedding_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t,
                                                       const VocabShard&);
template void vocab_parallel_embedding_backward<double>(double*, const double*, const int32_t*, int64_t,
                                                        int64_t, const VocabShard&);
template void vocab_parallel_embedding_ghost_dots<float>(const float*, const int32_t*, const float*, int64_t,
                                                         int64_t, const VocabShard&, double*);
template void vocab_parallel_embedding_ghost_dots<double>(const double*, const int32_t*, const double*, int64_t,
                                                          int64_t, const VocabShard&, double*);
template void vocab_parallel_logprob_forward<float>(const VocabParallelLogprobParams<float>&, Comm&, float*,
                                                    float*, float*);
template void vocab_parallel_logprob_forward<double>(const VocabParallelLogprobParams<double>&, Comm&, double*,
                                                     double*, double*);
template void vocab_parallel_logprob_backward<float>(const VocabParallelLogprobParams<float>&, const float*,
                                                     const float*, float*, float*, float*, bool, const float*,
                                                     double*);
template void vocab_parallel_logprob_backward<double>(const VocabParallelLogprobParams<double>&, const double*,
                                                      const double*, double*, double*, double*, bool,
                                                      const double*, double*);

}  // namespace metapo
