// Decode-step kernels (generation with a KV cache). Every output element is computed by one thread in
// one fixed order, so a row's result is bit-identical whatever the number of rows in the call and the
// thread count: a sequence generates the same tokens alone or in a batch.
#pragma once
#include <cstdint>

namespace metapo::cpu {

// Y[m, out] = X[m, in] W[out, in]^T (+ b[out]), each element one dot product in a fixed order (unlike a
// BLAS GEMM, which picks its kernel by the shape).
void linear_rows(float* Y, const float* X, const float* W, const float* b, int64_t m, int64_t in, int64_t out);

// One new query row per sequence i (row i of q) attends over its own cached keys and values
// 0..n_keys[i]-1 (itself included): key j of row i is k[i] + j * ld_kv, with KV heads of head_dim
// side by side. Grouped-query: head h reads KV head h / (n_heads / n_kv_heads).
struct DecodeAttentionParams {
  const float* q;  // [m, n_heads * head_dim], row stride ld_q
  int64_t ld_q;
  float* out;  // [m, n_heads * head_dim], row stride ld_out
  int64_t ld_out;
  const float* const* k;  // [m]: row i's first cached key
  const float* const* v;  // [m]: row i's first cached value
  int64_t ld_kv;
  const int64_t* n_keys;  // [m]
  int64_t m, n_heads, n_kv_heads, head_dim;
  float scale;
};
void decode_attention(const DecodeAttentionParams& p);

}  // namespace metapo::cpu
