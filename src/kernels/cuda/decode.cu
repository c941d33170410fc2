// The decode step of generation with a KV cache (kernels/decode.h has the CPU ops and the layout): the
// row-wise linear layer and the attention of one new query row per sequence over its cache. Both keep
// the CPU decoder's batch invariance (model/generate.h): every output is computed by one warp or one
// block from its own row's inputs, in a fixed order that does not depend on how many rows the call
// has (no GEMM that picks its algorithm by the shape, no atomics), so a sequence's logits are
// bit-identical alone or in any batch, and from run to run.
#include <algorithm>
#include <vector>

#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

// ---- linear_rows ----

constexpr int kRowThreads = 256;
constexpr int kRowWarps = kRowThreads / 32;  // one output column per warp
constexpr int kRowsPerWarp = 8;              // each W load feeds this many rows' multiply-adds

// Block (bx, by), warp w: output o = bx kRowWarps + w for rows [by kRowsPerWarp, + kRowsPerWarp) ∩ [0, m).
// Y[i, o] = Σ_k X[i, k] W[o, k] (+ b[o]): lane l sums k = l, l + 32, ... in order (one fmaf chain),
// then a fixed butterfly of shuffles. The chain of (i, o) is the same whichever rows share its warp.
__global__ void linear_rows_kernel(float* Y, const float* X, const float* W, const float* b, int64_t m, int64_t in,
                                   int64_t out) {
  const int64_t o = blockIdx.x * int64_t(kRowWarps) + threadIdx.x / 32;
  if (o >= out) return;  // o is the warp's: whole warps leave, the shuffles below see full warps
  const int lane = int(threadIdx.x % 32);
  const int64_t i0 = blockIdx.y * int64_t(kRowsPerWarp);
  const int64_t rows = min(int64_t(kRowsPerWarp), m - i0);  // >= 1: the grid covers m exactly
  const float* w = W + o * in;
  float acc[kRowsPerWarp] = {};
  for (int64_t k = lane; k < in; k += 32) {
    const float wk = w[k];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r)
      if (r < rows) acc[r] = fmaf(X[(i0 + r) * in + k], wk, acc[r]);
  }
  const float bias = b ? b[o] : 0.0f;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    float s = acc[r];
    for (int d = 16; d > 0; d /= 2) s += __shfl_xor_sync(0xffffffffu, s, d);
    if (lane == 0 && r < rows) Y[(i0 + r) * out + o] = s + bias;
  }
}

// ---- decode_attention ----

constexpr int kAttThreads = 128;

// Block (i, h): query row i, head h, over its n_keys[i] cached keys and values (max_keys at most: the
// shared memory holds that many scores): attend_row (common.cuh), the arithmetic of attention_forward's
// block for one query row.
__global__ void decode_attention_kernel(DecodeAttentionArgs a, int64_t max_keys) {
  extern __shared__ float smem[];
  float* red = smem;                // [kAttThreads]
  float* qs = red + kAttThreads;    // [D]
  float* S = qs + a.head_dim;       // [max_keys]
  const int64_t i = blockIdx.x, h = blockIdx.y, D = a.head_dim;
  const int64_t g = h / (a.n_heads / a.n_kv_heads);  // the KV head of query head h
  const int64_t nk = a.n_keys[i];
  float* o = a.out + i * a.ld_out + h * D;
  if (nk <= 0 || nk > max_keys) {  // no keys (no softmax to take), or more than the caller said: NaN, not
    for (int64_t d = threadIdx.x; d < D; d += kAttThreads) o[d] = nk <= 0 ? 0.0f : NAN;  // a write past S
    return;  // nk is the block's: every thread leaves here or none does
  }
  for (int64_t d = threadIdx.x; d < D; d += kAttThreads) qs[d] = a.q[i * a.ld_q + h * D + d];
  __syncthreads();
  attend_row(qs, a.k[i] + g * D, a.v[i] + g * D, a.ld_kv, nk, D, a.scale, S, red, o);  // key j at + j ld_kv
}

// The largest n_keys: the caller's, or from a host copy (which waits for the stream).
int64_t max_keys_of(const DecodeAttentionArgs& a, void* stream) {
  if (a.max_keys > 0) return a.max_keys;
  std::vector<int64_t> nk(size_t(a.m));
  to_host(nk.data(), a.n_keys, sizeof(int64_t) * nk.size(), stream);
  return std::max<int64_t>(1, *std::max_element(nk.begin(), nk.end()));
}

}  // namespace

void linear_rows(float* Y, const float* X, const float* W, const float* b, int64_t m, int64_t in, int64_t out,
                 void* stream) {
  if (m <= 0 || out <= 0) return;
  const int64_t row_blocks = (m + kRowsPerWarp - 1) / kRowsPerWarp, col_blocks = (out + kRowWarps - 1) / kRowWarps;
  MP_CHECK(row_blocks <= 65535, "linear_rows: ", m, " rows (at most ", 65535 * kRowsPerWarp, ")");
  MP_CHECK(col_blocks < (int64_t(1) << 31), "linear_rows: ", out, " outputs");
  linear_rows_kernel<<<dim3(unsigned(col_blocks), unsigned(row_blocks)), kRowThreads, 0, as_stream(stream)>>>(
      Y, X, W, b, m, in, out);
  check_launch("linear_rows");
}

void decode_attention(const DecodeAttentionArgs& a, void* stream) {
  if (a.m <= 0 || a.n_heads <= 0 || a.head_dim <= 0) return;
  MP_CHECK(a.n_kv_heads > 0 && a.n_heads % a.n_kv_heads == 0, "decode_attention: ", a.n_heads, " heads over ",
           a.n_kv_heads, " KV heads");
  MP_CHECK(a.m < (int64_t(1) << 31) && a.n_heads <= 65535, "decode_attention: ", a.m, " rows of ", a.n_heads,
           " heads (at most 2^31 - 1 rows, 65535 heads)");
  const int64_t L = max_keys_of(a, stream);
  const size_t bytes = sizeof(float) * size_t(kAttThreads + a.head_dim + L);
  allow_shared(decode_attention_kernel, bytes, L, "decode_attention");
  decode_attention_kernel<<<dim3(unsigned(a.m), unsigned(a.n_heads)), kAttThreads, bytes, as_stream(stream)>>>(a, L);
  check_launch("decode_attention");
}

}  // namespace metapo::cuda
