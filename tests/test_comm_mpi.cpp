// The typed and asynchronous Comm calls of MpiComm over several ranks: run by tests/cli/comm_mpi.sh
// under `mpirun -np 1, 2, 3`, each case with MPI's one-call limit and with 8-byte messages (every
// transfer split into pieces). Reductions must be exact where the values make them exact, identical
// on every rank, bf16 sums rounded once from fp32; requests, the non-blocking barrier, split, dup and
// gather behave as comm.h says, and the traffic counts are the payloads.
#include <gtest/gtest.h>
#include <mpi.h>

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cmath>
#include <cstdint>
#include <vector>

#include "metapo/comm/mpi_comm.h"
#include "metapo/core/half.h"
#include "metapo/core/rng.h"
#include "mpi_test_env.h"

using namespace metapo;
using metapo::testing_mpi::all_ranks;
using metapo::testing_mpi::same_on_all_ranks;
using std::vector;

namespace {

class CommMpi : public ::testing::TestWithParam<size_t> {};

TEST_P(CommMpi, FloatSumsAreIdenticalOnEveryRank) {
  REQUIRE_MPI("tests/cli/comm_mpi.sh");
  MpiComm comm(MPI_COMM_WORLD, GetParam());
  const int p = comm.size(), r = comm.rank();
  const size_t n = 37;
  // Random values: the sum is rounded, but the same on every rank, and the float shorthand is the
  // typed call.
  Philox rng = make_rng(11, 0, uint32_t(r), RngPurpose::Bench);
  vector<float> f(n);
  vector<double> d(n), want(n, 0.0);
  for (size_t i = 0; i < n; ++i) f[i] = 2.0f * rng.uniform() - 1.0f, d[i] = f[i];
  vector<float> g = f;
  comm.allreduce(f.data(), n, DType::F32, ReduceOp::Sum);
  comm.allreduce_sum(g.data(), n);
  EXPECT_EQ(f, g);
  EXPECT_TRUE(same_on_all_ranks(f));
  comm.allreduce(d.data(), n, DType::F64, ReduceOp::Sum);
  EXPECT_TRUE(same_on_all_ranks(d));
  for (size_t i = 0; i < n; ++i) EXPECT_NEAR(f[i], d[i], 1e-5) << i;
  // Exact values: dyadic rationals sum exactly in any order.
  vector<double> e(n);
  for (size_t i = 0; i < n; ++i) e[i] = double(i) * 0.25 + r;
  comm.allreduce(e.data(), n, DType::F64, ReduceOp::Sum);
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(e[i], double(i) * 0.25 * p + p * (p - 1) / 2.0) << i;
  // Max and min of doubles.
  vector<double> hi(n), lo(n);
  for (size_t i = 0; i < n; ++i) hi[i] = lo[i] = double((int(i) + r) % p) - 0.5;
  comm.allreduce_max(hi.data(), n);
  comm.allreduce_min(lo.data(), n);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(hi[i], p - 1.5);
    EXPECT_EQ(lo[i], -0.5);
  }
}

TEST_P(CommMpi, Bf16SumsAreFp32SumsRoundedOnce) {
  REQUIRE_MPI("tests/cli/comm_mpi.sh");
  MpiComm comm(MPI_COMM_WORLD, GetParam());
  const int p = comm.size(), r = comm.rank();
  const size_t n = 21;
  // Element i: rank 0 holds 256 + 2i, the others 1 each. The fp32 sum 256 + 2i + (p - 1) is exact;
  // bf16 keeps 8 significant bits, so at 3 ranks 258 + 2i is the answer, where adding one rank at a
  // time in bf16 would give 256 + 2i (each + 1 rounded away, ties to even).
  vector<uint16_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = f32_to_bf16(r == 0 ? 256.0f + 2.0f * float(i) : 1.0f);
  comm.allreduce(v.data(), n, DType::BF16, ReduceOp::Sum);
  for (size_t i = 0; i < n; ++i)
    EXPECT_EQ(v[i], f32_to_bf16(256.0f + 2.0f * float(i) + float(p - 1))) << i;
  EXPECT_TRUE(same_on_all_ranks(v));
  // Max and min, staged the same way, are exact.
  vector<uint16_t> hi(n), lo(n);
  for (size_t i = 0; i < n; ++i) hi[i] = lo[i] = f32_to_bf16(float(r) * 0.5f - float(i) - 1.0f);
  comm.allreduce(hi.data(), n, DType::BF16, ReduceOp::Max);
  comm.allreduce(lo.data(), n, DType::BF16, ReduceOp::Min);
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(hi[i], f32_to_bf16(float(p - 1) * 0.5f - float(i) - 1.0f));
    EXPECT_EQ(lo[i], f32_to_bf16(-float(i) - 1.0f));
  }
  // Reduce-scatter of bf16: rank q's block holds q + 1 everywhere and rank 0 adds 256; the sums are
  // rounded once.
  const size_t block = 5;
  vector<uint16_t> send(size_t(p) * block), recv(block);
  for (size_t q = 0; q < size_t(p); ++q)
    for (size_t k = 0; k < block; ++k) send[q * block + k] = f32_to_bf16(r == 0 ? 256.0f : float(q + 1));
  comm.reduce_scatter_async(send.data(), recv.data(), block, DType::BF16, ReduceOp::Sum).wait();
  for (size_t k = 0; k < block; ++k) EXPECT_EQ(recv[k], f32_to_bf16(256.0f + float(r + 1) * float(p - 1))) << k;
  // All-gather of bf16 moves the bits.
  vector<uint16_t> all(size_t(p) * block, 0);
  for (size_t k = 0; k < block; ++k) all[size_t(r) * block + k] = uint16_t(1000 * r + int(k));
  comm.allgather_async(all.data(), block, DType::BF16).wait();
  for (size_t q = 0; q < size_t(p); ++q)
    for (size_t k = 0; k < block; ++k) EXPECT_EQ(all[q * block + k], uint16_t(1000 * q + k));
}

TEST_P(CommMpi, IntegerReductionsAreExact) {
  REQUIRE_MPI("tests/cli/comm_mpi.sh");
  MpiComm comm(MPI_COMM_WORLD, GetParam());
  const int p = comm.size(), r = comm.rank();
  const size_t n = 9;
  vector<int32_t> i32(n), i32min(n);
  vector<int64_t> i64(n);
  vector<uint64_t> u64(n);
  vector<uint8_t> u8(n), u8min(n);
  for (size_t i = 0; i < n; ++i) {
    i32[i] = i32min[i] = r == 1 ? -int32_t(i) - 5 : int32_t(r * 10 + int(i));
    i64[i] = (int64_t(1) << 40) * (r + 1) + int64_t(i);
    u64[i] = (uint64_t(1) << 63) + uint64_t(r) * 3 + i;
    u8[i] = u8min[i] = uint8_t(200 + r + i);
  }
  comm.allreduce(i32.data(), n, ReduceOp::Max);
  comm.allreduce(i32min.data(), n, DType::I32, ReduceOp::Min);
  comm.allreduce(i64.data(), n, ReduceOp::Sum);
  comm.allreduce(u64.data(), n, ReduceOp::Max);
  comm.allreduce(u8.data(), n, ReduceOp::Max);
  comm.allreduce(u8min.data(), n, ReduceOp::Min);
  for (size_t i = 0; i < n; ++i) {
    int32_t want_max = INT32_MIN;
    for (int q = 0; q < p; ++q) want_max = std::max(want_max, q == 1 ? -int32_t(i) - 5 : int32_t(q * 10 + int(i)));
    EXPECT_EQ(i32[i], want_max) << i;
    EXPECT_EQ(i32min[i], p > 1 ? -int32_t(i) - 5 : int32_t(i)) << i;
    EXPECT_EQ(i64[i], (int64_t(1) << 40) * (int64_t(p) * (p + 1) / 2) + int64_t(i) * p) << i;
    EXPECT_EQ(u64[i], (uint64_t(1) << 63) + uint64_t(p - 1) * 3 + i) << i;
    EXPECT_EQ(u8[i], uint8_t(200 + p - 1 + i)) << i;
    EXPECT_EQ(u8min[i], uint8_t(200 + i)) << i;
  }
  // Integer reduce-scatter: block q summed over ranks.
  const size_t block = 3;
  vector<int64_t> send(size_t(p) * block), recv(block);
  for (size_t q = 0; q < size_t(p); ++q)
    for (size_t k = 0; k < block; ++k) send[q * block + k] = int64_t(100 * q + k) + r;
  comm.reduce_scatter_async(send.data(), recv.data(), block, DType::I64, ReduceOp::Sum).wait();
  for (size_t k = 0; k < block; ++k) EXPECT_EQ(recv[k], int64_t(100 * r + k) * p + p * (p - 1) / 2);
}

TEST_P(CommMpi, CountsThePayload) {
  REQUIRE_MPI("tests/cli/comm_mpi.sh");
  MpiComm comm(MPI_COMM_WORLD, GetParam());
  const size_t p = size_t(comm.size());
  vector<uint16_t> b(10);
  vector<float> f(7);
  vector<int32_t> i(3);
  comm.allreduce(b.data(), b.size(), DType::BF16, ReduceOp::Sum);
  comm.allreduce_sum(f.data(), f.size());
  comm.allreduce(i.data(), i.size(), ReduceOp::Min);
  EXPECT_EQ(comm.volume()[CommOp::AllReduce], 10u * 2 + 7u * 4 + 3u * 4);
  EXPECT_EQ(comm.volume().calls[int(CommOp::AllReduce)], 3u);
  vector<uint16_t> rs(p * 4), out(4);
  comm.reduce_scatter_async(rs.data(), out.data(), 4, DType::BF16, ReduceOp::Sum).wait();
  EXPECT_EQ(comm.volume()[CommOp::ReduceScatter], p * 4 * 2);
  // Bookkeeping is not traffic.
  comm.barrier();
  comm.ibarrier().wait();
  std::unique_ptr<Comm> d = comm.dup();
  std::unique_ptr<Comm> s = comm.split(0, comm.rank());
  const CommVolume& v = comm.volume();
  uint64_t total = 0;
  for (int k = 0; k < kNumCommOps; ++k) total += v.bytes[k];
  EXPECT_EQ(total, 10u * 2 + 7u * 4 + 3u * 4 + p * 4 * 2);
  // The new communicators count their own traffic only.
  d->allreduce_sum(f.data(), f.size());
  EXPECT_EQ(d->volume()[CommOp::AllReduce], 7u * 4);
  EXPECT_EQ(comm.volume()[CommOp::AllReduce], 10u * 2 + 7u * 4 + 3u * 4);
  EXPECT_EQ(s->volume()[CommOp::AllReduce], 0u);
}

TEST_P(CommMpi, AsyncRequests) {
  REQUIRE_MPI("tests/cli/comm_mpi.sh");
  MpiComm comm(MPI_COMM_WORLD, GetParam());
  const int p = comm.size();
  vector<double> d(4, 1.0);
  CommRequest req = comm.allreduce_async(d.data(), d.size(), DType::F64, ReduceOp::Sum);
  req.wait();
  EXPECT_TRUE(req.done());
  EXPECT_TRUE(req.test());  // a complete request stays complete
  for (double x : d) EXPECT_EQ(x, double(p));
  // A request can be moved and waited through its new owner.
  CommRequest moved = std::move(req);
  moved.wait();
  EXPECT_TRUE(moved.done());
  EXPECT_TRUE(CommRequest().done());
}

TEST_P(CommMpi, IbarrierDoesNotBlock) {
  REQUIRE_MPI("tests/cli/comm_mpi.sh");
  MpiComm comm(MPI_COMM_WORLD, GetParam());
  const int p = comm.size(), r = comm.rank();
  // Rank 0 enters the barrier only after every other rank has entered it and seen it incomplete
  // (each tells rank 0 so by a message): no race, the first test() elsewhere must say "not yet".
  if (r != 0) {
    CommRequest req = comm.ibarrier();
    const bool early = req.test();
    EXPECT_FALSE(early);
    int token = 1;
    MPI_Send(&token, 1, MPI_INT, 0, 7, MPI_COMM_WORLD);
    while (!req.test()) ::usleep(200);
    EXPECT_TRUE(req.done());
  } else {
    for (int q = 1; q < p; ++q) {
      int token = 0;
      MPI_Recv(&token, 1, MPI_INT, q, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    CommRequest req = comm.ibarrier();
    req.wait();
    EXPECT_TRUE(req.done());
  }
}

TEST_P(CommMpi, SplitFormsGroupsByColourAndKey) {
  REQUIRE_MPI("tests/cli/comm_mpi.sh");
  MpiComm comm(MPI_COMM_WORLD, GetParam());
  const int p = comm.size(), r = comm.rank();
  // Even and odd ranks, ranked in reverse by key; with 3 ranks the last one joins no group.
  const bool out = p == 3 && r == 2;
  std::unique_ptr<Comm> g = comm.split(out ? Comm::kNoColor : r % 2, -r);
  ASSERT_EQ(g == nullptr, out);
  if (g) {
    int members = 0;
    for (int q = 0; q < p; ++q) members += (q % 2 == r % 2 && !(p == 3 && q == 2)) ? 1 : 0;
    EXPECT_EQ(g->size(), members);
    int above = 0;  // members with a larger world rank come first
    for (int q = r + 1; q < p; ++q) above += (q % 2 == r % 2 && !(p == 3 && q == 2)) ? 1 : 0;
    EXPECT_EQ(g->rank(), above);
    double x = double(r);
    g->allreduce_sum(&x, 1);
    double want = 0;
    for (int q = 0; q < p; ++q) want += (q % 2 == r % 2 && !(p == 3 && q == 2)) ? q : 0;
    EXPECT_EQ(x, want);
  }
  std::unique_ptr<Comm> d = comm.dup();
  EXPECT_EQ(d->size(), p);
  EXPECT_EQ(d->rank(), r);
  int64_t y = r;
  d->allreduce(&y, 1, ReduceOp::Sum);
  EXPECT_EQ(y, int64_t(p) * (p - 1) / 2);
  EXPECT_TRUE(all_ranks(true));
}

TEST_P(CommMpi, GatherToARoot) {
  REQUIRE_MPI("tests/cli/comm_mpi.sh");
  MpiComm comm(MPI_COMM_WORLD, GetParam());
  const int p = comm.size(), r = comm.rank();
  auto bytes_of = [](int q) { return q == 1 ? size_t(40) : size_t(3 * q + 1); };
  size_t total = 0;
  for (int q = 0; q < p; ++q) total += bytes_of(q);
  for (int root = 0; root < p; ++root) {
    // Rank q sends 3q + 1 bytes of value q (rank 1 sends a long message to reach the pieces).
    const size_t mine = r == 1 ? 40 : size_t(3 * r + 1);
    const vector<uint8_t> send(mine, uint8_t(r));
    vector<uint8_t> recv(5, 9);
    vector<size_t> counts(2, 9);
    comm.gather(send.data(), send.size(), recv, counts, root);
    if (r != root) {
      EXPECT_TRUE(recv.empty());
      EXPECT_TRUE(counts.empty());
      continue;
    }
    ASSERT_EQ(counts.size(), size_t(p));
    size_t at = 0;
    for (int q = 0; q < p; ++q) {
      const size_t n = q == 1 ? 40 : size_t(3 * q + 1);
      EXPECT_EQ(counts[size_t(q)], n);
      for (size_t k = 0; k < n; ++k) EXPECT_EQ(recv[at + k], uint8_t(q));
      at += n;
    }
    EXPECT_EQ(recv.size(), at);
  }
  // Counted as all-gather: the bytes gathered where this rank was the root, the bytes sent elsewhere.
  EXPECT_EQ(comm.volume()[CommOp::AllGather], total + size_t(p - 1) * bytes_of(r));
  EXPECT_EQ(comm.volume().calls[int(CommOp::AllGather)], uint64_t(p));
  // broadcast_string over the same communicator.
  const std::string s = broadcast_string(comm, r == p - 1 ? std::string(50, 'x') + "end" : "", p - 1);
  EXPECT_EQ(s, std::string(50, 'x') + "end");
}

INSTANTIATE_TEST_SUITE_P(MessageLimits, CommMpi, ::testing::Values(size_t(INT_MAX), size_t(8)));

// The peak resident memory of this process so far (VmHWM), bytes.
size_t peak_rss() {
  FILE* f = std::fopen("/proc/self/status", "r");
  char line[256];
  size_t kb = 0;
  while (f && std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmHWM: %zu kB", &kb) == 1) break;
  if (f) std::fclose(f);
  return kb << 10;
}

// Gradient-sized reductions (48 MiB over all ranks' blocks) take at most a few pieces' worth of scratch
// on any rank: MpiComm stages pieces of kMaxReductionBytes, and Open MPI's reduce-then-scatter holds
// one piece on the root, not the whole message (which put one more gradient on rank 0 of a
// data-parallel run, beyond what the memory accountant counts). The sums are exact (small integers).
TEST(CommMpiMemory, LargeReductionsTakeBoundedScratch) {
  REQUIRE_MPI("tests/cli/comm_mpi.sh");
  MpiComm comm(MPI_COMM_WORLD);
  const int p = comm.size(), r = comm.rank();
  const size_t total = size_t(48) << 20, block = total / sizeof(float) / size_t(p);
  vector<float> send(block * size_t(p)), recv(block, -1.0f), all(block * size_t(p));
  for (size_t k = 0; k < send.size(); ++k) send[k] = float((k + size_t(r)) % 7), all[k] = send[k];
  comm.barrier();
  const size_t before = peak_rss();
  comm.reduce_scatter_sum(send.data(), recv.data(), block);
  comm.allreduce(all.data(), all.size(), ReduceOp::Sum);
  const size_t grew = peak_rss() - before;
  for (size_t k = 0; k < block; k += 4099) {
    float want = 0;
    for (int q = 0; q < p; ++q) want += float((size_t(r) * block + k + size_t(q)) % 7);
    ASSERT_EQ(recv[k], want) << "element " << k;
  }
  for (size_t k = 0; k < all.size(); k += 4099) {
    float want = 0;
    for (int q = 0; q < p; ++q) want += float((k + size_t(q)) % 7);
    ASSERT_EQ(all[k], want) << "element " << k;
  }
  // Measured: up to 3 pieces (the staged piece, MPI's buffer, the all-reduce's owned chunk); before the
  // pieces, 95 MiB on some rank of 2 or 3 (the reduce-scatter's 48 MiB on one, the all-reduce's 95).
  EXPECT_LT(grew, 4 * MpiComm::kMaxReductionBytes) << "rank " << r << ": the peak grew by " << (grew >> 20)
                                                   << " MiB for a " << (total >> 20) << " MiB reduction";
}

}  // namespace
