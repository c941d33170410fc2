// Shared scaffolding of the *_mpi test programs (run by tests/cli/<unit>.sh under mpirun): MPI is
// initialized before the first test and finalized after the last when a launcher started the program;
// run bare (as CTest's test discovery does) every test skips.
#pragma once
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>
#include <vector>

namespace metapo::testing_mpi {

inline bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

class MpiEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    if (launched_by_mpirun()) MPI_Init(nullptr, nullptr);
  }
  void TearDown() override {
    int init = 0;
    MPI_Initialized(&init);
    if (init) MPI_Finalize();
  }
};

[[maybe_unused]] inline const auto* const kMpiEnvironment =
    ::testing::AddGlobalTestEnvironment(new MpiEnvironment);

inline bool mpi_running() {
  int init = 0;
  MPI_Initialized(&init);
  return init != 0;
}

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

inline int world_size() {
  int p = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  return p;
}

// Whether a condition holds on every rank (so all ranks report the same verdict).
inline bool all_ranks(bool ok) {
  int v = ok ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return v == 1;
}

// Whether v is bit-identical on every rank (element-wise max == min over MPI_COMM_WORLD).
template <typename T>
bool same_on_all_ranks(const std::vector<T>& v) {
  std::vector<double> hi(v.begin(), v.end()), lo = hi;
  MPI_Allreduce(MPI_IN_PLACE, hi.data(), int(hi.size()), MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, lo.data(), int(lo.size()), MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
  return all_ranks(hi == lo);
}

}  // namespace metapo::testing_mpi

#define REQUIRE_MPI(script) \
  if (!metapo::testing_mpi::mpi_running()) GTEST_SKIP() << "needs mpirun: run " script
