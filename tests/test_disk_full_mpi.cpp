// A checkpoint file whose writing fills the disk (io/checkpoint.h), under `mpirun -np 1, 2, 3` in a
// small tmpfs that tests/cli/disk_full.sh mounts and names in METAPO_FULL_DIR. The last rank writes
// more than the file system holds; every rank must learn of it at close() with that rank's own line
// (naming the array and the room left), the file's space must be given back and its reserve gone,
// and HDF5 must go on working: a small checkpoint written next in the same directory reads back,
// and the program ends through MPI_Finalize without a crash (the script checks the exit status).
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "metapo/comm/mpi_comm.h"
#include "metapo/core/error.h"
#include "metapo/io/checkpoint.h"
#include "mpi_test_env.h"

using namespace metapo;
using metapo::testing_mpi::all_ranks;
using metapo::testing_mpi::world_rank;
using metapo::testing_mpi::world_size;
namespace fs = std::filesystem;

namespace {

MpiComm& world() {
  static MpiComm w(MPI_COMM_WORLD);
  return w;
}

std::string full_dir() {
  const char* d = std::getenv("METAPO_FULL_DIR");
  return d ? d : "";
}

// Equal on every rank (the same length and the same bytes).
bool same_on_every_rank(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  uint64_t lo = h, hi = h;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
  return lo == hi;
}

}  // namespace

TEST(DiskFullMpi, AFailedTransferFailsCloseOnEveryRankWithTheFailingRanksLineAndHdf5GoesOn) {
  REQUIRE_MPI("tests/cli/disk_full.sh");
  const std::string dir = full_dir();
  ASSERT_FALSE(dir.empty()) << "METAPO_FULL_DIR names the small file system (tests/cli/disk_full.sh)";
  const int rank = world_rank(), last = world_size() - 1;
  uint64_t room = free_bytes(dir);
  MPI_Bcast(&room, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  ASSERT_LT(room, uint64_t(256) << 20) << dir << " is not a small file system";
  // Four arrays of half the free room each: the last rank writes them, the others a small one.
  const size_t n = size_t(room / 2 / sizeof(float));
  std::vector<float> big(rank == last ? n : 1, 1.5f), small(64, 2.5f);
  const std::string path = dir + "/full-" + std::to_string(world_size()) + ".h5.partial";
  std::string what;
  try {
    CheckpointFile f = CheckpointFile::create(path, world());
    f.write<float>("/small", {uint64_t(small.size()) * world_size()},
                   {{uint64_t(rank) * small.size(), small.size(), 0, true}}, small.data(), true);
    for (int k = 0; k < 4; ++k)
      f.write<float>("/big/" + std::to_string(k), {n}, rank == last ? std::vector<FlatRun>{{0, n, 0, true}}
                                                                    : std::vector<FlatRun>{},
                     big.data(), rank == last);
    f.close();
  } catch (const Error& e) {
    what = e.what();
  }
  EXPECT_TRUE(all_ranks(what.find(path + ": writing /big/") != std::string::npos)) << "[rank " << rank << "] " << what;
  EXPECT_TRUE(all_ranks(what.find("had 0.0 MiB free") != std::string::npos)) << what;
  EXPECT_TRUE(same_on_every_rank(what)) << what;
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    std::error_code ec;
    // Cut to zero length, then extended without data by HDF5's close (a sparse file).
    EXPECT_GT(free_bytes(dir), room / 10 * 9) << "the abandoned file's space is given back";
    EXPECT_FALSE(fs::exists(path + ".reserve")) << "the metadata's reserve is given back";
    fs::remove(path, ec);
  }
  MPI_Barrier(MPI_COMM_WORLD);

  // HDF5 goes on: a small checkpoint in the same directory, written and read back.
  const std::string ok_path = dir + "/after-" + std::to_string(world_size()) + ".h5";
  {
    CheckpointFile f = CheckpointFile::create(ok_path, world());
    f.write<float>("/small", {uint64_t(small.size()) * world_size()},
                   {{uint64_t(rank) * small.size(), small.size(), 0, true}}, small.data(), true);
    f.write_int("/state/n", 7);
    f.close();
  }
  {
    CheckpointFile f = CheckpointFile::open(ok_path, world());
    std::vector<float> got(small.size() * size_t(world_size()));
    f.read<float>("/small", {uint64_t(got.size())}, {{0, got.size(), 0, rank == 0}}, got.data(), true);
    EXPECT_EQ(f.read_int("/state/n"), 7);
    f.close();
    for (float x : got) EXPECT_EQ(x, 2.5f);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) fs::remove(ok_path);
}
