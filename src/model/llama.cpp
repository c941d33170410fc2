#include "metapo/model/llama.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <type_traits>

#include "metapo/core/error.h"
#include "metapo/model/rope_freq.h"
#include "metapo/model/tp_layout.h"

namespace metapo {

template <typename E>
static void resize(ops::DeviceArray<E>& v, int64_t n) {
  v.resize_for_overwrite(size_t(n));  // keeps capacity across steps: no reallocation once shapes settle
}

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::None;
  if (name == "selective") return Recompute::Selective;
  MP_CHECK(name == "full", "--recompute ", name, ": unknown (none, selective, full)");
  return Recompute::Full;
}

const char* recompute_name(Recompute r) {
  return r == Recompute::None ? "none" : r == Recompute::Selective ? "selective" : "full";
}

template <typename T>
LlamaModel<T>::LlamaModel(const LlamaConfig& c, Comm* tp, const PipeStage& stage, const ops::Context& ctx)
    : cfg_(c),
      tp_(tp),
      lc_(tp ? tp_local_config(c, tp->size()) : c),
      shard_(tp ? VocabShard(c.vocab_size, tp->size(), tp->rank()) : VocabShard()),
      lay_(lc_, stage),
      inv_freq_(rope_inv_freq(c)),
      prec_(std::is_same_v<T, double> ? Precision::fp64() : Precision::fp32()),
      wparams_(ctx.device, Mem::Params),
      ctx_(ctx),
      arena_(ctx.device) {
  MP_CHECK(!tp || ctx.device == Device::CPU, "tensor parallelism on ", device_name(ctx.device),
           ": not yet (the TP collectives run on host memory)");
  MP_CHECK(stage.whole() || ctx.device == Device::CPU, "pipeline stages on ", device_name(ctx.device),
           ": not yet (the pipeline schedule moves host buffers)");
  if (ctx.device != Device::CPU) prof_.wait = [this] { ops::synchronize(ctx_); };
  acts_.resize(lay_.layers.size());
  for (LayerActs& a : acts_) tag(a);
  for (Acts* b : {&x_final_, &hN_, &rstdN_, &row_lse_, &probs_}) *b = Acts(ctx_.device);
  tag(scratch_);
  tag(di_);
  seg_dev_ = ops::DeviceArray<int64_t>(ctx_.device, Mem::Workspace);
  parked_.resize(1);
  tag(parked_[0]);
}

template <typename T>
void LlamaModel<T>::set_precision(const Precision& p) {
  if constexpr (std::is_same_v<T, double>) {
    MP_CHECK(p == Precision::fp64(), "LlamaModel<double>: precision ", precision_name(p), " (fp64 only)");
  } else {
    auto ok = [](DType t) { return t == DType::F32 || t == DType::BF16; };
    MP_CHECK(ok(p.params) && ok(p.activations) && p.grads == DType::F32, "LlamaModel: precision ", precision_name(p),
             " (parameters and activations fp32 or bf16, gradients fp32)");
  }
  prec_ = p;
  // With parameters and activations stored in bf16, a device's GEMMs may take their inputs as bf16
  // (exact for those; the gradients they also read are rounded, as a bf16 run stores them).
  ctx_.gemm_inputs = p.params == DType::BF16 && p.activations == DType::BF16 ? DType::BF16 : DType::F32;
}

template <typename T>
const T* LlamaModel<T>::stored_params(const ops::Context& cx, const T* params) {
  if constexpr (std::is_same_v<T, float>) {
    if (prec_.params == DType::BF16) {
      resize(wparams_, int64_t(lay_.total()));
      ops::round_bf16(cx, wparams_.data(), params, int64_t(lay_.total()));
      rounded_from_ = params;
      return wparams_.data();
    }
  }
  return params;
}

template <typename T>
void LlamaModel<T>::store(T* x, int64_t n) {
  if constexpr (std::is_same_v<T, float>)
    if (prec_.activations == DType::BF16) ops::round_bf16(ctx_, x, x, n);
}

template <typename T>
const ops::Context& LlamaModel<T>::ctx() {
  ctx_.arena = &arena_, ctx_.profile = &prof_;
  arena_.reset();
  return ctx_;
}

// A slot's saved state, empty, its buffers on the context's device and counted as activations.
template <typename T>
void LlamaModel<T>::tag(Saved& s) {
  s.acts.resize(lay_.layers.size());
  for (LayerActs& a : s.acts) tag(a);
  for (Acts* b : {&s.x_final, &s.hN, &s.rstdN, &s.row_lse, &s.probs}) *b = Acts(ctx_.device);
  tag(s.di);
}

template <typename T>
void LlamaModel<T>::tag(LayerActs& a) {
  for (Acts* b : {&a.x_in, &a.xn1, &a.rstd1, &a.qkv, &a.att, &a.lse, &a.x_mid, &a.xn2, &a.rstd2, &a.gu, &a.h})
    *b = Acts(ctx_.device);
}

template <typename T>
void LlamaModel<T>::tag(DeviceIndex& d) {
  for (ops::DeviceArray<int32_t>* a : {&d.tokens, &d.pos, &d.rows, &d.row_targets})
    *a = ops::DeviceArray<int32_t>(ctx_.device, Mem::Workspace);
  d.cu_seqlens = ops::DeviceArray<int64_t>(ctx_.device, Mem::Workspace);
}

template <typename T>
void LlamaModel<T>::index_on_device(const PackedBatch& b) {
  DeviceIndex& d = di_;
  if (ctx_.device == Device::CPU) {  // the ops read the host vectors
    d.tokens_p = b.tokens.data(), d.pos_p = idx_.pos.data(), d.rows_p = idx_.rows.data();
    d.row_targets_p = idx_.row_targets.data(), d.cu_seqlens_p = b.cu_seqlens.data();
    return;
  }
  auto up = [&](auto& dst, const auto& src) {
    dst.resize_for_overwrite(src.size());
    ops::to_device(ctx_, dst.data(), src.data(), src.size() * sizeof(src[0]));
    return dst.data();
  };
  d.tokens_p = up(d.tokens, b.tokens), d.pos_p = up(d.pos, idx_.pos), d.rows_p = up(d.rows, idx_.rows);
  d.row_targets_p = up(d.row_targets, idx_.row_targets), d.cu_seqlens_p = up(d.cu_seqlens, b.cu_seqlens);
}

template <typename T>
void LlamaModel<T>::swap_saved(Saved& s) {
  std::swap(batch_, s.batch), std::swap(idx_, s.idx), std::swap(di_, s.di);
  std::swap(acts_, s.acts), std::swap(x_final_, s.x_final);
  std::swap(hN_, s.hN), std::swap(rstdN_, s.rstdN), std::swap(row_lse_, s.row_lse), std::swap(probs_, s.probs);
  std::swap(have_forward_, s.have_forward);
}

template <typename T>
void LlamaModel<T>::set_slots(int n) {
  MP_CHECK(n >= 1, "LlamaModel::set_slots: ", n, " slots");
  use_slot(0);
  const size_t old = parked_.size();
  parked_.resize(size_t(n));
  for (size_t k = old; k < parked_.size(); ++k) tag(parked_[k]);
}

template <typename T>
void LlamaModel<T>::use_slot(int k) {
  MP_CHECK(k >= 0 && size_t(k) < parked_.size(), "LlamaModel::use_slot: slot ", k, " of ", parked_.size());
  if (k == slot_) return;
  swap_saved(parked_[size_t(slot_)]);  // park the current slot (its parked entry was the placeholder)
  swap_saved(parked_[size_t(k)]);      // and bring slot k in
  slot_ = k;
}

template <typename T>
typename LlamaModel<T>::LayerRefs LlamaModel<T>::refs(LayerActs& a) {
  LayerActs& s = scratch_;
  switch (recompute_) {
    case Recompute::None:
      return {&a.xn1, &a.rstd1, &a.qkv, &a.att, &a.lse, &a.x_mid, &a.xn2, &a.rstd2, &a.gu, &a.h};
    case Recompute::Selective:
      return {&s.xn1, &a.rstd1, &a.qkv, &a.att, &a.lse, &a.x_mid, &s.xn2, &a.rstd2, &a.gu, &s.h};
    default:
      return {&s.xn1, &s.rstd1, &s.qkv, &s.att, &s.lse, &s.x_mid, &s.xn2, &s.rstd2, &s.gu, &s.h};
  }
}

template <typename T>
void LlamaModel<T>::layer_forward(const LayerView<const T>& lw, const T* x_in, const LayerRefs& r, T* x_out,
                                  bool profile) {
  const ops::Context& cx = ctx_;
  const LlamaConfig& c = cfg_;
  const PackedBatch& b = batch_;
  const int64_t n = b.n_tokens(), C = c.hidden_size, I = lc_.intermediate_size;
  const int64_t Hq = lc_.num_attention_heads, Hkv = lc_.num_key_value_heads, D = c.head_dim;
  const int64_t Q = lc_.q_dim(), QKV = lc_.qkv_dim();
  auto run = [&](const char* name, auto&& f) {
    if (profile)
      prof_.run(name, f);
    else
      f();
  };
  // Row-parallel layers (o_proj, down_proj) accumulate onto the residual; under TP only rank 0 carries
  // it into the all-reduce, so it is counted once.
  const bool own_residual = !tp_ || tp_->rank() == 0;
  auto copy_residual = [&](T* dst, const T* src, int64_t count) {
    if (own_residual)
      ops::copy(cx, dst, src, count);
    else
      ops::fill(cx, dst, T(0), count);
  };
  resize(*r.xn1, n * C), resize(*r.rstd1, n), resize(*r.qkv, n * QKV), resize(*r.att, n * Q);
  resize(*r.lse, Hq * n), resize(*r.x_mid, n * C), resize(*r.xn2, n * C), resize(*r.rstd2, n);
  resize(*r.gu, n * 2 * I), resize(*r.h, n * I);
  T* qkv = r.qkv->data();

  // Attention block: xn1 = norm(x_in); qkv = xn1 Wqkv^T (+b); rope(q, k); att = attn(q, k, v)
  // Every activation stored is rounded to the storage precision (store: nothing in fp32).
  run("rmsnorm", [&] { ops::rmsnorm_forward(cx, ops::RmsNorm<T>{r.xn1->data(), r.rstd1->data(), x_in, lw.attn_norm, n, C, c.rms_norm_eps}); store(r.xn1->data(), n * C); });
  run("qkv_proj", [&] { ops::linear_forward(cx, ops::Linear<T>{qkv, r.xn1->data(), lw.wqkv, lw.bqkv, n, C, QKV}); });  // [n, QKV]
  run("rope", [&] { ops::rope(cx, ops::Rope<T>{qkv, n, Hq, D, QKV, di_.pos_p, &rope_, false}); });  // q
  run("rope", [&] { ops::rope(cx, ops::Rope<T>{qkv + Q, n, Hkv, D, QKV, di_.pos_p, &rope_, false}); store(qkv, n * QKV); });  // k
  const ops::Attention<T> ap{qkv, qkv + Q, qkv + Q + lc_.kv_dim(), QKV, r.att->data(), Q, r.lse->data(),
                             di_.cu_seqlens_p, b.n_seqs(), n, Hq, Hkv, D, T(1) / std::sqrt(T(D)), idx_.max_len};
  run("attention", [&] { ops::attention_forward(cx, ap); store(r.att->data(), n * Q); });  // [n, Q]
  // x_mid = x_in + att Wo^T (the GEMM accumulates onto the copied residual). Row-parallel under TP:
  // each rank's heads give a partial product; the residual rides on rank 0's partial only, so one
  // all-reduce of [n, C] yields x_in + Σ_r att_r Wo_r^T on every rank.
  copy_residual(r.x_mid->data(), x_in, n * C);
  run("o_proj", [&] { ops::gemm(cx, ops::Gemm<T>{false, true, n, C, Q, T(1), r.att->data(), Q, lw.wo, Q, T(1), r.x_mid->data(), C}); });
  if (tp_) run("tp_allreduce", [&] { tp_->allreduce_sum(r.x_mid->data(), size_t(n * C)); });
  store(r.x_mid->data(), n * C);

  // MLP block: xn2 = norm(x_mid); gu = xn2 Wgu^T; h = silu(g) u; x_out = x_mid + h Wdown^T
  run("rmsnorm", [&] { ops::rmsnorm_forward(cx, ops::RmsNorm<T>{r.xn2->data(), r.rstd2->data(), r.x_mid->data(), lw.mlp_norm, n, C, c.rms_norm_eps}); store(r.xn2->data(), n * C); });
  run("gate_up_proj", [&] { ops::linear_forward(cx, ops::Linear<T>{r.gu->data(), r.xn2->data(), lw.wgu, nullptr, n, C, 2 * I}); store(r.gu->data(), n * 2 * I); });  // [n, 2I]
  run("swiglu", [&] { ops::swiglu_forward(cx, ops::SwiGlu<T>{r.h->data(), r.gu->data(), n, I}); store(r.h->data(), n * I); });  // [n, I]
  if (!x_out) return;
  copy_residual(x_out, r.x_mid->data(), n * C);  // row-parallel like o_proj
  run("down_proj", [&] { ops::gemm(cx, ops::Gemm<T>{false, true, n, C, I, T(1), r.h->data(), I, lw.wdown, I, T(1), x_out, C}); });
  if (tp_) run("tp_allreduce", [&] { tp_->allreduce_sum(x_out, size_t(n * C)); });
  store(x_out, n * C);
}

template <typename T>
void LlamaModel<T>::forward(const T* params, const PackedBatch& b, const int32_t* targets, T* logp) {
  MP_CHECK(lay_.stage.whole(), "LlamaModel::forward on a pipeline stage (use forward_stage)");
  forward_stage(params, b, targets, nullptr, logp);
}

template <typename T>
void LlamaModel<T>::forward_stage(const T* params, const PackedBatch& b, const int32_t* targets, const T* x_in,
                                  T* out) {
  const ops::Context& cx = ctx();
  const LlamaConfig& c = cfg_;
  const PipeStage& st = lay_.stage;
  // The vocabulary extent here is the whole model's; the layers use this rank's (layer_forward).
  const int64_t n = b.n_tokens(), C = c.hidden_size, V = c.vocab_size;
  const ModelView<const T> w = make_view(lay_, stored_params(cx, params));

  // The micro-batch's index data (positions; on the last stage the rows that have a target), its
  // token ids and lengths checked, once, here.
  index_batch(b, st.first, st.last ? targets : nullptr, V, idx_);
  MP_CHECK(c.sliding_window == 0 || idx_.max_len <= c.sliding_window, "sequence of ", idx_.max_len,
           " tokens is longer than the model's sliding_window (", c.sliding_window,
           "); sliding-window attention is not implemented");
  if (idx_.max_len > rope_.max_pos) rope_.build(inv_freq_, std::max<int64_t>(idx_.max_len, 64));
  batch_ = b;
  index_on_device(batch_);

  // x = embed(tokens)                                                   [n, C]
  Acts& x0 = acts_.empty() ? x_final_ : acts_[0].x_in;
  resize(x0, n * C);
  if (!st.first)  // the previous stage's output (already in the storage precision)
    ops::copy(cx, x0.data(), x_in, n * C);
  else if (tp_)  // each rank looks up the tokens it owns, one all-reduce of [n, C] (exact: one term each)
    prof_.run("embedding", [&] { vocab_parallel_embedding_forward(cx, x0.data(), w.embed, di_.tokens_p, n, C, shard_, *tp_); });
  else
    prof_.run("embedding", [&] { ops::embedding_forward(cx, ops::Embedding<T>{x0.data(), w.embed, di_.tokens_p, n, C}); });
  if (st.first) store(x0.data(), n * C);  // exact already when the parameters are bf16 too

  for (size_t l = 0; l < acts_.size(); ++l) {
    Acts& x_out = l + 1 < acts_.size() ? acts_[l + 1].x_in : x_final_;  // the next layer's input
    resize(x_out, n * C);
    layer_forward(w.layers[l], acts_[l].x_in.data(), refs(acts_[l]), x_out.data(), true);
  }

  if (!st.last) {
    ops::copy(cx, out, x_final_.data(), n * C);
    have_forward_ = true;
    return;
  }
  T* logp = out;
  // Final norm and the LM head, only on rows that have a target.
  resize(hN_, n * C), resize(rstdN_, n);
  prof_.run("rmsnorm", [&] { ops::rmsnorm_forward(cx, ops::RmsNorm<T>{hN_.data(), rstdN_.data(), x_final_.data(), w.final_norm, n, C, c.rms_norm_eps}); store(hN_.data(), n * C); });
  const int64_t nr = int64_t(idx_.rows.size());
  // The arena's pieces: the row log-probs; under TP the vocab-parallel partials (row max, Σ exp,
  // target logit, then the global max and the two sums in double).
  const size_t e = sizeof(T), unr = size_t(nr);
  const size_t part = tp_ ? e * unr : 0;
  cx.arena->reserve({e * unr, part, part, part, tp_ ? 8 * unr : 0, tp_ ? 16 * unr : 0});
  T* row_logp = cx.arena->alloc<T>(unr);
  resize(row_lse_, nr);
  const int64_t Vl = tp_ ? shard_.real : V;  // logits this rank computes
  const bool cache = size_t(nr) * size_t(Vl) * sizeof(T) <= cache_budget_;
  resize(probs_, cache ? nr * Vl : 0);
  if (tp_) {
    VocabParallelLogprobParams<T> vp{hN_.data(), w.lm_head, C, shard_, di_.rows_p, di_.row_targets_p, nr};
    prof_.run("lm_head_logprob", [&] { vocab_parallel_logprob_forward(cx, vp, *tp_, row_logp, row_lse_.data(), cache ? probs_.data() : nullptr); });
  } else {
    const ops::Logprob<T> lp{hN_.data(), w.lm_head, C, V, di_.rows_p, di_.row_targets_p, nr};
    prof_.run("lm_head_logprob", [&] { ops::logprob_forward(cx, lp, row_logp, row_lse_.data(), cache ? probs_.data() : nullptr); });
  }
  ops::scatter(cx, logp, n, row_logp, di_.rows_p, nr);  // 0 on rows without a target
  have_forward_ = true;
}

template <typename T>
void LlamaModel<T>::backward(const T* params, const T* dlogp, T* grads, bool accumulate, const T* ghat,
                             std::vector<double>* seq_dots) {
  MP_CHECK(lay_.stage.whole(), "LlamaModel::backward on a pipeline stage (use backward_stage)");
  backward_stage(params, dlogp, grads, accumulate, ghat, seq_dots, nullptr);
}

template <typename T>
void LlamaModel<T>::backward_stage(const T* params, const T* dout, T* grads, bool accumulate, const T* ghat,
                                   std::vector<double>* seq_dots, T* dx_in) {
  const PipeStage& st = lay_.stage;
  MP_CHECK(have_forward_, "LlamaModel::backward called without a forward (or twice for one forward)");
  have_forward_ = false;  // the probability cache is consumed below
  const ops::Context& cx = ctx();
  const LlamaConfig& c = cfg_;
  const PackedBatch& b = batch_;
  const int64_t n = b.n_tokens(), C = c.hidden_size, V = lc_.vocab_size, I = lc_.intermediate_size;
  const int64_t Hq = lc_.num_attention_heads, Hkv = lc_.num_key_value_heads, D = c.head_dim;
  const int64_t Q = lc_.q_dim(), KV = lc_.kv_dim(), QKV = lc_.qkv_dim();
  // The parameters the forward used: with bf16 parameters, their rounded working copy (rounded again
  // when another buffer was rounded since, e.g. by a forward-only pass of other parameters).
  const ModelView<const T> w =
      make_view(lay_, prec_.params == DType::BF16 && params == rounded_from_ ? wparams_.data() : stored_params(cx, params));
  const ModelView<T> g = make_view(lay_, grads);
  // Ghost dot products (DESIGN §6): every parameter gradient is a sum of per-row terms, and a row's
  // terms belong to its own sequence (attention never crosses sequences), so per-row dots with ĝ,
  // summed per sequence, give ⟨ĝ, ∇θ of that sequence's part of the objective⟩.
  //
  // Under TP the row dots of sharded tensors are partial sums over the group, summed with ONE
  // all-reduce of rdot at the end; replicated tensors (norm weights) are added by TP rank 0 only, so
  // they count once.
  const bool ghost = ghat != nullptr;
  const bool ghost_replicated = ghost && (!tp_ || tp_->rank() == 0);
  MP_CHECK(!ghost || seq_dots, "LlamaModel::backward: ghat given without seq_dots");
  std::optional<ModelView<const T>> gh;
  double* rdot = nullptr;  // [n] per-row ghost dots
  if (ghost) {
    gh = make_view(lay_, ghat);
    group_starts(b, ghost_group_, seg_);  // the rows of each group of ghost_group_ sequences
    if (ctx_.device != Device::CPU) {
      seg_dev_.resize_for_overwrite(seg_.size());
      ops::to_device(ctx_, seg_dev_.data(), seg_.data(), seg_.size() * sizeof(int64_t));
    }
  }
  const int64_t* seg = ctx_.device == Device::CPU ? seg_.data() : seg_dev_.data();
  // A linear layer's backward; with ĝ, fused with its ghost dots per group of sequences (each group's
  // dot lands on its first row of rdot, which is summed per sequence at the end).
  auto linear_bwd = [&](T* dX, T* dW, T* db, const T* dY, const T* X, const T* W, int64_t rows, int64_t in,
                        int64_t out, const T* gW, const T* gb) {
    ops::LinearGrad<T> a{dX, dW, db, dY, X, W, rows, in, out, accumulate};
    if (gW) a.ghat_w = gW, a.ghat_b = gb, a.seg = seg, a.n_seg = int64_t(seg_.size()) - 1, a.rdot = rdot;
    ops::linear_backward(cx, a);
  };
  auto norm_bwd = [&](T* dX, T* dW, const T* dY, const T* X, const T* W, const T* rstd, bool acc) {
    ops::rmsnorm_backward(cx, ops::RmsNormGrad<T>{dX, dW, dY, X, W, rstd, n, C, acc});
  };
  auto norm_ghost = [&](const T* dY, const T* X, const T* rstd, const T* gW) {
    ops::rmsnorm_ghost_dots(cx, ops::RmsNormGhost<T>{dY, X, rstd, gW, n, C, rdot});
  };
  if (!accumulate) {
    // The GEMMs overwrite their weight gradients (beta = 0); only the tensors that are summed into
    // (norm weights, and an untied embedding's scatter-add) start from zero here. A tied embedding
    // is first written by the LM head's GEMM.
    for (const LayerView<T>& lg : g.layers) ops::fill(cx, lg.attn_norm, T(0), C), ops::fill(cx, lg.mlp_norm, T(0), C);
    if (st.last) ops::fill(cx, g.final_norm, T(0), C);
    if (st.first && !c.tie_word_embeddings) ops::fill(cx, g.embed, T(0), V * C);
  }

  // The workspaces come from the arena (the same block, so the same pages, from step to step): the
  // gradient of the residual stream dx, of a norm's output dxn (first dhN, the final norm's), of the
  // MLP's product dh and gate/up dgu, of the attention output datt and of q/k/v dqkv; on the last
  // stage the per-row loss coefficients.
  ops::Arena& ar = *cx.arena;
  const size_t e = sizeof(T), un = size_t(n);
  // (On a device, the per-sequence ghost dots are summed there and then copied to the host.)
  const bool dots_on_device = ghost && ctx_.device != Device::CPU;
  ar.reserve({e * un * C, e * un * C, st.last ? e * idx_.rows.size() : 0, e * un * I, e * un * 2 * I, e * un * Q,
              e * un * QKV, ghost ? sizeof(double) * un : 0, dots_on_device ? sizeof(double) * size_t(b.n_seqs()) : 0});
  T *dx = ar.alloc<T>(un * C), *dxn = ar.alloc<T>(un * C), *dhN = dxn;
  if (ghost) {
    rdot = ar.alloc<double>(un);
    ops::fill(cx, rdot, 0.0, n);
  }
  if (!st.last) {
    ops::copy(cx, dx, dout, n * C);  // the next stage's dL/d(our output)
  } else {
    // LM head: dhN = dlogits W, dW_head += dlogits^T hN (tied: lands in the embedding gradient).
    const T* dlogp = dout;
    const int64_t nr = int64_t(idx_.rows.size());
    T* coef = ar.alloc<T>(size_t(nr));
    ops::gather(cx, coef, dlogp, di_.rows_p, nr);
    ops::fill(cx, dhN, T(0), n * C);
    ops::LogprobGrad<T> lg{coef, row_lse_.data(), probs_.empty() ? nullptr : probs_.data(), dhN,
                           g.lm_head, accumulate, ghost ? gh->lm_head : nullptr, rdot};
    if (ghost) lg.seg = seg, lg.n_seg = int64_t(seg_.size()) - 1;
    if (tp_) {
      // dhN is this rank's partial over its vocabulary rows: summed over TP before the final norm.
      VocabParallelLogprobParams<T> vp{hN_.data(), w.lm_head, C, shard_, di_.rows_p, di_.row_targets_p, nr};
      prof_.run("lm_head_logprob.bwd", [&] { vocab_parallel_logprob_backward(cx, vp, lg); });
      prof_.run("tp_allreduce", [&] { tp_->allreduce_sum(dhN, size_t(n * C)); });
    } else {
      const ops::Logprob<T> lp{hN_.data(), w.lm_head, C, V, di_.rows_p, di_.row_targets_p, nr};
      prof_.run("lm_head_logprob.bwd", [&] { ops::logprob_backward(cx, lp, lg); });
    }
    prof_.run("rmsnorm.bwd", [&] { norm_bwd(dx, g.final_norm, dhN, x_final_.data(), w.final_norm, rstdN_.data(), false); });
    if (ghost_replicated)
      prof_.run("ghost", [&] { norm_ghost(dhN, x_final_.data(), rstdN_.data(), gh->final_norm); });
  }

  // dx is the gradient with respect to the current layer's output (the residual stream).
  T *dh = ar.alloc<T>(un * I), *dgu = ar.alloc<T>(un * 2 * I), *datt = ar.alloc<T>(un * Q), *dqkv = ar.alloc<T>(un * QKV);
  for (size_t li = acts_.size(); li-- > 0;) {
    const LayerView<const T>& lw = w.layers[li];
    const LayerView<T>& lg = g.layers[li];
    // The layer's intermediates: kept, or computed again from the layer's kept input.
    const T* x_in = acts_[li].x_in.data();
    const LayerRefs r = refs(acts_[li]);
    if (recompute_ == Recompute::Full) {
      prof_.run("recompute", [&] { layer_forward(lw, x_in, r, nullptr, false); });
    } else if (recompute_ == Recompute::Selective) {
      // The norm outputs from the kept inputs (their rstd comes out the same, into scratch), and the
      // SwiGLU product from the kept gate/up.
      prof_.run("recompute", [&] {
        resize(*r.xn1, n * C), resize(*r.xn2, n * C), resize(*r.h, n * I), resize(scratch_.rstd1, n);
        ops::rmsnorm_forward(cx, ops::RmsNorm<T>{r.xn1->data(), scratch_.rstd1.data(), x_in, lw.attn_norm, n, C, c.rms_norm_eps});
        ops::rmsnorm_forward(cx, ops::RmsNorm<T>{r.xn2->data(), scratch_.rstd1.data(), r.x_mid->data(), lw.mlp_norm, n, C, c.rms_norm_eps});
        ops::swiglu_forward(cx, ops::SwiGlu<T>{r.h->data(), r.gu->data(), n, I});
        store(r.xn1->data(), n * C), store(r.xn2->data(), n * C), store(r.h->data(), n * I);
      });
    }

    const LayerView<const T>* lgh = ghost ? &gh->layers[li] : nullptr;

    // MLP block backward (each ghost call reads its G before the next step overwrites it).
    prof_.run("down_proj.bwd", [&] { linear_bwd(dh, lg.wdown, nullptr, dx, r.h->data(), lw.wdown, n, I, C, lgh ? lgh->wdown : nullptr, nullptr); });
    prof_.run("swiglu.bwd", [&] { ops::swiglu_backward(cx, ops::SwiGluGrad<T>{dgu, dh, r.gu->data(), n, I}); });
    prof_.run("gate_up_proj.bwd", [&] { linear_bwd(dxn, lg.wgu, nullptr, dgu, r.xn2->data(), lw.wgu, n, C, 2 * I, lgh ? lgh->wgu : nullptr, nullptr); });
    // Column-parallel input gradient: each rank's gate/up slice gives a partial dxn.
    if (tp_) prof_.run("tp_allreduce", [&] { tp_->allreduce_sum(dxn, size_t(n * C)); });
    if (ghost_replicated)
      prof_.run("ghost", [&] { norm_ghost(dxn, r.x_mid->data(), r.rstd2->data(), lgh->mlp_norm); });
    prof_.run("rmsnorm.bwd", [&] { norm_bwd(dx, lg.mlp_norm, dxn, r.x_mid->data(), lw.mlp_norm, r.rstd2->data(), true); });  // dx: now w.r.t. x_mid

    // Attention block backward.
    prof_.run("o_proj.bwd", [&] { linear_bwd(datt, lg.wo, nullptr, dx, r.att->data(), lw.wo, n, Q, C, lgh ? lgh->wo : nullptr, nullptr); });
    const T* qkv = r.qkv->data();
    const ops::Attention<T> ap{qkv, qkv + Q, qkv + Q + KV, QKV, r.att->data(), Q, r.lse->data(),
                               di_.cu_seqlens_p, b.n_seqs(), n, Hq, Hkv, D, T(1) / std::sqrt(T(D)), idx_.max_len};
    const ops::AttentionGrad<T> agp{datt, dqkv, dqkv + Q, dqkv + Q + KV, QKV};
    prof_.run("attention.bwd", [&] { ops::attention_backward(cx, ap, agp); });
    prof_.run("rope.bwd", [&] { ops::rope(cx, ops::Rope<T>{dqkv, n, Hq, D, QKV, di_.pos_p, &rope_, true}); });  // dq before rope
    prof_.run("rope.bwd", [&] { ops::rope(cx, ops::Rope<T>{dqkv + Q, n, Hkv, D, QKV, di_.pos_p, &rope_, true}); });  // dk before rope
    prof_.run("qkv_proj.bwd", [&] { linear_bwd(dxn, lg.wqkv, lg.bqkv, dqkv, r.xn1->data(), lw.wqkv, n, C, QKV, lgh ? lgh->wqkv : nullptr, lgh ? lgh->bqkv : nullptr); });
    if (tp_) prof_.run("tp_allreduce", [&] { tp_->allreduce_sum(dxn, size_t(n * C)); });  // partial, as above
    if (ghost_replicated)
      prof_.run("ghost", [&] { norm_ghost(dxn, x_in, r.rstd1->data(), lgh->attn_norm); });
    prof_.run("rmsnorm.bwd", [&] { norm_bwd(dx, lg.attn_norm, dxn, x_in, lw.attn_norm, r.rstd1->data(), true); });  // dx: now w.r.t. x_in
  }
  if (!st.first) {
    ops::copy(cx, dx_in, dx, n * C);  // to the previous stage
  } else if (tp_) {
    prof_.run("embedding.bwd", [&] { vocab_parallel_embedding_backward(cx, g.embed, dx, di_.tokens_p, n, C, shard_); });
    if (ghost) vocab_parallel_embedding_ghost_dots(cx, dx, di_.tokens_p, gh->embed, n, C, shard_, rdot);
  } else {
    prof_.run("embedding.bwd", [&] { ops::embedding_backward(cx, ops::EmbeddingGrad<T>{g.embed, dx, di_.tokens_p, n, C}); });
    if (ghost) ops::embedding_ghost_dots(cx, ops::EmbeddingGhost<T>{dx, di_.tokens_p, gh->embed, n, C, rdot});
  }
  if (ghost) {
    // Every partial row dot of this backward in one all-reduce; the result is identical on all ranks.
    if (tp_) prof_.run("tp_allreduce", [&] { tp_->allreduce_sum(rdot, size_t(n)); });
    seq_dots->resize(size_t(b.n_seqs()));
    if (!dots_on_device) {
      ops::segment_sum(cx, seq_dots->data(), rdot, di_.cu_seqlens_p, b.n_seqs());
    } else {
      double* dots = ar.alloc<double>(size_t(b.n_seqs()));
      ops::segment_sum(cx, dots, rdot, di_.cu_seqlens_p, b.n_seqs());
      ops::to_host(cx, seq_dots->data(), dots, sizeof(double) * size_t(b.n_seqs()));
    }
  }
}

template <typename T>
size_t LlamaModel<T>::activation_bytes() const {
  auto layer = [](const LayerActs& a) {
    return a.x_in.size() + a.xn1.size() + a.rstd1.size() + a.qkv.size() + a.att.size() + a.lse.size() +
           a.x_mid.size() + a.xn2.size() + a.rstd2.size() + a.gu.size() + a.h.size();
  };
  auto bytes = [&](const std::vector<LayerActs>& acts, size_t e) {
    for (const LayerActs& a : acts) e += layer(a);
    return e * sizeof(T);
  };
  size_t total = bytes(acts_, x_final_.size() + hN_.size() + rstdN_.size() + row_lse_.size() + probs_.size());
  for (const Saved& s : parked_)  // the other slots (the current slot's parked entry is empty)
    total += bytes(s.acts, s.x_final.size() + s.hN.size() + s.rstdN.size() + s.row_lse.size() + s.probs.size());
  return total + layer(scratch_) * sizeof(T);
}

template class LlamaModel<float>;
template class LlamaModel<double>;

double train_flops(const LlamaConfig& c, const PackedBatch& b) {
  const double C = double(c.hidden_size), I = double(c.intermediate_size);
  const double per_layer = C * double(c.qkv_dim()) + double(c.q_dim()) * C + 3.0 * C * I;
  const double matmul_params = double(c.num_hidden_layers) * per_layer + double(c.vocab_size) * C;
  double causal_pairs = 0;  // sum over sequences of sum_t (t+1)
  for (int64_t s = 0; s < b.n_seqs(); ++s) {
    const double L = double(b.cu_seqlens[s + 1] - b.cu_seqlens[s]);
    causal_pairs += L * (L + 1) / 2;
  }
  const double attn_fwd = 4.0 * double(c.head_dim) * double(c.num_attention_heads) * causal_pairs *
                          double(c.num_hidden_layers);
  return 3.0 * (2.0 * matmul_params * double(b.n_tokens()) + attn_fwd);
}

}  // namespace metapo
