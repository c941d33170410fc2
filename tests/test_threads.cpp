// configure_threads: OMP_NUM_THREADS wins, otherwise the node's share of cores; either capped by the
// cores the process is bound to (mpirun -np 1 binds a lone rank to one core).
#include <gtest/gtest.h>
#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>

#include "metapo/core/threads.h"

namespace {

struct EnvGuard {
  std::string saved;
  bool had = false;
  EnvGuard() {
    if (const char* v = std::getenv("OMP_NUM_THREADS")) saved = v, had = true;
  }
  ~EnvGuard() {
    if (had) setenv("OMP_NUM_THREADS", saved.c_str(), 1);
    else unsetenv("OMP_NUM_THREADS");
  }
};

struct AffinityGuard {
  cpu_set_t saved;
  AffinityGuard() { sched_getaffinity(0, sizeof saved, &saved); }
  ~AffinityGuard() { sched_setaffinity(0, sizeof saved, &saved); }
};

}  // namespace

TEST(Threads, EnvironmentWins) {
  EnvGuard env;
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  const int bound = CPU_COUNT(&set);
  setenv("OMP_NUM_THREADS", "1", 1);
  EXPECT_EQ(metapo::configure_threads(1), 1);
  setenv("OMP_NUM_THREADS", "3", 1);
  EXPECT_EQ(metapo::configure_threads(1), std::min(3, bound));
  EXPECT_EQ(omp_get_max_threads(), std::min(3, bound));
}

// OMP_NUM_THREADS is capped by the CPU mask too (Slurm's mpirun binding a rank to one core while the
// job script sets OMP_NUM_THREADS to --cpus-per-task).
TEST(Threads, EnvironmentCappedByTheCpuMask) {
  EnvGuard env;
  AffinityGuard aff;
  setenv("OMP_NUM_THREADS", "4", 1);
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(sched_getcpu(), &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  EXPECT_EQ(metapo::configure_threads(1), 1);
}

TEST(Threads, ShareOfTheNode) {
  EnvGuard env;
  unsetenv("OMP_NUM_THREADS");
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  const int hw = int(std::thread::hardware_concurrency()), bound = CPU_COUNT(&set);
  const int expect = std::min(std::max(1, hw / 2), bound);
  EXPECT_EQ(metapo::configure_threads(2), expect);
  EXPECT_EQ(metapo::configure_threads(1000), 1);
}

TEST(Threads, CappedByTheCpuMask) {
  EnvGuard env;
  AffinityGuard aff;
  unsetenv("OMP_NUM_THREADS");
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(sched_getcpu(), &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  EXPECT_EQ(metapo::configure_threads(1), 1);
}
