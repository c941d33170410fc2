// Temporal statistics of each preference pair (DESIGN §6, "Observations" and "Temporal state per
// pair"), in a table distributed over the data-parallel replicas.
//
// Each time a pair's margin m is computed under the current parameters, the pair's row takes the
// observation (step t, m, reference deviation d) with EMA rate λ:
//   trend       Δ ← (1−λ)Δ + λ(m − m_last)
//   margin EMA  μ ← μ + λ(m − μ_old)
//   volatility  v ← (1−λ)(v + λ(m − μ_old)²)      (the exponentially weighted variance of m about μ)
//   ref. dev.   d̄ ← d̄ + λ(d − d̄)
//   m_last ← m, n ← n + 1, last_step ← t.
// The first observation of a pair (n = 0) has no history to decay, so it initializes rather than
// updates: μ = m_last = m, Δ = 0, v = 0, d̄ = d. (The design is silent here; starting μ at 0 instead
// would make every young pair look like a pair whose margin is rising from zero.)
//
// Distribution: pair i lives on rank (i mod P) of the data-parallel Comm, at local row i / P, so pairs
// spread evenly whatever order the data comes in. The logical table is [N, S] with N = max id + 1 and S
// = kPairStatFields; that is the checkpoint layout, independent of P, which is what lets a table saved
// at one DP size reload at another.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/core/memory.h"

namespace metapo {

struct PairObservation {
  int64_t sample_id;
  int64_t step;
  double margin;   // m = r(y_w) − r(y_l)
  double ref_dev;  // d, see reference_deviation()
};

// The columns of a row in the logical [N, S] table, in this order.
constexpr int kPairStatFields = 7;
constexpr std::array<const char*, kPairStatFields> kPairStatFieldNames = {
    "n", "last_margin", "margin_ema", "margin_trend", "volatility", "ref_deviation", "last_step"};

// One pair's state; a pair never observed has n = 0 and last_step = -1. Counts and steps are stored
// as doubles so a row is one flat record of S doubles (exact up to 2^53).
struct PairStatRow {
  double n = 0, last_margin = 0, mu = 0, trend = 0, vol = 0, ref_dev = 0, last_step = -1;
};

// d = ½(|logπ(y_w) − logπ_ref(y_w)| / |y_w| + |logπ(y_l) − logπ_ref(y_l)| / |y_l|): how far the policy
// has moved from the reference on this pair, per response token. Lengths must be positive.
double reference_deviation(double pol_c, double ref_c, int64_t len_c, double pol_r, double ref_r,
                           int64_t len_r);

// Applies one observation to a row by the rules above (the owner's update; exposed for analysis tools).
void update_pair_stat(PairStatRow& row, double margin, double ref_dev, int64_t step, double ema_rate);

class PairStatsTable {
 public:
  // Rows for sample ids 0..max_sample_id, all unseen. ema_rate λ in (0, 1]. dp must outlive the table.
  PairStatsTable(int64_t max_sample_id, double ema_rate, Comm& dp);

  // fetch() and observe() check their inputs before any communication; a bad id throws on the rank
  // that passed it (and the CLI's abort of the job ends the other ranks).

  // Collective: every rank passes the ids it needs (any ids in [0, N), repeats allowed, possibly none)
  // and gets their rows in the same order. One request/reply all-to-all round trip.
  std::vector<PairStatRow> fetch(const std::vector<int64_t>& ids);

  // Collective: every rank passes its observations; each is sent to its pair's owner, which applies
  // them sorted by (step, sample_id). Two observations of one pair in one step apply in the order of
  // the ranks' inputs concatenated in rank order (rank 0's first, each rank's in its input order).
  // So the table is independent of the rank count whenever that concatenation is the global order
  // (e.g. each rank passes its contiguous share of the global batch), and always when no pair is
  // observed twice in one step.
  void observe(const std::vector<PairObservation>& obs);

  // Collective: the whole table as the logical [N, S] row-major array, on every rank (checkpoints,
  // analysis). N·S doubles on every rank.
  std::vector<double> gather_all();
  // The inverse, under any Comm size: each rank keeps its own rows of a full [N, S] table. Not a
  // collective (every rank already holds the table), but every rank must pass the same table.
  void load_all(const std::vector<double>& table);

  int64_t rows() const { return n_rows_; }          // N
  int64_t local_rows() const { return n_local_; }   // rows this rank owns
  double ema_rate() const { return ema_rate_; }
  int owner(int64_t sample_id) const { return int(sample_id % dp_.size()); }

 private:
  int64_t n_rows_, n_local_;
  double ema_rate_;
  Comm& dp_;
  std::vector<PairStatRow> local_;  // local_[k] = row of sample id k·P + rank
  MemoryHandle mem_{Mem::MetaPO};
};

}  // namespace metapo
