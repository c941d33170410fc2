#include "metapo/model/generate.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "metapo/core/error.h"
#include "metapo/core/rng.h"
#include "metapo/kernels/attention.h"
#include "metapo/kernels/embedding.h"
#include "metapo/kernels/gemm.h"
#include "metapo/kernels/rmsnorm.h"
#include "metapo/kernels/swiglu.h"
#include "metapo/kernels/vec_math.h"
#include "metapo/model/rope_freq.h"
#include "metapo/model/tp_layout.h"

namespace metapo {

namespace {

// Y[m, out] = X[m, in] W[out, in]^T (+ b[out]) for the decode step. Tiles run over W's rows, whose
// count is fixed by the layer, and each output element is one dot product summed in a fixed order
// (kL interleaved partial sums, then a fixed tree), so row i's result is bit-identical whatever m is
// and whichever rows share the call. A BLAS GEMM is not: it picks its kernel by the shape. Every
// thread owns whole tiles, so the thread count does not matter either.
void linear_rows(float* Y, const float* X, const float* W, const float* b, int64_t m, int64_t in,
                 int64_t out) {
  constexpr int64_t kR = 4;   // W rows per tile: each X load feeds kR multiply-adds
  constexpr int64_t kL = 16;  // partial sums per output: independent chains for the FMA pipes
  static_assert(kR == 4, "the tile loop below names its four W rows");
  const int64_t n_tiles = (out + kR - 1) / kR;
  // A decode step of a small model is many tiny products: threads only pay off above ~0.25M MACs
  // (either way each output is computed by one thread in the same order).
#pragma omp parallel for schedule(static) if (m * in * out > (int64_t(1) << 18))
  for (int64_t tile = 0; tile < n_tiles; ++tile) {
    const int64_t o0 = tile * kR;
    // The last tile may be short: its missing rows repeat the last row and are not stored.
    const float* w0 = W + std::min(o0 + 0, out - 1) * in;
    const float* w1 = W + std::min(o0 + 1, out - 1) * in;
    const float* w2 = W + std::min(o0 + 2, out - 1) * in;
    const float* w3 = W + std::min(o0 + 3, out - 1) * in;
    for (int64_t i = 0; i < m; ++i) {
      const float* x = X + i * in;
      float acc[kR][kL] = {};
      int64_t k = 0;
      for (; k + kL <= in; k += kL) {
#pragma omp simd
        for (int64_t j = 0; j < kL; ++j) {
          const float xv = x[k + j];
          acc[0][j] += xv * w0[k + j];
          acc[1][j] += xv * w1[k + j];
          acc[2][j] += xv * w2[k + j];
          acc[3][j] += xv * w3[k + j];
        }
      }
      const float* w[kR] = {w0, w1, w2, w3};
      for (int64_t r = 0; r < kR && o0 + r < out; ++r) {
        float tail = 0;
        for (int64_t kk = k; kk < in; ++kk) tail += x[kk] * w[r][kk];
        for (int64_t half = kL / 2; half > 0; half /= 2)
          for (int64_t j = 0; j < half; ++j) acc[r][j] += acc[r][j + half];
        Y[i * out + o0 + r] = acc[r][0] + tail + (b ? b[o0 + r] : 0.0f);
      }
    }
  }
}

// <a, b> over n elements with 16 interleaved partial sums folded in a fixed tree: vectorizes
// without -ffast-math, and the result depends only on a and b.
inline float dot_fixed(const float* a, const float* b, int64_t n) {
  constexpr int64_t kL = 16;
  float acc[kL] = {};
  int64_t k = 0;
  for (; k + kL <= n; k += kL) {
#pragma omp simd
    for (int64_t j = 0; j < kL; ++j) acc[j] += a[k + j] * b[k + j];
  }
  float tail = 0;
  for (; k < n; ++k) tail += a[k] * b[k];
  for (int64_t half = kL / 2; half > 0; half /= 2)
    for (int64_t j = 0; j < half; ++j) acc[j] += acc[j + half];
  return acc[0] + tail;
}

void add_rows(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

template <typename V>
void resize(V& v, int64_t n) {
  v.resize(size_t(n));  // keeps capacity: no reallocation once the batch shape settles
}

}  // namespace

KvCacheDecoder::KvCacheDecoder(const LlamaConfig& c, const float* params, const DecoderShard& shard)
    : cfg_(c),
      sh_(shard),
      lc_(shard.tp ? tp_local_config(c, shard.tp->size()) : c),
      vocab_(shard.tp ? VocabShard(c.vocab_size, shard.tp->size(), shard.tp->rank()) : VocabShard()),
      lay_(lc_, shard.stage),
      w_(make_view(lay_, params)),
      inv_freq_(rope_inv_freq(c)) {
  const int P = sh_.pp ? sh_.pp->size() : 1, s = sh_.pp ? sh_.pp->rank() : 0;
  MP_CHECK(sh_.stage.first == (s == 0) && sh_.stage.last == (s == P - 1), "KvCacheDecoder: the stage (layers [",
           sh_.stage.layer_begin, ", ", sh_.stage.layer_end, ")) does not match rank ", s, " of ", P,
           " pipeline stages");
  if (P == 1) sh_.pp = nullptr;  // one stage: nothing to send
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
  std::vector<float>().swap(s.kv);
}

void KvCacheDecoder::ensure_rope(int64_t positions) {
  // Past max_position_embeddings RoPE simply continues (as transformers does); a table rebuilt larger
  // has the same values at the old positions, so when it grows does not change any result.
  if (positions > rope_.max_pos)
    rope_.build(inv_freq_, std::max<int64_t>({positions, 2 * rope_.max_pos, 64}));
}

void KvCacheDecoder::add_row_parallel(float* x, const float* partial, int64_t count) {
  if (!sh_.tp) {
    add_rows(x, partial, count);
    return;
  }
  // An all-gather and the sum here, in rank order, rather than an all-reduce: MPI picks a reduction
  // algorithm, and with it the order in which ranks are combined, by the message size, which grows
  // with the number of active sequences. A row's sum would then depend on its batch once tp > 2,
  // and batch invariance (above) would be lost. The gather moves tp times the bytes; at decode sizes
  // ([active sequences, hidden]) that is small.
  const size_t n = size_t(count), P = size_t(sh_.tp->size());
  gather_.resize(P * n);
  std::memcpy(gather_.data() + size_t(sh_.tp->rank()) * n, partial, sizeof(float) * n);
  sh_.tp->allgather(gather_.data(), n);
  float* sum = gather_.data();  // rank 0's partial, then + rank 1's, ...: one order for every element
  for (size_t r = 1; r < P; ++r) add_rows(sum, gather_.data() + r * n, count);
  add_rows(x, sum, count);
}

void KvCacheDecoder::logits_rows(const float* x, int64_t m, float* logits) {
  const int64_t C = cfg_.hidden_size, V = cfg_.vocab_size;
  resize(xn_, m * C), resize(rstd_, m);
  cpu::rmsnorm_forward(xn_.data(), rstd_.data(), x, w_.final_norm, m, C, cfg_.rms_norm_eps);
  if (!sh_.tp) {
    linear_rows(logits, xn_.data(), w_.lm_head, nullptr, m, C, V);  // [m, V]
    return;
  }
  // Vocab-parallel head: this rank's real rows give its logits [m, real] (each one the dot product
  // the whole model computes, so bit for bit the same), gathered over TP into [m, V] on every rank.
  const int P = sh_.tp->size();
  const size_t block = size_t(m * vocab_.rows);
  gather_.resize(size_t(P) * block);
  linear_rows(gather_.data() + size_t(sh_.tp->rank()) * block, xn_.data(), w_.lm_head, nullptr, m, C,
              vocab_.real);
  sh_.tp->allgather(gather_.data(), block);
  for (int r = 0; r < P; ++r) {
    const VocabShard vs(V, P, r);  // block r: [m, vs.real] logits of tokens [vs.begin, vs.end())
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(logits + i * V + vs.begin, gather_.data() + size_t(r) * block + size_t(i * vs.real),
                  sizeof(float) * size_t(vs.real));
  }
}

void KvCacheDecoder::stage_input(const int32_t* tokens, int64_t m) {
  const int64_t C = cfg_.hidden_size;
  resize(x_, m * C);
  if (!sh_.stage.first)
    sh_.pp->recv(x_.data(), size_t(m * C), sh_.pp->rank() - 1);
  else if (sh_.tp)  // the owner of each token writes its row: exact, one nonzero term per element
    vocab_parallel_embedding_forward(x_.data(), w_.embed, tokens, m, C, vocab_, *sh_.tp);
  else
    cpu::embedding_forward(x_.data(), w_.embed, tokens, m, C);
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
  s.kv.assign(size_t(2 * L * s.cap * KV), 0.0f);
  ensure_rope(s.cap);

  // The prompt's own forward, as the training forward does it over one packed sequence. Its GEMMs
  // see only this prompt's rows, so their results do not depend on any other prompt.
  pos_.resize(size_t(n));
  std::iota(pos_.begin(), pos_.end(), 0);
  const int64_t cu[2] = {0, n};
  resize(xn_, n * C), resize(rstd_, n), resize(qkv_, n * QKV), resize(att_, n * Q);
  resize(lse_, Hq * n), resize(gu_, n * 2 * I), resize(h_, n * I);
  if (sh_.tp) resize(y_, n * C);
  stage_input(prompt.data(), n);  // x: the residual stream [n, C]
  for (int64_t l = 0; l < L; ++l) {
    const LayerView<const float>& lw = w_.layers[size_t(l)];
    cpu::rmsnorm_forward(xn_.data(), rstd_.data(), x_.data(), lw.attn_norm, n, C, c.rms_norm_eps);
    cpu::linear_forward(qkv_.data(), xn_.data(), lw.wqkv, lw.bqkv, n, C, QKV);  // [n, QKV]
    cpu::rope_apply(qkv_.data(), n, Hq, D, QKV, pos_.data(), rope_, false);       // q
    cpu::rope_apply(qkv_.data() + Q, n, Hkv, D, QKV, pos_.data(), rope_, false);  // k
    for (int64_t t = 0; t < n; ++t) {  // the cache keeps k after RoPE, and v
      std::memcpy(k_row(s, l, t), qkv_.data() + t * QKV + Q, sizeof(float) * KV);
      std::memcpy(v_row(s, l, t), qkv_.data() + t * QKV + Q + KV, sizeof(float) * KV);
    }
    cpu::AttentionParams<float> ap{qkv_.data(), qkv_.data() + Q, qkv_.data() + Q + KV, QKV,
                                   att_.data(), Q, lse_.data(), cu, 1, n, Hq, Hkv, D,
                                   1.0f / std::sqrt(float(D))};
    cpu::attention_forward(ap);  // [n, Q]
    // x += att Wo^T; then the MLP block: x += swiglu(norm(x) Wgu^T) Wdown^T. Under TP both products
    // are this rank's partial sums (row-parallel), combined by add_row_parallel.
    if (sh_.tp) {
      cpu::gemm<float>(false, true, n, C, Q, 1.0f, att_.data(), Q, lw.wo, Q, 0.0f, y_.data(), C);
      add_row_parallel(x_.data(), y_.data(), n * C);
    } else {
      cpu::gemm<float>(false, true, n, C, Q, 1.0f, att_.data(), Q, lw.wo, Q, 1.0f, x_.data(), C);
    }
    cpu::rmsnorm_forward(xn_.data(), rstd_.data(), x_.data(), lw.mlp_norm, n, C, c.rms_norm_eps);
    cpu::linear_forward(gu_.data(), xn_.data(), lw.wgu, (const float*)nullptr, n, C, 2 * I);  // [n, 2I]
    cpu::swiglu_forward(h_.data(), gu_.data(), n, I);                                        // [n, I]
    if (sh_.tp) {
      cpu::gemm<float>(false, true, n, C, I, 1.0f, h_.data(), I, lw.wdown, I, 0.0f, y_.data(), C);
      add_row_parallel(x_.data(), y_.data(), n * C);
    } else {
      cpu::gemm<float>(false, true, n, C, I, 1.0f, h_.data(), I, lw.wdown, I, 1.0f, x_.data(), C);
    }
  }
  if (!sh_.stage.last) {  // the next stage needs every row for its own layers' caches
    stage_output(x_.data(), n, nullptr);
    return h;
  }
  // Only the last position's logits are needed: they predict the first new token.
  std::vector<float> last(x_.begin() + (n - 1) * C, x_.begin() + n * C);
  stage_output(last.data(), 1, logits);
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
  int64_t max_len = 0;
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
    max_len = std::max(max_len, sp[i]->len + 1);
  }

  resize(xn_, m * C), resize(rstd_, m), resize(qkv_, m * QKV);
  resize(att_, m * Q), resize(y_, m * C), resize(gu_, m * 2 * I), resize(h_, m * I);
  stage_input(tokens.data(), m);  // x: one row per sequence [m, C]
  const int64_t hpg = Hq / Hkv;
  const float scale = 1.0f / std::sqrt(float(D));
  for (int64_t l = 0; l < L; ++l) {
    const LayerView<const float>& lw = w_.layers[size_t(l)];
    cpu::rmsnorm_forward(xn_.data(), rstd_.data(), x_.data(), lw.attn_norm, m, C, c.rms_norm_eps);
    linear_rows(qkv_.data(), xn_.data(), lw.wqkv, lw.bqkv, m, C, QKV);  // [m, QKV]
    cpu::rope_apply(qkv_.data(), m, Hq, D, QKV, pos_.data(), rope_, false);       // q
    cpu::rope_apply(qkv_.data() + Q, m, Hkv, D, QKV, pos_.data(), rope_, false);  // k
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(k_row(*sp[i], l, pos_[i]), qkv_.data() + i * QKV + Q, sizeof(float) * KV);
      std::memcpy(v_row(*sp[i], l, pos_[i]), qkv_.data() + i * QKV + Q + KV, sizeof(float) * KV);
    }

    // Attention of each new query over its own sequence's cached keys 0..pos (itself included).
    // Grouped-query: head h reads KV head h / (Hq / Hkv) (local heads onto local KV heads under TP).
    // One (row, head) per task, fixed order.
#pragma omp parallel if (m * Hq * max_len * D > (int64_t(1) << 18))
    {
      std::vector<float> p(static_cast<size_t>(max_len));  // [keys] scores, then probabilities
#pragma omp for collapse(2) schedule(static)
      for (int64_t i = 0; i < m; ++i)
        for (int64_t hd = 0; hd < Hq; ++hd) {
          Seq& s = *sp[i];
          const int64_t nk = pos_[i] + 1, g = hd / hpg;
          const float* q = qkv_.data() + i * QKV + hd * D;
          float mx = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < nk; ++j) {
            p[j] = dot_fixed(q, k_row(s, l, j) + g * D, D) * scale;
            mx = std::max(mx, p[j]);
          }
#pragma omp simd
          for (int64_t j = 0; j < nk; ++j) p[j] = cpu::vexp(p[j] - mx);
          float sum = 0;
          for (int64_t j = 0; j < nk; ++j) sum += p[j];
          float* o = att_.data() + i * Q + hd * D;  // [D]
          std::fill(o, o + D, 0.0f);
          for (int64_t j = 0; j < nk; ++j) {
            const float* v = v_row(s, l, j) + g * D;
            for (int64_t e = 0; e < D; ++e) o[e] += p[j] * v[e];
          }
          const float inv = 1.0f / sum;
          for (int64_t e = 0; e < D; ++e) o[e] *= inv;
        }
    }
    linear_rows(y_.data(), att_.data(), lw.wo, nullptr, m, Q, C);  // [m, C]; a partial sum under TP
    add_row_parallel(x_.data(), y_.data(), m * C);
    cpu::rmsnorm_forward(xn_.data(), rstd_.data(), x_.data(), lw.mlp_norm, m, C, c.rms_norm_eps);
    linear_rows(gu_.data(), xn_.data(), lw.wgu, nullptr, m, C, 2 * I);  // [m, 2I]
    cpu::swiglu_forward(h_.data(), gu_.data(), m, I);                    // [m, I]
    linear_rows(y_.data(), h_.data(), lw.wdown, nullptr, m, I, C);      // [m, C]; a partial sum under TP
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
                                           const GenerateOptions& opt, const DecoderShard& shard) {
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

  KvCacheDecoder dec(c, params, shard);
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
    return int64_t(o.size()) >= opt.max_new_tokens || (opt.eos_id >= 0 && o.back() == opt.eos_id);
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
