#include "metapo/train/pairs.h"

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
