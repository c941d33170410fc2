// Autoregressive generation with a key/value cache (fp32, CPU), batched over prompts.
//
// Each prompt is prefilled on its own (one forward over its tokens that keeps every layer's keys,
// after RoPE, and values); then every active sequence gets one new token per decode step, all active
// sequences together. Finished sequences leave the batch and waiting prompts take their place
// (continuous batching).
//
// Batch invariance: a prompt's tokens never depend on which other prompts share its batch, on the
// batch size, on the rank count or on the thread count. BLAS does not give that (OpenBLAS picks
// different kernels, with different summation orders, by the number of rows), so:
//  - the prefill GEMMs see only the prompt's own rows (their shape depends on the prompt alone);
//  - the decode step's projections use a row-wise kernel (each output is one dot product in a fixed
//    order) instead of a GEMM whose shape would depend on how many sequences are active;
//  - each random draw is a pure function of (seed, token index, prompt id).
// Greedy and sampled outputs are therefore reproducible from the prompt, its id and the options.
#pragma once
#include <cstdint>
#include <vector>

#include "metapo/core/buffer.h"
#include "metapo/kernels/rope.h"
#include "metapo/model/config.h"
#include "metapo/model/layout.h"

namespace metapo {

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  bool greedy = true;        // argmax (lowest index on ties); temperature and top_p are then unused
  double temperature = 1.0;  // > 0: logits are divided by it before the softmax
  double top_p = 1.0;        // in (0, 1]: sample from the smallest set of most likely tokens whose
                             // probability reaches top_p (nucleus sampling)
  uint64_t seed = 0;
  int64_t eos_id = -1;       // generation of a sequence stops after this token (-1: never)
  int64_t max_batch = 64;    // sequences decoded together; outputs do not depend on it
};

// New tokens for each prompt (prompt excluded; stops after EOS — EOS is included as the last token
// when produced — or at max_new_tokens). ids[i] (e.g. the dataset sample_id) keys the random draws:
// token k of prompt i is drawn with make_rng(seed, k, ids[i], RngPurpose::Sample), so a prompt's
// sample does not depend on batching or rank count. Sequences may run past max_position_embeddings
// (RoPE is extended, as transformers does); a model with a sliding_window refuses a prompt whose
// prompt + max_new_tokens - 1 tokens would exceed it (sliding-window attention is not implemented).
std::vector<std::vector<int32_t>> generate(const LlamaConfig& c, const float* params,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const std::vector<uint32_t>& ids,
                                           const GenerateOptions& opt);

// The next token from logits [V]: greedy argmax, or temperature + top-p sampling with the uniform
// draw of make_rng(opt.seed, step, id, RngPurpose::Sample). step is the index of the token being
// generated (0 for the first new token).
int32_t choose_token(const float* logits, int64_t V, const GenerateOptions& opt, uint64_t step,
                     uint32_t id);

// The cached decoder that generate() drives; public so tests can compare its logits with the
// training forward. Holds a pointer to the caller's parameters (ParamLayout order).
class KvCacheDecoder {
 public:
  KvCacheDecoder(const LlamaConfig& c, const float* params);

  // Starts a sequence: runs the prompt (at least one token) through the model, keeps each layer's
  // keys and values with room for `extra` more tokens, and writes the logits [V] that predict the
  // token after the prompt. Returns the sequence's handle.
  int64_t add(const std::vector<int32_t>& prompt, int64_t extra, float* logits);

  // One decode step: appends tokens[i] to sequence seqs[i] (distinct handles, each with room left)
  // and writes logits [k, V], row i predicting the token after it.
  void step(const std::vector<int64_t>& seqs, const std::vector<int32_t>& tokens, float* logits);

  // Frees a sequence's cache; its handle may be reused by a later add().
  void remove(int64_t seq);

  // Tokens fed to the sequence so far (prompt + decoded tokens).
  int64_t length(int64_t seq) const;
  // Bytes held by live sequences' caches.
  size_t cache_bytes() const;

 private:
  struct Seq {
    bool live = false;
    int64_t len = 0, cap = 0;
    std::vector<float> kv;  // [layers][2 (k, v)][cap][Hkv * D]
  };
  float* k_row(Seq& s, int64_t layer, int64_t pos);
  float* v_row(Seq& s, int64_t layer, int64_t pos);
  const Seq& live_seq(int64_t seq) const;
  void ensure_rope(int64_t positions);
  void logits_rows(const float* x, int64_t m, float* logits);  // final norm + LM head

  LlamaConfig cfg_;
  ParamLayout lay_;
  ModelView<const float> w_;
  std::vector<double> inv_freq_;
  cpu::RopeTable<float> rope_;
  std::vector<Seq> seqs_;
  // Workspaces, kept from call to call.
  Buffer<float> x_, xn_, rstd_, qkv_, att_, lse_, y_, gu_, h_;
  std::vector<int32_t> pos_;
};

}  // namespace metapo
