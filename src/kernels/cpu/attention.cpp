#include "metapo/kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "metapo/kernels/gemm.h"
#include "metapo/kernels/vec_math.h"

namespace metapo::cpu {

namespace {

// Query rows are processed in blocks of kRowBlock; block [r0, r1) only needs keys [0, r1), which
// skips most of the masked upper triangle without giving up GEMMs.
constexpr int64_t kRowBlock = 64;

struct Work {
  int64_t seq, group;
};

// (sequence, kv group) work items: every query head of a group writes the same dK/dV rows, so a group
// belongs to one thread and the accumulation order is fixed.
std::vector<Work> work_items(const int64_t* cu, int64_t n_seqs, int64_t n_kv) {
  std::vector<Work> w;
  for (int64_t s = 0; s < n_seqs; ++s)
    if (cu[s + 1] > cu[s])
      for (int64_t g = 0; g < n_kv; ++g) w.push_back({s, g});
  // Longest sequences first so the dynamic schedule balances.
  std::stable_sort(w.begin(), w.end(), [&](const Work& a, const Work& b) {
    return cu[a.seq + 1] - cu[a.seq] > cu[b.seq + 1] - cu[b.seq];
  });
  return w;
}

int64_t max_len(const int64_t* cu, int64_t n_seqs) {
  int64_t m = 0;
  for (int64_t s = 0; s < n_seqs; ++s) m = std::max(m, cu[s + 1] - cu[s]);
  return m;
}

// Turns scaled scores S[r, 0..c) of rows r0+r into causal probabilities in place; with lse == nullptr it
// computes and stores the row log-sum-exp into lse_out, else it uses the given lse (backward).
template <typename T>
void causal_softmax(T* S, int64_t ldS, int64_t r0, int64_t r1, const T* lse_in, T* lse_out) {
  for (int64_t r = r0; r < r1; ++r) {
    T* row = S + (r - r0) * ldS;
    const int64_t nv = r + 1;  // keys 0..r are visible
    if (!lse_in) {
      T mx = -std::numeric_limits<T>::infinity();
      for (int64_t j = 0; j < nv; ++j) mx = std::max(mx, row[j]);
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < nv; ++j) sum += (row[j] = vexp(row[j] - mx));
      lse_out[r] = mx + std::log(sum);
      const T inv = T(1) / sum;
#pragma omp simd
      for (int64_t j = 0; j < nv; ++j) row[j] *= inv;
    } else {
      const T l = lse_in[r];
#pragma omp simd
      for (int64_t j = 0; j < nv; ++j) row[j] = vexp(row[j] - l);
    }
    for (int64_t j = nv; j < r1; ++j) row[j] = 0;
  }
}

}  // namespace

template <typename T>
void attention_forward(const AttentionParams<T>& p) {
  const int64_t D = p.head_dim, hpg = p.n_heads / p.n_kv_heads;
  const std::vector<Work> work = work_items(p.cu_seqlens, p.n_seqs, p.n_kv_heads);
  const int64_t L = max_len(p.cu_seqlens, p.n_seqs);
#pragma omp parallel
  {
    std::vector<T> S(size_t(std::min(L, kRowBlock) * L));  // [row block, keys]
#pragma omp for schedule(dynamic, 1)
    for (size_t wi = 0; wi < work.size(); ++wi) {
      const int64_t s0 = p.cu_seqlens[work[wi].seq], T_ = p.cu_seqlens[work[wi].seq + 1] - s0;
      const int64_t g = work[wi].group;
      const T* K = p.k + s0 * p.ld_qkv + g * D;  // [T_, D], stride ld_qkv
      const T* V = p.v + s0 * p.ld_qkv + g * D;
      for (int64_t h = g * hpg; h < (g + 1) * hpg; ++h) {
        const T* Q = p.q + s0 * p.ld_qkv + h * D;
        T* O = p.out + s0 * p.ld_out + h * D;
        T* lse = p.lse + h * p.n_tokens + s0;
        for (int64_t r0 = 0; r0 < T_; r0 += kRowBlock) {
          const int64_t r1 = std::min(T_, r0 + kRowBlock), nr = r1 - r0;
          // S[nr, r1] = scale * Q[r0:r1] K[0:r1]^T
          gemm<T>(false, true, nr, r1, D, p.scale, Q + r0 * p.ld_qkv, p.ld_qkv, K, p.ld_qkv, T(0),
                  S.data(), r1);
          causal_softmax<T>(S.data(), r1, r0, r1, nullptr, lse);
          // O[r0:r1] = P V[0:r1]
          gemm<T>(false, false, nr, D, r1, T(1), S.data(), r1, V, p.ld_qkv, T(0),
                  O + r0 * p.ld_out, p.ld_out);
        }
      }
    }
  }
}

template <typename T>
void attention_backward(const AttentionParams<T>& p, const AttentionGradParams<T>& gp) {
  const int64_t D = p.head_dim, hpg = p.n_heads / p.n_kv_heads;
  const std::vector<Work> work = work_items(p.cu_seqlens, p.n_seqs, p.n_kv_heads);
  const int64_t L = max_len(p.cu_seqlens, p.n_seqs);
#pragma omp parallel
  {
    const int64_t rb = std::min(L, kRowBlock);
    std::vector<T> P(size_t(rb * L)), dP(size_t(rb * L));
#pragma omp for schedule(dynamic, 1)
    for (size_t wi = 0; wi < work.size(); ++wi) {
      const int64_t s0 = p.cu_seqlens[work[wi].seq], T_ = p.cu_seqlens[work[wi].seq + 1] - s0;
      const int64_t g = work[wi].group;
      const T* K = p.k + s0 * p.ld_qkv + g * D;
      const T* V = p.v + s0 * p.ld_qkv + g * D;
      T* dK = gp.dk + s0 * gp.ld_dqkv + g * D;
      T* dV = gp.dv + s0 * gp.ld_dqkv + g * D;
      for (int64_t t = 0; t < T_; ++t)
        for (int64_t d = 0; d < D; ++d) dK[t * gp.ld_dqkv + d] = dV[t * gp.ld_dqkv + d] = 0;
      for (int64_t h = g * hpg; h < (g + 1) * hpg; ++h) {
        const T* Q = p.q + s0 * p.ld_qkv + h * D;
        const T* O = p.out + s0 * p.ld_out + h * D;
        const T* dO = gp.dout + s0 * p.ld_out + h * D;
        const T* lse = p.lse + h * p.n_tokens + s0;
        T* dQ = gp.dq + s0 * gp.ld_dqkv + h * D;
        for (int64_t r0 = 0; r0 < T_; r0 += kRowBlock) {
          const int64_t r1 = std::min(T_, r0 + kRowBlock), nr = r1 - r0;
          gemm<T>(false, true, nr, r1, D, p.scale, Q + r0 * p.ld_qkv, p.ld_qkv, K, p.ld_qkv, T(0),
                  P.data(), r1);
          causal_softmax<T>(P.data(), r1, r0, r1, lse, nullptr);
          // dV[0:r1] += P^T dO[r0:r1]
          gemm<T>(true, false, r1, D, nr, T(1), P.data(), r1, dO + r0 * p.ld_out, p.ld_out, T(1), dV,
                  gp.ld_dqkv);
          // dP = dO[r0:r1] V[0:r1]^T
          gemm<T>(false, true, nr, r1, D, T(1), dO + r0 * p.ld_out, p.ld_out, V, p.ld_qkv, T(0),
                  dP.data(), r1);
          // dS = P * (dP - delta), delta_r = <dO_r, O_r> (= sum_j P_rj dP_rj); the scale folds into
          // the two GEMMs below.
          for (int64_t r = 0; r < nr; ++r) {
            T dl = 0;
            for (int64_t d = 0; d < D; ++d) dl += dO[(r0 + r) * p.ld_out + d] * O[(r0 + r) * p.ld_out + d];
            T* pr = P.data() + r * r1;
            const T* dpr = dP.data() + r * r1;
            for (int64_t j = 0; j < r1; ++j) pr[j] = pr[j] * (dpr[j] - dl);
          }
          // dQ[r0:r1] = scale * dS K[0:r1];  dK[0:r1] += scale * dS^T Q[r0:r1]
          gemm<T>(false, false, nr, D, r1, p.scale, P.data(), r1, K, p.ld_qkv, T(0),
                  dQ + r0 * gp.ld_dqkv, gp.ld_dqkv);
          gemm<T>(true, false, r1, D, nr, p.scale, P.data(), r1, Q + r0 * p.ld_qkv, p.ld_qkv, T(1), dK,
                  gp.ld_dqkv);
        }
      }
    }
  }
}

template void attention_forward<float>(const AttentionParams<float>&);
template void attention_forward<double>(const AttentionParams<double>&);
template void attention_backward<float>(const AttentionParams<float>&, const AttentionGradParams<float>&);
template void attention_backward<double>(const AttentionParams<double>&,
                                         const AttentionGradParams<double>&);

}  // namespace metapo::cpu
