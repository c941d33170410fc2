// The checkpoint file's write speed beside dd in one process, interleaved, each write into warm page
// cache (run by tools/bench-checkpoint.sh; built as build/tools/bench_checkpoint_io).
//
//   mpirun -np R bench_checkpoint_io PRESET.ini DIR REPS
//
// The training run measures the whole path but cannot choose the page-cache pages its checkpoint
// lands in; on a virtual machine whose balloon reports free pages to the host, pages the host took
// back cost 3-5x more to write into than pages freed a moment before. Here every timed write, the
// checkpoint's and dd's alike, follows a priming write and delete of a file of the same size by rank
// 0, so both go into pages freed just before: the comparison of the I/O path itself.
//
// The arrays are a data-parallel run's checkpoint of the model in PRESET.ini, as save_checkpoint lays
// them out: /model/<tensor> written by each rank's ZeRO-1 window [r n / R, (r + 1) n / R) of the flat
// parameter vector (one replica shared by all ranks), /optimizer/{exp_avg,exp_avg_sq}/<tensor> the
// same way, checksums included, then close (collective) and fsync. dd writes the same number of bytes
// with bs=4M conv=fsync. Prints one line per rep and a summary line with the medians.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "metapo/comm/mpi_comm.h"
#include "metapo/core/error.h"
#include "metapo/io/checkpoint.h"
#include "metapo/model/config.h"
#include "metapo/model/layout.h"

using namespace metapo;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[(v.size() - 1) / 2];
}

// This rank's window [lo, hi) of every tensor, as runs into a buffer holding the window.
std::vector<FlatRun> window_runs(const TensorEntry& e, size_t lo, size_t hi) {
  const size_t a = std::max(lo, e.offset), b = std::min(hi, e.offset + e.numel);
  if (a >= b) return {};
  return {{a - e.offset, b - a, a - lo, true}};
}

std::vector<uint64_t> dims_of(const TensorEntry& e) { return std::vector<uint64_t>(e.shape.begin(), e.shape.end()); }

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  try {
    MpiComm world(MPI_COMM_WORLD);
    MP_CHECK(argc == 4, "usage: mpirun -np R bench_checkpoint_io PRESET.ini DIR REPS");
    const LlamaConfig config = config_from_ini(argv[1]);
    const std::string dir = argv[2];
    const int reps = std::atoi(argv[3]);
    MP_CHECK(reps >= 1, "REPS must be >= 1");
    const ParamLayout lay(config);
    const size_t n = lay.total(), lo = n * size_t(rank) / size_t(ranks), hi = n * size_t(rank + 1) / size_t(ranks);
    std::vector<float> params(hi - lo), m(hi - lo), v(hi - lo);
    for (size_t i = 0; i < params.size(); ++i)
      params[i] = 1e-3f * float((lo + i) % 1009), m[i] = 1e-5f * float((lo + i) % 997), v[i] = 1e-9f * float((lo + i) % 991);
    const double bytes = 3.0 * double(n) * sizeof(float);
    const std::string path = dir + "/bench_io.h5", dd_path = dir + "/bench_io_dd.bin", prime = dir + "/bench_io_prime.bin";
    const std::string count = std::to_string(size_t(bytes) / 4194304 + 1);
    auto run_root = [&](const std::string& cmd) {
      int rc = 0;
      if (rank == 0) rc = std::system(cmd.c_str());
      MPI_Bcast(&rc, 1, MPI_INT, 0, MPI_COMM_WORLD);
      MP_CHECK(rc == 0, "failed: ", cmd);
    };
    const std::string prime_cmd = "dd if=/dev/zero of=" + prime + " bs=4M count=" + count + " status=none && rm -f " + prime;
    std::vector<double> ck, dd;
    for (int rep = 0; rep < reps; ++rep) {
      run_root(prime_cmd);
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = now();
      {
        CheckpointFile f = CheckpointFile::create(path, world);
        for (const TensorEntry& e : lay.tensors()) f.write<float>("/model/" + e.name, dims_of(e), window_runs(e, lo, hi), params.data(), true);
        for (const char* which : {"exp_avg", "exp_avg_sq"})
          for (const TensorEntry& e : lay.tensors())
            f.write<float>(std::string("/optimizer/") + which + "/" + e.name, dims_of(e), window_runs(e, lo, hi),
                           std::string(which) == "exp_avg" ? m.data() : v.data(), true);
        f.write_int("/state/step", rep);
        f.close();
      }
      const double t1 = now();
      run_root("rm -f " + path);
      run_root(prime_cmd);
      const double t2 = now();
      run_root("dd if=/dev/zero of=" + dd_path + " bs=4M count=" + count + " conv=fsync status=none");
      const double t3 = now();
      run_root("rm -f " + dd_path);
      ck.push_back(bytes / (t1 - t0) / 1e6), dd.push_back(double(std::stoull(count)) * 4194304.0 / (t3 - t2) / 1e6);
      if (rank == 0) std::printf("rep %d, %d rank(s): warm pages: checkpoint write %.0f MB/s, dd %.0f MB/s\n", rep + 1, ranks, ck.back(), dd.back());
    }
    if (rank == 0)
      std::printf("summary %d %.0f %.0f %.0f\n", ranks, bytes / 1e6, median(ck), median(dd));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_checkpoint_io: error: %s\n", e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return 0;
}
