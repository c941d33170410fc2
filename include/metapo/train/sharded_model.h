// A rank's share of the model under the process grid (DESIGN §4).
#pragma once
#include <memory>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/comm/topology.h"
#include "metapo/io/hf_model.h"
#include "metapo/model/llama.h"
#include "metapo/model/tp_layout.h"
#include "metapo/ops/ops.h"

namespace metapo {

// One rank's share of a model (DESIGN §4): its pipeline stage (pipeline_stages(layers, topo.pp,
// pp_layers)[topo.pp_rank]), split over topo.tp_comm(), and the rank's stage_shard_map shard of the
// parameters; with tp = pp = 1 the whole model (no communicator, exactly the single-process model).
// Every rank must be handed the same full buffer. The communicators are the model's own (Comm::dup of
// the Topology's, so its traffic is counted apart from the rest), members so they live as long as the
// model that borrows them; making the model is collective over the world.
struct ShardedModel {
  LlamaConfig config;           // the whole model's
  std::unique_ptr<Comm> tp;     // null when topo.tp == 1
  std::unique_ptr<Comm> pp;     // the pipeline (this rank's peers in the other stages); null when pp == 1
  std::unique_ptr<Comm> mp;     // the whole replica (TP x PP); null when tp == pp == 1
  std::unique_ptr<LlamaModel<float>> model;
  std::vector<float> params;    // the local layout (model->layout().total() elements)
  std::vector<TpCopy> shard_map;  // stage_shard_map of this rank (empty when tp == pp == 1)
  MemoryHandle params_mem{Mem::Params};  // params, counted by the accountant (core/memory.h)
  // On a device (place_on_device): its context and the parameters' copy there, which the model reads;
  // for training also the gradient's copy there, which the backward writes.
  std::unique_ptr<ops::DeviceContext> device;
  ops::DeviceArray<float> device_params, device_grads;
  // The parameters as the model reads them: the device copy, or params on the CPU.
  const float* model_params() const { return device ? device_params.data() : params.data(); }
  // Where the model's backward writes the gradient: the device copy, or the caller's host buffer.
  float* model_grads(float* host) { return device ? device_grads.data() : host; }
  // Where the optimizer runs on the host (several data-parallel ranks: ZeRO-1 over MPI), params is the
  // master: after it changed (an optimizer step, a checkpoint load) params_to_device copies it to the
  // device, and after a backward grads_to_host copies the gradient [0, layout total) into host.
  // Where the optimizer runs on the device too (train/zero.h place_on_device), the device copy is the
  // master and params_to_host refreshes params before a checkpoint or the final model is written.
  // All three do nothing on the CPU.
  void params_to_device();
  void grads_to_host(float* host);
  void params_to_host();
};

// Moves a whole-model ShardedModel (tp = pp = 1) onto a device: the model is made again with the
// device's context and the parameters copied there; params keeps the host copy. `training` also
// allocates the gradient's device copy. Throws one line naming `option` for a device this build or
// machine lacks, or a TP / PP layout. The model's settings (recompute, precision) are those of a new
// model: set them after.
//
// For the tests, METAPO_STAGE_ON_CPU=1 in the environment takes this path for Device::CPU too (whole
// models only): the "device" copies are then host memory, so the CPU suite checks that every change
// of the parameters reaches the copy the model reads and every gradient comes back (the run must be
// bit-identical to the unstaged one).
void place_on_device(ShardedModel& sm, Device d, const char* option = "--device", bool training = false);
// Whether place_on_device moves a whole model (tp = pp = 1) for d: any device but the CPU, and the CPU
// too under METAPO_STAGE_ON_CPU=1.
bool moves_to_device(Device d);
// `full` is consumed (moved from when tp == pp == 1, released otherwise) so a rank does not keep both.
ShardedModel shard_model(const LlamaConfig& c, std::vector<float>&& full, const Topology& topo,
                         const std::vector<int64_t>& pp_layers = {});

// The same shard read straight from a model directory: each rank reads only the byte ranges of its
// own runs (HfModelReader::read_runs), so its peak memory is its shard plus the readers' bounded
// staging, never the whole model (DESIGN §7b).
ShardedModel load_sharded_model(const std::string& dir, const Topology& topo,
                                const std::vector<int64_t>& pp_layers = {});
// From a directory opened (and its tensors checked) before. padded_size > the local layout's total:
// params is allocated that long at once (zeros past the layout: ZeRO-1's padding), so the trainer
// never grows it (which would hold the old and the new buffer at once).
ShardedModel load_sharded_model(const HfModelReader& reader, const Topology& topo,
                                const std::vector<int64_t>& pp_layers = {}, size_t padded_size = 0);

}  // namespace metapo
