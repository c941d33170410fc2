// Preference pairs as packed micro-batches: pair k becomes sequences 2k (prompt + chosen) and 2k+1
// (prompt + rejected); only response tokens are scored, so the LM head never runs on prompt rows.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "metapo/data/dataset.h"
#include "metapo/model/llama.h"

namespace metapo {

struct PairBatch {
  PackedBatch batch;
  std::vector<int32_t> targets;  // per row: the response token it predicts, or -1
  std::vector<int64_t> pairs;    // split indices, in order
  std::vector<int64_t> len_chosen, len_rejected;  // response lengths
};

PairBatch make_pair_batch(const PairSplit& s, const std::vector<int64_t>& idx);

// Sum of logp over each sequence's scored rows: out[s] for sequence s.
template <typename T>
std::vector<double> sequence_logps(const PackedBatch& b, const std::vector<T>& logp) {
  std::vector<double> out(size_t(b.n_seqs()), 0.0);
  for (int64_t s = 0; s < b.n_seqs(); ++s)
    for (int64_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t) out[size_t(s)] += double(logp[size_t(t)]);
  return out;
}

// dlogp per row: seq_coef[s] on every scored row of sequence s, 0 elsewhere.
template <typename T>
std::vector<T> expand_seq_coef(const PackedBatch& b, const std::vector<int32_t>& targets,
                               const std::vector<double>& seq_coef) {
  std::vector<T> d(size_t(b.n_tokens()), T(0));
  for (int64_t s = 0; s < b.n_seqs(); ++s)
    for (int64_t t = b.cu_seqlens[s]; t < b.cu_seqlens[s + 1]; ++t)
      if (targets[size_t(t)] >= 0) d[size_t(t)] = T(seq_coef[size_t(s)]);
  return d;
}

// SFT micro-batch: prompt + answer, answer tokens scored.
PackedBatch make_sft_batch(const SftSplit& s, const std::vector<int64_t>& idx, std::vector<int32_t>& targets);

// The global batch of `step`: a slice of the permutation of [0, n) for epoch step / steps_per_epoch,
// a pure function of (n, batch, seed, step); the last incomplete batch of an epoch is dropped.
std::vector<int64_t> global_batch(int64_t n, int64_t batch, uint64_t seed, int64_t step);
// This data-parallel rank's share of a global batch (contiguous, equal sizes; batch % dp == 0).
std::vector<int64_t> dp_share(const std::vector<int64_t>& global, int dp_rank, int dp);

// How a rank's examples are cut into micro-batches (--micro-batch, --micro-batch-tokens). With
// tokens == 0, `pairs` examples each, in order. With tokens > 0, whole examples (a pair: the prompt
// twice and both responses) up to that many tokens each: the examples sorted by length, longest first
// (ties in input order), then filled in that order, so similar lengths share a micro-batch and the
// activations of one micro-batch never pass the budget. A pure function of the input: every pipeline
// stage and every TP rank cuts the same micro-batches.
struct MicroBatching {
  int64_t pairs = 8;
  int64_t tokens = 0;
};
using TokensOf = std::function<int64_t(int64_t)>;
std::vector<std::vector<int64_t>> micro_batches(const std::vector<int64_t>& idx, const TokensOf& tokens_of,
                                                const MicroBatching& mb);
// Tokens of pair i in a micro-batch (prompt + chosen, prompt + rejected), and of SFT example i.
int64_t pair_tokens(const PairSplit& s, int64_t i);
int64_t sft_tokens(const SftSplit& s, int64_t i);
// Says (on stdout, where `say`) how many sequences of s (prompt + the longer response; prompt +
// answer) are longer than the model's max_position_embeddings, and the longest: RoPE runs on past
// the context the model was trained for without complaint (as in transformers), so such a run trains
// and scores positions the model has never seen. Nothing when none is.
void note_past_context(const PairSplit& s, int64_t max_positions, const std::string& where, bool say);
void note_past_context(const SftSplit& s, int64_t max_positions, const std::string& where, bool say);
// Refuses, naming the first one, an example longer than mb.tokens; remedy: what the line advises
// (commands without --max-length cannot cut the example).
void check_token_budget(int64_t n, const TokensOf& tokens_of, const std::vector<int64_t>& sample_id,
                        const MicroBatching& mb, const std::string& where,
                        const std::string& remedy = "raise it or set --max-length");

// This data-parallel rank's share of a global batch under a token budget: the examples, longest first,
// each to the rank with the fewest tokens so far (the lowest rank on ties), so ranks get about equal
// work whatever the lengths. The same pairs make the step on any layout; only who processes which
// changes. With mb.tokens == 0 it is dp_share.
std::vector<int64_t> dp_share(const std::vector<int64_t>& global, int dp_rank, int dp, const TokensOf& tokens_of,
                              const MicroBatching& mb);

}  // namespace metapo
