// The Llama-family decoder: explicit forward and backward over one packed micro-batch, in T = float
// (the engine) or T = double (finite-difference checks). Parameters and gradients are flat buffers in
// ParamLayout order owned by the caller (so an optimizer or ZeRO shard can own them); the model owns
// only its activations.
//
// Tensor parallelism (DESIGN §4, docs/engine.md): constructed with a TP communicator, the model holds
// one rank's shard (tp_layout.h: layout() is then the LOCAL layout of params, grads and ghat) and runs
// Megatron style — vocab-parallel embedding and log-probs, q/k/v and gate/up column-parallel on the
// rank's heads / intermediate slice, o_proj and down_proj row-parallel with one all-reduce each. Inputs
// (batch, targets, dlogp) must be identical on every TP rank; outputs (logp, seq_dots, replicated
// norm-weight gradients) come out identical on every TP rank; weight gradients are the rank's shards.
// All TP communication happens inside forward/backward: the caller reduces nothing over TP.
//
// Pipeline parallelism (DESIGN §4): constructed with a PipeStage, the model holds and runs only that
// stage (its layers; the embedding on the first stage, the final norm and LM head on the last) through
// forward_stage / backward_stage, which take and give the residual stream at the stage boundaries. The
// pipeline schedule (parallel/pipeline_schedule.h, bound to the model in train/pipeline.h) moves those
// between stages. Several micro-batches can be in flight: each activation slot (set_slots / use_slot)
// keeps one forward for its backward.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/core/buffer.h"
#include "metapo/core/timer.h"
#include "metapo/model/batch.h"
#include "metapo/model/config.h"
#include "metapo/model/layout.h"
#include "metapo/ops/ops.h"
#include "metapo/parallel/vocab_parallel.h"

namespace metapo {

// Activation recomputation (activation checkpointing) per decoder layer: what a forward keeps for
// its backward, and what the backward computes again (docs/engine.md "Activation recomputation").
//   None       every layer keeps its input and every intermediate (norm outputs, q/k/v, attention
//              output and log-sum-exp, the mid residual, gate/up, the SwiGLU product).
//   Selective  drops what costs no GEMM to redo: the two norm outputs (from the layer input or the mid
//              residual and their kept rstd) and the SwiGLU product (from gate/up).
//   Full       keeps only each layer's input; the backward runs the layer's forward again (its
//              GEMMs, attention and, under TP, the o_proj all-reduce) before the layer's backward.
// The recomputation runs the same kernels on the same inputs, so results are bit-identical to None.
enum class Recompute { None, Selective, Full };
Recompute parse_recompute(const std::string& name);  // none | selective | full; throws naming --recompute
const char* recompute_name(Recompute r);

template <typename T>
class LlamaModel {
 public:
  // tp == nullptr: one process holds the whole model (the layout is ParamLayout(c)). Otherwise the
  // model is rank tp->rank() of a TP group of tp->size() ranks (borrowed; must outlive the model); a
  // group of one rank runs the TP code path on the full layout. Throws when heads or the intermediate
  // size are not divisible by the TP size.
  // ctx: where the ops run (the CPU by default); the model adds its own arena and profile.
  explicit LlamaModel(const LlamaConfig& c, Comm* tp = nullptr, const PipeStage& stage = {},
                      const ops::Context& ctx = {});

  const LlamaConfig& config() const { return cfg_; }  // the full model's config
  // The layout of the buffers passed to forward/backward: this rank's shard in TP mode.
  const ParamLayout& layout() const { return lay_; }
  int tp_size() const { return tp_ ? tp_->size() : 1; }
  const PipeStage& stage() const { return lay_.stage; }

  // Probabilities of up to this many bytes are kept from forward to backward instead of
  // recomputing the LM-head GEMM (0: always recompute).
  void set_prob_cache_budget(size_t bytes) { cache_budget_ = bytes; }
  // Storage precision (core/dtype.h). T = float: fp32 (the default) or bf16 parameters and/or
  // activations, which the CPU backend emulates: a forward rounds the parameters it is given to bf16
  // into a working copy (the caller's buffer stays the fp32 master) and rounds every activation it
  // stores to bf16, as a bf16 device run stores them; arithmetic, the norms' and attention's
  // statistics, the log-probabilities and all gradients stay fp32. T = double: fp64 only. Throws for
  // another combination.
  void set_precision(const Precision& p);
  const Precision& precision() const { return prec_; }

  // What the next forwards keep per layer (see Recompute). Default None.
  void set_recompute(Recompute r) { recompute_ = r; }
  Recompute recompute() const { return recompute_; }

  // logp[t] = log p(targets[t] | tokens of its sequence up to t), 0 where targets[t] < 0.
  // Keeps what backward needs. Token ids out of range and over-long sequences are errors.
  // The whole model only (a stage that is both first and last).
  void forward(const T* params, const PackedBatch& b, const int32_t* targets, T* logp);

  // One pipeline stage. x_in: the residual stream entering the stage, [n_tokens, hidden] (ignored on
  // the first stage, which embeds b.tokens). out: logp as forward() on the last stage (targets are
  // read there only), else the residual stream leaving the stage, [n_tokens, hidden].
  void forward_stage(const T* params, const PackedBatch& b, const int32_t* targets, const T* x_in, T* out);

  // Given dlogp[t] = dL/dlogp[t] for the last forward, grads += dL/dparams; with
  // accumulate = false, grads = dL/dparams (whatever the buffer held: the first micro-batch of a step
  // needs no zeroing pass, like PyTorch's zero_grad(set_to_none=True)).
  //
  // Ghost products (DESIGN §6): with ghat (a buffer in the parameter layout, e.g. a validation
  // gradient) given, also sets seq_dots[s] = ⟨ghat, ∇θ Σ_{t∈s} dlogp[t] logp[t]⟩ for every sequence s
  // of the batch, without forming per-sequence gradients: one extra GEMM per linear layer (about one
  // forward's worth) and row-wise dots.
  void backward(const T* params, const T* dlogp, T* grads, bool accumulate = true, const T* ghat = nullptr,
                std::vector<double>* seq_dots = nullptr);

  // One pipeline stage, for the slot's last forward_stage. dout: dlogp on the last stage, else dL/d(the
  // stage's output) [n_tokens, hidden]. dx_in (not on the first stage): dL/d(x_in) [n_tokens, hidden].
  // seq_dots (with ghat) are this stage's parameters' share of the ghost dots; the stages' shares sum
  // to backward()'s.
  void backward_stage(const T* params, const T* dout, T* grads, bool accumulate, const T* ghat,
                      std::vector<double>* seq_dots, T* dx_in);

  // Ghost dots are only needed summed over groups of k consecutive sequences (k = 2 for preference
  // pairs: chosen and rejected). With k > 1 the linear layers' and the LM head's dots are taken per
  // group (half the passes for pairs), so seq_dots[s] then holds a share of its group's dot: only sums
  // over whole groups are meaningful. Default 1 (per sequence).
  void set_ghost_group(int64_t k) { ghost_group_ = k; }

  // Activation slots: n forwards can be held at once (1F1B keeps up to one per later stage); use_slot
  // selects where the next forward_stage stores, and which forward the next backward_stage reads.
  void set_slots(int n);
  void use_slot(int k);

  // Activation bytes held: the kept activations of every slot plus the recomputation scratch (one
  // layer's dropped intermediates).
  size_t activation_bytes() const;

  // Per-operation times (enable with profile().enabled = true).
  OpProfile& profile() { return prof_; }
  // Where its ops run (the caller's context): its buffers' pointers are in this device's memory.
  Device device() const { return ctx_.device; }
  const ops::Context& context() const { return ctx_; }

 private:
  // Activations live on the context's device (ops::DeviceArray: host memory on the CPU).
  using Acts = ops::DeviceArray<T>;
  struct LayerActs {
    Acts x_in, xn1, rstd1, qkv, att, lse, x_mid, xn2, rstd2, gu, h;
  };
  // A layer's intermediates wherever they are: its own LayerActs (kept) or the scratch (dropped).
  struct LayerRefs {
    Acts *xn1, *rstd1, *qkv, *att, *lse, *x_mid, *xn2, *rstd2, *gu, *h;
  };
  // The micro-batch's index data where the ops read it: the host vectors themselves on the CPU, a copy
  // in device memory on a device (uploaded once per forward).
  struct DeviceIndex {
    ops::DeviceArray<int32_t> tokens, pos, rows, row_targets;
    ops::DeviceArray<int64_t> cu_seqlens;
    const int32_t *tokens_p = nullptr, *pos_p = nullptr, *rows_p = nullptr, *row_targets_p = nullptr;
    const int64_t* cu_seqlens_p = nullptr;
  };
  void index_on_device(const PackedBatch& b);  // di_ for batch_ and idx_
  void tag(DeviceIndex& d);
  LayerRefs refs(LayerActs& a);  // by recompute_
  void tag(LayerActs& a);  // its buffers on the context's device, counted as activations (core/memory.h)
  // The layer's forward from x_in through the SwiGLU product into r; with x_out, on to the layer's
  // output (else it stops there: a recomputation needs nothing after h). profile: per-op times.
  void layer_forward(const LayerView<const T>& lw, const T* x_in, const LayerRefs& r, T* x_out, bool profile);
  // What one forward keeps for its backward (the members below for the current slot).
  struct Saved {
    PackedBatch batch;
    BatchIndex idx;
    DeviceIndex di;
    std::vector<LayerActs> acts;
    Acts x_final, hN, rstdN, row_lse, probs;
    bool have_forward = false;
  };
  void swap_saved(Saved& s);
  void tag(Saved& s);
  LlamaConfig cfg_;
  Comm* tp_ = nullptr;  // null: no tensor parallelism
  LlamaConfig lc_;      // local shapes (heads, intermediate, vocab rows); == cfg_ without TP
  VocabShard shard_;    // this rank's vocabulary rows (TP mode)
  ParamLayout lay_;
  RopeTable<T> rope_;
  std::vector<double> inv_freq_;
  size_t cache_budget_ = size_t(256) << 20;

  // The last forward's batch and activations.
  PackedBatch batch_;
  BatchIndex idx_;  // built once per forward
  DeviceIndex di_;  // where the ops read batch_ and idx_
  std::vector<LayerActs> acts_;
  Acts x_final_, hN_, rstdN_, row_lse_, probs_;
  bool have_forward_ = false;
  std::vector<Saved> parked_;  // parked_[k]: slot k's state while another slot is current
  int slot_ = 0;
  int64_t ghost_group_ = 1;
  Recompute recompute_ = Recompute::None;
  LayerActs scratch_;  // one layer's dropped intermediates (forward) or recomputed ones (backward)
  OpProfile prof_;
  Precision prec_;
  Acts wparams_;  // bf16 parameters: the rounded working copy of the last forward's
  const T* rounded_from_ = nullptr;  // the buffer wparams_ was rounded from
  const T* stored_params(const ops::Context& cx, const T* params);  // params, or rounded into wparams_
  void store(T* x, int64_t n);  // an activation just written: rounded to the storage precision
  ops::Context ctx_;   // the caller's, with arena_ and prof_ (see ctx())
  ops::Arena arena_;   // a forward's or backward's temporaries and workspaces
  std::vector<int64_t> seg_;  // the ghost-dot groups of the last backward
  ops::DeviceArray<int64_t> seg_dev_;  // their copy on a device
  const ops::Context& ctx();  // ctx_ pointed at this model's arena and profile, the arena reset
};

extern template class LlamaModel<float>;
extern template class LlamaModel<double>;

// 2 * (matmul parameters) FLOPs per token forward, plus causal attention; x3 for forward+backward.
// The same count as tools/bench_torch.py.
double train_flops(const LlamaConfig& c, const PackedBatch& b);

}  // namespace metapo
