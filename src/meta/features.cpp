#include "metapo/meta/features.h"

#include <algorithm>
#include <cmath>

#include "metapo/core/error.h"

namespace metapo {

namespace {

constexpr size_t F = kNumFeatures;

void check_matrix(const std::vector<double>& raw, const char* what) {
  MP_CHECK(raw.size() % F == 0, what, ": ", raw.size(), " values are not a [B, ", F, "] feature matrix");
}

}  // namespace

double logp_gap(double logp_chosen, int64_t len_chosen, double logp_rejected, int64_t len_rejected) {
  MP_CHECK(len_chosen >= 1 && len_rejected >= 1, "logp_gap: response lengths must be >= 1 (got ", len_chosen, " and ",
           len_rejected, ")");
  return logp_chosen / double(len_chosen) - logp_rejected / double(len_rejected);
}

std::vector<double> make_features(const std::vector<PairStatRow>& rows, const std::vector<PairNow>& now) {
  MP_CHECK(now.size() == rows.size(), "make_features: ", rows.size(), " statistics rows but ", now.size(),
           " pairs' current values");
  std::vector<double> x(rows.size() * F);  // [B, F]
  for (size_t b = 0; b < rows.size(); ++b) {
    const PairStatRow& r = rows[b];
    double* xb = &x[b * F];
    xb[kFeatMarginEma] = r.mu;
    xb[kFeatMarginTrend] = r.trend;
    xb[kFeatVolatility] = std::sqrt(std::max(r.vol, 0.0));
    xb[kFeatRefDeviation] = r.ref_dev;
    xb[kFeatLogCount] = std::log1p(r.n);
    xb[kFeatMargin] = now[b].margin;
    xb[kFeatLoss] = now[b].loss;
    xb[kFeatLogpGap] = now[b].logp_gap;
  }
  return x;
}

bool has_history(const double* raw_row) {
  // n is an integer, so rounding expm1(log1p(n)) recovers it exactly for any realistic count.
  return std::round(std::expm1(raw_row[kFeatLogCount])) >= kMinHistory;
}

void FeatureStandardizer::update(const std::vector<double>& raw, Comm& comm) {
  check_matrix(raw, "feature statistics");
  const size_t batch = raw.size() / F;
  std::vector<double> s(3 * F, 0.0);  // this batch's [count[F], sum[F], sum_of_squares[F]]
  for (size_t b = 0; b < batch; ++b) {
    const double* x = &raw[b * F];
    const bool history = has_history(x);
    for (size_t f = 0; f < F; ++f) {
      if (is_temporal(int(f)) && !history) continue;
      MP_CHECK(std::isfinite(x[f]), "feature statistics: feature ", kFeatureNames[f], " of row ", b,
               " is not finite (", x[f], ")");
      s[f] += 1, s[F + f] += x[f], s[2 * F + f] += x[f] * x[f];
    }
  }
  comm.allreduce_sum(s.data(), s.size());
  for (size_t f = 0; f < F; ++f) count_[f] += s[f], sum_[f] += s[F + f], sumsq_[f] += s[2 * F + f];
}

double FeatureStandardizer::mean(int f) const {
  return count_[size_t(f)] > 0 ? sum_[size_t(f)] / count_[size_t(f)] : 0.0;
}

double FeatureStandardizer::stddev(int f) const {
  if (count_[size_t(f)] <= 0) return 0.0;
  const double m = mean(f);
  // E[x²] − E[x]² can round below zero when the spread is tiny against the mean.
  return std::sqrt(std::max(sumsq_[size_t(f)] / count_[size_t(f)] - m * m, 0.0));
}

std::vector<double> FeatureStandardizer::standardize(const std::vector<double>& raw) const {
  check_matrix(raw, "standardize features");
  std::array<double, F> mu{}, inv_sd{};
  for (size_t f = 0; f < F; ++f) mu[f] = mean(int(f)), inv_sd[f] = 1.0 / std::max(stddev(int(f)), kMinStd);
  std::vector<double> z(raw.size(), 0.0);  // [B, F]
  for (size_t b = 0; b < raw.size() / F; ++b) {
    const double* x = &raw[b * F];
    const bool history = has_history(x);
    for (size_t f = 0; f < F; ++f) {
      if (count_[f] <= 0 || (is_temporal(int(f)) && !history) || !is_net_input(int(f))) continue;
      z[b * F + f] = std::clamp((x[f] - mu[f]) * inv_sd[f], -kClip, kClip);
    }
  }
  return z;
}

std::vector<double> FeatureStandardizer::state() const {
  std::vector<double> s(3 * F);
  for (size_t f = 0; f < F; ++f) s[f] = count_[f], s[F + f] = sum_[f], s[2 * F + f] = sumsq_[f];
  return s;
}

void FeatureStandardizer::load_state(const std::vector<double>& s) {
  MP_CHECK(s.size() == 3 * F, "feature statistics: checkpoint state has ", s.size(), " values, expected ",
           3 * F, " (count, sum and sum of squares of ", F, " features)");
  for (size_t f = 0; f < F; ++f) {
    MP_CHECK(std::isfinite(s[f]) && s[f] >= 0 && std::isfinite(s[F + f]) && std::isfinite(s[2 * F + f]) &&
                 s[2 * F + f] >= 0,
             "feature statistics: checkpoint state of feature ", kFeatureNames[f], " is invalid (count ",
             s[f], ", sum ", s[F + f], ", sum of squares ", s[2 * F + f], ")");
  }
  for (size_t f = 0; f < F; ++f) count_[f] = s[f], sum_[f] = s[F + f], sumsq_[f] = s[2 * F + f];
}

void mask_features(std::vector<double>& x, int64_t rows, const std::string& keep) {
  MP_CHECK(keep == "all" || keep == "temporal" || keep == "instantaneous", "--meta-features ", keep,
           ": unknown (valid: all, temporal, instantaneous)");
  if (keep == "all") return;
  const bool keep_temporal = keep == "temporal";
  for (int64_t r = 0; r < rows; ++r)
    for (int f = 0; f < kNumFeatures; ++f)
      if (is_temporal(f) != keep_temporal) x[size_t(r * kNumFeatures + f)] = 0.0;
}

}  // namespace metapo
