// The flat parameter buffer and its typed views.
//
// All parameters live in one contiguous buffer (and gradients in a second buffer with the same
// layout), in this order:
//   embed [V, C]
//   per layer l: attn_norm [C]
//                wqkv [Hq*D + 2*Hkv*D, C]   (q_proj rows, then k_proj rows, then v_proj rows)
//                bqkv [Hq*D + 2*Hkv*D]      (only with attention_bias)
//                wo   [C, Hq*D]
//                mlp_norm [C]
//                wgu  [2*I, C]              (gate_proj rows, then up_proj rows)
//                wdown [C, I]
//   final_norm [C]
//   lm_head [V, C]                          (absent when tied: the head reads embed)
// Fusing q/k/v and gate/up makes each projection one GEMM, and every Hugging Face tensor is still one
// contiguous range of the buffer, which is what `tensors` lists.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "metapo/model/config.h"

namespace metapo {

struct TensorEntry {
  std::string name;            // Hugging Face name, e.g. model.layers.0.self_attn.q_proj.weight
  std::vector<int64_t> shape;  // row-major, as in the safetensors file
  size_t offset = 0;           // in elements, into the flat buffer
  size_t numel = 0;
};

// A pipeline stage's share of the model (DESIGN §4): decoder layers [layer_begin, layer_end), the
// embedding when it is the first stage, the final norm and the LM head when it is the last. The
// default is the whole model.
struct PipeStage {
  int64_t layer_begin = 0, layer_end = -1;  // -1: up to the last layer
  bool first = true, last = true;
  bool whole() const { return first && last; }
};

// Layer ranges of pp stages over n_layers layers: counts[s] layers on stage s when counts is given
// (must have pp positive entries summing to n_layers; the error names `option`), else an even split
// with the remainder on the earliest stages (the last stage also carries the LM head). Throws
// metapo::Error naming `option` when a stage would get no layer.
std::vector<PipeStage> pipeline_stages(int64_t n_layers, int pp, const std::vector<int64_t>& counts = {},
                                       const std::string& option = "--pp-layers");

// ParamLayout(c).total() without building the layout (one entry per tensor: a config with 10^8
// layers would take gigabytes before any size check could refuse it). Every decoder layer has the
// same tensors, so the count is affine in the layer count. SIZE_MAX when it does not fit in a size_t.
size_t param_count(const LlamaConfig& c);

struct LayerOffsets {
  size_t attn_norm, wqkv, bqkv, wo, mlp_norm, wgu, wdown;  // bqkv == npos without bias
};

class ParamLayout {
 public:
  static constexpr size_t npos = size_t(-1);
  explicit ParamLayout(const LlamaConfig& c);
  // One pipeline stage's buffer: only its tensors, in the same order and with the same (global)
  // names; the offsets of absent tensors are npos and `layers` holds the stage's layers only. A tied
  // LM head on a last stage that is not also the first is not supported (throws).
  ParamLayout(const LlamaConfig& c, const PipeStage& stage);

  size_t total() const { return total_; }
  const std::vector<TensorEntry>& tensors() const& { return tensors_; }
  // `for (auto& e : ParamLayout(c).tensors())` would iterate a destroyed layout: make it not compile.
  void tensors() const&& = delete;
  // Returns nullptr when no tensor has that name. Not on a temporary: the pointer would dangle.
  const TensorEntry* find(const std::string& name) const&;
  void find(const std::string& name) const&& = delete;

  size_t embed = 0, final_norm = 0, lm_head = 0;  // lm_head == embed when tied; npos when absent
  PipeStage stage;
  int64_t first_layer() const { return stage.layer_begin; }  // global index of layers[0]
  std::vector<LayerOffsets> layers;

 private:
  size_t total_ = 0;
  std::vector<TensorEntry> tensors_;
};

// Typed pointer views into a flat buffer of T (parameters or gradients).
template <typename T>
struct LayerView {
  T *attn_norm, *wqkv, *bqkv, *wo, *mlp_norm, *wgu, *wdown;  // bqkv == nullptr without bias
};

template <typename T>
struct ModelView {
  T* embed;
  std::vector<LayerView<T>> layers;
  T* final_norm;
  T* lm_head;  // == embed when tied
};
// (null for the tensors a pipeline stage does not hold)

template <typename T>
ModelView<T> make_view(const ParamLayout& lay, T* base) {
  ModelView<T> v;
  auto at = [&](size_t off) -> T* { return off == ParamLayout::npos ? nullptr : base + off; };
  v.embed = at(lay.embed);
  v.final_norm = at(lay.final_norm);
  v.lm_head = at(lay.lm_head);
  for (const auto& l : lay.layers) {
    v.layers.push_back({base + l.attn_norm, base + l.wqkv,
                        l.bqkv == ParamLayout::npos ? nullptr : base + l.bqkv, base + l.wo,
                        base + l.mlp_norm, base + l.wgu, base + l.wdown});
  }
  return v;
}

}  // namespace metapo
