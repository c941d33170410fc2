#include "metapo/model/batch.h"

#include <algorithm>

#include "metapo/core/error.h"

namespace metapo {

std::vector<int32_t> next_token_targets(const PackedBatch& b, const uint8_t* mask) {
  std::vector<int32_t> tg(size_t(b.n_tokens()), -1);
  for (int64_t s = 0; s < b.n_seqs(); ++s)
    for (int64_t t = b.cu_seqlens[s]; t + 1 < b.cu_seqlens[s + 1]; ++t)
      if (!mask || mask[t + 1]) tg[t] = b.tokens[t + 1];
  return tg;
}

void index_batch(const PackedBatch& b, bool check_tokens, const int32_t* targets, int64_t vocab, BatchIndex& idx) {
  const int64_t n = b.n_tokens();
  // Positions restart at 0 in every sequence.
  idx.pos.resize(size_t(n));
  idx.max_len = 0;
  for (int64_t s = 0; s < b.n_seqs(); ++s) {
    const int64_t len = b.cu_seqlens[s + 1] - b.cu_seqlens[s];
    MP_CHECK(len >= 0, "packed batch: cu_seqlens is not non-decreasing at sequence ", s);
    idx.max_len = std::max(idx.max_len, len);
    for (int64_t t = 0; t < len; ++t) idx.pos[size_t(b.cu_seqlens[s] + t)] = int32_t(t);
  }
  if (check_tokens)
    for (int64_t t = 0; t < n; ++t)
      MP_CHECK(b.tokens[t] >= 0 && b.tokens[t] < vocab, "token id ", b.tokens[t], " at position ", t,
               " is outside the vocabulary [0, ", vocab, ")");
  idx.rows.clear(), idx.row_targets.clear();
  if (!targets) return;
  for (int64_t t = 0; t < n; ++t)
    if (targets[t] >= 0) {
      MP_CHECK(targets[t] < vocab, "target token id ", targets[t], " is outside the vocabulary [0, ", vocab, ")");
      idx.rows.push_back(int32_t(t)), idx.row_targets.push_back(targets[t]);
    }
}

void group_starts(const PackedBatch& b, int64_t k, std::vector<int64_t>& seg) {
  MP_CHECK(k >= 1, "LlamaModel: ghost group of ", k, " sequences");
  seg.clear();
  for (int64_t s = 0; s < b.n_seqs(); s += k) seg.push_back(b.cu_seqlens[s]);
  seg.push_back(b.n_tokens());
}

}  // namespace metapo
