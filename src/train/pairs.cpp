#include "metapo/train/pairs.h"

#include <algorithm>
#include <cstdio>
#include <numeric>

#include "metapo/core/error.h"
#include "metapo/core/rng.h"

namespace metapo {

PairBatch make_pair_batch(const PairSplit& s, const std::vector<int64_t>& idx) {
  PairBatch pb;
  pb.pairs = idx;
  std::vector<uint8_t> mask;
  auto add = [&](const std::vector<int32_t>& prompt, const std::vector<int32_t>& resp) {
    std::vector<int32_t> seq = prompt;
    seq.insert(seq.end(), resp.begin(), resp.end());
    pb.batch.add(seq);
    mask.insert(mask.end(), prompt.size(), 0);
    mask.insert(mask.end(), resp.size(), 1);
  };
  for (int64_t i : idx) {
    const std::vector<int32_t> prompt = s.prompt.item(i);
    const std::vector<int32_t> c = s.chosen.item(i), r = s.rejected.item(i);
    add(prompt, c);
    add(prompt, r);
    pb.len_chosen.push_back(int64_t(c.size()));
    pb.len_rejected.push_back(int64_t(r.size()));
  }
  pb.targets = next_token_targets(pb.batch, mask.data());
  return pb;
}

PackedBatch make_sft_batch(const SftSplit& s, const std::vector<int64_t>& idx, std::vector<int32_t>& targets) {
  PackedBatch b;
  std::vector<uint8_t> mask;
  for (int64_t i : idx) {
    std::vector<int32_t> seq = s.prompt.item(i);
    const std::vector<int32_t> a = s.answer.item(i);
    mask.insert(mask.end(), seq.size(), 0);
    mask.insert(mask.end(), a.size(), 1);
    seq.insert(seq.end(), a.begin(), a.end());
    b.add(seq);
  }
  targets = next_token_targets(b, mask.data());
  return b;
}

std::vector<int64_t> global_batch(int64_t n, int64_t batch, uint64_t seed, int64_t step) {
  MP_CHECK(batch > 0 && batch <= n, "batch size ", batch, " must be between 1 and the split size ", n);
  const int64_t per_epoch = n / batch, epoch = step / per_epoch, k = step % per_epoch;
  // Fisher-Yates with Philox keyed by (seed, epoch): the same order on every rank and after a resume.
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  Philox rng = make_rng(seed, uint64_t(epoch), 0, RngPurpose::Shuffle);
  for (int64_t i = n - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[size_t(rng.below(uint64_t(i + 1)))]);
  return std::vector<int64_t>(perm.begin() + k * batch, perm.begin() + (k + 1) * batch);
}

std::vector<int64_t> dp_share(const std::vector<int64_t>& global, int dp_rank, int dp) {
  const size_t per = global.size() / size_t(dp);
  return std::vector<int64_t>(global.begin() + long(per * size_t(dp_rank)), global.begin() + long(per * size_t(dp_rank + 1)));
}

}  // namespace metapo

namespace metapo {

namespace {

// idx ordered longest first, ties in input order.
std::vector<int64_t> longest_first(const std::vector<int64_t>& idx, const TokensOf& tokens_of) {
  std::vector<std::pair<int64_t, size_t>> key(idx.size());
  for (size_t k = 0; k < idx.size(); ++k) key[k] = {-tokens_of(idx[k]), k};
  std::sort(key.begin(), key.end());
  std::vector<int64_t> out(idx.size());
  for (size_t k = 0; k < idx.size(); ++k) out[k] = idx[key[k].second];
  return out;
}

}  // namespace

int64_t pair_tokens(const PairSplit& s, int64_t i) { return 2 * s.prompt.len(i) + s.chosen.len(i) + s.rejected.len(i); }
int64_t sft_tokens(const SftSplit& s, int64_t i) { return s.prompt.len(i) + s.answer.len(i); }

std::vector<std::vector<int64_t>> micro_batches(const std::vector<int64_t>& idx, const TokensOf& tokens_of,
                                                const MicroBatching& mb) {
  std::vector<std::vector<int64_t>> out;
  if (mb.tokens <= 0) {
    MP_CHECK(mb.pairs > 0, "--micro-batch must be positive");
    for (size_t a = 0; a < idx.size(); a += size_t(mb.pairs))
      out.emplace_back(idx.begin() + long(a), idx.begin() + long(std::min(idx.size(), a + size_t(mb.pairs))));
    return out;
  }
  int64_t used = 0;
  for (int64_t i : longest_first(idx, tokens_of)) {
    const int64_t t = tokens_of(i);
    if (out.empty() || used + t > mb.tokens) out.emplace_back(), used = 0;
    out.back().push_back(i);
    used += t;
  }
  return out;
}

namespace {
void note_past_context(int64_t n, const std::function<int64_t(int64_t)>& length, int64_t max_positions,
                       const std::string& where, bool say) {
  if (!say || max_positions <= 0) return;
  int64_t past = 0, longest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = length(i);
    past += t > max_positions, longest = std::max(longest, t);
  }
  if (past == 0) return;
  std::printf("note: %s: %lld of %lld sequences are longer than the model's max_position_embeddings %lld "
              "(the longest %lld tokens): positions past it were never trained (--max-length %lld keeps them "
              "within)\n", where.c_str(), (long long)past, (long long)n, (long long)max_positions, (long long)longest,
              (long long)max_positions);
  std::fflush(stdout);
}
}  // namespace

void note_past_context(const PairSplit& s, int64_t max_positions, const std::string& where, bool say) {
  note_past_context(s.size(), [&](int64_t i) { return s.prompt.len(i) + std::max(s.chosen.len(i), s.rejected.len(i)); },
                    max_positions, where, say);
}
void note_past_context(const SftSplit& s, int64_t max_positions, const std::string& where, bool say) {
  note_past_context(s.size(), [&](int64_t i) { return s.prompt.len(i) + s.answer.len(i); }, max_positions, where, say);
}

void check_token_budget(int64_t n, const TokensOf& tokens_of, const std::vector<int64_t>& sample_id,
                        const MicroBatching& mb, const std::string& where, const std::string& remedy) {
  if (mb.tokens <= 0) return;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = tokens_of(i);
    MP_CHECK(t <= mb.tokens, where, ": example ", i, " (sample_id ", sample_id[size_t(i)], ") has ", t,
             " tokens, more than --micro-batch-tokens ", mb.tokens, " (a pair counts its prompt twice); ", remedy);
  }
}

std::vector<int64_t> dp_share(const std::vector<int64_t>& global, int dp_rank, int dp, const TokensOf& tokens_of,
                              const MicroBatching& mb) {
  if (mb.tokens <= 0) return dp_share(global, dp_rank, dp);
  std::vector<int64_t> load(size_t(dp), 0), mine;
  for (int64_t i : longest_first(global, tokens_of)) {
    const size_t r = size_t(std::min_element(load.begin(), load.end()) - load.begin());
    load[r] += tokens_of(i);
    if (int(r) == dp_rank) mine.push_back(i);
  }
  return mine;
}

}  // namespace metapo
