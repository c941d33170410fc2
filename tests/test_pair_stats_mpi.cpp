// MpiComm and the distributed pair statistics table over several ranks: run by
// tests/cli/pair_stats_mpi.sh under `mpirun -np 1, 2, 3`. Every rank generates the same random stream
// of observations, feeds its share to the distributed table and all of it to a one-process (SelfComm)
// table; the gathered tables must be bit-identical. Run without a launcher (as CTest's discovered tests
// do), the tests skip: they only mean something under mpirun.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/comm/mpi_comm.h"
#include "metapo/core/error.h"
#include "metapo/core/rng.h"
#include "metapo/meta/pair_stats.h"
#include "mpi_test_env.h"

using namespace metapo;
using metapo::testing_mpi::all_ranks;
using std::vector;

namespace {

bool same_bits(const vector<double>& a, const vector<double>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0);
}

bool same_bits(const PairStatRow& a, const PairStatRow& b) { return std::memcmp(&a, &b, sizeof(a)) == 0; }

// The global batch of step t: `batch` observations of random pairs in [0, n_ids). With `distinct`,
// no pair twice in one step; otherwise repeats happen, to exercise the tie rule.
vector<PairObservation> global_batch(int64_t t, int batch, int64_t n_ids, bool distinct) {
  Philox r = make_rng(77, uint64_t(t), 0, RngPurpose::Bench);
  vector<int64_t> ids;
  if (distinct) {
    vector<int64_t> perm(static_cast<size_t>(n_ids));
    for (int64_t i = 0; i < n_ids; ++i) perm[size_t(i)] = i;
    for (int64_t i = n_ids - 1; i > 0; --i) std::swap(perm[size_t(i)], perm[r.below(uint64_t(i + 1))]);
    ids.assign(perm.begin(), perm.begin() + batch);
  } else {
    for (int k = 0; k < batch; ++k) ids.push_back(int64_t(r.below(uint64_t(n_ids))));
  }
  vector<PairObservation> out;
  for (int64_t id : ids) out.push_back({id, t, 3.0 * r.normal() + 0.05 * double(t), 0.1 * std::abs(r.normal())});
  return out;
}

// This rank's share of a global batch: the contiguous slice [rank·B/P, (rank+1)·B/P) (how the loader
// splits a batch), or every P-th observation (round robin).
vector<PairObservation> share(const vector<PairObservation>& all, int rank, int size, bool round_robin) {
  vector<PairObservation> mine;
  const size_t b = all.size(), p = size_t(size), r = size_t(rank);
  for (size_t j = 0; j < b; ++j) {
    const bool take = round_robin ? j % p == r : (j >= r * b / p && j < (r + 1) * b / p);
    if (take) mine.push_back(all[j]);
  }
  return mine;
}

constexpr int64_t kIds = 41;        // table rows; not a multiple of 2 or 3, so ranks own unequal shares
constexpr double kLambda = 0.15;

// Steps [t0, t1) into `dist` (this rank's share) and `ref` (everything). Every third call carries two
// steps, so the owners also sort by step.
void feed(PairStatsTable& dist, PairStatsTable& ref, Comm& comm, int64_t t0, int64_t t1, bool distinct,
          bool round_robin) {
  for (int64_t t = t0; t < t1;) {
    const int64_t steps = (t % 3 == 2 && t + 1 < t1) ? 2 : 1;
    vector<PairObservation> all;
    for (int64_t s = t; s < t + steps; ++s) {
      const vector<PairObservation> b = global_batch(s, 12, kIds, distinct);
      all.insert(all.end(), b.begin(), b.end());
    }
    dist.observe(share(all, comm.rank(), comm.size(), round_robin));
    ref.observe(all);
    t += steps;
  }
}

}  // namespace

TEST(CommMpi, AllreducesAreBitIdenticalAndCorrect) {
  REQUIRE_MPI("tests/cli/pair_stats_mpi.sh");
  for (size_t max_bytes : {size_t(INT_MAX), size_t(16)}) {  // 16: pieces of 2 doubles
    MpiComm comm(MPI_COMM_WORLD, max_bytes);
    const int p = comm.size();
    for (size_t n : {size_t(0), size_t(1), size_t(5), size_t(1000)}) {
      // Every rank can regenerate every rank's input, so each checks the result on its own.
      auto input = [&](int r) {
        Philox g(1234, uint32_t(r), uint32_t(n), 0);
        vector<double> v(n);
        for (double& x : v) x = g.normal();
        return v;
      };
      vector<double> sum = input(comm.rank()), mx = sum, mn = sum;
      vector<float> fsum(sum.begin(), sum.end());
      comm.allreduce_sum(sum.data(), n);
      comm.allreduce_sum(fsum.data(), n);
      comm.allreduce_max(mx.data(), n);
      comm.allreduce_min(mn.data(), n);
      vector<double> want_sum(n, 0.0), want_max(n, -1e300), want_min(n, 1e300);
      for (int r = 0; r < p; ++r) {
        const vector<double> v = input(r);
        for (size_t i = 0; i < n; ++i) {
          want_sum[i] += v[i];
          want_max[i] = std::max(want_max[i], v[i]), want_min[i] = std::min(want_min[i], v[i]);
        }
      }
      for (size_t i = 0; i < n; ++i) {
        EXPECT_NEAR(sum[i], want_sum[i], 1e-12) << i;
        EXPECT_NEAR(fsum[i], want_sum[i], 1e-5) << i;
      }
      EXPECT_TRUE(same_bits(mx, want_max));
      EXPECT_TRUE(same_bits(mn, want_min));
      // Bit-identical on every rank: compare with rank 0's copy.
      vector<double> root = sum;
      vector<float> froot = fsum;
      comm.broadcast(root.data(), n * sizeof(double), 0);
      comm.broadcast(froot.data(), n * sizeof(float), 0);
      EXPECT_TRUE(all_ranks(same_bits(root, sum) &&
                            (n == 0 || std::memcmp(froot.data(), fsum.data(), n * sizeof(float)) == 0)))
          << "n = " << n << ", max_bytes = " << max_bytes;
    }
  }
}

TEST(CommMpi, ExchangesBytes) {
  REQUIRE_MPI("tests/cli/pair_stats_mpi.sh");
  // 8 bytes per piece makes alltoallv switch to point-to-point messages and allgatherv to broadcasts.
  for (size_t max_bytes : {size_t(INT_MAX), size_t(8)}) {
    MpiComm comm(MPI_COMM_WORLD, max_bytes);
    const int p = comm.size(), me = comm.rank();
    const size_t np = static_cast<size_t>(p);
    auto len = [](int from, int to) { return size_t((from * 7 + to * 3 + 5) % 13); };  // 0..12 bytes
    auto byte = [](int from, int to, size_t k) { return uint8_t(from * 50 + to * 10 + int(k)); };

    vector<size_t> send_n(np), send_at(np), want_n(np);
    vector<uint8_t> send;
    for (int q = 0; q < p; ++q) {
      send_n[size_t(q)] = len(me, q), send_at[size_t(q)] = send.size() + 1;  // a gap byte before each
      send.push_back(0xEE);
      for (size_t k = 0; k < len(me, q); ++k) send.push_back(byte(me, q, k));
      want_n[size_t(q)] = len(q, me);
    }
    vector<size_t> recv_n;
    comm.alltoall_counts(send_n, recv_n);
    EXPECT_EQ(recv_n, want_n);
    // Received in reverse rank order, to check displacements are honoured.
    vector<size_t> recv_at(np);
    size_t total = 0;
    for (int q = p - 1; q >= 0; --q) recv_at[size_t(q)] = total, total += recv_n[size_t(q)];
    vector<uint8_t> recv(total, 0);
    comm.alltoallv(send.data(), send_n, send_at, recv.data(), recv_n, recv_at);
    bool ok = true;
    for (int q = 0; q < p; ++q)
      for (size_t k = 0; k < len(q, me); ++k) ok = ok && recv[recv_at[size_t(q)] + k] == byte(q, me, k);
    EXPECT_TRUE(all_ranks(ok)) << "alltoallv, max_bytes = " << max_bytes;

    // allgatherv: rank r contributes 3r + 2 bytes.
    vector<uint8_t> mine(static_cast<size_t>(3 * me + 2));
    for (size_t k = 0; k < mine.size(); ++k) mine[k] = byte(me, 0, k);
    vector<uint8_t> all;
    vector<size_t> counts;
    comm.allgatherv(mine.data(), mine.size(), all, counts);
    vector<uint8_t> want;
    for (int q = 0; q < p; ++q) {
      EXPECT_EQ(counts[size_t(q)], size_t(3 * q + 2));
      for (size_t k = 0; k < size_t(3 * q + 2); ++k) want.push_back(byte(q, 0, k));
    }
    EXPECT_TRUE(all_ranks(all == want)) << "allgatherv, max_bytes = " << max_bytes;

    // broadcast from the last rank, 21 bytes (3 pieces of 8 in the split case).
    vector<uint8_t> b(21);
    for (size_t k = 0; k < b.size(); ++k) b[k] = me == p - 1 ? uint8_t(k * 3) : 0;
    comm.broadcast(b.data(), b.size(), p - 1);
    bool bok = true;
    for (size_t k = 0; k < b.size(); ++k) bok = bok && b[k] == uint8_t(k * 3);
    EXPECT_TRUE(all_ranks(bok));
    comm.barrier();
  }
}

// Point-to-point (the pipeline's activations): a ring in both directions with several messages in
// flight before any is received (sends must not block), variable lengths, in order per peer; with
// 8-byte pieces each message travels in several MPI messages.
TEST(CommMpi, SendsAndReceivesInOrderWithoutBlocking) {
  REQUIRE_MPI("tests/cli/pair_stats_mpi.sh");
  for (size_t max_bytes : {size_t(INT_MAX), size_t(8)}) {
    MpiComm comm(MPI_COMM_WORLD, max_bytes);
    const int p = comm.size(), me = comm.rank();
    if (p == 1) {
      EXPECT_THROW(comm.send(nullptr, 0, 0), Error);  // no peer (not even itself)
      continue;
    }
    const int next = (me + 1) % p, prev = (me + p - 1) % p;
    auto msg = [](int from, int to, int k) {
      vector<float> v(size_t(1 + (from * 5 + to * 3 + k * 7) % 11));
      for (size_t i = 0; i < v.size(); ++i) v[i] = float(from * 1000 + to * 100 + k * 10) + float(i);
      return v;
    };
    comm.reset_volume();
    size_t sent = 0;
    for (int k = 0; k < 4; ++k) {  // all sends first: a blocking send would deadlock here
      vector<float> a = msg(me, next, k), b = msg(me, prev, k);
      comm.send(a.data(), a.size(), next);
      a.assign(a.size(), -1.0f);  // the buffer is free again as soon as send returns
      if (prev != next) comm.send(b.data(), b.size(), prev), sent += b.size();
      sent += a.size();
    }
    bool ok = true;
    for (int k = 0; k < 4; ++k) {
      vector<float> want = msg(prev, me, k), got(want.size());
      comm.recv(got.data(), got.size(), prev);
      ok = ok && got == want;
      if (prev != next) {
        want = msg(next, me, k), got.assign(want.size(), 0.0f);
        comm.recv(got.data(), got.size(), next);
        ok = ok && got == want;
      }
    }
    comm.wait_sends();
    EXPECT_TRUE(all_ranks(ok)) << "max_bytes = " << max_bytes;
    EXPECT_EQ(comm.volume()[CommOp::PointToPoint], sent * sizeof(float));
    comm.barrier();
  }
}

TEST(PairStatsMpi, SameTableAsOneProcess) {
  REQUIRE_MPI("tests/cli/pair_stats_mpi.sh");
  // Repeated pairs within a step, each rank a contiguous share of each global batch; then distinct pairs
  // dealt round robin. 40 bytes per piece runs the split alltoallv path through the table too.
  for (bool distinct : {false, true}) {
    for (size_t max_bytes : {size_t(INT_MAX), size_t(40)}) {
      MpiComm comm(MPI_COMM_WORLD, max_bytes);
      SelfComm self;
      PairStatsTable dist(kIds - 1, kLambda, comm), ref(kIds - 1, kLambda, self);
      feed(dist, ref, comm, 0, 40, distinct, /*round_robin=*/distinct);
      const vector<double> got = dist.gather_all(), want = ref.gather_all();
      EXPECT_TRUE(all_ranks(same_bits(got, want)))
          << (distinct ? "round robin" : "contiguous shares") << ", max_bytes = " << max_bytes;
      // Rows actually moved: most pairs were seen several times.
      int seen = 0;
      for (int64_t i = 0; i < kIds; ++i) seen += want[size_t(i * kPairStatFields)] >= 3;
      EXPECT_GT(seen, 30);
    }
  }
}

TEST(PairStatsMpi, FetchesAnyIdsFromEveryRank) {
  REQUIRE_MPI("tests/cli/pair_stats_mpi.sh");
  MpiComm comm(MPI_COMM_WORLD);
  SelfComm self;
  PairStatsTable dist(kIds - 1, kLambda, comm), ref(kIds - 1, kLambda, self);
  feed(dist, ref, comm, 0, 15, false, false);
  // Rank r asks for 5r + 1 ids (repeats included) in a rank-specific order; rank 1 for none.
  Philox r(99, uint32_t(comm.rank()), 0, 0);
  vector<int64_t> ids;
  if (comm.rank() != 1)
    for (int k = 0; k < 5 * comm.rank() + 1; ++k) ids.push_back(int64_t(r.below(kIds)));
  if (comm.rank() == 0) ids.push_back(kIds - 1), ids.push_back(kIds - 1);
  const vector<PairStatRow> got = dist.fetch(ids), want = ref.fetch(ids);
  ASSERT_EQ(got.size(), ids.size());
  bool ok = true;
  for (size_t k = 0; k < ids.size(); ++k) ok = ok && same_bits(got[k], want[k]);
  EXPECT_TRUE(all_ranks(ok));
}

TEST(PairStatsMpi, ReloadsUnderAnyRankCount) {
  REQUIRE_MPI("tests/cli/pair_stats_mpi.sh");
  MpiComm world(MPI_COMM_WORLD);
  SelfComm self;
  PairStatsTable dist(kIds - 1, kLambda, world), ref(kIds - 1, kLambda, self);
  feed(dist, ref, world, 0, 20, false, false);
  const vector<double> saved = dist.gather_all();  // written at P ranks
  ASSERT_TRUE(same_bits(saved, ref.gather_all()));

  // Reload at every k <= P ranks (at P = 3 that includes 3 -> 2) and carry on: the same as continuing
  // the one-process table.
  PairStatsTable ref_more(kIds - 1, kLambda, self), unused(kIds - 1, kLambda, self);
  ref_more.load_all(saved);
  feed(unused, ref_more, self, 20, 35, false, false);
  const vector<double> want = ref_more.gather_all();
  for (int k = 1; k <= world.size(); ++k) {
    MPI_Comm sub;
    MPI_Comm_split(MPI_COMM_WORLD, world.rank() < k ? 0 : MPI_UNDEFINED, world.rank(), &sub);
    bool ok = true;
    if (sub != MPI_COMM_NULL) {
      MpiComm comm(sub);
      PairStatsTable t(kIds - 1, kLambda, comm), unused_ref(kIds - 1, kLambda, self);
      t.load_all(saved);
      EXPECT_EQ(t.local_rows(), (kIds - comm.rank() + k - 1) / k);
      feed(t, unused_ref, comm, 20, 35, false, false);
      ok = same_bits(t.gather_all(), want);
      MPI_Comm_free(&sub);
    }
    EXPECT_TRUE(all_ranks(ok)) << "saved at " << world.size() << " ranks, reloaded at " << k;
  }
}
