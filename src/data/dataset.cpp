#include "metapo/data/dataset.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "metapo/core/error.h"
#include "metapo/core/hash.h"

namespace metapo {

namespace {

// "data.h5: /train/" — the prefix of every message about one split's fields.
std::string split_where(const std::string& file, const std::string& split) {
  return str_cat(file, ": /", split, "/");
}

// A ragged field <name>_tokens/<name>_offsets holding n items. `n_from` says where n came from, so a
// count mismatch tells the user which of the two fields to look at.
void check_ragged(const Ragged& r, int64_t n, const std::string& where, const std::string& name,
                  int64_t vocab_size, const char* n_from) {
  const std::string off = where + name + "_offsets: ";
  MP_CHECK(int64_t(r.offsets.size()) == n + 1, off, r.offsets.size(), " entries, expected N + 1 = ", n + 1,
           " (N = ", n, " from ", n_from, ")");
  MP_CHECK(r.offsets[0] == 0, off, "first offset is ", r.offsets[0], ", expected 0");
  for (size_t i = 1; i < r.offsets.size(); ++i)
    MP_CHECK(r.offsets[i] >= r.offsets[i - 1], off, "offsets decrease at index ", i, " (", r.offsets[i - 1],
             " -> ", r.offsets[i], ")");
  MP_CHECK(r.offsets.back() == int64_t(r.tokens.size()), off, "last offset ", r.offsets.back(), " != ", name,
           "_tokens length ", r.tokens.size());
  for (size_t i = 0; i < r.tokens.size(); ++i)
    MP_CHECK(r.tokens[i] >= 0 && r.tokens[i] < vocab_size, where, name, "_tokens: token id ", r.tokens[i],
             " at index ", i, " is outside the vocabulary [0, vocab_size = ", vocab_size, ")");
}

void check_unique_ids(const std::vector<int64_t>& ids, const std::string& where) {
  std::vector<int64_t> sorted = ids;
  std::sort(sorted.begin(), sorted.end());
  const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
  MP_CHECK(dup == sorted.end(), where, "sample_id: id ", *dup, " appears more than once");
  // Ids index MetaPO's pair table and seed per-pair randomness: a negative one has no row.
  MP_CHECK(sorted.empty() || sorted.front() >= 0, where, "sample_id: id ", sorted.empty() ? 0 : sorted.front(),
           " is negative (ids are >= 0)");
}

void check_values(size_t got, int64_t n, const std::string& where, const std::string& field) {
  MP_CHECK(int64_t(got) == n, where, field, ": ", got, " values, expected N = ", n, " (one per pair)");
}

// A name that becomes one HDF5 link: no '/', not "." and not empty.
bool good_link_name(const std::string& s) { return !s.empty() && s != "." && s.find('/') == std::string::npos; }

}  // namespace

void check_pair_split(const PairSplit& s, const std::string& file, const std::string& split, int64_t vocab_size) {
  const std::string where = split_where(file, split);
  const int64_t n = s.size();
  check_ragged(s.prompt, n, where, "prompt", vocab_size, "sample_id");
  check_ragged(s.chosen, n, where, "chosen", vocab_size, "sample_id");
  check_ragged(s.rejected, n, where, "rejected", vocab_size, "sample_id");
  check_unique_ids(s.sample_id, where);
  // A response without tokens has log-prob 0 under every model: its pair teaches nothing and its
  // per-token averages (simpo, wpo) divide by zero. tools/prepare_data.py drops such pairs.
  for (const Ragged* r : {&s.chosen, &s.rejected})
    for (int64_t i = 0; i < n; ++i)
      MP_CHECK(r->offsets[size_t(i) + 1] > r->offsets[size_t(i)], where, r == &s.chosen ? "chosen" : "rejected",
               ": the response of pair ", i, " (sample_id ", s.sample_id[size_t(i)], ") is empty");
  if (!s.quality.empty()) check_values(s.quality.size(), n, where, "quality");
  for (const auto& [name, v] : s.columns) {
    MP_CHECK(good_link_name(name), where, "columns/", name, ": a column name must be non-empty, without '/'");
    check_values(v.size(), n, where, "columns/" + name);
  }
  if (s.has_ref()) {
    // Both or neither: a DPO loss needs the reference log-prob of each response.
    MP_CHECK(!s.ref_logp_chosen.empty(), where, "ref_logp_chosen: missing while ref_logp_rejected is present");
    MP_CHECK(!s.ref_logp_rejected.empty(), where, "ref_logp_rejected: missing while ref_logp_chosen is present");
    check_values(s.ref_logp_chosen.size(), n, where, "ref_logp_chosen");
    check_values(s.ref_logp_rejected.size(), n, where, "ref_logp_rejected");
    // A NaN here would silently poison every margin it enters; refuse it at the door.
    for (const auto* v : {&s.ref_logp_chosen, &s.ref_logp_rejected})
      for (size_t i = 0; i < v->size(); ++i)
        MP_CHECK(std::isfinite((*v)[i]), where, v == &s.ref_logp_chosen ? "ref_logp_chosen" : "ref_logp_rejected",
                 ": value ", (*v)[i], " at index ", i, " is not finite");
    MP_CHECK(s.ref_max_length >= 0, where, "ref_max_length: ", s.ref_max_length, " is negative");
  }
}

void check_sft_split(const SftSplit& s, const std::string& file, int64_t vocab_size) {
  const std::string where = split_where(file, "sft");
  check_ragged(s.prompt, s.size(), where, "prompt", vocab_size, "sample_id");
  check_ragged(s.answer, s.size(), where, "answer", vocab_size, "sample_id");
  check_unique_ids(s.sample_id, where);
}

void check_dataset_info(const DatasetInfo& info, const std::string& file) {
  MP_CHECK(info.format_version == kDatasetFormatVersion, file, ": format_version ", info.format_version,
           " is not supported (this metapo reads version ", kDatasetFormatVersion, ")");
  // Token ids are int32 on disk.
  MP_CHECK(info.vocab_size > 0 && info.vocab_size <= int64_t(std::numeric_limits<int32_t>::max()) + 1, file,
           ": vocab_size ", info.vocab_size, " is not in [1, 2^31]");
  const std::pair<const char*, int64_t> special[] = {
      {"bos_token_id", info.bos_token_id}, {"eos_token_id", info.eos_token_id}, {"pad_token_id", info.pad_token_id}};
  for (const auto& [name, id] : special)
    MP_CHECK(id == -1 || (id >= 0 && id < info.vocab_size), file, ": ", name, " ", id,
             " is outside the vocabulary [0, vocab_size = ", info.vocab_size, ") and is not -1 (absent)");
}

void check_dataset(const Dataset& d, const std::string& file) {
  check_dataset_info(d.info, file);
  // Ids key the training statistics and the random draws, so they must be unique across the whole
  // file, not just within a split. Sorting (id, split) pairs finds a clash in O(N log N).
  std::vector<std::string> names;
  std::vector<std::pair<int64_t, size_t>> all;  // (sample id, index into names)
  auto claim = [&](const std::vector<int64_t>& ids, const std::string& split) {
    names.push_back(split);
    for (int64_t id : ids) all.emplace_back(id, names.size() - 1);
  };
  if (d.sft) {
    check_sft_split(*d.sft, file, d.info.vocab_size);
    claim(d.sft->sample_id, "sft");
  }
  for (const auto& [name, s] : d.pairs) {
    MP_CHECK(good_link_name(name) && name != "sft", file, ": '", name,
             "' cannot name a pair split (empty, contains '/', or is the SFT split's name)");
    check_pair_split(s, file, name, d.info.vocab_size);
    claim(s.sample_id, name);
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 1; i < all.size(); ++i)
    MP_CHECK(all[i].first != all[i - 1].first, file, ": /", names[all[i].second], "/sample_id: id ",
             all[i].first, " is also in /", names[all[i - 1].second],
             "/sample_id (ids must be unique across splits)");
}

}  // namespace metapo

namespace metapo {

namespace {

// The new contents of one Ragged field, item by item (keeps the flat layout).
struct RaggedBuilder {
  Ragged r;
  void add(const int32_t* p, int64_t n) {
    r.tokens.insert(r.tokens.end(), p, p + n);
    r.offsets.push_back(int64_t(r.tokens.size()));
  }
};

// Where the prompt of one example starts and how many of its tokens stay.
std::pair<int64_t, int64_t> cut_prompt(int64_t len, const Truncation& t) {
  if (t.max_prompt_length <= 0 || len <= t.max_prompt_length) return {0, len};
  return {t.keep_end ? len - t.max_prompt_length : 0, t.max_prompt_length};
}

}  // namespace

std::string Truncation::describe() const {
  std::string out;
  if (max_length > 0) out = "--max-length " + std::to_string(max_length);
  if (max_prompt_length > 0)
    out += (out.empty() ? "" : ", ") + std::string("--max-prompt-length ") + std::to_string(max_prompt_length) +
           (keep_end ? " (keep_end)" : " (keep_start)");
  return out;
}

std::vector<int64_t> truncate_pairs(PairSplit& s, const Truncation& t, const std::string& where) {
  std::vector<int64_t> changed;
  if (!t.active()) return changed;
  RaggedBuilder prompt, chosen, rejected;
  for (int64_t i = 0; i < s.size(); ++i) {
    const auto [p0, np] = cut_prompt(s.prompt.len(i), t);
    int64_t nc = s.chosen.len(i), nr = s.rejected.len(i);
    if (t.max_length > 0 && np + std::max(nc, nr) > t.max_length) {
      const int64_t budget = std::max<int64_t>(t.max_length - np, 0);
      MP_CHECK(budget > 0, where, ": pair ", i, " (sample_id ", s.sample_id[size_t(i)], "): its prompt of ", np,
               " tokens leaves no room for a response under --max-length ", t.max_length,
               " (set --max-prompt-length below it, or drop such pairs with tools/prepare_data.py --max-length)");
      nc = std::min(nc, budget), nr = std::min(nr, budget);
    }
    if (np != s.prompt.len(i) || nc != s.chosen.len(i) || nr != s.rejected.len(i)) changed.push_back(i);
    prompt.add(s.prompt.data(i) + p0, np);
    chosen.add(s.chosen.data(i), nc);
    rejected.add(s.rejected.data(i), nr);
  }
  if (!changed.empty()) s.prompt = std::move(prompt.r), s.chosen = std::move(chosen.r), s.rejected = std::move(rejected.r);
  return changed;
}

int64_t truncate_sft(SftSplit& s, const Truncation& t, const std::string& where) {
  int64_t changed = 0;
  if (!t.active()) return 0;
  RaggedBuilder prompt, answer;
  for (int64_t i = 0; i < s.size(); ++i) {
    const auto [p0, np] = cut_prompt(s.prompt.len(i), t);
    int64_t na = s.answer.len(i);
    if (t.max_length > 0 && np + na > t.max_length) {
      const int64_t budget = std::max<int64_t>(t.max_length - np, 0);
      MP_CHECK(budget > 0, where, ": example ", i, " (sample_id ", s.sample_id[size_t(i)], "): its prompt of ", np,
               " tokens leaves no room for the answer under --max-length ", t.max_length,
               " (set --max-prompt-length below it)");
      na = budget;
    }
    changed += (np != s.prompt.len(i) || na != s.answer.len(i));
    prompt.add(s.prompt.data(i) + p0, np);
    answer.add(s.answer.data(i), na);
  }
  if (changed) s.prompt = std::move(prompt.r), s.answer = std::move(answer.r);
  return changed;
}

namespace {

template <typename V>
int64_t cap_bytes(const V& v) {
  return int64_t(v.capacity() * sizeof(typename V::value_type));
}
int64_t cap_bytes(const Ragged& r) { return cap_bytes(r.tokens) + cap_bytes(r.offsets); }

}  // namespace

int64_t memory_bytes(const PairSplit& s) {
  int64_t b = cap_bytes(s.prompt) + cap_bytes(s.chosen) + cap_bytes(s.rejected) + cap_bytes(s.sample_id) +
              cap_bytes(s.quality) + cap_bytes(s.ref_logp_chosen) + cap_bytes(s.ref_logp_rejected);
  for (const auto& [name, v] : s.columns) b += cap_bytes(v);
  return b;
}

namespace {
// The seed is not FNV's offset basis (a digit short of it), and must stay: checkpoints and analyses
// record these fingerprints and compare them with the data they are given.
struct Fingerprint : Fnv1a {
  Fingerprint() : Fnv1a(1469598103934665603ull) {}
  template <typename T>
  void add(const std::vector<T>& v) { add_sized(v); }
  void add(const Ragged& r) { add(r.tokens), add(r.offsets); }
};

}  // namespace

std::string fingerprint(const PairSplit& s) {
  Fingerprint f;
  f.add(s.prompt), f.add(s.chosen), f.add(s.rejected), f.add(s.sample_id);
  return "pairs:" + std::to_string(s.size()) + ":" + f.hex();
}
std::string fingerprint(const SftSplit& s) {
  Fingerprint f;
  f.add(s.prompt), f.add(s.answer), f.add(s.sample_id);
  return "sft:" + std::to_string(s.size()) + ":" + f.hex();
}

int64_t memory_bytes(const SftSplit& s) {
  return cap_bytes(s.prompt) + cap_bytes(s.answer) + cap_bytes(s.sample_id);
}

}  // namespace metapo
