#include "metapo/model/layout.h"

#include <limits>

#include "metapo/core/error.h"

namespace metapo {

std::vector<PipeStage> pipeline_stages(int64_t n_layers, int pp, const std::vector<int64_t>& counts,
                                       const std::string& option) {
  MP_CHECK(pp >= 1, "pipeline: ", pp, " stages");
  std::vector<int64_t> n = counts;
  if (n.empty()) {
    MP_CHECK(n_layers >= pp, "--pp ", pp, ": the model has only ", n_layers, " layers (every stage needs at least one)");
    for (int s = 0; s < pp; ++s) n.push_back(n_layers / pp + (s < n_layers % pp ? 1 : 0));
  }
  MP_CHECK(int64_t(n.size()) == pp, option, ": ", n.size(), " layer counts for ", pp, " pipeline stages");
  int64_t sum = 0;
  for (int64_t k : n) {
    MP_CHECK(k >= 1, option, ": every pipeline stage needs at least one layer (got ", k, ")");
    sum += k;
  }
  MP_CHECK(sum == n_layers, option, ": the layer counts sum to ", sum, ", but the model has ", n_layers, " layers");
  std::vector<PipeStage> st;
  int64_t at = 0;
  for (int s = 0; s < pp; ++s) {
    st.push_back({at, at + n[size_t(s)], s == 0, s == pp - 1});
    at += n[size_t(s)];
  }
  return st;
}

size_t param_count(const LlamaConfig& c) {
  LlamaConfig one = c, two = c;
  one.num_hidden_layers = 1, two.num_hidden_layers = 2;
  const size_t t1 = ParamLayout(one).total(), per_layer = ParamLayout(two).total() - t1;
  if (c.num_hidden_layers == 0) return t1 - per_layer;
  const size_t more = size_t(c.num_hidden_layers - 1);
  if (per_layer > 0 && more > (std::numeric_limits<size_t>::max() - t1) / per_layer)
    return std::numeric_limits<size_t>::max();  // past any memory: the size checks refuse it
  return t1 + per_layer * more;
}

ParamLayout::ParamLayout(const LlamaConfig& c) : ParamLayout(c, PipeStage{}) {}

ParamLayout::ParamLayout(const LlamaConfig& c, const PipeStage& st) : stage(st) {
  if (stage.layer_end < 0) stage.layer_end = c.num_hidden_layers;
  MP_CHECK(stage.layer_begin >= 0 && stage.layer_begin <= stage.layer_end &&
               stage.layer_end <= c.num_hidden_layers,
           "pipeline stage: layers [", stage.layer_begin, ", ", stage.layer_end, ") outside the model's ",
           c.num_hidden_layers, " layers");
  MP_CHECK(!c.tie_word_embeddings || stage.first == stage.last,
           "pipeline parallelism with tied word embeddings (tie_word_embeddings = true) is not supported: the "
           "embedding and the LM head would sit on different stages");
  const int64_t C = c.hidden_size, V = c.vocab_size, I = c.intermediate_size;
  const int64_t Q = c.q_dim(), KV = c.kv_dim();
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    TensorEntry e;
    e.name = name;
    e.shape = std::move(shape);
    e.numel = 1;
    for (int64_t s : e.shape) e.numel *= size_t(s);
    e.offset = total_;
    total_ += e.numel;
    tensors_.push_back(e);
    return e.offset;
  };
  embed = final_norm = lm_head = npos;
  if (stage.first) embed = add("model.embed_tokens.weight", {V, C});
  for (int64_t l = stage.layer_begin; l < stage.layer_end; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerOffsets o;
    o.attn_norm = add(p + "input_layernorm.weight", {C});
    o.wqkv = add(p + "self_attn.q_proj.weight", {Q, C});
    add(p + "self_attn.k_proj.weight", {KV, C});
    add(p + "self_attn.v_proj.weight", {KV, C});
    o.bqkv = npos;
    if (c.attention_bias) {
      o.bqkv = add(p + "self_attn.q_proj.bias", {Q});
      add(p + "self_attn.k_proj.bias", {KV});
      add(p + "self_attn.v_proj.bias", {KV});
    }
    o.wo = add(p + "self_attn.o_proj.weight", {C, Q});
    o.mlp_norm = add(p + "post_attention_layernorm.weight", {C});
    o.wgu = add(p + "mlp.gate_proj.weight", {I, C});
    add(p + "mlp.up_proj.weight", {I, C});
    o.wdown = add(p + "mlp.down_proj.weight", {C, I});
    layers.push_back(o);
  }
  if (stage.last) {
    final_norm = add("model.norm.weight", {C});
    lm_head = c.tie_word_embeddings ? embed : add("lm_head.weight", {V, C});
  }
}

const TensorEntry* ParamLayout::find(const std::string& name) const& {
  for (const auto& e : tensors_)
    if (e.name == name) return &e;
  return nullptr;
}

}  // namespace metapo
