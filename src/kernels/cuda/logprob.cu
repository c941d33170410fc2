// Target-token log-probabilities through the LM head (kernels/logprob.h has the contract): the logits
// of a chunk of scored rows at a time, [chunk, V] with chunk sized so that the block stays within a
// fixed budget (never [tokens, V]), from one cuBLASLt GEMM; the row statistics one block per row with
// fixed-tree reductions; the backward recomputes the chunk's softmax from the kept lse (or reads the
// probability cache) and forms dlogits in place, then three GEMMs (dh, dW, and Ĝ for the ghost dots).
#include <algorithm>
#include <cmath>

#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kLogitBudget = int64_t(32) << 20;  // logits per chunk (128 MiB in fp32)

int64_t chunk_rows(const LogprobArgs& a) {
  const int64_t by_budget = std::max<int64_t>(1, kLogitBudget / std::max<int64_t>(1, a.V));
  return std::max<int64_t>(1, std::min(a.n_rows, by_budget));
}

__global__ void gather_rows_kernel(float* dst, const float* h, const int32_t* rows, int64_t nr, int64_t C) {
  MP_GRID_LOOP(k, nr * C) dst[k] = h[int64_t(rows[k / C]) * C + k % C];
}

__global__ void scatter_add_rows_kernel(float* dh, const float* src, const int32_t* rows, int64_t nr, int64_t C) {
  MP_GRID_LOOP(k, nr * C) dh[int64_t(rows[k / C]) * C + k % C] += src[k];  // rows are distinct
}

// Row i of z: max and Σ exp(z - max); with keep the row becomes exp(z - max). The target's logit (when
// in [0, V)) is read before the row is overwritten.
__device__ void row_stats(float* row, int64_t V, int64_t tv, bool keep, float* shared, float& mx, float& sum,
                          float& tl) {
  tl = (tv >= 0 && tv < V) ? row[tv] : 0.0f;
  float m = -INFINITY;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) m = fmaxf(m, row[v]);
  mx = block_max(m, shared);
  float s = 0;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) {
    const float e = expf(row[v] - mx);
    if (keep) row[v] = e;
    s += e;
  }
  sum = block_sum(s, shared);
}

__global__ void lse_kernel(float* z, int64_t V, const int32_t* targets, float* logp, float* lse, bool keep) {
  __shared__ float shared[kThreads];
  const int64_t i = blockIdx.x;
  float* row = z + i * V;
  float mx, sum, tl;
  row_stats(row, V, targets[i], keep, shared, mx, sum, tl);
  if (keep) {
    const float inv = 1.0f / sum;
    for (int64_t v = threadIdx.x; v < V; v += kThreads) row[v] *= inv;
  }
  if (threadIdx.x == 0) {
    lse[i] = mx + logf(sum);
    logp[i] = tl - lse[i];
  }
}

__global__ void shard_stats_kernel(float* z, int64_t V, const int32_t* targets, int64_t vocab_begin, float* row_max,
                                   float* row_sumexp, float* target_logit, bool keep) {
  __shared__ float shared[kThreads];
  const int64_t i = blockIdx.x;
  float mx, sum, tl;
  row_stats(z + i * V, V, int64_t(targets[i]) - vocab_begin, keep, shared, mx, sum, tl);
  if (threadIdx.x == 0) row_max[i] = mx, row_sumexp[i] = sum, target_logit[i] = tl;
}

__global__ void empty_shard_kernel(float* row_max, float* row_sumexp, float* target_logit, int64_t n) {
  MP_GRID_LOOP(i, n) row_max[i] = -INFINITY, row_sumexp[i] = 0.0f, target_logit[i] = 0.0f;
}

__global__ void partials_kernel(const float* mx, const float* se, const float* tl, const double* gmax, double* red,
                                int64_t n) {
  MP_GRID_LOOP(i, n) {
    red[i] = se[i] > 0 ? double(se[i]) * exp(double(mx[i]) - gmax[i]) : 0.0;
    red[n + i] = double(tl[i]);
  }
}

__global__ void finish_kernel(const float* mx, const float* se, const double* gmax, const double* red, float* lse,
                              float* logp, float* cache, int64_t n, int64_t V) {
  const int64_t i = blockIdx.x;
  if (threadIdx.x == 0) {
    lse[i] = float(gmax[i]) + logf(float(red[i]));
    logp[i] = float(red[n + i]) - lse[i];
  }
  if (!cache) return;
  const float f = se[i] > 0 ? float(exp(double(mx[i]) - gmax[i]) / red[i]) : 0.0f;
  for (int64_t v = threadIdx.x; v < V; v += kThreads) cache[i * V + v] *= f;
}

// dlogits = coef (onehot - softmax) over z (softmax from the cache, or exp(z - lse) from the logits).
__global__ void dlogits_kernel(float* z, int64_t V, const float* coef, const float* lse, const int32_t* targets,
                               int64_t vocab_begin, bool cached) {
  const int64_t i = blockIdx.x;
  float* row = z + i * V;
  const float c = coef[i], l = lse[i];
  for (int64_t v = threadIdx.x; v < V; v += kThreads) row[v] = -c * (cached ? row[v] : expf(row[v] - l));
  __syncthreads();
  const int64_t tv = int64_t(targets[i]) - vocab_begin;
  if (threadIdx.x == 0 && tv >= 0 && tv < V) row[tv] += c;
}

// row_dot[rows[i]] += ⟨gz_i, hc_i⟩ in double.
__global__ void ghost_kernel(double* row_dot, const int32_t* rows, const float* gz, const float* hc, int64_t C) {
  __shared__ double shared[kThreads];
  const int64_t i = blockIdx.x;
  double s = 0;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) s += double(gz[i * C + c]) * double(hc[i * C + c]);
  s = block_sum(s, shared);
  if (threadIdx.x == 0) row_dot[rows[i]] += s;
}

// The chunks of scored rows: gathers the chunk's hidden rows into hc, points z at its logits (in the
// cache when given, else in zbuf), computes them when `logits` or there is no cache, then f(r0, nr, z).
template <typename F>
void for_each_chunk(const BlasCall& blas, const LogprobArgs& a, float* cache, bool logits, float* hc, float* zbuf,
                    void* stream, F&& f) {
  const int64_t chunk = chunk_rows(a);
  for (int64_t r0 = 0; r0 < a.n_rows; r0 += chunk) {
    const int64_t nr = std::min(chunk, a.n_rows - r0);
    float* z = cache ? cache + r0 * a.V : zbuf;
    gather_rows_kernel<<<blocks_for(nr * a.C), kThreads, 0, as_stream(stream)>>>(hc, a.h, a.rows + r0, nr, a.C);
    check_launch("logprob (gather rows)");
    // z[nr, V] = hc[nr, C] W[V, C]^T
    if (logits || !cache) gemm(blas, false, true, nr, a.V, a.C, 1.0f, hc, a.C, a.W, a.C, 0.0f, z, a.V, nullptr, stream);
    f(r0, nr, z);
  }
}

}  // namespace

void logprob_forward(const BlasCall& blas, const LogprobArgs& a, float* logp, float* lse, float* prob_cache, void* stream) {
  if (a.n_rows <= 0) return;
  const int64_t chunk = chunk_rows(a);
  Scratch<float> hc(size_t(chunk * a.C), stream), zbuf(prob_cache ? 0 : size_t(chunk * a.V), stream);
  for_each_chunk(blas, a, prob_cache, true, hc.get(), zbuf.get(), stream, [&](int64_t r0, int64_t nr, float* z) {
    lse_kernel<<<unsigned(nr), kThreads, 0, as_stream(stream)>>>(z, a.V, a.targets + r0, logp + r0, lse + r0,
                                                                 prob_cache != nullptr);
    check_launch("logprob_forward");
  });
}

void logprob_forward_shard(const BlasCall& blas, const LogprobArgs& a, float* row_max, float* row_sumexp, float* target_logit,
                           float* prob_cache, void* stream) {
  if (a.n_rows <= 0) return;
  if (a.V == 0) {
    empty_shard_kernel<<<blocks_for(a.n_rows), kThreads, 0, as_stream(stream)>>>(row_max, row_sumexp, target_logit,
                                                                                a.n_rows);
    check_launch("logprob_forward_shard");
    return;
  }
  const int64_t chunk = chunk_rows(a);
  Scratch<float> hc(size_t(chunk * a.C), stream), zbuf(prob_cache ? 0 : size_t(chunk * a.V), stream);
  for_each_chunk(blas, a, prob_cache, true, hc.get(), zbuf.get(), stream, [&](int64_t r0, int64_t nr, float* z) {
    shard_stats_kernel<<<unsigned(nr), kThreads, 0, as_stream(stream)>>>(
        z, a.V, a.targets + r0, a.vocab_begin, row_max + r0, row_sumexp + r0, target_logit + r0, prob_cache != nullptr);
    check_launch("logprob_forward_shard");
  });
}

void logprob_shard_partials(const float* row_max, const float* row_sumexp, const float* target_logit,
                            const double* gmax, double* red, int64_t n_rows, void* stream) {
  if (n_rows <= 0) return;
  partials_kernel<<<blocks_for(n_rows), kThreads, 0, as_stream(stream)>>>(row_max, row_sumexp, target_logit, gmax, red,
                                                                          n_rows);
  check_launch("logprob_shard_partials");
}

void logprob_shard_finish(const float* row_max, const float* row_sumexp, const double* gmax, const double* red,
                          float* lse, float* logp, float* prob_cache, int64_t n_rows, int64_t V, void* stream) {
  if (n_rows <= 0) return;
  finish_kernel<<<unsigned(n_rows), kThreads, 0, as_stream(stream)>>>(row_max, row_sumexp, gmax, red, lse, logp,
                                                                      V > 0 ? prob_cache : nullptr, n_rows, V);
  check_launch("logprob_shard_finish");
}

void logprob_backward(const BlasCall& blas, const LogprobArgs& a, const float* coef, const float* lse, float* prob_cache,
                      float* dh, float* dW, bool accumulate, const float* ghat, double* row_dot, void* stream) {
  if (!accumulate && a.n_rows == 0) fill(dW, 0.0f, a.V * a.C, stream);
  if (a.V == 0 || a.n_rows <= 0) return;
  const int64_t chunk = chunk_rows(a);
  Scratch<float> hc(size_t(chunk * a.C), stream), zbuf(prob_cache ? 0 : size_t(chunk * a.V), stream),
      dhc(size_t(chunk * a.C), stream), gz(ghat ? size_t(chunk * a.C) : 0, stream);
  for_each_chunk(blas, a, prob_cache, false, hc.get(), zbuf.get(), stream, [&](int64_t r0, int64_t nr, float* z) {
    dlogits_kernel<<<unsigned(nr), kThreads, 0, as_stream(stream)>>>(z, a.V, coef + r0, lse + r0, a.targets + r0,
                                                                     a.vocab_begin, prob_cache != nullptr);
    check_launch("logprob_backward (dlogits)");
    if (ghat) {  // gz[nr, C] = dlogits[nr, V] Ĝ[V, C]; row_dot += ⟨gz_i, h_i⟩
      gemm(blas, false, false, nr, a.C, a.V, 1.0f, z, a.V, ghat, a.C, 0.0f, gz.get(), a.C, nullptr, stream);
      ghost_kernel<<<unsigned(nr), kThreads, 0, as_stream(stream)>>>(row_dot, a.rows + r0, gz.get(), hc.get(), a.C);
      check_launch("logprob_backward (ghost dots)");
    }
    // dhc[nr, C] = dlogits W; dW[V, C] (+)= dlogits^T hc (the first chunk may overwrite)
    gemm(blas, false, false, nr, a.C, a.V, 1.0f, z, a.V, a.W, a.C, 0.0f, dhc.get(), a.C, nullptr, stream);
    gemm(blas, true, false, a.V, a.C, nr, 1.0f, z, a.V, hc.get(), a.C, (accumulate || r0 > 0) ? 1.0f : 0.0f, dW, a.C,
         nullptr, stream);
    scatter_add_rows_kernel<<<blocks_for(nr * a.C), kThreads, 0, as_stream(stream)>>>(dh, dhc.get(), a.rows + r0, nr,
                                                                                      a.C);
    check_launch("logprob_backward (dh)");
  });
}

}  // namespace metapo::cuda
