#include "metapo/model/tp_layout.h"

#include <algorithm>
#include <cstring>

#include "metapo/core/error.h"

namespace metapo {

LlamaConfig tp_local_config(const LlamaConfig& c, int tp) {
  MP_CHECK(tp >= 1, "tensor parallelism: the TP size must be positive, got ", tp);
  MP_CHECK(c.num_attention_heads % tp == 0, "tensor parallelism: num_attention_heads (", c.num_attention_heads,
           ") is not divisible by the TP size (", tp, ")");
  MP_CHECK(c.num_key_value_heads % tp == 0, "tensor parallelism: num_key_value_heads (", c.num_key_value_heads,
           ") is not divisible by the TP size (", tp, "); every TP rank needs whole kv heads");
  MP_CHECK(c.intermediate_size % tp == 0, "tensor parallelism: intermediate_size (", c.intermediate_size,
           ") is not divisible by the TP size (", tp, ")");
  LlamaConfig l = c;
  l.num_attention_heads /= tp;
  l.num_key_value_heads /= tp;
  l.intermediate_size /= tp;
  l.vocab_size = (c.vocab_size + tp - 1) / tp;  // rows of one vocabulary shard (as VocabShard)
  return l;
}

std::vector<TpCopy> tp_shard_map(const LlamaConfig& c, int tp, int r) {
  MP_CHECK(r >= 0 && r < tp, "tp_shard_map: rank ", r, " is outside the TP group [0, ", tp, ")");
  const LlamaConfig lc = tp_local_config(c, tp);
  const ParamLayout F(c), L(lc);
  const size_t C = size_t(c.hidden_size);
  const size_t Q = size_t(c.q_dim()), KV = size_t(c.kv_dim()), I = size_t(c.intermediate_size);
  const size_t Ql = size_t(lc.q_dim()), KVl = size_t(lc.kv_dim()), Il = size_t(lc.intermediate_size);
  const size_t rr = size_t(r);
  std::vector<TpCopy> m;
  auto run = [&](size_t f, size_t l, size_t count, bool rep = false) {
    if (count > 0) m.push_back({f, l, count, rep});
  };
  // Vocabulary rows [begin, begin + real) of the full table; the rest of the shard is padding.
  const size_t rows = size_t(lc.vocab_size), begin = rows * rr;
  const size_t real = std::min(rows, size_t(std::max<int64_t>(0, c.vocab_size - int64_t(begin))));
  run(F.embed + begin * C, L.embed, real * C);
  for (size_t li = 0; li < F.layers.size(); ++li) {
    const LayerOffsets &f = F.layers[li], &l = L.layers[li];
    run(f.attn_norm, l.attn_norm, C, true);
    // wqkv / bqkv: per row width w (C for weights, 1 for the bias), q, k and v row blocks.
    auto qkv_rows = [&](size_t fo, size_t lo, size_t w) {
      run(fo + rr * Ql * w, lo, Ql * w);
      run(fo + (Q + rr * KVl) * w, lo + Ql * w, KVl * w);
      run(fo + (Q + KV + rr * KVl) * w, lo + (Ql + KVl) * w, KVl * w);
    };
    qkv_rows(f.wqkv, l.wqkv, C);
    if (f.bqkv != ParamLayout::npos) qkv_rows(f.bqkv, l.bqkv, 1);
    for (size_t row = 0; row < C; ++row) run(f.wo + row * Q + rr * Ql, l.wo + row * Ql, Ql);
    run(f.mlp_norm, l.mlp_norm, C, true);
    run(f.wgu + rr * Il * C, l.wgu, Il * C);            // gate rows
    run(f.wgu + (I + rr * Il) * C, l.wgu + Il * C, Il * C);  // up rows
    for (size_t row = 0; row < C; ++row) run(f.wdown + row * I + rr * Il, l.wdown + row * Il, Il);
  }
  run(F.final_norm, L.final_norm, C, true);
  if (!c.tie_word_embeddings) run(F.lm_head + begin * C, L.lm_head, real * C);
  return m;
}

std::vector<TpCopy> stage_shard_map(const LlamaConfig& c, int tp, int r, const PipeStage& stage) {
  const std::vector<TpCopy> m = tp_shard_map(c, tp, r);
  const LlamaConfig lc = tp_local_config(c, tp);
  const ParamLayout L(lc), S(lc, stage);
  // The stage's tensors are a subsequence of L's with the same names: local offset ranges of L that
  // the stage holds, and where they start in the stage buffer.
  struct Range { size_t begin, end, stage_offset; };
  std::vector<Range> ranges;
  for (const TensorEntry& e : S.tensors()) {
    const TensorEntry* f = L.find(e.name);
    MP_CHECK(f && f->numel == e.numel, "stage_shard_map: tensor ", e.name, " not in the TP layout");
    ranges.push_back({f->offset, f->offset + f->numel, e.offset});
  }
  std::vector<TpCopy> out;
  size_t k = 0;  // both m and ranges ascend in local offset
  for (const TpCopy& c2 : m) {
    while (k < ranges.size() && ranges[k].end <= c2.local) ++k;
    if (k == ranges.size()) break;
    if (c2.local < ranges[k].begin) continue;
    MP_CHECK(c2.local + c2.count <= ranges[k].end, "stage_shard_map: a run crosses a tensor boundary");
    out.push_back({c2.full, c2.local - ranges[k].begin + ranges[k].stage_offset, c2.count, c2.replicated});
  }
  return out;
}

template <typename T>
void shard_split(const std::vector<TpCopy>& map, size_t local_total, const T* full, T* local) {
  std::fill(local, local + local_total, T(0));  // padding rows
  for (const TpCopy& k : map) std::memcpy(local + k.local, full + k.full, sizeof(T) * k.count);
}

template <typename T>
void shard_gather(const std::vector<TpCopy>& map, size_t full_total, bool write_replicated, Comm& group,
                  const T* local, T* full) {
  std::fill(full, full + full_total, T(0));
  for (const TpCopy& k : map)
    // Replicated tensors are equal on every rank: one copy, or the sum would count them tp times.
    if (!k.replicated || write_replicated) std::memcpy(full + k.full, local + k.local, sizeof(T) * k.count);
  group.allreduce_sum(full, full_total);
}

template <typename T>
void tp_split(const LlamaConfig& c, int tp, int r, const T* full, T* local) {
  shard_split(tp_shard_map(c, tp, r), ParamLayout(tp_local_config(c, tp)).total(), full, local);
}

template <typename T>
void tp_gather(const LlamaConfig& c, Comm& tp, const T* local, T* full) {
  shard_gather(tp_shard_map(c, tp.size(), tp.rank()), ParamLayout(c).total(), tp.rank() == 0, tp, local, full);
}

template void shard_split<float>(const std::vector<TpCopy>&, size_t, const float*, float*);
template void shard_split<double>(const std::vector<TpCopy>&, size_t, const double*, double*);
template void shard_gather<float>(const std::vector<TpCopy>&, size_t, bool, Comm&, const float*, float*);
template void shard_gather<double>(const std::vector<TpCopy>&, size_t, bool, Comm&, const double*, double*);
template void tp_split<float>(const LlamaConfig&, int, int, const float*, float*);
template void tp_split<double>(const LlamaConfig&, int, int, const double*, double*);
template void tp_gather<float>(const LlamaConfig&, Comm&, const float*, float*);
template void tp_gather<double>(const LlamaConfig&, Comm&, const double*, double*);

}  // namespace metapo
