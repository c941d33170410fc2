#include "metapo/core/threads.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace metapo {

int configure_threads(int ranks_on_node) {
  int n = 0;
  if (const char* env = std::getenv("OMP_NUM_THREADS")) n = std::atoi(env);
  if (n <= 0) {
    const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
    n = std::max(1, hw / std::max(1, ranks_on_node));
  }
  omp_set_num_threads(n);
  return n;
}

}  // namespace metapo
