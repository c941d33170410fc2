#include "metapo/train/sharded_model.h"

namespace metapo {

ShardedModel shard_model(const LlamaConfig& c, std::vector<float>&& full, const Topology& topo,
                         const std::vector<int64_t>& pp_layers) {
  ShardedModel sm;
  const PipeStage stage = pipeline_stages(c.num_hidden_layers, topo.pp, pp_layers)[size_t(topo.pp_rank)];
  if (topo.tp == 1 && topo.pp == 1) {
    sm.model = std::make_unique<LlamaModel<float>>(c);
    sm.params = std::move(full);
    return sm;
  }
  if (topo.tp > 1) sm.tp = std::make_unique<MpiComm>(topo.tp_comm);
  if (topo.pp > 1) sm.pp = std::make_unique<MpiComm>(topo.pp_comm);
  sm.mp = std::make_unique<MpiComm>(topo.mp_comm);
  sm.model = std::make_unique<LlamaModel<float>>(c, sm.tp.get(), stage);
  sm.shard_map = stage_shard_map(c, topo.tp, topo.tp_rank, stage);
  sm.params.resize(sm.model->layout().total());
  shard_split(sm.shard_map, sm.params.size(), full.data(), sm.params.data());
  std::vector<float>().swap(full);  // the full copy is not needed again (save_final gathers)
  return sm;
}

}  // namespace metapo
