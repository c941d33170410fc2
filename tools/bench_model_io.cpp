// Loading and saving a model under a parallel layout, per rank: wall time and peak resident memory
// (run by tools/bench-model-io.sh; built as build/tools/bench_model_io).
//
//   mpirun -np R bench_model_io MODEL_DIR OUT_DIR TP PP sharded|full
//
// sharded: what metapo does (DESIGN §7b): load_sharded_model reads only this rank's byte ranges
//          (HfModelReader::read_runs), and the save writes each rank's runs into the model files
//          (save_hf_model_parallel over one replica), as `train` writes RUN/final.
// full:    the baseline before it: every rank reads and converts the whole model (load_hf_model)
//          and cuts its shard out (shard_model); the save assembles the whole model on every rank
//          of the replica (shard_gather) and the world root writes it (save_hf_model).
// Prints one line per rank: "rank R: load S s, peak RSS after load M MiB, save S s, peak RSS after
// save M MiB" (peak RSS: getrusage's ru_maxrss, the process's high-water mark), then rank 0 a JSON
// line with the maxima over the ranks.
#include <mpi.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "metapo/comm/topology.h"
#include "metapo/core/error.h"
#include "metapo/io/hf_model.h"
#include "metapo/train/sharded_model.h"

using namespace metapo;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double peak_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  try {
    MP_CHECK(argc == 6, "usage: mpirun -np R bench_model_io MODEL_DIR OUT_DIR TP PP sharded|full");
    const std::string model = argv[1], out = argv[2], mode = argv[5];
    MP_CHECK(mode == "sharded" || mode == "full", "mode ", mode, ": sharded or full");
    Topology topo = Topology::create(std::atoi(argv[3]), std::atoi(argv[4]));
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = now();
    ShardedModel sm;
    if (mode == "sharded") {
      sm = load_sharded_model(model, topo);
    } else {
      HfModel hf = load_hf_model(model);
      sm = shard_model(hf.config, std::move(hf.params), topo);
    }
    const double load_s = now() - t0, load_peak = peak_mib();
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = now();
    if (topo.dp_rank == 0) {
      std::vector<TpCopy> runs = sm.shard_map;
      if (!sm.mp)
        for (const TensorEntry& t : sm.model->layout().tensors()) runs.push_back({t.offset, t.offset, t.numel, false});
      if (mode == "sharded") {
        save_hf_model_parallel(out, sm.config, runs, topo.tp_rank == 0, sm.params.data(), "bfloat16", topo.mp_comm());
      } else {
        const size_t n = ParamLayout(sm.config).total();
        std::vector<float> full(n);
        if (sm.mp)
          shard_gather(sm.shard_map, n, topo.tp_rank == 0, *sm.mp, sm.params.data(), full.data());
        else
          full.assign(sm.params.begin(), sm.params.begin() + long(n));
        if (topo.is_root()) save_hf_model(out, sm.config, full, "bfloat16");
      }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    const double save_s = now() - t0, save_peak = peak_mib();
    std::printf("rank %d: load %.2f s, peak RSS after load %.0f MiB, save %.2f s, peak RSS after save %.0f MiB\n", rank,
                load_s, load_peak, save_s, save_peak);
    std::fflush(stdout);
    double m[4] = {load_s, load_peak, save_s, save_peak};
    MPI_Allreduce(MPI_IN_PLACE, m, 4, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0)
      std::printf("{\"params\": %zu, \"load_s\": %.3f, \"load_peak_mib\": %.0f, \"save_s\": %.3f, \"save_peak_mib\": %.0f}\n",
                  ParamLayout(sm.config).total(), m[0], m[1], m[2], m[3]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_model_io: error: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return 0;
}
