// Autoregressive generation with a key/value cache (fp32, on the CPU or one GPU), batched over prompts.
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
//
// Tensor and pipeline parallelism (DESIGN §4): a DecoderShard places the decoder on one rank of a TP
// group and one stage of a pipeline, holding the parameters ShardedModel holds (tp_layout.h: its q/k/v
// heads, KV heads, MLP slice and vocabulary rows; its stage's layers) and the KV cache of its KV heads
// and layers only. Under TP the row-parallel o_proj and down_proj partials are all-gathered and summed
// in rank order (not all-reduced: see KvCacheDecoder::add_row_parallel), and the vocab-parallel LM
// head's logits are gathered, so every TP rank holds the same [V] logits and picks the same token.
// Under PP each stage sends the residual stream [tokens, hidden] to the next and the last stage's
// tokens are broadcast over the pipeline. The column-parallel products, attention, the stage
// boundaries and the logits are the single-rank computations on the rank's rows, so PP alone is bit
// for bit the single-rank decoder; TP changes only the summation order of the row-parallel layers
// (rounding), and within a given TP x PP layout none of the invariances above depend on the batch,
// the data-parallel rank count or the thread count.
//
// On a device (an ops::Context on Device::CUDA; no TP or PP there yet, refused by name): the parameters
// are the device's copy, the work buffers and the KV caches live in its memory, each call uploads its
// tokens and index data and brings the logits back for choose_token; everything else runs through the
// same ops as on the CPU. The CUDA decode-step kernels keep the batch invariance above (kernels/cuda.h),
// so a device's tokens are batch-invariant too; they equal the CPU's up to rounding (fp32 in another
// summation order: greedy tokens differ only where two logits are within rounding of each other).
#pragma once
#include <cstdint>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/model/config.h"
#include "metapo/model/layout.h"
#include "metapo/ops/ops.h"
#include "metapo/parallel/vocab_parallel.h"

namespace metapo {

// Where a rank's decoder sits in the process grid. tp: its TP group (borrowed; null: no tensor
// parallelism); pp: its pipeline, ordered by stage (borrowed; null: one stage); stage: its layers and
// whether it embeds (first) and holds the LM head (last), as pipeline_stages gives it. The default is
// the whole model on one rank.
struct DecoderShard {
  Comm* tp = nullptr;
  Comm* pp = nullptr;
  PipeStage stage;
};

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  bool greedy = true;        // argmax (lowest index on ties); temperature and top_p are then unused
  double temperature = 1.0;  // > 0: logits are divided by it before the softmax
  double top_p = 1.0;        // in (0, 1]: sample from the smallest set of most likely tokens whose
                             // probability reaches top_p (nucleus sampling)
  uint64_t seed = 0;
  int64_t eos_id = -1;       // generation of a sequence stops after this token (-1: never)
  std::vector<int64_t> more_eos_ids;  // and after any of these (a model's other end tokens)
  int64_t max_batch = 64;    // sequences decoded together; outputs do not depend on it
};

// New tokens for each prompt (prompt excluded; stops after EOS — EOS is included as the last token
// when produced — or at max_new_tokens). ids[i] (e.g. the dataset sample_id) keys the random draws:
// token k of prompt i is drawn with make_rng(seed, k, ids[i], RngPurpose::Sample), so a prompt's
// sample does not depend on batching or rank count. Sequences may run past max_position_embeddings
// (RoPE is extended, as transformers does); a model with a sliding_window refuses a prompt whose
// prompt + max_new_tokens - 1 tokens would exceed it (sliding-window attention is not implemented).
// With a DecoderShard, params is the rank's shard and the call is collective over its TP group and
// pipeline (every rank passes the same prompts, ids and options); every rank returns the tokens.
// ctx: where the decoder runs (params in its device's memory); prompts, ids and the result are host data.
std::vector<std::vector<int32_t>> generate(const LlamaConfig& c, const float* params,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const std::vector<uint32_t>& ids,
                                           const GenerateOptions& opt, const DecoderShard& shard = {},
                                           const ops::Context& ctx = {});

// The next token from logits [V]: greedy argmax, or temperature + top-p sampling with the uniform
// draw of make_rng(opt.seed, step, id, RngPurpose::Sample). step is the index of the token being
// generated (0 for the first new token).
int32_t choose_token(const float* logits, int64_t V, const GenerateOptions& opt, uint64_t step,
                     uint32_t id);

// The cached decoder that generate() drives; public so tests can compare its logits with the
// training forward. Holds a pointer to the caller's parameters: ParamLayout order, or with a shard
// the layout of ParamLayout(tp_local_config(c, tp), stage) (layout()). With a shard every call is
// collective over the TP group and the pipeline, with the same arguments on every rank, and logits
// are written on the last stage only (elsewhere they may be null). ctx: where it runs; params is
// memory of ctx's device, prompts, tokens and logits are host memory whatever the device. A shard
// (TP or PP) on a device is refused.
class KvCacheDecoder {
 public:
  KvCacheDecoder(const LlamaConfig& c, const float* params, const DecoderShard& shard = {},
                 const ops::Context& ctx = {});

  // Starts a sequence: runs the prompt (at least one token) through the model, keeps each layer's
  // keys and values with room for `extra` more tokens, and writes the logits [V] that predict the
  // token after the prompt. Returns the sequence's handle (the same on every rank of a shard).
  int64_t add(const std::vector<int32_t>& prompt, int64_t extra, float* logits);

  // One decode step: appends tokens[i] to sequence seqs[i] (distinct handles, each with room left)
  // and writes logits [k, V], row i predicting the token after it.
  void step(const std::vector<int64_t>& seqs, const std::vector<int32_t>& tokens, float* logits);

  // Frees a sequence's cache; its handle may be reused by a later add().
  void remove(int64_t seq);

  // Tokens fed to the sequence so far (prompt + decoded tokens).
  int64_t length(int64_t seq) const;
  // Bytes held by live sequences' caches (this rank's KV heads and layers).
  size_t cache_bytes() const;
  // The layout of params: this rank's shard.
  const ParamLayout& layout() const { return lay_; }

 private:
  struct Seq {
    bool live = false;
    int64_t len = 0, cap = 0;
    ops::DeviceArray<float> kv;  // [stage layers][2 (k, v)][cap][local Hkv * D], on ctx_'s device
  };
  float* k_row(Seq& s, int64_t layer, int64_t pos);
  float* v_row(Seq& s, int64_t layer, int64_t pos);
  const Seq& live_seq(int64_t seq) const;
  void ensure_rope(int64_t positions);
  // An index array of n elements where the ops read it: host on the CPU, else uploaded into dev.
  template <typename E>
  const E* for_ops(ops::DeviceArray<E>& dev, const E* host, size_t n);
  // x_ [m, C] = the residual stream entering the stage: the tokens (host) embedded on the first stage,
  // received from the previous stage elsewhere.
  void stage_input(const int32_t* tokens, int64_t m);
  // x [m, C] leaving the stage: sent to the next stage, or on the last one the logits (host) of its rows.
  void stage_output(const float* x, int64_t m, float* logits);
  // x[0, count) += the sum over the TP group of every rank's partial[0, count).
  void add_row_parallel(float* x, const float* partial, int64_t count);
  void logits_rows(const float* x, int64_t m, float* logits);  // final norm + LM head

  LlamaConfig cfg_;  // the whole model's
  DecoderShard sh_;
  LlamaConfig lc_;    // this rank's shapes (tp_local_config); == cfg_ without TP
  VocabShard vocab_;  // this rank's embedding and LM-head rows (TP only)
  ParamLayout lay_;
  ModelView<const float> w_;
  std::vector<double> inv_freq_;
  RopeTable<float> rope_;
  std::vector<Seq> seqs_;
  ops::Context ctx_;  // where the ops run: the CPU, or one device (no TP or PP)
  // Workspaces on ctx_'s device, kept from call to call; logits_: the logits before they go to the
  // host (a device only).
  ops::DeviceArray<float> x_, xn_, rstd_, qkv_, att_, lse_, y_, gu_, h_, logits_;
  std::vector<float> gather_;  // TP: every rank's partial sums or logits, [tp][...]
  // Index data of the current call, on the host: positions; per layer and row, its KV-cache rows
  // ([layer][k_dst, v_dst, k_src, v_src][row]: where the new key and value go, where the keys and
  // values start) and its key count (decode step); per TP rank its logit columns.
  std::vector<int32_t> pos_;
  std::vector<float*> cache_rows_;
  std::vector<int64_t> n_keys_, vocab_col0_, vocab_width_;
  // Their copies on a device (unused on the CPU, where the ops read the host arrays), and the tokens'.
  ops::DeviceArray<int32_t> pos_dev_, tokens_dev_;
  ops::DeviceArray<float*> cache_rows_dev_;
  ops::DeviceArray<int64_t> n_keys_dev_, cu_dev_;
};

}  // namespace metapo
