#include "metapo/model/layout.h"

namespace metapo {

ParamLayout::ParamLayout(const LlamaConfig& c) {
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
  embed = add("model.embed_tokens.weight", {V, C});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
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
  final_norm = add("model.norm.weight", {C});
  lm_head = c.tie_word_embeddings ? embed : add("lm_head.weight", {V, C});
}

const TensorEntry* ParamLayout::find(const std::string& name) const {
  for (const auto& e : tensors_)
    if (e.name == name) return &e;
  return nullptr;
}

}  // namespace metapo
