#include "metapo/kernels/logprob.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

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

// Row softmax statistics; leaves the probabilities exp(logit - lse) in z when keep_probs.
template <typename T>
void row_lse(T* z, int64_t nr, int64_t V, const int32_t* targets, T* logp, T* lse, bool keep_probs) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < nr; ++i) {
    T* row = z + i * V;
    T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, row[v]);
    const T target_logit = row[targets[i]];
    T sum = 0;
    if (keep_probs) {  // one exp per element: store exp(z - max), then scale by 1/sum
#pragma omp simd reduction(+ : sum)
      for (int64_t v = 0; v < V; ++v) sum += (row[v] = vexp(row[v] - mx));
      const T inv = T(1) / sum;
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) row[v] *= inv;
    } else {
#pragma omp simd reduction(+ : sum)
      for (int64_t v = 0; v < V; ++v) sum += vexp(row[v] - mx);
    }
    lse[i] = mx + std::log(sum);
    logp[i] = target_logit - lse[i];
  }
}

}  // namespace

template <typename T>
void logprob_forward(const LogprobParams<T>& p, T* logp, T* lse, T* prob_cache) {
  const int64_t chunk = std::min(kChunk, std::max<int64_t>(p.n_rows, 1));
  std::vector<T> hc(size_t(chunk * p.C));
  std::vector<T> zc(prob_cache ? 0 : size_t(chunk * p.V));
  for (int64_t r0 = 0; r0 < p.n_rows; r0 += chunk) {
    const int64_t nr = std::min(chunk, p.n_rows - r0);
    T* z = prob_cache ? prob_cache + r0 * p.V : zc.data();
    gather_rows(hc.data(), p.h, p.rows + r0, nr, p.C);
    gemm<T>(false, true, nr, p.V, p.C, T(1), hc.data(), p.C, p.W, p.C, T(0), z, p.V);  // logits
    row_lse(z, nr, p.V, p.targets + r0, logp + r0, lse + r0, prob_cache != nullptr);
  }
}

template <typename T>
void logprob_backward(const LogprobParams<T>& p, const T* coef, const T* lse, T* prob_cache, T* dh,
                      T* dW, bool accumulate, const T* Ghat, double* row_dot) {
  if (!accumulate && p.n_rows == 0) std::fill(dW, dW + p.V * p.C, T(0));
  const int64_t chunk = std::min(kChunk, std::max<int64_t>(p.n_rows, 1));
  std::vector<T> hc(size_t(chunk * p.C)), dhc(size_t(chunk * p.C));
  std::vector<T> zc(prob_cache ? 0 : size_t(chunk * p.V)), gz(Ghat ? size_t(chunk * p.V) : 0);
  for (int64_t r0 = 0; r0 < p.n_rows; r0 += chunk) {
    const int64_t nr = std::min(chunk, p.n_rows - r0);
    T* z = prob_cache ? prob_cache + r0 * p.V : zc.data();
    gather_rows(hc.data(), p.h, p.rows + r0, nr, p.C);
    if (!prob_cache)
      gemm<T>(false, true, nr, p.V, p.C, T(1), hc.data(), p.C, p.W, p.C, T(0), z, p.V);
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
      row[p.targets[r0 + i]] += c;
    }
    if (Ghat) {
      // Ghost dots: ⟨dlogits_i, Ĝ h_i⟩ per row, from one extra [nr, V] GEMM.
      gemm<T>(false, true, nr, p.V, p.C, T(1), hc.data(), p.C, Ghat, p.C, T(0), gz.data(), p.V);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < nr; ++i) {
        double s = 0;
        for (int64_t v = 0; v < p.V; ++v) s += double(z[i * p.V + v]) * double(gz[size_t(i * p.V + v)]);
        row_dot[p.rows[r0 + i]] += s;
      }
    }
    gemm<T>(false, false, nr, p.C, p.V, T(1), z, p.V, p.W, p.C, T(0), dhc.data(), p.C);
    const T beta = (accumulate || r0 > 0) ? T(1) : T(0);  // the first chunk may overwrite dW
    gemm<T>(true, false, p.V, p.C, nr, T(1), z, p.V, hc.data(), p.C, beta, dW, p.C);
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < nr; ++i) {
      T* dst = dh + int64_t(p.rows[r0 + i]) * p.C;
      const T* src = dhc.data() + i * p.C;
      for (int64_t c = 0; c < p.C; ++c) dst[c] += src[c];
    }
  }
}

template void logprob_forward<float>(const LogprobParams<float>&, float*, float*, float*);
template void logprob_forward<double>(const LogprobParams<double>&, double*, double*, double*);
template void logprob_backward<float>(const LogprobParams<float>&, const float*, const float*,
                                      float*, float*, float*, bool, const float*, double*);
template void logprob_backward<double>(const LogprobParams<double>&, const double*, const double*,
                                       double*, double*, double*, bool, const double*, double*);

}  // namespace metapo::cpu
