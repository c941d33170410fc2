// Causal attention over packed variable-length sequences with grouped-query heads (kernels/attention.h
// has the layout): the plain kernels of our own, the reference for a fused implementation and the
// fallback where there is none. One block per (query row, head) keeps that row's scores in shared
// memory (so a sequence may be as long as the shared memory holds: 48k tokens on sm_80/90); the
// backward has one block per (query row, head) for dq and one per (key row, KV head) for dk and dv.
// Each dot product over the head dimension is one warp's (lanes over d, so a row is read coalesced,
// then a butterfly of shuffles); the weighted sums over rows have one thread per d, rows in order. No
// atomics, and every sum has a fixed order: bit-identical runs.
#include <algorithm>
#include <vector>

#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kMaxDimPerThread = 4;  // head_dim <= 512

// The sequence of token t: the s with cu[s] <= t < cu[s + 1] (binary search).
__device__ int64_t sequence_of(const int64_t* cu, int64_t n_seqs, int64_t t) {
  int64_t lo = 0, hi = n_seqs - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (cu[mid] <= t) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

constexpr int kWarps = kThreads / 32;

// Block (t, h): the scores of query t against keys [s0, t] into S, softmax, out = P V / sum.
__global__ void forward_kernel(AttentionArgs a) {
  extern __shared__ float smem[];
  float* red = smem;              // [kThreads]
  float* qs = red + kThreads;     // [D]
  float* S = qs + a.head_dim;     // [t - s0 + 1]
  const int64_t t = blockIdx.x, h = blockIdx.y, D = a.head_dim;
  const int64_t kvh = h / (a.n_heads / a.n_kv_heads);
  const int64_t s0 = a.cu_seqlens[sequence_of(a.cu_seqlens, a.n_seqs, t)], nk = t - s0 + 1;
  for (int64_t d = threadIdx.x; d < D; d += kThreads) qs[d] = a.q[t * a.ld_qkv + h * D + d];
  __syncthreads();
  const float lse = attend_row(qs, a.k + s0 * a.ld_qkv + kvh * D, a.v + s0 * a.ld_qkv + kvh * D, a.ld_qkv, nk, D,
                               a.scale, S, red, a.out + t * a.ld_out + h * D);
  if (threadIdx.x == 0) a.lse[h * a.n_tokens + t] = lse;
}

// delta[h, t] = ⟨dout_t, out_t⟩ over head h.
__global__ void delta_kernel(AttentionArgs a, const float* dout, float* delta) {
  __shared__ float red[kThreads];
  const int64_t t = blockIdx.x, h = blockIdx.y, D = a.head_dim;
  float s = 0;
  for (int64_t d = threadIdx.x; d < D; d += kThreads) s += dout[t * a.ld_out + h * D + d] * a.out[t * a.ld_out + h * D + d];
  s = block_sum(s, red);
  if (threadIdx.x == 0) delta[h * a.n_tokens + t] = s;
}

// Block (t, h): dS_j = P_j (⟨dout_t, v_j⟩ - delta) over keys j, then dq_t = scale Σ_j dS_j k_j.
__global__ void dq_kernel(AttentionArgs a, const float* dout, const float* delta, float* dq, int64_t ld_dqkv) {
  extern __shared__ float smem[];
  float* qs = smem;           // [D]
  float* dos = qs + a.head_dim;  // [D]
  float* S = dos + a.head_dim;   // [t - s0 + 1]
  const int64_t t = blockIdx.x, h = blockIdx.y, D = a.head_dim;
  const int64_t kvh = h / (a.n_heads / a.n_kv_heads);
  const int64_t s0 = a.cu_seqlens[sequence_of(a.cu_seqlens, a.n_seqs, t)], nk = t - s0 + 1;
  for (int64_t d = threadIdx.x; d < D; d += kThreads)
    qs[d] = a.q[t * a.ld_qkv + h * D + d], dos[d] = dout[t * a.ld_out + h * D + d];
  __syncthreads();
  const float l = a.lse[h * a.n_tokens + t], dl = delta[h * a.n_tokens + t];
  for (int64_t j = threadIdx.x / 32; j < nk; j += kWarps) {
    const int64_t row = (s0 + j) * a.ld_qkv + kvh * D;
    const float p = expf(a.scale * warp_dot(qs, a.k + row, D) - l);
    const float ds = p * (warp_dot(dos, a.v + row, D) - dl);
    if (threadIdx.x % 32 == 0) S[j] = ds;
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < D; d += kThreads) {
    const float* k = a.k + s0 * a.ld_qkv + kvh * D + d;
    float acc = 0;
    for (int64_t j = 0; j < nk; ++j) acc += S[j] * k[j * a.ld_qkv];
    dq[t * ld_dqkv + h * D + d] = a.scale * acc;
  }
}

// Block (j, g): over the query heads h of KV head g and the queries i in [j, s1):
// dv_j = Σ P_hij dout_hi, dk_j = scale Σ dS_hij q_hi.
__global__ void dkv_kernel(AttentionArgs a, const float* dout, const float* delta, float* dk, float* dv,
                           int64_t ld_dqkv) {
  extern __shared__ float smem[];
  float* ks = smem;              // [D]
  float* vs = ks + a.head_dim;   // [D]
  float* P = vs + a.head_dim;    // [s1 - j]
  const int64_t j = blockIdx.x, g = blockIdx.y, D = a.head_dim, rep = a.n_heads / a.n_kv_heads;
  const int64_t s1 = a.cu_seqlens[sequence_of(a.cu_seqlens, a.n_seqs, j) + 1], nq = s1 - j;
  float* dS = P + nq;            // [s1 - j]
  for (int64_t d = threadIdx.x; d < D; d += kThreads)
    ks[d] = a.k[j * a.ld_qkv + g * D + d], vs[d] = a.v[j * a.ld_qkv + g * D + d];
  float acc_k[kMaxDimPerThread] = {}, acc_v[kMaxDimPerThread] = {};
  __syncthreads();
  for (int64_t r = 0; r < rep; ++r) {
    const int64_t h = g * rep + r;
    for (int64_t i = threadIdx.x / 32; i < nq; i += kWarps) {
      const int64_t t = j + i;
      const float p = expf(a.scale * warp_dot(a.q + t * a.ld_qkv + h * D, ks, D) - a.lse[h * a.n_tokens + t]);
      const float ds = p * (warp_dot(dout + t * a.ld_out + h * D, vs, D) - delta[h * a.n_tokens + t]);
      if (threadIdx.x % 32 == 0) P[i] = p, dS[i] = ds;
    }
    __syncthreads();
    for (int64_t d = threadIdx.x, u = 0; d < D; d += kThreads, ++u) {
      for (int64_t i = 0; i < nq; ++i) {
        acc_v[u] += P[i] * dout[(j + i) * a.ld_out + h * D + d];
        acc_k[u] += dS[i] * a.q[(j + i) * a.ld_qkv + h * D + d];
      }
    }
    __syncthreads();
  }
  for (int64_t d = threadIdx.x, u = 0; d < D; d += kThreads, ++u) {
    dk[j * ld_dqkv + g * D + d] = a.scale * acc_k[u];
    dv[j * ld_dqkv + g * D + d] = acc_v[u];
  }
}

// The longest sequence (from a host copy of cu_seqlens), for the shared memory of the score rows.
int64_t longest(const AttentionArgs& a, void* stream) {
  if (a.max_seqlen > 0) return a.max_seqlen;
  MP_CHECK(a.n_seqs > 0, "attention: no sequences for ", a.n_tokens, " tokens");
  std::vector<int64_t> cu(size_t(a.n_seqs + 1));
  to_host(cu.data(), a.cu_seqlens, sizeof(int64_t) * cu.size(), stream);
  MP_CHECK(cu.front() == 0 && cu.back() == a.n_tokens, "attention: cu_seqlens [", cu.front(), ", ", cu.back(),
           "] do not cover the ", a.n_tokens, " tokens");
  int64_t L = 0;
  for (int64_t s = 0; s < a.n_seqs; ++s) L = std::max(L, cu[size_t(s) + 1] - cu[size_t(s)]);
  return L;
}

void check_args(const AttentionArgs& a, const char* op) {
  MP_CHECK(a.n_kv_heads > 0 && a.n_heads % a.n_kv_heads == 0, op, ": ", a.n_heads, " heads over ", a.n_kv_heads,
           " KV heads");
  MP_CHECK(a.head_dim > 0 && a.head_dim <= kThreads * kMaxDimPerThread, op, ": head_dim ", a.head_dim,
           " (at most ", kThreads * kMaxDimPerThread, ")");
}

}  // namespace

void attention_forward(const AttentionArgs& a, void* stream) {
  if (a.n_tokens <= 0) return;
  check_args(a, "attention_forward");
  const int64_t L = longest(a, stream);
  const size_t bytes = sizeof(float) * size_t(kThreads + a.head_dim + L);
  allow_shared(forward_kernel, bytes, L, "attention_forward");
  forward_kernel<<<dim3(unsigned(a.n_tokens), unsigned(a.n_heads)), kThreads, bytes, as_stream(stream)>>>(a);
  check_launch("attention_forward");
}

void attention_backward(const AttentionArgs& a, const float* dout, float* dq, float* dk, float* dv, int64_t ld_dqkv,
                        void* stream) {
  if (a.n_tokens <= 0) return;
  check_args(a, "attention_backward");
  const int64_t L = longest(a, stream);
  Scratch<float> delta(size_t(a.n_heads * a.n_tokens), stream);
  const dim3 rows(unsigned(a.n_tokens), unsigned(a.n_heads)), kv_rows(unsigned(a.n_tokens), unsigned(a.n_kv_heads));
  delta_kernel<<<rows, kThreads, 0, as_stream(stream)>>>(a, dout, delta.get());
  check_launch("attention_backward (delta)");
  const size_t dq_bytes = sizeof(float) * size_t(2 * a.head_dim + L);
  allow_shared(dq_kernel, dq_bytes, L, "attention_backward");
  dq_kernel<<<rows, kThreads, dq_bytes, as_stream(stream)>>>(a, dout, delta.get(), dq, ld_dqkv);
  check_launch("attention_backward (dq)");
  const size_t kv_bytes = sizeof(float) * size_t(2 * a.head_dim + 2 * L);
  allow_shared(dkv_kernel, kv_bytes, L, "attention_backward");
  dkv_kernel<<<kv_rows, kThreads, kv_bytes, as_stream(stream)>>>(a, dout, delta.get(), dk, dv, ld_dqkv);
  check_launch("attention_backward (dk, dv)");
}

}  // namespace metapo::cuda
