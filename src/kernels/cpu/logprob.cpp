#include "metapo/kernels/logprob.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "metapo/core/error.h"
#include "metapo/kernels/gemm.h"
#include "metapo/kernels/vec_math.h"

namespace metapo::cpu {

namespace {

// Rows per chunk: large enough for efficient GEMMs, small enough that [chunk, V] stays modest.
constexpr int64_t kChunk = 256;

template <typename T>
void gather_rows(T* dst, const T* h, const int32_t* rows, int64_t nr, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nr; ++i) std::memcpy(dst + i * C, h + int64_t(rows[i]) * C, sizeof(T) * C);
}

// Max and Σ exp(z - max) of one row of logits; with keep_probs the row becomes exp(z - max) (one exp
// per element). Shared by the whole-vocabulary and the shard forward, so both sum in the same order.
template <typename T>
inline void row_max_sumexp(T* row, int64_t V, bool keep_probs, T& max_out, T& sum_out) {
  T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t v = 0; v < V; ++v) mx = std::max(mx, row[v]);
  T sum = 0;
  if (keep_probs) {
#pragma omp simd reduction(+ : sum)
    for (int64_t v = 0; v < V; ++v) sum += (row[v] = vexp(row[v] - mx));
  } else {
#pragma omp simd reduction(+ : sum)
    for (int64_t v = 0; v < V; ++v) sum += vexp(row[v] - mx);
  }
  max_out = mx, sum_out = sum;
}

// Row softmax statistics; leaves the probabilities exp(logit - lse) in z when keep_probs.
template <typename T>
void row_lse(T* z, int64_t nr, int64_t V, const int32_t* targets, T* logp, T* lse, bool keep_probs) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nr; ++i) {
    T* row = z + i * V;
    const T target_logit = row[targets[i]];
    T mx, sum;
    row_max_sumexp(row, V, keep_probs, mx, sum);
    if (keep_probs) {  // scale exp(z - max) by 1/sum
      const T inv = T(1) / sum;
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) row[v] *= inv;
    }
    lse[i] = mx + std::log(sum);
    logp[i] = target_logit - lse[i];
  }
}

template <typename T>
int64_t chunk_rows(const LogprobParams<T>& p) {
  return std::min(kChunk, std::max<int64_t>(p.n_rows, 1));
}

// Walks the scored rows in chunks of at most kChunk: gathers a chunk's hidden rows into hc [nr, C],
// points z at its [nr, V] block — in the probability cache when given, else in a scratch chunk — and
// computes the logits there (always when `logits`, else only without a cache, whose probabilities the
// caller then reads), then calls f(r0, nr, hc, z).
template <typename T, typename F>
void for_each_chunk(const LogprobParams<T>& p, T* prob_cache, bool logits, F&& f) {
  const int64_t chunk = chunk_rows(p);
  std::vector<T> hc(size_t(chunk * p.C));
  std::vector<T> zc(prob_cache ? 0 : size_t(chunk * p.V));
  for (int64_t r0 = 0; r0 < p.n_rows; r0 += chunk) {
    const int64_t nr = std::min(chunk, p.n_rows - r0);
    T* z = prob_cache ? prob_cache + r0 * p.V : zc.data();
    gather_rows(hc.data(), p.h, p.rows + r0, nr, p.C);
    if (logits || !prob_cache) gemm<T>(false, true, nr, p.V, p.C, T(1), hc.data(), p.C, p.W, p.C, T(0), z, p.V);
    f(r0, nr, static_cast<const T*>(hc.data()), z);
  }
}

}  // namespace

template <typename T>
void logprob_forward(const LogprobParams<T>& p, T* logp, T* lse, T* prob_cache) {
  for_each_chunk(p, prob_cache, true, [&](int64_t r0, int64_t nr, const T*, T* z) {
    row_lse(z, nr, p.V, p.targets + r0, logp + r0, lse + r0, prob_cache != nullptr);
  });
}

template <typename T>
void logprob_forward_shard(const LogprobParams<T>& p, int64_t vocab_begin, T* row_max, T* row_sumexp,
                           T* target_logit, T* prob_cache) {
  MP_CHECK(p.V >= 0 && vocab_begin >= 0, "logprob_forward_shard: bad shard [", vocab_begin, ", +", p.V, ")");
  if (p.V == 0) {  // a shard of padding only: no logits (BLAS rejects zero leading dimensions)
    std::fill(row_max, row_max + p.n_rows, -std::numeric_limits<T>::infinity());
    std::fill(row_sumexp, row_sumexp + p.n_rows, T(0));
    std::fill(target_logit, target_logit + p.n_rows, T(0));
    return;
  }
  for_each_chunk(p, prob_cache, true, [&](int64_t r0, int64_t nr, const T*, T* z) {
#pragma omp parallel for schedule(static)
    for (int64_t i = r0; i < r0 + nr; ++i) {
      T* row = z + (i - r0) * p.V;
      const int64_t tv = int64_t(p.targets[i]) - vocab_begin;
      target_logit[i] = (tv >= 0 && tv < p.V) ? row[tv] : T(0);
      row_max_sumexp(row, p.V, prob_cache != nullptr, row_max[i], row_sumexp[i]);
    }
  });
}

template <typename T>
void logprob_backward(const LogprobParams<T>& p, const T* coef, const T* lse, T* prob_cache, T* dh,
                      T* dW, bool accumulate, const T* Ghat, double* row_dot, const int64_t* seg, int64_t n_seg) {
  logprob_backward_shard(p, 0, coef, lse, prob_cache, dh, dW, accumulate, Ghat, row_dot, seg, n_seg);
}

namespace {

// For the fused LM-head ghost: row_seg[i] = the segment of h's rows that scored row i lies in. Returns
// false when rows is not increasing or leaves [seg[0], seg[n_seg]) (the caller then takes the per-row
// form).
bool rows_in_segments(const int32_t* rows, int64_t n_rows, const int64_t* seg, int64_t n_seg,
                      std::vector<int64_t>& row_seg) {
  row_seg.resize(size_t(n_rows));
  int64_t s = 0;
  for (int64_t i = 0; i < n_rows; ++i) {
    if (i > 0 && rows[i] <= rows[i - 1]) return false;
    while (s < n_seg && rows[i] >= seg[s + 1]) ++s;
    if (s >= n_seg || rows[i] < seg[s]) return false;
    row_seg[size_t(i)] = s;
  }
  return true;
}

}  // namespace

template <typename T>
void logprob_backward_shard(const LogprobParams<T>& p, int64_t vocab_begin, const T* coef, const T* lse,
                            T* prob_cache, T* dh, T* dW, bool accumulate, const T* Ghat, double* row_dot,
                            const int64_t* seg, int64_t n_seg) {
  MP_CHECK(p.V >= 0 && vocab_begin >= 0, "logprob_backward_shard: bad shard [", vocab_begin, ", +", p.V, ")");
  if (!accumulate && p.n_rows == 0) std::fill(dW, dW + p.V * p.C, T(0));
  if (p.V == 0) return;  // no logits here: nothing reaches dh, dW (empty) or row_dot
  const int64_t chunk = chunk_rows(p);
  // Fused: segments given, rows increasing inside them, and a mean of at least 4 scored rows per segment
  // (below that the flushes cost more than the per-row GEMM).
  std::vector<int64_t> row_seg;
  const bool fused = Ghat && seg && n_seg > 0 && rows_in_segments(p.rows, p.n_rows, seg, n_seg, row_seg) &&
                     p.n_rows >= 4 * n_seg;
  std::vector<T> dhc(size_t(chunk * p.C)), gz(Ghat && !fused ? size_t(chunk * p.C) : 0);
  std::vector<int64_t> local;
  std::vector<double> local_dot;
  // Without a cache the logits are recomputed; with one, z holds the probabilities.
  for_each_chunk(p, prob_cache, false, [&](int64_t r0, int64_t nr, const T* hc, T* z) {
    // dlogits = coef (onehot - softmax), written over z.
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nr; ++i) {
      T* row = z + i * p.V;
      const T c = coef[r0 + i], l = lse[r0 + i];
      if (prob_cache) {
#pragma omp simd
        for (int64_t v = 0; v < p.V; ++v) row[v] = -c * row[v];
      } else {
#pragma omp simd
        for (int64_t v = 0; v < p.V; ++v) row[v] = -c * vexp(row[v] - l);
      }
      const int64_t tv = int64_t(p.targets[r0 + i]) - vocab_begin;  // the onehot, where this shard owns it
      if (tv >= 0 && tv < p.V) row[tv] += c;
    }
    gemm<T>(false, false, nr, p.C, p.V, T(1), z, p.V, p.W, p.C, T(0), dhc.data(), p.C);
    if (fused) {
      // The chunk's runs of rows in one segment; each run's dot lands on its first row.
      local.clear();
      for (int64_t i = 0; i < nr; ++i)
        if (i == 0 || row_seg[size_t(r0 + i)] != row_seg[size_t(r0 + i - 1)]) local.push_back(i);
      local.push_back(nr);
      local_dot.assign(local.size() - 1, 0.0);
      weight_grad_ghost<T>(dW, z, hc, Ghat, nr, p.C, p.V, accumulate || r0 > 0, local.data(),
                           int64_t(local.size()) - 1, local_dot.data());
      for (size_t k = 0; k + 1 < local.size(); ++k) row_dot[p.rows[r0 + local[k]]] += local_dot[k];
    } else {
      if (Ghat) {
        // Ghost dots: ⟨dlogits_i, Ĝ h_i⟩ = ⟨dlogits_i Ĝ, h_i⟩ per row, from one extra GEMM with [nr, C]
        // output (not [nr, V]: the same FLOPs, 1/16 of the memory traffic at V = 16 C).
        gemm<T>(false, false, nr, p.C, p.V, T(1), z, p.V, Ghat, p.C, T(0), gz.data(), p.C);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < nr; ++i) {
          const T* a = gz.data() + i * p.C;
          const T* hrow = hc + i * p.C;
          double s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t c = 0; c < p.C; ++c) s += double(a[c]) * double(hrow[c]);
          row_dot[p.rows[r0 + i]] += s;
        }
      }
      const T beta = (accumulate || r0 > 0) ? T(1) : T(0);  // the first chunk may overwrite dW
      gemm<T>(true, false, p.V, p.C, nr, T(1), z, p.V, hc, p.C, beta, dW, p.C);
    }
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nr; ++i) {
      T* dst = dh + int64_t(p.rows[r0 + i]) * p.C;
      const T* src = dhc.data() + i * p.C;
      for (int64_t c = 0; c < p.C; ++c) dst[c] += src[c];
    }
  });
}

template <typename T>
void logprob_shard_partials(const T* mx, const T* se, const T* tl, const double* gmax, double* red, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    // A rank with no real logits (mx = -inf, se = 0) adds nothing; the guard avoids -inf - -inf.
    red[i] = se[i] > 0 ? double(se[i]) * std::exp(double(mx[i]) - gmax[i]) : 0.0;
    red[n + i] = double(tl[i]);  // the owner's logit, 0 elsewhere: the sum is exact
  }
}

template <typename T>
void logprob_shard_finish(const T* mx, const T* se, const double* gmax, const double* red, T* lse, T* logp,
                          T* prob_cache, int64_t n, int64_t V) {
  // The same arithmetic as logprob_forward when there is one shard (M = m, S = s, exp(0) = 1).
  for (int64_t i = 0; i < n; ++i) {
    lse[i] = T(gmax[i]) + std::log(T(red[i]));
    logp[i] = T(red[n + i]) - lse[i];
  }
  if (!prob_cache || V == 0) return;
  // The cache holds exp(z - m_r); softmax = exp(z - m_r) · exp(m_r - M) / S. For one shard the factor
  // is 1/S, rounded once from double (exact for a division), like the single-rank 1/sum.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T f = se[i] > 0 ? T(std::exp(double(mx[i]) - gmax[i]) / red[i]) : T(0);
    T* row = prob_cache + i * V;
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) row[v] *= f;
  }
}

template void logprob_shard_partials<float>(const float*, const float*, const float*, const double*, double*,
                                            int64_t);
template void logprob_shard_partials<double>(const double*, const double*, const double*, const double*, double*,
                                             int64_t);
template void logprob_shard_finish<float>(const float*, const float*, const double*, const double*, float*, float*,
                                          float*, int64_t, int64_t);
template void logprob_shard_finish<double>(const double*, const double*, const double*, const double*, double*,
                                           double*, double*, int64_t, int64_t);

template void logprob_forward<float>(const LogprobParams<float>&, float*, float*, float*);
template void logprob_forward<double>(const LogprobParams<double>&, double*, double*, double*);
template void logprob_backward<float>(const LogprobParams<float>&, const float*, const float*,
                                      float*, float*, float*, bool, const float*, double*, const int64_t*, int64_t);
template void logprob_backward<double>(const LogprobParams<double>&, const double*, const double*,
                                       double*, double*, double*, bool, const double*, double*, const int64_t*,
                                       int64_t);
template void logprob_forward_shard<float>(const LogprobParams<float>&, int64_t, float*, float*, float*,
                                          float*);
template void logprob_forward_shard<double>(const LogprobParams<double>&, int64_t, double*, double*, double*,
                                           double*);
template void logprob_backward_shard<float>(const LogprobParams<float>&, int64_t, const float*, const float*,
                                            float*, float*, float*, bool, const float*, double*, const int64_t*,
                                            int64_t);
template void logprob_backward_shard<double>(const LogprobParams<double>&, int64_t, const double*,
                                             const double*, double*, double*, double*, bool, const double*,
                                             double*, const int64_t*, int64_t);

}  // namespace metapo::cpu
