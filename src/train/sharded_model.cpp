#include "metapo/train/sharded_model.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "metapo/core/error.h"

namespace metapo {

namespace {

// The model, communicators and shard map of this rank; `fill(local)` fills its parameters (the
// local buffer, zeroed) from the shard map's runs.
template <typename Fill>
ShardedModel make_shard(const LlamaConfig& c, const Topology& topo, const std::vector<int64_t>& pp_layers, Fill fill) {
  ShardedModel sm;
  sm.config = c;
  const PipeStage stage = pipeline_stages(c.num_hidden_layers, topo.pp, pp_layers)[size_t(topo.pp_rank)];
  if (topo.tp == 1 && topo.pp == 1) {
    sm.model = std::make_unique<LlamaModel<float>>(c);
  } else {
    if (topo.tp > 1) sm.tp = topo.tp_comm().dup();
    if (topo.pp > 1) sm.pp = topo.pp_comm().dup();
    sm.mp = topo.mp_comm().dup();
    sm.model = std::make_unique<LlamaModel<float>>(c, sm.tp.get(), stage);
    sm.shard_map = stage_shard_map(c, topo.tp, topo.tp_rank, stage);
  }
  fill(sm);
  sm.params_mem.track(sm.params);
  return sm;
}

}  // namespace

ShardedModel shard_model(const LlamaConfig& c, std::vector<float>&& full, const Topology& topo,
                         const std::vector<int64_t>& pp_layers) {
  return make_shard(c, topo, pp_layers, [&](ShardedModel& sm) {
    if (!sm.mp) {  // tp = pp = 1: the whole model
      sm.params = std::move(full);
      return;
    }
    sm.params.resize(sm.model->layout().total());
    shard_split(sm.shard_map, sm.params.size(), full.data(), sm.params.data());
    std::vector<float>().swap(full);  // the full copy is not needed again (save_final gathers)
  });
}

ShardedModel load_sharded_model(const std::string& dir, const Topology& topo, const std::vector<int64_t>& pp_layers) {
  return load_sharded_model(HfModelReader(dir), topo, pp_layers);
}

ShardedModel load_sharded_model(const HfModelReader& reader, const Topology& topo,
                                const std::vector<int64_t>& pp_layers, size_t padded_size) {
  return make_shard(reader.config(), topo, pp_layers, [&](ShardedModel& sm) {
    const size_t local = sm.model->layout().total();
    // Vocabulary padding rows (TP) and ZeRO-1 padding stay zero.
    sm.params.assign(std::max(local, padded_size), 0.0f);
    if (!sm.mp) {  // tp = pp = 1: the whole model, every tensor one run
      std::vector<TpCopy> runs;
      for (const TensorEntry& t : sm.model->layout().tensors()) runs.push_back({t.offset, t.offset, t.numel, false});
      reader.read_runs(runs, sm.params.data());
      return;
    }
    reader.read_runs(sm.shard_map, sm.params.data());
  });
}

bool moves_to_device(Device d) {
  const char* e = std::getenv("METAPO_STAGE_ON_CPU");
  return d != Device::CPU || (e && std::string(e) == "1");
}

void place_on_device(ShardedModel& sm, Device d, const char* option, bool training) {
  if (!moves_to_device(d) || (d == Device::CPU && sm.mp)) return;
  MP_CHECK(!sm.mp, option, " ", device_name(d), ": one device per model replica for now (--tp 1 --pp 1)");
  sm.device = std::make_unique<ops::DeviceContext>(d);  // checks the build and the machine
  sm.model = std::make_unique<LlamaModel<float>>(sm.config, nullptr, PipeStage{}, sm.device->get());
  const size_t n = sm.model->layout().total();  // not ZeRO-1's padding: the model never reads it
  sm.device_params = ops::DeviceArray<float>(d, Mem::Params);
  sm.device_params.resize_for_overwrite(n);
  sm.params_to_device();
  if (training) {
    sm.device_grads = ops::DeviceArray<float>(d, Mem::Grads);
    sm.device_grads.resize_for_overwrite(n);
  }
}

void ShardedModel::params_to_device() {
  if (!device) return;
  const size_t n = device_params.size();
  MP_CHECK(params.size() >= n, "params_to_device: ", params.size(), " host parameters, the device copy holds ", n);
  ops::to_device(device->get(), device_params.data(), params.data(), n * sizeof(float));
}

void ShardedModel::params_to_host() {
  if (!device) return;
  ops::to_host(device->get(), params.data(), device_params.data(), device_params.size() * sizeof(float));
}

void ShardedModel::grads_to_host(float* host) {
  if (!device) return;
  MP_CHECK(device_grads.size() == device_params.size(), "grads_to_host: the model was not placed for training");
  ops::to_host(device->get(), host, device_grads.data(), device_grads.size() * sizeof(float));
}

}  // namespace metapo
