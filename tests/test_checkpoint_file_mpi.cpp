// The checkpoint file (io/checkpoint.h) over several ranks: run by tests/cli/checkpoint_file_mpi.sh
// under `mpirun -np 1, 2, 3`. Arrays are written from one random partition of their elements into
// runs over the ranks (partial rows, whole rows, several runs per rank, ranks with nothing) and read
// back under another (overlapping runs included); the values must come back bit for bit, and the
// stored checksum must equal a sum over every element computed on one rank from checksum_term. A
// flipped byte in an array's data must fail the read on every rank; a truncated file must fail to
// open. Run bare (as CTest's discovery does), the tests skip.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "metapo/comm/mpi_comm.h"
#include "metapo/core/error.h"
#include "metapo/core/progress.h"
#include "metapo/core/rng.h"
#include "metapo/io/checkpoint.h"
#include "mpi_test_env.h"

using namespace metapo;
using metapo::testing_mpi::all_ranks;
using metapo::testing_mpi::world_rank;
using metapo::testing_mpi::world_size;
using std::vector;

namespace {

// MPI_COMM_WORLD as a Comm (made on first use, after MPI is up).
MpiComm& world() {
  static MpiComm w(MPI_COMM_WORLD);
  return w;
}

// A file name every rank agrees on, in the test's working directory (the CLI script's temp dir).
std::string shared_name(const std::string& stem) {
  return stem + "-" + std::to_string(world_size()) + "-" + ::testing::UnitTest::GetInstance()->current_test_info()->name() +
         ".h5";
}

template <typename T>
vector<T> random_values(size_t n, uint32_t id) {
  Philox r = make_rng(11, 0, id, RngPurpose::Bench);
  vector<T> v(n);
  for (T& x : v) x = T(4.0 * r.uniform() - 2.0);
  return v;
}

// The same random partition of [0, n) on every rank: cut points, each piece given to a random rank
// (possibly none to some rank); this rank's pieces as runs into a buffer holding the whole array.
vector<FlatRun> partition(size_t n, uint32_t seed, int rank, int ranks) {
  Philox r = make_rng(seed, 1, 0, RngPurpose::Bench);
  vector<size_t> cuts = {0, n};
  for (int k = 0; k < 9; ++k) cuts.push_back(size_t(r.uniform() * double(n)));
  std::sort(cuts.begin(), cuts.end());
  vector<FlatRun> runs;
  for (size_t k = 0; k + 1 < cuts.size(); ++k) {
    const int owner = int(r.uniform() * ranks) % ranks;
    if (owner == rank && cuts[k + 1] > cuts[k]) runs.push_back({cuts[k], cuts[k + 1] - cuts[k], cuts[k], true});
  }
  std::reverse(runs.begin(), runs.end());  // the writer must not depend on the runs' order
  return runs;
}

template <typename T>
uint64_t reference_checksum(const vector<T>& v) {
  uint64_t sum = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    uint64_t bits = 0;
    std::memcpy(&bits, &v[i], sizeof(T));
    sum += checksum_term(i, bits);
  }
  return sum;
}

uint64_t stored_checksum(const std::string& path, const std::string& name) {
  const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  const hid_t ds = H5Dopen2(f, name.c_str(), H5P_DEFAULT);
  const hid_t a = H5Aopen(ds, "checksum", H5P_DEFAULT);
  uint64_t v = 0;
  H5Aread(a, H5T_NATIVE_UINT64, &v);
  H5Aclose(a), H5Dclose(ds), H5Fclose(f);
  return v;
}

const vector<uint64_t> kMatrix = {37, 23}, kVector = {301};

void write_file(const std::string& path, const vector<float>& m, const vector<double>& v, uint32_t seed) {
  const int rank = world_rank(), ranks = world_size();
  CheckpointFile f = CheckpointFile::create(path, world());
  f.write<float>("/a/matrix", kMatrix, partition(m.size(), seed, rank, ranks), m.data(), true);
  // The whole vector from every rank, only rank 0's counted (a replicated array).
  f.write<double>("/b/c/vector", kVector, {{0, v.size(), 0, true}}, v.data(), rank == 0);
  f.write_int("/state/n", 42);
  f.write_string("/state/text", "{\"k\": 1}");
  f.close();
}

TEST(CheckpointFileMpi, AnyPartitionReadsBackBitForBitWithTheChecksumOfOneRank) {
  REQUIRE_MPI("tests/cli/checkpoint_file_mpi.sh");
  const int rank = world_rank(), ranks = world_size();
  const vector<float> m = random_values<float>(kMatrix[0] * kMatrix[1], 1);
  const vector<double> v = random_values<double>(kVector[0], 2);
  const std::string path = shared_name("part");
  write_file(path, m, v, 3);
  if (rank == 0) {
    EXPECT_EQ(stored_checksum(path, "/a/matrix"), reference_checksum(m));
    EXPECT_EQ(stored_checksum(path, "/b/c/vector"), reference_checksum(v));
  }
  // Read under other partitions; each rank also reads one run twice over (overlapping runs).
  for (uint32_t seed : {4u, 5u}) {
    vector<float> got(m.size(), -1.0f);
    vector<FlatRun> runs = partition(m.size(), seed, rank, ranks);
    runs.push_back({0, 7, 0, false});  // an overlapping copy, not counted
    vector<double> gv(v.size(), -1.0);
    CheckpointFile f = CheckpointFile::open(path, world());
    EXPECT_EQ(f.shape("/a/matrix"), kMatrix);
    f.read<float>("/a/matrix", kMatrix, runs, got.data(), true);
    f.read<double>("/b/c/vector", kVector, {{0, v.size(), 0, true}}, gv.data(), rank == ranks - 1);
    EXPECT_EQ(f.read_int("/state/n"), 42);
    EXPECT_EQ(f.read_string("/state/text"), "{\"k\": 1}");
    EXPECT_FALSE(f.exists("/a/nothing"));
    EXPECT_FALSE(f.exists("/none/matrix"));
    EXPECT_NO_THROW(f.close());
    for (const FlatRun& r : runs)
      EXPECT_EQ(std::memcmp(got.data() + r.at, m.data() + r.at, r.count * sizeof(float)), 0) << "run at " << r.offset;
    EXPECT_EQ(std::memcmp(gv.data(), v.data(), v.size() * sizeof(double)), 0);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) std::filesystem::remove(path);
}

// Writing and reading a training state reports progress to the hang watchdog (core/progress.h) per
// array on every rank, so a long checkpoint load or save is not taken for a hang.
TEST(CheckpointFileMpi, WritesAndReadsReportProgressOnEveryRank) {
  REQUIRE_MPI("tests/cli/checkpoint_file_mpi.sh");
  const int rank = world_rank(), ranks = world_size();
  const vector<float> m = random_values<float>(kMatrix[0] * kMatrix[1], 1);
  const vector<double> v = random_values<double>(kVector[0], 2);
  const std::string path = shared_name("progress");
  int ticks = 0;
  set_progress_hook([&ticks] { ++ticks; });
  write_file(path, m, v, 3);
  EXPECT_GE(ticks, 2) << "two arrays written";
  ticks = 0;
  {
    vector<float> got(m.size());
    CheckpointFile f = CheckpointFile::open(path, world());
    f.read<float>("/a/matrix", kMatrix, partition(m.size(), 4, rank, ranks), got.data(), true);
    f.close();
  }
  EXPECT_GE(ticks, 1) << "one array read";
  set_progress_hook({});
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) std::filesystem::remove(path);
}

TEST(CheckpointFileMpi, AFlippedByteFailsTheReadOnEveryRank) {
  REQUIRE_MPI("tests/cli/checkpoint_file_mpi.sh");
  const int rank = world_rank(), ranks = world_size();
  const vector<float> m = random_values<float>(kMatrix[0] * kMatrix[1], 6);
  const vector<double> v = random_values<double>(kVector[0], 7);
  const std::string path = shared_name("flip");
  write_file(path, m, v, 8);
  if (rank == 0) {  // flip one bit of element 100 of /a/matrix, found through its offset in the file
    const hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    const hid_t ds = H5Dopen2(f, "/a/matrix", H5P_DEFAULT);
    const haddr_t at = H5Dget_offset(ds);
    H5Dclose(ds), H5Fclose(f);
    ASSERT_NE(at, HADDR_UNDEF);
    std::FILE* fp = std::fopen(path.c_str(), "r+b");
    ASSERT_NE(fp, nullptr);
    unsigned char b = 0;
    std::fseek(fp, long(at + 100 * sizeof(float) + 1), SEEK_SET);
    ASSERT_EQ(std::fread(&b, 1, 1, fp), 1u);
    b ^= 0x10;
    std::fseek(fp, long(at + 100 * sizeof(float) + 1), SEEK_SET);
    std::fwrite(&b, 1, 1, fp);
    std::fclose(fp);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  vector<float> got(m.size());
  std::string what;
  try {
    CheckpointFile f = CheckpointFile::open(path, world());
    f.read<float>("/a/matrix", kMatrix, partition(m.size(), 9, rank, ranks), got.data(), true);
    f.close();
  } catch (const Error& e) {
    what = e.what();
  }
  EXPECT_TRUE(all_ranks(what.find("/a/matrix is corrupt (checksum mismatch)") != std::string::npos)) << what;
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) std::filesystem::remove(path);
}

TEST(CheckpointFileMpi, ATruncatedFileFailsToOpenOnEveryRank) {
  REQUIRE_MPI("tests/cli/checkpoint_file_mpi.sh");
  const int rank = world_rank();
  const vector<float> m = random_values<float>(kMatrix[0] * kMatrix[1], 10);
  const vector<double> v = random_values<double>(kVector[0], 11);
  const std::string path = shared_name("trunc");
  write_file(path, m, v, 12);
  if (rank == 0) std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
  MPI_Barrier(MPI_COMM_WORLD);
  std::string what;
  try {
    CheckpointFile f = CheckpointFile::open(path, world());
    vector<float> got(m.size());
    f.read<float>("/a/matrix", kMatrix, {{0, m.size(), 0, rank == 0}}, got.data(), true);
    f.close();
  } catch (const Error& e) {
    what = e.what();
  }
  EXPECT_TRUE(all_ranks(what.find(path) != std::string::npos && what.find("truncated or corrupt") != std::string::npos))
      << what;
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) std::filesystem::remove(path);
}

// The checksum's element term: for a given index a bijection of the bits, so changing any one element
// changes the sum; swapping two different elements changes it too.
TEST(CheckpointFileMpi, TheChecksumSeesEveryOneElementChangeAndSwaps) {
  REQUIRE_MPI("tests/cli/checkpoint_file_mpi.sh");
  Philox r = make_rng(13, 0, uint32_t(world_rank()), RngPurpose::Bench);
  for (int k = 0; k < 20000; ++k) {
    const uint64_t i = uint64_t(r.uniform() * 1e12), j = i + 1 + uint64_t(r.uniform() * 1e6);
    const uint64_t a = uint64_t(r.uniform() * 4294967296.0), b = a ^ (uint64_t(1) << (k % 32));
    ASSERT_NE(checksum_term(i, a), checksum_term(i, b)) << i << " " << a;
    ASSERT_NE(checksum_term(i, a) + checksum_term(j, b), checksum_term(i, b) + checksum_term(j, a)) << i << " " << j;
  }
}

}  // namespace
