// A packed micro-batch and the index data built from it once per micro-batch: each token's position
// in its sequence, the rows that have a target and their targets, the ghost-dot groups. The model
// passes these to its ops (ops/ops.h) and never loops over tokens itself.
#pragma once
#include <cstdint>
#include <vector>

namespace metapo {

// Sequence s is tokens[cu_seqlens[s] .. cu_seqlens[s+1]).
struct PackedBatch {
  std::vector<int32_t> tokens;
  std::vector<int64_t> cu_seqlens{0};
  int64_t n_seqs() const { return int64_t(cu_seqlens.size()) - 1; }
  int64_t n_tokens() const { return cu_seqlens.back(); }
  void add(const std::vector<int32_t>& seq) {
    tokens.insert(tokens.end(), seq.begin(), seq.end());
    cu_seqlens.push_back(int64_t(tokens.size()));
  }
};

// targets[t] = the token that row t predicts: tokens[t+1] when t+1 is in the same sequence and
// (mask == nullptr or mask[t+1] != 0), else -1 (row scored by nobody, no LM-head work spent on it).
std::vector<int32_t> next_token_targets(const PackedBatch& b, const uint8_t* mask);

struct BatchIndex {
  std::vector<int32_t> pos;          // [n_tokens]: position within the sequence, from 0
  std::vector<int32_t> rows;         // the rows that have a target (targets[t] >= 0), ascending
  std::vector<int32_t> row_targets;  // their targets
  int64_t max_len = 0;               // the longest sequence
};

// Builds idx for b (reusing its capacity). Checks that cu_seqlens does not decrease; with
// check_tokens, that every token id is in [0, vocab); with targets (may be null: no rows), that
// every target is below vocab. Errors name the token and its position.
void index_batch(const PackedBatch& b, bool check_tokens, const int32_t* targets, int64_t vocab, BatchIndex& idx);

// The first row of every group of k consecutive sequences, then n_tokens: the segments of the ghost
// dot products (k = 2 for preference pairs).
void group_starts(const PackedBatch& b, int64_t k, std::vector<int64_t>& seg);

}  // namespace metapo
