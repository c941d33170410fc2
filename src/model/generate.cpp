#include "metapo/model/generate.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "metapo/core/error.h"
#include "metapo/core/rng.h"
#include "metapo/model/rope_freq.h"
#include "metapo/model/tp_layout.h"

namespace metapo {

namespace {

template <typename E>
void resize(ops::DeviceArray<E>& v, int64_t n) {
  v.resize_for_overwrite(size_t(n));  // keeps capacity: no reallocation once the batch shape settles
}

}  // namespace

KvCacheDecoder::KvCacheDecoder(const LlamaConfig& c, const float* params, const DecoderShard& shard,
                               const ops::Context& ctx)
    : cfg_(c),
      sh_(shard),
      lc_(shard.tp ? tp_local_config(c, shard.tp->size()) : c),
      vocab_(shard.tp ? VocabShard(c.vocab_size, shard.tp->size(), shard.tp->rank()) : VocabShard()),
      lay_(lc_, shard.stage),
      w_(make_view(lay_, params)),
      inv_freq_(rope_inv_freq(c)),
      ctx_(ctx) {
  MP_CHECK(!shard.tp || ctx.device == Device::CPU, "generate: tensor parallelism on ", device_name(ctx.device),
           ": not yet (the TP collectives run on host memory)");
  MP_CHECK(shard.stage.whole() || ctx.device == Device::CPU, "generate: pipeline stages on ",
           device_name(ctx.device), ": not yet (the stages exchange host buffers)");
  for (ops::DeviceArray<float>* b : {&x_, &xn_, &rstd_, &qkv_, &att_, &lse_, &y_, &gu_, &h_, &logits_})
    *b = ops::DeviceArray<float>(ctx.device, Mem::Workspace);
  pos_dev_ = ops::DeviceArray<int32_t>(ctx.device, Mem::Workspace);
  tokens_dev_ = ops::DeviceArray<int32_t>(ctx.device, Mem::Workspace);
  cache_rows_dev_ = ops::DeviceArray<float*>(ctx.device, Mem::Workspace);
  n_keys_dev_ = ops::DeviceArray<int64_t>(ctx.device, Mem::Workspace);
  cu_dev_ = ops::DeviceArray<int64_t>(ctx.device, Mem::Workspace);
  const int P = sh_.pp ? sh_.pp->size() : 1, s = sh_.pp ? sh_.pp->rank() : 0;
  MP_CHECK(sh_.stage.first == (s == 0) && sh_.stage.last == (s == P - 1), "KvCacheDecoder: the stage (layers [",
           sh_.stage.layer_begin, ", ", sh_.stage.layer_end, ")) does not match rank ", s, " of ", P,
           " pipeline stages");
  if (P == 1) sh_.pp = nullptr;  // one stage: nothing to send
  if (sh_.tp)
    for (int r = 0; r < sh_.tp->size(); ++r) {
      const VocabShard vs(c.vocab_size, sh_.tp->size(), r);
      vocab_col0_.push_back(vs.begin), vocab_width_.push_back(vs.real);
    }
}

float* KvCacheDecoder::k_row(Seq& s, int64_t layer, int64_t pos) {
  return s.kv.data() + ((2 * layer) * s.cap + pos) * lc_.kv_dim();
}
float* KvCacheDecoder::v_row(Seq& s, int64_t layer, int64_t pos) {
  return s.kv.data() + ((2 * layer + 1) * s.cap + pos) * lc_.kv_dim();
}

const KvCacheDecoder::Seq& KvCacheDecoder::live_seq(int64_t seq) const {
  MP_CHECK(seq >= 0 && seq < int64_t(seqs_.size()) && seqs_[size_t(seq)].live,
           "KvCacheDecoder: no live sequence with handle ", seq);
  return seqs_[size_t(seq)];
}

int64_t KvCacheDecoder::length(int64_t seq) const { return live_seq(seq).len; }

template <typename E>
const E* KvCacheDecoder::for_ops(ops::DeviceArray<E>& dev, const E* host, size_t n) {
  if (ctx_.device == Device::CPU) return host;
  dev.resize_for_overwrite(n);
  ops::to_device(ctx_, dev.data(), host, n * sizeof(E));  // waits: host may change right after
  return dev.data();
}

size_t KvCacheDecoder::cache_bytes() const {
  size_t e = 0;
  for (const Seq& s : seqs_) e += s.kv.size();
  return e * sizeof(float);
}

void KvCacheDecoder::remove(int64_t seq) {
  live_seq(seq);
  Seq& s = seqs_[size_t(seq)];
  s.live = false;
  s.len = s.cap = 0;
  s.kv = ops::DeviceArray<float>(ctx_.device, Mem::Activations);  // frees the cache
}

void KvCacheDecoder::ensure_rope(int64_t positions) {
  // Past max_position_embeddings RoPE simply continues (as transformers does); a table rebuilt larger
  // has the same values at the old positions, so when it grows does not change any result.
  if (positions > rope_.max_pos)
    rope_.build(inv_freq_, std::max<int64_t>({positions, 2 * rope_.max_pos, 64}));
}

void KvCacheDecoder::add_row_parallel(float* x, const float* partial, int64_t count) {
  if (!sh_.tp) {
    ops::add(ctx_, x, partial, count);
    return;
  }
  // An all-gather and the sum here, in rank order, rather than an all-reduce: MPI picks a reduction
  // algorithm, and with it the order in which ranks are combined, by the message size, which grows
  // with the number of active sequences. A row's sum would then depend on its batch once tp > 2,
  // and batch invariance (above) would be lost. The gather moves tp times the bytes; at decode sizes
  // ([active sequences, hidden]) that is small.
  const size_t n = size_t(count), P = size_t(sh_.tp->size());
  gather_.resize(P * n);
  ops::copy(ctx_, gather_.data() + size_t(sh_.tp->rank()) * n, partial, count);
  sh_.tp->allgather(gather_.data(), n);
  float* sum = gather_.data();  // rank 0's partial, then + rank 1's, ...: one order for every element
  for (size_t r = 1; r < P; ++r) ops::add(ctx_, sum, gather_.data() + r * n, count);
  ops::add(ctx_, x, sum, count);
}

void KvCacheDecoder::logits_rows(const float* x, int64_t m, float* logits) {
  const int64_t C = cfg_.hidden_size, V = cfg_.vocab_size;
  resize(xn_, m * C), resize(rstd_, m);
  ops::rmsnorm_forward(ctx_, ops::RmsNorm<float>{xn_.data(), rstd_.data(), x, w_.final_norm, m, C, cfg_.rms_norm_eps});
  if (!sh_.tp) {
    if (ctx_.device == Device::CPU) {
      ops::linear_rows(ctx_, ops::Linear<float>{logits, xn_.data(), w_.lm_head, nullptr, m, C, V});  // [m, V]
      return;
    }
    // On a device: into logits_, then to the caller's host memory (to_host waits for the stream).
    resize(logits_, m * V);
    ops::linear_rows(ctx_, ops::Linear<float>{logits_.data(), xn_.data(), w_.lm_head, nullptr, m, C, V});  // [m, V]
    ops::to_host(ctx_, logits, logits_.data(), sizeof(float) * size_t(m * V));
    return;
  }
  // Vocab-parallel head: this rank's real rows give its logits [m, real] (each one the dot product
  // the whole model computes, so bit for bit the same), gathered over TP into [m, V] on every rank.
  const int P = sh_.tp->size();
  const size_t block = size_t(m * vocab_.rows);
  gather_.resize(size_t(P) * block);
  ops::linear_rows(ctx_, ops::Linear<float>{gather_.data() + size_t(sh_.tp->rank()) * block, xn_.data(), w_.lm_head,
                                             nullptr, m, C, vocab_.real});
  sh_.tp->allgather(gather_.data(), block);
  // Block r: [m, real] logits of rank r's tokens [begin, begin + real), into those columns.
  ops::blocks_to_columns(ctx_, logits, V, gather_.data(), int64_t(block), m, vocab_col0_.data(), vocab_width_.data(), P);
}

void KvCacheDecoder::stage_input(const int32_t* tokens, int64_t m) {
  const int64_t C = cfg_.hidden_size;
  resize(x_, m * C);
  if (!sh_.stage.first)
    sh_.pp->recv(x_.data(), size_t(m * C), sh_.pp->rank() - 1);
  else if (sh_.tp)  // the owner of each token writes its row: exact, one nonzero term per element
    vocab_parallel_embedding_forward(ctx_, x_.data(), w_.embed, tokens, m, C, vocab_, *sh_.tp);
  else
    ops::embedding_forward(ctx_, ops::Embedding<float>{x_.data(), w_.embed, for_ops(tokens_dev_, tokens, size_t(m)), m, C});
}

void KvCacheDecoder::stage_output(const float* x, int64_t m, float* logits) {
  if (sh_.stage.last) {
    logits_rows(x, m, logits);
    return;
  }
  sh_.pp->send(x, size_t(m * cfg_.hidden_size), sh_.pp->rank() + 1);
  sh_.pp->wait_sends();  // the next stage receives it first thing in the same call
}

int64_t KvCacheDecoder::add(const std::vector<int32_t>& prompt, int64_t extra, float* logits) {
  const LlamaConfig& c = cfg_;
  const int64_t n = int64_t(prompt.size()), C = c.hidden_size, V = c.vocab_size;
  // This rank's heads and MLP slice (all of them without TP).
  const int64_t I = lc_.intermediate_size, Hq = lc_.num_attention_heads, Hkv = lc_.num_key_value_heads;
  const int64_t D = c.head_dim, Q = lc_.q_dim(), KV = lc_.kv_dim(), QKV = lc_.qkv_dim();
  const int64_t L = int64_t(lay_.layers.size());  // this stage's layers
  MP_CHECK(n > 0, "generate: empty prompt (at least one token is needed to condition on)");
  MP_CHECK(extra >= 0, "generate: negative room for new tokens (", extra, ")");
  for (int64_t t = 0; t < n; ++t)
    MP_CHECK(prompt[t] >= 0 && prompt[t] < V, "generate: prompt token id ", prompt[t],
             " at position ", t, " is outside the vocabulary [0, ", V, ")");
  // The longest sequence ever fed is the prompt plus all new tokens but the last.
  MP_CHECK(c.sliding_window == 0 || n + std::max<int64_t>(extra, 1) - 1 <= c.sliding_window,
           "generate: a prompt of ", n, " tokens plus ", extra, " new tokens is longer than the model's sliding_window (",
           c.sliding_window, "); sliding-window attention is not implemented");

  int64_t h = 0;
  while (h < int64_t(seqs_.size()) && seqs_[size_t(h)].live) ++h;
  if (h == int64_t(seqs_.size())) seqs_.emplace_back();
  Seq& s = seqs_[size_t(h)];
  s.live = true;
  s.len = n;
  s.cap = n + extra;
  // Not zeroed: a row is written (prefill, or the step that feeds its token) before any read of it.
  s.kv = ops::DeviceArray<float>(ctx_.device, Mem::Activations);
  s.kv.resize_for_overwrite(size_t(2 * L * s.cap * KV));
  ensure_rope(s.cap);

  // The prompt's own forward, as the training forward does it over one packed sequence. Its GEMMs
  // see only this prompt's rows, so their results do not depend on any other prompt.
  pos_.resize(size_t(n));
  std::iota(pos_.begin(), pos_.end(), 0);
  const int32_t* pos = for_ops(pos_dev_, pos_.data(), size_t(n));
  const int64_t cu_host[2] = {0, n};
  const int64_t* cu = for_ops(cu_dev_, cu_host, 2);
  resize(xn_, n * C), resize(rstd_, n), resize(qkv_, n * QKV), resize(att_, n * Q);
  resize(lse_, Hq * n), resize(gu_, n * 2 * I), resize(h_, n * I);
  if (sh_.tp) resize(y_, n * C);
  stage_input(prompt.data(), n);  // x: the residual stream [n, C]
  const ops::Context& cx = ctx_;
  for (int64_t l = 0; l < L; ++l) {
    const LayerView<const float>& lw = w_.layers[size_t(l)];
    ops::rmsnorm_forward(cx, ops::RmsNorm<float>{xn_.data(), rstd_.data(), x_.data(), lw.attn_norm, n, C, c.rms_norm_eps});
    ops::linear_forward(cx, ops::Linear<float>{qkv_.data(), xn_.data(), lw.wqkv, lw.bqkv, n, C, QKV});  // [n, QKV]
    ops::rope(cx, ops::Rope<float>{qkv_.data(), n, Hq, D, QKV, pos, &rope_, false});       // q
    ops::rope(cx, ops::Rope<float>{qkv_.data() + Q, n, Hkv, D, QKV, pos, &rope_, false});  // k
    // The cache keeps k after RoPE, and v: rows 0..n-1 of this layer's k and v blocks.
    ops::copy_2d(cx, k_row(s, l, 0), KV, qkv_.data() + Q, QKV, KV, n);
    ops::copy_2d(cx, v_row(s, l, 0), KV, qkv_.data() + Q + KV, QKV, KV, n);
    const ops::Attention<float> ap{qkv_.data(), qkv_.data() + Q, qkv_.data() + Q + KV, QKV,
                                   att_.data(), Q, lse_.data(), cu, 1, n, Hq, Hkv, D,
                                   1.0f / std::sqrt(float(D)), n};
    ops::attention_forward(cx, ap);  // [n, Q]
    // x += att Wo^T; then the MLP block: x += swiglu(norm(x) Wgu^T) Wdown^T. Under TP both products
    // are this rank's partial sums (row-parallel), combined by add_row_parallel.
    if (sh_.tp) {
      ops::gemm(cx, ops::Gemm<float>{false, true, n, C, Q, 1.0f, att_.data(), Q, lw.wo, Q, 0.0f, y_.data(), C});
      add_row_parallel(x_.data(), y_.data(), n * C);
    } else {
      ops::gemm(cx, ops::Gemm<float>{false, true, n, C, Q, 1.0f, att_.data(), Q, lw.wo, Q, 1.0f, x_.data(), C});
    }
    ops::rmsnorm_forward(cx, ops::RmsNorm<float>{xn_.data(), rstd_.data(), x_.data(), lw.mlp_norm, n, C, c.rms_norm_eps});
    ops::linear_forward(cx, ops::Linear<float>{gu_.data(), xn_.data(), lw.wgu, nullptr, n, C, 2 * I});  // [n, 2I]
    ops::swiglu_forward(cx, ops::SwiGlu<float>{h_.data(), gu_.data(), n, I});                          // [n, I]
    if (sh_.tp) {
      ops::gemm(cx, ops::Gemm<float>{false, true, n, C, I, 1.0f, h_.data(), I, lw.wdown, I, 0.0f, y_.data(), C});
      add_row_parallel(x_.data(), y_.data(), n * C);
    } else {
      ops::gemm(cx, ops::Gemm<float>{false, true, n, C, I, 1.0f, h_.data(), I, lw.wdown, I, 1.0f, x_.data(), C});
    }
  }
  if (!sh_.stage.last) {  // the next stage needs every row for its own layers' caches
    stage_output(x_.data(), n, nullptr);
    return h;
  }
  // Only the last position's logits are needed: they predict the first new token.
  stage_output(x_.data() + (n - 1) * C, 1, logits);
  return h;
}

void KvCacheDecoder::step(const std::vector<int64_t>& seqs, const std::vector<int32_t>& tokens,
                          float* logits) {
  const LlamaConfig& c = cfg_;
  const int64_t m = int64_t(seqs.size()), C = c.hidden_size, V = c.vocab_size;
  const int64_t I = lc_.intermediate_size, Hq = lc_.num_attention_heads, Hkv = lc_.num_key_value_heads;
  const int64_t D = c.head_dim, Q = lc_.q_dim(), KV = lc_.kv_dim(), QKV = lc_.qkv_dim();
  const int64_t L = int64_t(lay_.layers.size());
  MP_CHECK(tokens.size() == seqs.size(), "KvCacheDecoder::step: ", seqs.size(), " sequences but ",
           tokens.size(), " tokens");
  if (m == 0) return;
  std::vector<Seq*> sp(static_cast<size_t>(m));
  std::vector<char> seen(seqs_.size(), 0);
  pos_.resize(size_t(m));
  for (int64_t i = 0; i < m; ++i) {
    live_seq(seqs[i]);
    MP_CHECK(!seen[size_t(seqs[i])], "KvCacheDecoder::step: sequence ", seqs[i], " given twice");
    seen[size_t(seqs[i])] = 1;
    sp[i] = &seqs_[size_t(seqs[i])];
    MP_CHECK(sp[i]->len < sp[i]->cap, "KvCacheDecoder::step: sequence ", seqs[i], " has no room left (",
             sp[i]->cap, " tokens)");
    MP_CHECK(tokens[i] >= 0 && tokens[i] < V, "generate: token id ", tokens[i],
             " is outside the vocabulary [0, ", V, ")");
    pos_[i] = int32_t(sp[i]->len);  // the new token's position
  }

  resize(xn_, m * C), resize(rstd_, m), resize(qkv_, m * QKV);
  resize(att_, m * Q), resize(y_, m * C), resize(gu_, m * 2 * I), resize(h_, m * I);
  n_keys_.resize(size_t(m)), cache_rows_.resize(size_t(4 * L * m));
  int64_t max_keys = 0;
  for (int64_t i = 0; i < m; ++i) {
    n_keys_[i] = pos_[i] + 1;  // keys 0..pos, itself included
    max_keys = std::max(max_keys, n_keys_[i]);
  }
  for (int64_t l = 0; l < L; ++l)  // each row's cache rows of each layer
    for (int64_t i = 0; i < m; ++i) {
      float** r = cache_rows_.data() + 4 * l * m + i;
      r[0] = k_row(*sp[i], l, pos_[i]), r[m] = v_row(*sp[i], l, pos_[i]);
      r[2 * m] = k_row(*sp[i], l, 0), r[3 * m] = v_row(*sp[i], l, 0);
    }
  const int32_t* pos = for_ops(pos_dev_, pos_.data(), size_t(m));
  const int64_t* n_keys = for_ops(n_keys_dev_, n_keys_.data(), size_t(m));
  float* const* cache_rows = for_ops(cache_rows_dev_, cache_rows_.data(), cache_rows_.size());
  stage_input(tokens.data(), m);  // x: one row per sequence [m, C]
  const ops::Context& cx = ctx_;
  for (int64_t l = 0; l < L; ++l) {
    const LayerView<const float>& lw = w_.layers[size_t(l)];
    float* const* k_dst = cache_rows + 4 * l * m;  // [m] each: this layer's rows of the step's sequences
    float* const* v_dst = k_dst + m;
    float* const* k_src = k_dst + 2 * m;
    float* const* v_src = k_dst + 3 * m;
    ops::rmsnorm_forward(cx, ops::RmsNorm<float>{xn_.data(), rstd_.data(), x_.data(), lw.attn_norm, m, C, c.rms_norm_eps});
    ops::linear_rows(cx, ops::Linear<float>{qkv_.data(), xn_.data(), lw.wqkv, lw.bqkv, m, C, QKV});  // [m, QKV]
    ops::rope(cx, ops::Rope<float>{qkv_.data(), m, Hq, D, QKV, pos, &rope_, false});       // q
    ops::rope(cx, ops::Rope<float>{qkv_.data() + Q, m, Hkv, D, QKV, pos, &rope_, false});  // k
    ops::copy_rows(cx, k_dst, qkv_.data() + Q, QKV, KV, m);
    ops::copy_rows(cx, v_dst, qkv_.data() + Q + KV, QKV, KV, m);
    // Attention of each new query over its own sequence's cached keys 0..pos (itself included).
    // Grouped-query: head h reads KV head h / (Hq / Hkv) (local heads onto local KV heads under TP).
    ops::decode_attention(cx, ops::DecodeAttention{qkv_.data(), QKV, att_.data(), Q, k_src, v_src, KV, n_keys, m, Hq,
                                                   Hkv, D, 1.0f / std::sqrt(float(D)), max_keys});
    ops::linear_rows(cx, ops::Linear<float>{y_.data(), att_.data(), lw.wo, nullptr, m, Q, C});  // [m, C]; a partial sum under TP
    add_row_parallel(x_.data(), y_.data(), m * C);
    ops::rmsnorm_forward(cx, ops::RmsNorm<float>{xn_.data(), rstd_.data(), x_.data(), lw.mlp_norm, m, C, c.rms_norm_eps});
    ops::linear_rows(cx, ops::Linear<float>{gu_.data(), xn_.data(), lw.wgu, nullptr, m, C, 2 * I});  // [m, 2I]
    ops::swiglu_forward(cx, ops::SwiGlu<float>{h_.data(), gu_.data(), m, I});                       // [m, I]
    ops::linear_rows(cx, ops::Linear<float>{y_.data(), h_.data(), lw.wdown, nullptr, m, I, C});     // [m, C]; a partial sum under TP
    add_row_parallel(x_.data(), y_.data(), m * C);
  }
  for (Seq* s : sp) ++s->len;
  stage_output(x_.data(), m, logits);
}

int32_t choose_token(const float* logits, int64_t V, const GenerateOptions& opt, uint64_t step,
                     uint32_t id) {
  if (opt.greedy) {
    int64_t best = 0;  // strict > keeps the lowest index among ties
    for (int64_t v = 1; v < V; ++v)
      if (logits[v] > logits[best]) best = v;
    return int32_t(best);
  }
  // p_v ∝ exp((z_v - max z) / T), in double so that small temperatures stay finite and exact ties
  // stay ties.
  std::vector<double> p(static_cast<size_t>(V));
  const double mx = double(*std::max_element(logits, logits + V));
  for (int64_t v = 0; v < V; ++v) p[v] = std::exp((double(logits[v]) - mx) / opt.temperature);
  // Nucleus: most likely first (lowest index first among ties, so a tiny top_p is greedy), kept
  // until their mass reaches top_p of the total. With top_p = 1 every token stays and the order does
  // not matter: no sort.
  std::vector<int32_t> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  int64_t kept = V;
  double mass = 0;
  if (opt.top_p < 1.0) {
    // The nucleus is usually a few tokens of a large vocabulary: select the top k (O(V)) and sort
    // only those, growing k until they hold the mass. The order is total (ties by index), so the
    // result is that of sorting everything.
    const auto before = [&](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); };
    const double target = opt.top_p * std::accumulate(p.begin(), p.end(), 0.0);
    for (int64_t k = std::min<int64_t>(V, 64);; k = std::min(V, 8 * k)) {
      std::nth_element(order.begin(), order.begin() + (k - 1), order.end(), before);
      std::sort(order.begin(), order.begin() + k, before);
      mass = 0;
      for (kept = 0; kept < k;) {
        mass += p[order[kept++]];
        if (mass >= target) break;
      }
      if (mass >= target || k == V) break;
    }
  } else {
    for (double x : p) mass += x;
  }
  // One uniform draw with 53 random bits from (seed, step, id): the same token for this prompt
  // whatever else runs.
  Philox rng = make_rng(opt.seed, step, id, RngPurpose::Sample);
  const uint64_t hi = rng.next_u32() >> 5, lo = rng.next_u32() >> 6;  // 27 + 26 bits
  const double u = (double(hi) * 67108864.0 + double(lo)) / 9007199254740992.0 * mass;
  double cum = 0;
  for (int64_t k = 0; k < kept; ++k) {
    cum += p[order[k]];
    if (u < cum) return order[k];
  }
  return order[kept - 1];  // u within rounding of the total mass
}

std::vector<std::vector<int32_t>> generate(const LlamaConfig& c, const float* params,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const std::vector<uint32_t>& ids,
                                           const GenerateOptions& opt, const DecoderShard& shard,
                                           const ops::Context& ctx) {
  MP_CHECK(ids.size() == prompts.size(), "generate: ", prompts.size(), " prompts but ", ids.size(), " ids");
  MP_CHECK(opt.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0 (got ", opt.max_new_tokens, ")");
  MP_CHECK(opt.max_batch > 0, "generate: max_batch must be positive (got ", opt.max_batch, ")");
  if (!opt.greedy) {
    MP_CHECK(opt.temperature > 0 && std::isfinite(opt.temperature),
             "generate: temperature must be > 0 (got ", opt.temperature, "); use greedy decoding for temperature 0");
    MP_CHECK(opt.top_p > 0 && opt.top_p <= 1, "generate: top_p must be in (0, 1] (got ", opt.top_p, ")");
  }
  const int64_t n = int64_t(prompts.size()), V = c.vocab_size;
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(n));
  if (opt.max_new_tokens == 0) return out;

  KvCacheDecoder dec(c, params, shard, ctx);
  // Only the last pipeline stage has logits; it picks the tokens (every TP rank there the same ones,
  // from the same gathered logits) and the other stages learn them from it, so that every stage
  // feeds, finishes and batches the same sequences.
  const bool last = shard.stage.last;
  Comm* pp = shard.pp && shard.pp->size() > 1 ? shard.pp : nullptr;
  auto share = [&](std::vector<int32_t>& tokens) {
    if (pp) pp->broadcast(tokens.data(), tokens.size() * sizeof(int32_t), pp->size() - 1);
  };
  // An active sequence: prompt index and decoder handle. The last token of out[idx] is fed next.
  struct Active {
    int64_t idx, handle;
  };
  std::vector<Active> active;
  std::vector<float> logits;
  auto finished = [&](int64_t i) {
    const std::vector<int32_t>& o = out[size_t(i)];
    if (int64_t(o.size()) >= opt.max_new_tokens || (opt.eos_id >= 0 && o.back() == opt.eos_id)) return true;
    return std::find(opt.more_eos_ids.begin(), opt.more_eos_ids.end(), int64_t(o.back())) != opt.more_eos_ids.end();
  };
  int64_t next = 0;  // the first prompt not started yet
  while (next < n || !active.empty()) {
    // Continuous batching: waiting prompts fill free places, each prefilled on its own; its first
    // new token comes from the prefill's logits.
    std::vector<Active> started;
    std::vector<int32_t> tokens;
    if (last) logits.resize(size_t(V));
    while (next < n && int64_t(active.size() + started.size()) < opt.max_batch) {
      const int64_t i = next++;
      started.push_back({i, dec.add(prompts[size_t(i)], opt.max_new_tokens, last ? logits.data() : nullptr)});
      tokens.push_back(last ? choose_token(logits.data(), V, opt, 0, ids[size_t(i)]) : 0);
    }
    share(tokens);
    for (size_t k = 0; k < started.size(); ++k) {
      out[size_t(started[k].idx)].push_back(tokens[k]);
      if (finished(started[k].idx))
        dec.remove(started[k].handle);
      else
        active.push_back(started[k]);
    }
    if (active.empty()) continue;
    std::vector<int64_t> handles;
    tokens.clear();
    for (const Active& a : active) handles.push_back(a.handle), tokens.push_back(out[size_t(a.idx)].back());
    if (last) logits.resize(active.size() * size_t(V));
    dec.step(handles, tokens, last ? logits.data() : nullptr);
    if (last)
      for (size_t k = 0; k < active.size(); ++k)
        tokens[k] = choose_token(logits.data() + k * size_t(V), V, opt, uint64_t(out[size_t(active[k].idx)].size()),
                                 ids[size_t(active[k].idx)]);
    share(tokens);
    std::vector<Active> still;
    for (size_t k = 0; k < active.size(); ++k) {
      out[size_t(active[k].idx)].push_back(tokens[k]);
      if (finished(active[k].idx))
        dec.remove(active[k].handle);
      else
        still.push_back(active[k]);
    }
    active.swap(still);
  }
  return out;
}

}  // namespace metapo
