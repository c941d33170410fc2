#include "metapo/core/threads.h"

#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace metapo {

namespace {

// Cores this process may run on (its CPU affinity mask; mpirun binds each rank, e.g. OpenMPI binds
// to one core when it starts two or fewer ranks). 0 when unknown.
int affinity_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
  return CPU_COUNT(&set);
}

}  // namespace

int configure_threads(int ranks_on_node) {
  int n = 0;
  if (const char* env = std::getenv("OMP_NUM_THREADS")) n = std::atoi(env);
  if (n <= 0) {
    const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
    n = std::max(1, hw / std::max(1, ranks_on_node));
  }
  // Never more threads than the cores we are bound to, OMP_NUM_THREADS or not: two threads on one
  // core run the GEMMs at well under half speed (spinning OpenMP barriers; measured 1.55x slower).
  if (const int bound = affinity_cores(); bound > 0) n = std::min(n, bound);
  omp_set_num_threads(n);
  return n;
}

}  // namespace metapo
