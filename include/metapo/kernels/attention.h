// Causal self-attention over packed variable-length sequences (no padding): token rows of sequence s
// are [cu_seqlens[s], cu_seqlens[s+1]) and attend only within their own sequence, to positions <= their
// own. Grouped-query: query head h reads KV head h / (n_heads / n_kv_heads).
//
// The forward keeps only the per-row log-sum-exp; the backward recomputes the probabilities from it
// (FlashAttention's trick), so memory is O(n) per head, not O(T^2).
#pragma once
#include <cstdint>

namespace metapo::cpu {

template <typename T>
struct AttentionParams {
  // q: [n, n_heads, D], k and v: [n, n_kv_heads, D], each with row stride ld_qkv (they are column
  // ranges of the fused qkv projection output).
  const T *q, *k, *v;
  int64_t ld_qkv;
  T* out;  // [n, n_heads * D], row stride ld_out
  int64_t ld_out;
  T* lse;  // [n_heads, n]: log-sum-exp of each row of scaled scores
  const int64_t* cu_seqlens;  // [n_seqs + 1]
  int64_t n_seqs, n_tokens, n_heads, n_kv_heads, head_dim;
  T scale;  // usually 1/sqrt(head_dim)
};

template <typename T>
struct AttentionGradParams {
  const T* dout;  // [n, n_heads * D], row stride ld_out (same as the forward's out)
  T *dq, *dk, *dv;  // overwritten; same layout and stride (ld_dqkv) as q, k, v
  int64_t ld_dqkv;
};

template <typename T>
void attention_forward(const AttentionParams<T>& p);

// Needs p.q, p.k, p.v, p.out and p.lse as the forward left them.
template <typename T>
void attention_backward(const AttentionParams<T>& p, const AttentionGradParams<T>& g);

}  // namespace metapo::cpu
