// A preference dataset in memory: the contents of a dataset .h5 file (docs/formats.md, "Dataset
// files") as plain structs. No HDF5 here: io/dataset_h5.h reads and writes these, and the trainer,
// the synthetic tasks and the tests use them without touching a file.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace metapo {

// The dataset format version this build reads and writes.
constexpr int64_t kDatasetFormatVersion = 1;

// N variable-length token sequences in one flat array: item i = tokens[offsets[i] .. offsets[i+1]).
// One allocation for the whole split instead of N vectors, and the on-disk layout as is.
struct Ragged {
  std::vector<int32_t> tokens;       // [offsets.back()]
  std::vector<int64_t> offsets{0};   // [N + 1], offsets[0] = 0, non-decreasing

  int64_t size() const { return int64_t(offsets.size()) - 1; }
  const int32_t* data(int64_t i) const { return tokens.data() + offsets[size_t(i)]; }
  int64_t len(int64_t i) const { return offsets[size_t(i) + 1] - offsets[size_t(i)]; }
  std::vector<int32_t> item(int64_t i) const { return std::vector<int32_t>(data(i), data(i) + len(i)); }
  void push(const std::vector<int32_t>& v) {
    tokens.insert(tokens.end(), v.begin(), v.end());
    offsets.push_back(int64_t(tokens.size()));
  }
  // Keeps items [0, n) (n <= size()).
  void keep_first(int64_t n) {
    offsets.resize(size_t(n) + 1);
    tokens.resize(size_t(offsets.back()));
  }
};

// One pair split (/train, /val, /test): pair i is (prompt i, chosen i, rejected i); the model sees
// prompt + chosen and prompt + rejected, and the loss covers the response tokens only.
struct PairSplit {
  Ragged prompt, chosen, rejected;  // responses without the prompt (EOS included)
  std::vector<int64_t> sample_id;   // [N], unique across the whole file
  std::vector<float> quality;       // [N] or empty when absent (synth: 1 clean, 0 flipped)
  std::map<std::string, std::vector<float>> columns;       // /<split>/columns/<name>, each [N]
  std::vector<double> ref_logp_chosen, ref_logp_rejected;  // [N] each; empty before precompute-ref
  // Group attributes written with the ref log-probs: the reference model directory, the max length it
  // was scored with and the model's fingerprint ("", 0 and "" when the file does not say).
  std::string ref_model;
  int64_t ref_max_length = 0;
  std::string ref_model_fingerprint;  // model_fingerprint of the reference ("" when the file does not say)

  int64_t size() const { return int64_t(sample_id.size()); }
  bool has_ref() const { return !ref_logp_chosen.empty() || !ref_logp_rejected.empty(); }
  // Keeps pairs [0, n) (n <= size()) and everything recorded of them.
  void keep_first(int64_t n) {
    prompt.keep_first(n), chosen.keep_first(n), rejected.keep_first(n);
    sample_id.resize(size_t(n));
    if (!quality.empty()) quality.resize(size_t(n));
    for (auto& [name, v] : columns) v.resize(size_t(n));
    if (!ref_logp_chosen.empty()) ref_logp_chosen.resize(size_t(n)), ref_logp_rejected.resize(size_t(n));
  }
  // For a reference-free loss (simpo), which reads none: zeros stand in for absent reference log-probs.
  void zero_absent_ref() {
    if (!has_ref()) ref_logp_chosen.assign(size_t(size()), 0.0), ref_logp_rejected.assign(size_t(size()), 0.0);
  }
};

// The SFT split (/sft): the loss covers the answer tokens.
struct SftSplit {
  Ragged prompt, answer;
  std::vector<int64_t> sample_id;  // [N]
  int64_t size() const { return int64_t(sample_id.size()); }
};

// The root attributes.
struct DatasetInfo {
  int64_t format_version = kDatasetFormatVersion;
  std::string tokenizer, task, source;  // task: "sort", "reverse", "add" (synthetic) or ""
  int64_t vocab_size = 0, bos_token_id = -1, eos_token_id = -1, pad_token_id = -1;  // -1: absent
};

struct Dataset {
  DatasetInfo info;
  std::optional<SftSplit> sft;
  std::map<std::string, PairSplit> pairs;  // by split name: "train", "val", "test"
};

// Training-time truncation (--max-length, --max-prompt-length, --truncation-mode): the rule of
// tools/prepare_data.py (docs/prepare_data.md says how it relates to TRL's DPO trainer). A prompt
// longer than max_prompt_length keeps its last (keep_end) or first tokens; then, when prompt + the
// longer response exceed max_length, each response keeps its first max_length - prompt tokens (a cut
// response loses its EOS). 0: no limit.
struct Truncation {
  int64_t max_length = 0, max_prompt_length = 0;
  bool keep_end = true;
  bool active() const { return max_length > 0 || max_prompt_length > 0; }
  // The limits in effect as options: "--max-length 24, --max-prompt-length 16 (keep_end)", naming only
  // those set (the mode only where a prompt limit makes it matter).
  std::string describe() const;
};

// Bytes a split holds in memory (its arrays' capacities): what the memory accountant counts as data.
int64_t memory_bytes(const PairSplit& s);
int64_t memory_bytes(const SftSplit& s);

// Applies t to every pair of s in place and returns the indices of the pairs it changed. A pair whose
// response would become empty is refused with a line naming it (`where`: "data.h5: /train"), since
// dropping pairs at training time would change the data behind every index.
std::vector<int64_t> truncate_pairs(PairSplit& s, const Truncation& t, const std::string& where);
// The same for SFT examples (prompt + answer); returns how many it changed.
int64_t truncate_sft(SftSplit& s, const Truncation& t, const std::string& where);

// Consistency checks shared by the reader and the writer, so a file metapo writes always reads back.
// Every error names `file`, the split and the field as the file spells them
// ("data.h5: /train/chosen_offsets: last offset 120 != chosen_tokens length 118").
//
// A split: equal item counts everywhere, offsets that start at 0, never decrease and end at the token
// count, token ids in [0, vocab_size), sample ids unique, optional columns of length N, finite
// reference log-probs present for both responses or for neither.
void check_pair_split(const PairSplit& s, const std::string& file, const std::string& split,
                      int64_t vocab_size);
void check_sft_split(const SftSplit& s, const std::string& file, int64_t vocab_size);
// The root attributes (format version, vocab size, special token ids).
void check_dataset_info(const DatasetInfo& info, const std::string& file);
// Everything above, plus split names that HDF5 can hold and sample ids unique across all splits.
void check_dataset(const Dataset& d, const std::string& file);

// A split's fingerprint, "pairs:N:HEX" / "sft:N:HEX": FNV-1a over its tokens, offsets and sample
// ids, not the reference log-probs (which a resume under another layout may recompute). A
// checkpoint resumes only on its training split's, and `analyze` checks a run's data by it.
std::string fingerprint(const PairSplit& s);
std::string fingerprint(const SftSplit& s);

}  // namespace metapo
