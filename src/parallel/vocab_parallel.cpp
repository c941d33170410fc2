#include "metapo/parallel/vocab_parallel.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "metapo/core/error.h"

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
ops::Logprob<T> local_params(const VocabParallelLogprobParams<T>& p) {
  // Only the real rows: padded rows produce no logit (as if they were -inf) and no gradient.
  return ops::Logprob<T>{p.h, p.W, p.C, p.shard.real, p.rows, p.targets, p.n_rows, p.shard.begin};
}

}  // namespace

// ---- embedding ----

template <typename T>
void vocab_parallel_embedding_forward(const ops::Context& ctx, T* x, const T* E_local, const int32_t* tokens, int64_t n,
                                      int64_t C, const VocabShard& s, Comm& tp) {
  check_group(s, tp, "vocab_parallel_embedding_forward");
  check_tokens(tokens, n, s.vocab, "vocab_parallel_embedding_forward");
  // The rows this rank owns; the others zero.
  ops::embedding_forward(ctx, ops::Embedding<T>{x, E_local, tokens, n, C, s.begin, s.begin + s.real});
  // Adding zeros is exact: x equals the single-rank lookup bit for bit.
  tp.allreduce_sum(x, size_t(n * C));
}

template <typename T>
void vocab_parallel_embedding_backward(const ops::Context& ctx, T* dE_local, const T* dx, const int32_t* tokens,
                                       int64_t n, int64_t C, const VocabShard& s) {
  check_tokens(tokens, n, s.vocab, "vocab_parallel_embedding_backward");
  // Another rank's rows are skipped (dx is replicated: that rank adds them).
  ops::embedding_backward(ctx, ops::EmbeddingGrad<T>{dE_local, dx, tokens, n, C, s.begin, s.begin + s.real});
}

template <typename T>
void vocab_parallel_embedding_ghost_dots(const ops::Context& ctx, const T* dx, const int32_t* tokens,
                                         const T* Ghat_local, int64_t n, int64_t C, const VocabShard& s,
                                         double* rdot) {
  check_tokens(tokens, n, s.vocab, "vocab_parallel_embedding_ghost_dots");
  ops::embedding_ghost_dots(ctx, ops::EmbeddingGhost<T>{dx, tokens, Ghat_local, n, C, rdot, s.begin, s.begin + s.real});
}

// ---- target log-probs ----

template <typename T>
void vocab_parallel_logprob_forward(const ops::Context& ctx, const VocabParallelLogprobParams<T>& p, Comm& tp,
                                    T* logp, T* lse, T* prob_cache) {
  check_group(p.shard, tp, "vocab_parallel_logprob_forward");
  check_tokens(p.targets, p.n_rows, p.shard.vocab, "vocab_parallel_logprob_forward (targets)");
  const int64_t nr = p.n_rows;
  const size_t n = static_cast<size_t>(nr);
  ops::Arena local(ctx.device);  // the temporaries: the caller's arena, else one of our own
  ops::Arena& ar = ctx.arena ? *ctx.arena : local;
  T *mx = ar.alloc<T>(n), *se = ar.alloc<T>(n), *tl = ar.alloc<T>(n);
  ops::logprob_forward_shard(ctx, local_params(p), mx, se, tl, prob_cache);

  // In double: the all-reduces are double, and the rescaling exp(m_r - M) of a float sum loses nothing.
  double *gmax = ar.alloc<double>(n), *red = ar.alloc<double>(2 * n);
  ops::widen(ctx, gmax, mx, nr);
  tp.allreduce_max(gmax, n);
  ops::logprob_shard_partials(ctx, mx, se, tl, gmax, red, nr);
  tp.allreduce_sum(red, 2 * n);
  // The same arithmetic as the single-rank logprob_forward when tp = 1: bit for bit.
  ops::logprob_shard_finish(ctx, mx, se, gmax, red, lse, logp, prob_cache, nr, p.shard.real);
}

template <typename T>
void vocab_parallel_logprob_backward(const ops::Context& ctx, const VocabParallelLogprobParams<T>& p,
                                     const ops::LogprobGrad<T>& g) {
  check_tokens(p.targets, p.n_rows, p.shard.vocab, "vocab_parallel_logprob_backward (targets)");
  MP_CHECK(!g.ghat == !g.row_dot, "vocab_parallel_logprob_backward: Ghat_local and row_dot go together");
  const VocabShard& s = p.shard;
  if (!g.accumulate) ops::fill(ctx, g.dW + s.real * p.C, T(0), (s.rows - s.real) * p.C);  // padding: zero
  ops::logprob_backward(ctx, local_params(p), g);
}

// ---- instantiations ----

#define MP_INSTANTIATE(T)                                                                                       \
  template void vocab_parallel_embedding_forward<T>(const ops::Context&, T*, const T*, const int32_t*, int64_t, \
                                                    int64_t, const VocabShard&, Comm&);                         \
  template void vocab_parallel_embedding_backward<T>(const ops::Context&, T*, const T*, const int32_t*, int64_t, \
                                                     int64_t, const VocabShard&);                                \
  template void vocab_parallel_embedding_ghost_dots<T>(const ops::Context&, const T*, const int32_t*, const T*,  \
                                                       int64_t, int64_t, const VocabShard&, double*);            \
  template void vocab_parallel_logprob_forward<T>(const ops::Context&, const VocabParallelLogprobParams<T>&,     \
                                                  Comm&, T*, T*, T*);                                           \
  template void vocab_parallel_logprob_backward<T>(const ops::Context&, const VocabParallelLogprobParams<T>&,    \
                                                   const ops::LogprobGrad<T>&);
MP_INSTANTIATE(float)
MP_INSTANTIATE(double)
#undef MP_INSTANTIATE

}  // namespace metapo
