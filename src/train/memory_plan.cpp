#include "metapo/train/memory_plan.h"

#include <algorithm>

#include "metapo/core/error.h"
#include "metapo/meta/pair_stats.h"
#include "metapo/model/layout.h"
#include "metapo/model/tp_layout.h"
#include "metapo/ops/ops.h"
#include "metapo/parallel/vocab_parallel.h"

namespace metapo {

namespace {

// Elements per token that one decoder layer keeps for its backward, and that the recomputation
// scratch (one layer, shared by every slot) holds, by mode. The layer's buffers (LlamaModel::LayerActs):
// x_in, xn1, x_mid, xn2 [C]; rstd1, rstd2 [1]; qkv [QKV]; att [Q]; lse [Hq]; gu [2I]; h [I].
struct LayerElems {
  int64_t kept = 0, scratch = 0;
};

LayerElems layer_elems(const LlamaConfig& lc, Recompute r) {
  const int64_t C = lc.hidden_size, I = lc.intermediate_size, Q = lc.q_dim(), QKV = lc.qkv_dim();
  const int64_t H = lc.num_attention_heads;
  const int64_t all = 4 * C + 2 + QKV + Q + H + 3 * I;
  switch (r) {
    case Recompute::None:
      return {all, 0};
    case Recompute::Selective:  // xn1, xn2 and h are redone (into the scratch, with one rstd)
      return {all - 2 * C - I, 2 * C + I + 1};
    default:  // only x_in is kept; the scratch holds one whole layer
      return {C, all - C};
  }
}

}  // namespace

std::vector<StagePlan> plan_memory(const PlanInput& in) {
  const LlamaConfig& c = in.config;
  MP_CHECK(in.dp >= 1 && in.tp >= 1 && in.pp >= 1, "plan: dp, tp and pp must be positive");
  MP_CHECK(in.micro_tokens > 0, "plan: --micro-batch-tokens must be positive");
  const PlanPrecision& pr = in.precision;
  // The model's local shapes: LlamaModel splits heads, the MLP and the vocabulary only with TP > 1.
  const LlamaConfig lc = in.tp > 1 ? tp_local_config(c, in.tp) : c;
  const VocabShard vs(c.vocab_size, in.tp, 0);
  const int64_t Vl = in.tp > 1 ? vs.real : c.vocab_size;
  const int64_t n = in.micro_tokens, R = in.micro_rows < 0 ? n : std::min(in.micro_rows, n);
  const int64_t C = c.hidden_size, I = lc.intermediate_size, Q = lc.q_dim(), QKV = lc.qkv_dim();
  const LayerElems le = layer_elems(lc, in.recompute);
  const std::vector<PipeStage> stages = pipeline_stages(c.num_hidden_layers, in.pp, in.pp_layers);
  std::vector<StagePlan> out;
  for (int s = 0; s < in.pp; ++s) {
    const PipeStage& st = stages[size_t(s)];
    StagePlan p;
    p.layer_begin = st.layer_begin, p.layer_end = st.layer_end;
    auto add = [&](Mem m, int64_t bytes) { p.bytes[size_t(m)] += bytes; };
    const int64_t nb = in.backward_tokens < 0 ? n : std::min(in.backward_tokens, n);
    const int64_t Rb = in.backward_rows < 0 ? R : std::min(in.backward_rows, R);
    // The local layout, padded to a multiple of the DP size for ZeRO-1; rank 0 owns a full shard.
    const int64_t local = int64_t(ParamLayout(lc, st).total());
    const int64_t shard = (local + in.dp - 1) / in.dp, padded = shard * in.dp;
    add(Mem::Params, padded * pr.param);
    add(Mem::Grads, padded * pr.grad);
    // AdamW's two moments and its weight-decay mask (1 byte) over the shard, the master copy when
    // the parameters are not it, and the reduce-scatter's output shard with more than one DP rank.
    add(Mem::Optimizer, shard * (8 + 1 + pr.master) + (in.dp > 1 ? shard * pr.grad : 0));
    // Activations: every 1F1B slot keeps its forward (layers, the stage output; on the last stage the
    // final norm and the LM head's rows); the recomputation scratch is one layer, shared.
    const int64_t layers = st.layer_end - st.layer_begin;
    const int64_t M = in.micro_batches > 0 ? in.micro_batches : in.pp;
    const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(in.pp - s, M));
    auto per_slot = [&](int64_t kept, int64_t tokens, int64_t rows) {
      int64_t b = (layers * kept + C) * tokens * pr.act;  // + x_final
      if (st.last) {
        const int64_t probs = rows * Vl * pr.act <= in.prob_cache_bytes ? rows * Vl * pr.act : 0;
        b += (C + 1) * tokens * pr.act + rows * 4 + probs;  // hN, rstdN; row_lse (fp32); probabilities
      }
      return b;
    };
    // Slot 0 also takes the forward-only passes (evaluation, trajectories, refreshes); the others
    // only micro-batches that train. The reference model, when it scores the pairs first, is a
    // model of its own without recomputation, gone before the policy's is made.
    const int64_t policy = per_slot(le.kept, n, R) + (slots - 1) * per_slot(le.kept, nb, Rb) + le.scratch * n * pr.act;
    const int64_t ref = in.ref_tokens > 0 ? per_slot(layer_elems(lc, Recompute::None).kept, in.ref_tokens, in.ref_rows) : 0;
    add(Mem::Activations, std::max(policy, ref));
    // The model's arena (ops::Arena: pieces rounded to 16 bytes) holds what one forward or one
    // backward needs, whichever is more. A forward: on the last stage its row log-probs and under TP
    // the vocab-parallel partials (row max, Σ exp, target logit; the global max and the two sums in
    // double). A backward: the gradient buffers dx, dxn [C], dh [I], dgu [2I], datt [Q], dqkv [QKV],
    // on the last stage the per-row loss coefficients, with MetaPO the per-row ghost dots (double).
    auto r16 = [](int64_t bytes) { return (bytes + 15) / 16 * 16; };
    // The log-probabilities, their partials and the loss coefficients are fp32 in every precision.
    const int64_t fwd_arena = st.last ? r16(R * 4) + (in.tp > 1 ? 3 * r16(R * 4) + r16(8 * R) + r16(16 * R) : 0) : 0;
    const int64_t bwd_arena = 2 * r16(C * nb * pr.act) + r16(I * nb * pr.act) + r16(2 * I * nb * pr.act) +
                              r16(Q * nb * pr.act) + r16(QKV * nb * pr.act) + (st.last ? r16(Rb * 4) : 0) +
                              (in.metapo ? r16(8 * nb) : 0);
    // With MetaPO, a meta step's fused ghost weight gradients hold their packing buffer beside the arena.
    add(Mem::Workspace, std::max(fwd_arena, bwd_arena + (in.metapo ? ops::ghost_workspace_bytes() : 0)));
    // The pipeline's messages of [tokens, C], held for one pass: in a training pass, toward the next
    // stage the output sent and its copy in flight (MpiComm keeps one per peer) and the gradient
    // received; toward the previous stage the input received, the gradient sent and its copy. A
    // forward-only pass has no gradients.
    const int64_t nf = std::max(n, in.ref_tokens);
    const int64_t train_pass = ((st.last ? 0 : 3) + (st.first ? 0 : 3)) * nb;
    const int64_t fwd_pass = ((st.last ? 0 : 2) + (st.first ? 0 : 1)) * nf;
    add(Mem::Comm, std::max(train_pass, fwd_pass) * C * pr.act);
    if (in.metapo) {
      add(Mem::MetaPO, padded * 4);  // the validation gradient ĝ, in the parameter layout (fp32)
      if (st.last) {                 // the pair table's rows this DP rank owns
        const int64_t rows = (in.pairs + in.dp - 1) / in.dp;
        add(Mem::MetaPO, rows * int64_t(sizeof(PairStatRow)));
      }
    }
    add(Mem::Data, in.data_bytes);
    for (int64_t b : p.bytes) p.total += b;
    p.total += in.runtime_reserve;
    out.push_back(p);
  }
  return out;
}

double plan_step_flops(const LlamaConfig& c, int64_t tokens, int64_t seq_len) {
  MP_CHECK(seq_len > 0, "plan: the sequence length must be positive");
  PackedBatch one;
  one.add(std::vector<int32_t>(size_t(seq_len), 0));
  return train_flops(c, one) * double(tokens) / double(seq_len);
}

}  // namespace metapo
