// Tensor-parallel parameter layout (DESIGN §4, Megatron style).
//
// A TP rank's local flat buffer is the ParamLayout of a "local" LlamaConfig: the same model with
// num_attention_heads, num_key_value_heads and intermediate_size divided by tp, and vocab_size equal to
// the rows of one vocabulary shard (Vp / tp, Vp = ceil(V / tp) · tp, see VocabShard). So make_view and
// ModelView work unchanged on a shard, and rank r's buffer holds, in ParamLayout order:
//   embed      [Vp/tp, C]              global vocab rows [r·Vp/tp, (r+1)·Vp/tp); padding rows zero
//   attn_norm  [C]                     replicated
//   wqkv       [(Hq+2Hkv)·D/tp, C]     rows of its q heads, then of its k heads, then of its v heads
//   bqkv       [(Hq+2Hkv)·D/tp]        the same rows of the bias
//   wo         [C, Hq·D/tp]            the columns of its q heads
//   mlp_norm   [C]                     replicated
//   wgu        [2·I/tp, C]             its slice of the gate rows, then the same slice of the up rows
//   wdown      [C, I/tp]               the matching columns
//   final_norm [C]                     replicated
//   lm_head    [Vp/tp, C]              like embed (absent when tied: the head reads the embed shard)
// Local q head j of rank r is global head r·Hq/tp + j, and local kv head j global kv head r·Hkv/tp + j,
// so the GQA grouping (q head h reads kv head h / (Hq/Hkv)) maps local q heads onto local kv heads.
//
// Gradients and ghost vectors (ĝ) use the same mapping. tp = 1 gives ParamLayout(c) itself.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/model/config.h"
#include "metapo/model/layout.h"

namespace metapo {

// The config whose ParamLayout is a TP rank's local buffer (see above). Throws metapo::Error naming
// the field and the TP size when num_attention_heads, num_key_value_heads or intermediate_size is not
// divisible by tp. The result is for layouts and kernel shapes only (it is not a valid model config:
// hidden_size is not heads · head_dim).
LlamaConfig tp_local_config(const LlamaConfig& full, int tp);

// One contiguous run of elements that a rank's local buffer shares with the full (tp = 1) buffer.
struct TpCopy {
  size_t full = 0, local = 0, count = 0;  // offsets in elements
  bool replicated = false;                // the same values on every rank (norm weights)
};

// Every element of rank `rank`'s local buffer that holds a parameter, as runs into the full buffer.
// Local elements not covered are vocabulary padding rows.
std::vector<TpCopy> tp_shard_map(const LlamaConfig& full, int tp, int rank);

// A pipeline stage's part of a TP rank's shard: the runs of tp_shard_map(full, tp, rank) that fall in
// the stage's tensors, with local offsets into ParamLayout(tp_local_config(full, tp), stage). With the
// whole model as the stage it is tp_shard_map itself.
std::vector<TpCopy> stage_shard_map(const LlamaConfig& full, int tp, int rank, const PipeStage& stage);

// local[0, local_total) = the runs of `map` copied out of full_buf (everything else zero).
template <typename T>
void shard_split(const std::vector<TpCopy>& map, size_t local_total, const T* full_buf, T* local_buf);

// full_buf[0, full_total) on every rank of `group` = the full buffer assembled from every rank's runs:
// each rank writes its runs into a zeroed buffer (replicated runs only where write_replicated) and one
// all-reduce (sum) over the group combines them; every element has exactly one nonzero term, so the
// result is exact. Collective over group (a model replica: its TP × PP ranks).
template <typename T>
void shard_gather(const std::vector<TpCopy>& map, size_t full_total, bool write_replicated, Comm& group,
                  const T* local_buf, T* full_buf);

// local = rank `rank`'s shard of the full buffer (padding rows zero). local must hold
// ParamLayout(tp_local_config(full, tp)).total() elements.
template <typename T>
void tp_split(const LlamaConfig& full, int tp, int rank, const T* full_buf, T* local_buf);

// full_buf (ParamLayout(full).total() elements, on every rank) = the full buffer assembled from every
// rank's local buffer: each rank writes its runs into a zeroed buffer (replicated tensors only from rank
// 0) and one all-reduce (sum) over the TP group combines them; every element has exactly one nonzero
// term, so the result is exact. Collective over tp.
template <typename T>
void tp_gather(const LlamaConfig& full, Comm& tp, const T* local_buf, T* full_buf);

}  // namespace metapo
