#include "metapo/meta/pair_stats.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "metapo/core/error.h"

namespace metapo {

// Observations travel between ranks as raw bytes; every rank runs the same binary.
static_assert(std::is_trivially_copyable_v<PairObservation> && sizeof(PairObservation) == 32,
              "PairObservation is sent as 32 raw bytes");

namespace {

constexpr size_t S = kPairStatFields;

// Row <-> S doubles in the kPairStatFieldNames order.
void pack(const PairStatRow& r, double* out) {
  out[0] = r.n, out[1] = r.last_margin, out[2] = r.mu, out[3] = r.trend, out[4] = r.vol;
  out[5] = r.ref_dev, out[6] = r.last_step;
}

PairStatRow unpack(const double* in) {
  PairStatRow r;
  r.n = in[0], r.last_margin = in[1], r.mu = in[2], r.trend = in[3], r.vol = in[4];
  r.ref_dev = in[5], r.last_step = in[6];
  return r;
}

// Byte counts and displacements for alltoallv from per-peer element counts.
std::vector<size_t> to_bytes(const std::vector<size_t>& counts, size_t elem_bytes) {
  std::vector<size_t> b(counts.size());
  for (size_t q = 0; q < counts.size(); ++q) b[q] = counts[q] * elem_bytes;
  return b;
}

std::vector<size_t> exclusive_scan(const std::vector<size_t>& counts) {
  std::vector<size_t> d(counts.size());
  size_t sum = 0;
  for (size_t q = 0; q < counts.size(); ++q) d[q] = sum, sum += counts[q];
  return d;
}

}  // namespace

double reference_deviation(double pol_c, double ref_c, int64_t len_c, double pol_r, double ref_r,
                           int64_t len_r) {
  MP_CHECK(len_c > 0 && len_r > 0, "reference_deviation: response lengths must be positive (chosen ",
           len_c, ", rejected ", len_r, ")");
  return 0.5 * (std::abs(pol_c - ref_c) / double(len_c) + std::abs(pol_r - ref_r) / double(len_r));
}

void update_pair_stat(PairStatRow& row, double m, double d, int64_t step, double lambda) {
  if (row.n == 0) {
    row.mu = m, row.trend = 0, row.vol = 0, row.ref_dev = d;
  } else {
    const double diff = m - row.mu;  // m − μ_old
    row.trend = (1 - lambda) * row.trend + lambda * (m - row.last_margin);
    row.mu += lambda * diff;
    row.vol = (1 - lambda) * (row.vol + lambda * diff * diff);
    row.ref_dev += lambda * (d - row.ref_dev);
  }
  row.last_margin = m;
  row.n += 1;
  row.last_step = double(step);
}

PairStatsTable::PairStatsTable(int64_t max_sample_id, double ema_rate, Comm& dp)
    : n_rows_(max_sample_id + 1), n_local_(0), ema_rate_(ema_rate), dp_(dp) {
  MP_CHECK(max_sample_id >= 0, "pair statistics: the largest sample id must be >= 0, got ", max_sample_id);
  MP_CHECK(ema_rate > 0 && ema_rate <= 1, "pair statistics: the EMA rate must be in (0, 1], got ", ema_rate);
  const int64_t p = dp_.size(), r = dp_.rank();
  n_local_ = r < n_rows_ ? (n_rows_ - r + p - 1) / p : 0;
  local_.assign(size_t(n_local_), PairStatRow{});
  mem_.track(local_);
}

std::vector<PairStatRow> PairStatsTable::fetch(const std::vector<int64_t>& ids) {
  const size_t p = size_t(dp_.size());
  for (int64_t id : ids)
    MP_CHECK(id >= 0 && id < n_rows_, "pair statistics: fetch of sample id ", id,
             " outside the table [0, ", n_rows_, ")");

  // Requests grouped by owner, each group in input order; slot[i] = where id i's reply will be.
  std::vector<size_t> send_n(p, 0);
  for (int64_t id : ids) ++send_n[size_t(owner(id))];
  const std::vector<size_t> send_at = exclusive_scan(send_n);
  std::vector<size_t> fill = send_at, slot(ids.size());
  std::vector<int64_t> request(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    slot[i] = fill[size_t(owner(ids[i]))]++;
    request[slot[i]] = ids[i];
  }

  std::vector<size_t> recv_n;
  dp_.alltoall_counts(send_n, recv_n);
  const std::vector<size_t> recv_at = exclusive_scan(recv_n);
  const size_t n_recv = recv_at.empty() ? 0 : recv_at.back() + recv_n.back();
  std::vector<int64_t> asked(n_recv);
  constexpr size_t kId = sizeof(int64_t), kRow = S * sizeof(double);
  dp_.alltoallv(request.data(), to_bytes(send_n, kId), to_bytes(send_at, kId), asked.data(),
                to_bytes(recv_n, kId), to_bytes(recv_at, kId));

  // Answer in the order asked; the reply message sizes mirror the request sizes.
  const int64_t np = int64_t(p);
  std::vector<double> answer(n_recv * S);
  for (size_t k = 0; k < n_recv; ++k) pack(local_[size_t(asked[k] / np)], &answer[k * S]);
  std::vector<double> reply(ids.size() * S);
  dp_.alltoallv(answer.data(), to_bytes(recv_n, kRow), to_bytes(recv_at, kRow), reply.data(),
                to_bytes(send_n, kRow), to_bytes(send_at, kRow));

  std::vector<PairStatRow> rows(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) rows[i] = unpack(&reply[slot[i] * S]);
  return rows;
}

void PairStatsTable::observe(const std::vector<PairObservation>& obs) {
  const size_t p = size_t(dp_.size());
  for (const PairObservation& o : obs) {
    MP_CHECK(o.sample_id >= 0 && o.sample_id < n_rows_, "pair statistics: observation of sample id ",
             o.sample_id, " outside the table [0, ", n_rows_, ")");
    MP_CHECK(o.step >= 0, "pair statistics: observation of sample id ", o.sample_id,
             " has a negative step ", o.step);
    MP_CHECK(std::isfinite(o.margin) && std::isfinite(o.ref_dev), "pair statistics: observation of sample id ",
             o.sample_id, " at step ", o.step, " is not finite (margin ", o.margin, ", reference deviation ",
             o.ref_dev, ")");
  }

  // Grouped by owner, each group in input order (a stable bucket fill).
  std::vector<size_t> send_n(p, 0);
  for (const PairObservation& o : obs) ++send_n[size_t(owner(o.sample_id))];
  const std::vector<size_t> send_at = exclusive_scan(send_n);
  std::vector<size_t> fill = send_at;
  std::vector<PairObservation> outgoing(obs.size());
  for (const PairObservation& o : obs) outgoing[fill[size_t(owner(o.sample_id))]++] = o;

  std::vector<size_t> recv_n;
  dp_.alltoall_counts(send_n, recv_n);
  const std::vector<size_t> recv_at = exclusive_scan(recv_n);
  const size_t n_recv = recv_at.empty() ? 0 : recv_at.back() + recv_n.back();
  std::vector<PairObservation> mine(n_recv);
  constexpr size_t B = sizeof(PairObservation);
  dp_.alltoallv(outgoing.data(), to_bytes(send_n, B), to_bytes(send_at, B), mine.data(),
                to_bytes(recv_n, B), to_bytes(recv_at, B));

  // `mine` arrives in (source rank, input index) order; a stable sort by (step, id) keeps that order
  // for ties, which makes the result independent of how the observations were spread over ranks.
  std::stable_sort(mine.begin(), mine.end(), [](const PairObservation& a, const PairObservation& b) {
    return a.step != b.step ? a.step < b.step : a.sample_id < b.sample_id;
  });
  const int64_t np = int64_t(p);
  for (const PairObservation& o : mine)
    update_pair_stat(local_[size_t(o.sample_id / np)], o.margin, o.ref_dev, o.step, ema_rate_);
}

std::vector<double> PairStatsTable::gather_all() {
  std::vector<double> mine(size_t(n_local_) * S);
  for (int64_t k = 0; k < n_local_; ++k) pack(local_[size_t(k)], &mine[size_t(k) * S]);
  std::vector<uint8_t> all;
  std::vector<size_t> counts;
  dp_.allgatherv(mine.data(), mine.size() * sizeof(double), all, counts);

  // Rank q's k-th row is sample id k·P + q.
  const int64_t p = dp_.size();
  std::vector<double> table(size_t(n_rows_) * S);
  size_t at = 0;
  for (int64_t q = 0; q < p; ++q) {
    const int64_t nq = q < n_rows_ ? (n_rows_ - q + p - 1) / p : 0;
    MP_CHECK(counts[size_t(q)] == size_t(nq) * S * sizeof(double), "pair statistics: rank ", q,
             " sent ", counts[size_t(q)], " bytes of rows, expected ", nq * int64_t(S * sizeof(double)));
    for (int64_t k = 0; k < nq; ++k, at += S * sizeof(double))
      std::memcpy(&table[size_t(k * p + q) * S], all.data() + at, S * sizeof(double));
  }
  return table;
}

void PairStatsTable::load_all(const std::vector<double>& table) {
  MP_CHECK(table.size() == size_t(n_rows_) * S, "pair statistics: a table of ", table.size(),
           " values does not fit ", n_rows_, " pairs x ", S, " fields");
  // Every rank checks the whole table, so all ranks accept or reject it together.
  for (int64_t i = 0; i < n_rows_; ++i) {
    const double* r = &table[size_t(i) * S];
    for (size_t f = 0; f < S; ++f)
      MP_CHECK(std::isfinite(r[f]), "pair statistics: row ", i, " field ", kPairStatFieldNames[f],
               " is not finite (", r[f], ")");
    MP_CHECK(r[0] >= 0 && r[0] == std::floor(r[0]), "pair statistics: row ", i,
             " has an invalid count n = ", r[0]);
    MP_CHECK(r[6] >= -1 && r[6] == std::floor(r[6]), "pair statistics: row ", i,
             " has an invalid last step ", r[6]);
  }
  const int64_t p = dp_.size(), q = dp_.rank();
  for (int64_t k = 0; k < n_local_; ++k) local_[size_t(k)] = unpack(&table[size_t(k * p + q) * S]);
}

}  // namespace metapo
