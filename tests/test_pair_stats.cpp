// The pair statistics table on one process (SelfComm): the EMA updates against a plain
// re-implementation of DESIGN §6, the first-observation rule, unseen pairs, the [N, S] round trip,
// the order rules of observe(), input checks, and SelfComm itself. The same table over 1-3 MPI ranks
// is tested by test_pair_stats_mpi (tests/cli/pair_stats_mpi.sh).
#include <gtest/gtest.h>

#include "test_util.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/core/error.h"
#include "metapo/core/rng.h"
#include "metapo/meta/pair_stats.h"

using namespace metapo;
using metapo::test::error_of;
using std::vector;

namespace {

// DESIGN §6 written out once more, as plainly as possible, for one pair.
struct Reference {
  double lambda;
  int n = 0;
  double last = 0, mu = 0, trend = 0, vol = 0, dev = 0;
  long step = -1;

  void add(double m, double d, long t) {
    if (n == 0) {
      mu = m, trend = 0, vol = 0, dev = d;
    } else {
      const double mu_old = mu;
      trend = (1 - lambda) * trend + lambda * (m - last);
      mu = mu_old + lambda * (m - mu_old);
      vol = (1 - lambda) * (vol + lambda * (m - mu_old) * (m - mu_old));
      dev = (1 - lambda) * dev + lambda * d;
    }
    last = m, n += 1, step = t;
  }
};

void expect_row_near(const PairStatRow& r, const Reference& e, const std::string& where) {
  SCOPED_TRACE(where);
  EXPECT_EQ(r.n, e.n);
  EXPECT_EQ(r.last_margin, e.last);
  EXPECT_EQ(r.last_step, double(e.step));
  // The reference writes the reference-deviation EMA as (1−λ)d̄ + λd, the table as d̄ + λ(d − d̄):
  // equal in exact arithmetic, a few ulps apart in double.
  const auto near = [](double a, double b) { return std::abs(a - b) <= 1e-12 * std::max(1.0, std::abs(b)); };
  EXPECT_PRED2(near, r.mu, e.mu);
  EXPECT_PRED2(near, r.trend, e.trend);
  EXPECT_PRED2(near, r.vol, e.vol);
  EXPECT_PRED2(near, r.ref_dev, e.dev);
}

bool rows_equal(const PairStatRow& a, const PairStatRow& b) {
  return a.n == b.n && a.last_margin == b.last_margin && a.mu == b.mu && a.trend == b.trend &&
         a.vol == b.vol && a.ref_dev == b.ref_dev && a.last_step == b.last_step;
}

// Observations of random pairs (ids in [0, n_ids)) over `steps` steps, `per_step` each, ids distinct
// within a step.
vector<vector<PairObservation>> random_stream(int steps, int per_step, int64_t n_ids, uint64_t seed) {
  vector<vector<PairObservation>> out;
  for (int t = 0; t < steps; ++t) {
    Philox r = make_rng(seed, uint64_t(t), 0, RngPurpose::Bench);
    vector<int64_t> ids(static_cast<size_t>(n_ids));
    for (int64_t i = 0; i < n_ids; ++i) ids[size_t(i)] = i;
    for (int64_t i = n_ids - 1; i > 0; --i) std::swap(ids[size_t(i)], ids[r.below(uint64_t(i + 1))]);
    vector<PairObservation> step;
    for (int k = 0; k < per_step; ++k)
      step.push_back({ids[size_t(k)], t, 2.0 * r.normal() + 0.1 * t, std::abs(r.normal())});
    out.push_back(step);
  }
  return out;
}

}  // namespace

TEST(PairStats, ReferenceDeviation) {
  // ½(|−10 − (−12)| / 4 + |−20 − (−17)| / 6) = ½(0.5 + 0.5)
  EXPECT_DOUBLE_EQ(reference_deviation(-10, -12, 4, -20, -17, 6), 0.5);
  EXPECT_DOUBLE_EQ(reference_deviation(-3, -3, 1, -5, -5, 9), 0.0);
  EXPECT_EQ(error_of([] { reference_deviation(0, 0, 0, 0, 0, 3); }),
            "reference_deviation: response lengths must be positive (chosen 0, rejected 3)");
}

TEST(PairStats, FirstObservationInitializes) {
  SelfComm comm;
  PairStatsTable table(9, 0.1, comm);
  table.observe({{4, 7, 1.5, 0.25}});
  const PairStatRow r = table.fetch({4})[0];
  EXPECT_EQ(r.n, 1);
  EXPECT_EQ(r.last_margin, 1.5);
  EXPECT_EQ(r.mu, 1.5);  // μ starts at the first margin, not at 0
  EXPECT_EQ(r.trend, 0);
  EXPECT_EQ(r.vol, 0);
  EXPECT_EQ(r.ref_dev, 0.25);
  EXPECT_EQ(r.last_step, 7);
}

TEST(PairStats, SecondObservationByHand) {
  SelfComm comm;
  PairStatsTable table(0, 0.5, comm);
  table.observe({{0, 0, 1.0, 0.2}});
  table.observe({{0, 1, 3.0, 0.6}});
  const PairStatRow r = table.fetch({0})[0];
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.last_margin, 3.0);
  EXPECT_DOUBLE_EQ(r.trend, 0.5 * 0 + 0.5 * (3.0 - 1.0));          // 1
  EXPECT_DOUBLE_EQ(r.mu, 1.0 + 0.5 * (3.0 - 1.0));                 // 2
  EXPECT_DOUBLE_EQ(r.vol, 0.5 * (0 + 0.5 * (3.0 - 1.0) * (3.0 - 1.0)));  // 1
  EXPECT_DOUBLE_EQ(r.ref_dev, 0.4);
  EXPECT_EQ(r.last_step, 1);
}

TEST(PairStats, UpdatesMatchReferenceOverAStream) {
  SelfComm comm;
  const int64_t n_ids = 23;
  const double lambda = 0.3;
  PairStatsTable table(n_ids - 1, lambda, comm);
  vector<Reference> ref(size_t(n_ids), Reference{lambda});
  for (const auto& step : random_stream(40, 9, n_ids, 5)) {
    table.observe(step);
    for (const auto& o : step) ref[size_t(o.sample_id)].add(o.margin, o.ref_dev, long(o.step));
  }
  vector<int64_t> all(static_cast<size_t>(n_ids));
  for (int64_t i = 0; i < n_ids; ++i) all[size_t(i)] = i;
  const vector<PairStatRow> rows = table.fetch(all);
  int seen = 0;
  for (int64_t i = 0; i < n_ids; ++i) {
    expect_row_near(rows[size_t(i)], ref[size_t(i)], "pair " + std::to_string(i));
    seen += ref[size_t(i)].n > 2;
  }
  EXPECT_GT(seen, 15);  // the stream exercised the EMAs, not just the first-observation rule
}

TEST(PairStats, VolatilityOfAConstantMarginIsZeroAndTrendTracksASlope) {
  SelfComm comm;
  PairStatsTable table(1, 0.2, comm);
  for (int t = 0; t < 200; ++t) table.observe({{0, t, 3.0, 0.0}, {1, t, 0.5 * t, 0.0}});
  const vector<PairStatRow> r = table.fetch({0, 1});
  EXPECT_EQ(r[0].vol, 0);
  EXPECT_EQ(r[0].trend, 0);
  EXPECT_EQ(r[0].mu, 3.0);
  EXPECT_NEAR(r[1].trend, 0.5, 1e-12);  // Δ converges to the per-observation slope
  // μ lags a linear ramp by slope·(1−λ)/λ = 2 in the steady state.
  EXPECT_NEAR(r[1].mu, 0.5 * 199 - 2.0, 1e-9);
}

TEST(PairStats, UnseenPairsFetchAsEmptyRows) {
  SelfComm comm;
  PairStatsTable table(99, 0.1, comm);
  EXPECT_EQ(table.rows(), 100);
  EXPECT_EQ(table.local_rows(), 100);
  table.observe({{3, 0, 1.0, 0.5}});
  const vector<PairStatRow> r = table.fetch({99, 3, 0, 99});
  ASSERT_EQ(r.size(), 4u);
  for (size_t k : {0u, 2u, 3u}) EXPECT_TRUE(rows_equal(r[k], PairStatRow{})) << k;
  EXPECT_EQ(r[0].last_step, -1);
  EXPECT_EQ(r[1].n, 1);
  EXPECT_TRUE(table.fetch({}).empty());
}

TEST(PairStats, GatherLoadRoundTrip) {
  SelfComm comm;
  PairStatsTable a(30, 0.25, comm);
  for (const auto& step : random_stream(12, 10, 31, 8)) a.observe(step);
  const vector<double> t = a.gather_all();
  ASSERT_EQ(t.size(), size_t(31 * kPairStatFields));
  // Field order in the logical table is kPairStatFieldNames.
  const PairStatRow r7 = a.fetch({7})[0];
  const double* row7 = &t[7 * kPairStatFields];
  EXPECT_EQ(row7[0], r7.n);
  EXPECT_EQ(row7[1], r7.last_margin);
  EXPECT_EQ(row7[2], r7.mu);
  EXPECT_EQ(row7[3], r7.trend);
  EXPECT_EQ(row7[4], r7.vol);
  EXPECT_EQ(row7[5], r7.ref_dev);
  EXPECT_EQ(row7[6], r7.last_step);

  PairStatsTable b(30, 0.25, comm);
  b.load_all(t);
  EXPECT_EQ(b.gather_all(), t);
  // A reloaded table continues exactly as the original.
  const auto more = random_stream(5, 10, 31, 9);
  for (const auto& step : more) a.observe(step), b.observe(step);
  EXPECT_EQ(a.gather_all(), b.gather_all());
}

TEST(PairStats, OrderWithinACallDoesNotMatter) {
  // Observations of distinct pairs, or of one pair at distinct steps, give the same table in any input
  // order: the owner applies them sorted by (step, sample_id).
  SelfComm comm;
  vector<PairObservation> batch;
  for (const auto& step : random_stream(4, 12, 15, 21)) batch.insert(batch.end(), step.begin(), step.end());
  PairStatsTable a(14, 0.2, comm), b(14, 0.2, comm), c(14, 0.2, comm);
  a.observe(batch);
  vector<PairObservation> shuffled = batch;
  std::reverse(shuffled.begin(), shuffled.end());
  std::rotate(shuffled.begin(), shuffled.begin() + 17, shuffled.end());
  b.observe(shuffled);
  for (size_t k = 0; k < batch.size(); k += 12)  // the same steps, one call per step
    c.observe(vector<PairObservation>(batch.begin() + long(k), batch.begin() + long(k + 12)));
  EXPECT_EQ(a.gather_all(), b.gather_all());
  EXPECT_EQ(a.gather_all(), c.gather_all());
}

TEST(PairStats, SamePairTwiceInOneStepAppliesInInputOrder) {
  SelfComm comm;
  PairStatsTable a(2, 0.5, comm), b(2, 0.5, comm);
  a.observe({{1, 3, 1.0, 0.0}, {0, 3, 9.0, 0.0}, {1, 3, 2.0, 0.0}});
  b.observe({{1, 3, 1.0, 0.0}});
  b.observe({{1, 3, 2.0, 0.0}});
  EXPECT_TRUE(rows_equal(a.fetch({1})[0], b.fetch({1})[0]));
  EXPECT_EQ(a.fetch({1})[0].last_margin, 2.0);
}

TEST(PairStats, RejectsBadInput) {
  SelfComm comm;
  EXPECT_EQ(error_of([&] { PairStatsTable t(9, 0.0, comm); }),
            "pair statistics: the EMA rate must be in (0, 1], got 0");
  EXPECT_EQ(error_of([&] { PairStatsTable t(-1, 0.1, comm); }),
            "pair statistics: the largest sample id must be >= 0, got -1");
  PairStatsTable t(9, 0.1, comm);
  EXPECT_EQ(error_of([&] { t.fetch({3, 10}); }),
            "pair statistics: fetch of sample id 10 outside the table [0, 10)");
  EXPECT_EQ(error_of([&] { t.observe({{-1, 0, 0.0, 0.0}}); }),
            "pair statistics: observation of sample id -1 outside the table [0, 10)");
  EXPECT_EQ(error_of([&] { t.observe({{2, 5, NAN, 0.0}}); }),
            "pair statistics: observation of sample id 2 at step 5 is not finite (margin nan, reference "
            "deviation 0)");
  EXPECT_EQ(error_of([&] { t.load_all(vector<double>(9 * kPairStatFields)); }),
            "pair statistics: a table of 63 values does not fit 10 pairs x 7 fields");
  vector<double> bad = t.gather_all();
  bad[4 * kPairStatFields] = 1.5;
  EXPECT_EQ(error_of([&] { t.load_all(bad); }), "pair statistics: row 4 has an invalid count n = 1.5");
}

TEST(SelfComm, CollectivesAreIdentities) {
  SelfComm c;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  vector<double> d = {1.5, -2.0};
  c.allreduce_sum(d.data(), d.size());
  c.allreduce_max(d.data(), d.size());
  c.allreduce_min(d.data(), d.size());
  EXPECT_EQ(d, (vector<double>{1.5, -2.0}));
  vector<float> f = {3.0f};
  c.allreduce_sum(f.data(), 1);
  EXPECT_EQ(f[0], 3.0f);

  const vector<uint8_t> send = {1, 2, 3, 4, 5};
  vector<uint8_t> recv(6, 0);
  c.alltoallv(send.data(), {3}, {1}, recv.data(), {3}, {2});
  EXPECT_EQ(recv, (vector<uint8_t>{0, 0, 2, 3, 4, 0}));
  EXPECT_EQ(error_of([&] { c.alltoallv(send.data(), {3}, {0}, recv.data(), {2}, {0}); }),
            "SelfComm::alltoallv: sends 3 bytes to itself but expects to receive 2");

  vector<size_t> counts;
  c.alltoall_counts({7}, counts);
  EXPECT_EQ(counts, (vector<size_t>{7}));
  vector<uint8_t> all;
  c.allgatherv(send.data(), 4, all, counts);
  EXPECT_EQ(all, (vector<uint8_t>{1, 2, 3, 4}));
  EXPECT_EQ(counts, (vector<size_t>{4}));
  c.broadcast(d.data(), sizeof(double), 0);
  EXPECT_EQ(error_of([&] { c.broadcast(d.data(), 8, 1); }),
            "SelfComm::broadcast: root 1 does not exist (one rank)");
  c.barrier();
}
