// Integrated gradients, permutation importance and rank statistics for `metapo analyze`
// (definitions in attribution.h).
#include "metapo/meta/attribution.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "metapo/core/error.h"
#include "metapo/core/rng.h"

namespace metapo {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void check_rows(const char* what, const WeightNet& net, const std::vector<double>& X, int64_t B) {
  const int64_t F = net.config().n_features;
  MP_CHECK(B >= 0, what, ": row count must be >= 0 (got ", B, ")");
  MP_CHECK(int64_t(X.size()) == B * F, what, ": features have ", X.size(), " values, expected B*F = ", B,
           "*", F);
}

void check_temporal(const char* what, const std::vector<bool>& is_temporal, int64_t F) {
  MP_CHECK(int64_t(is_temporal.size()) == F, what, ": is_temporal has ", is_temporal.size(),
           " entries for ", F, " features");
}

double temporal_share(const std::vector<double>& mean_abs, const std::vector<bool>& is_temporal) {
  double temporal = 0, total = 0;
  for (size_t f = 0; f < mean_abs.size(); ++f) {
    total += mean_abs[f];
    if (is_temporal[f]) temporal += mean_abs[f];
  }
  return total > 0 ? temporal / total : kNaN;
}

void check_finite(const char* what, const std::vector<double>& v) {
  for (size_t i = 0; i < v.size(); ++i)
    MP_CHECK(std::isfinite(v[i]), what, ": value ", i, " is not finite (", v[i], ")");
}

}  // namespace

std::vector<double> integrated_gradients(const WeightNet& net, const double* x, int64_t steps) {
  MP_CHECK(steps >= 1, "integrated gradients: steps must be >= 1 (got ", steps, ")");
  const int64_t F = net.config().n_features;
  std::vector<double> xa(static_cast<size_t>(F)), integral(size_t(F), 0.0);
  // Trapezoid on α_k = k/K: the end points carry weight ½. Summed over k in order.
  for (int64_t k = 0; k <= steps; ++k) {
    const double alpha = double(k) / double(steps);
    for (int64_t f = 0; f < F; ++f) xa[f] = alpha * x[f];
    const std::vector<double> g = net.dz_dx(xa.data());
    const double w = (k == 0 || k == steps) ? 0.5 : 1.0;
    for (int64_t f = 0; f < F; ++f) integral[f] += w * g[f];
  }
  std::vector<double> attr(static_cast<size_t>(F));
  for (int64_t f = 0; f < F; ++f) attr[f] = x[f] * integral[f] / double(steps);
  return attr;
}

std::vector<double> integrated_gradients(const WeightNet& net, const std::vector<double>& X, int64_t B,
                                         int64_t steps) {
  check_rows("integrated gradients", net, X, B);
  const int64_t F = net.config().n_features;
  std::vector<double> attr(size_t(B * F));
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<double> row = integrated_gradients(net, X.data() + b * F, steps);
    std::copy(row.begin(), row.end(), attr.begin() + b * F);
  }
  return attr;
}

double max_completeness_gap(const WeightNet& net, const std::vector<double>& X, int64_t B,
                            const std::vector<double>& attr) {
  check_rows("completeness gap", net, X, B);
  const int64_t F = net.config().n_features;
  MP_CHECK(attr.size() == X.size(), "completeness gap: ", attr.size(), " attributions for ", X.size(),
           " feature values");
  const std::vector<double> origin(size_t(F), 0.0);
  const double z0 = net.z_of(origin.data());
  double gap = 0;
  for (int64_t b = 0; b < B; ++b) {
    double sum = 0;
    for (int64_t f = 0; f < F; ++f) sum += attr[b * F + f];
    gap = std::max(gap, std::abs(sum - (net.z_of(X.data() + b * F) - z0)));
  }
  return gap;
}

AttributionSummary summarize_attribution(const std::vector<double>& attr, int64_t B,
                                         const std::vector<bool>& is_temporal) {
  const int64_t F = int64_t(is_temporal.size());
  MP_CHECK(F >= 1, "attribution summary: is_temporal is empty");
  MP_CHECK(B >= 1, "attribution summary: row count must be >= 1 (got ", B, ")");
  MP_CHECK(int64_t(attr.size()) == B * F, "attribution summary: ", attr.size(),
           " attributions, expected B*F = ", B, "*", F);
  AttributionSummary s;
  s.mean_abs.assign(size_t(F), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t f = 0; f < F; ++f) s.mean_abs[f] += std::abs(attr[b * F + f]);
  for (double& m : s.mean_abs) m /= double(B);
  s.temporal_share = temporal_share(s.mean_abs, is_temporal);
  return s;
}

AttributionSummary permutation_importance(const WeightNet& net, const std::vector<double>& X, int64_t B,
                                          const std::vector<bool>& is_temporal, uint64_t seed,
                                          int64_t repeats) {
  check_rows("permutation importance", net, X, B);
  const int64_t F = net.config().n_features;
  check_temporal("permutation importance", is_temporal, F);
  MP_CHECK(B >= 1, "permutation importance: needs at least one row");
  MP_CHECK(repeats >= 1, "permutation importance: repeats must be >= 1 (got ", repeats, ")");
  std::vector<double> z(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) z[b] = net.z_of(X.data() + b * F);

  AttributionSummary s;
  s.mean_abs.assign(size_t(F), 0.0);
  std::vector<int64_t> perm(static_cast<size_t>(B));
  std::vector<double> row(static_cast<size_t>(F));
  for (int64_t f = 0; f < F; ++f) {
    double sum = 0;
    for (int64_t r = 0; r < repeats; ++r) {
      // Fisher–Yates: position i swaps with a uniform j in [0, i].
      std::iota(perm.begin(), perm.end(), int64_t(0));
      Philox rng = make_rng(seed, uint64_t(f), uint32_t(r), RngPurpose::Permute);
      for (int64_t i = B - 1; i > 0; --i) std::swap(perm[i], perm[int64_t(rng.below(uint64_t(i + 1)))]);
      for (int64_t b = 0; b < B; ++b) {
        std::copy(X.begin() + b * F, X.begin() + (b + 1) * F, row.begin());
        row[f] = X[perm[b] * F + f];
        sum += std::abs(net.z_of(row.data()) - z[b]);
      }
    }
    s.mean_abs[f] = sum / double(B * repeats);
  }
  s.temporal_share = temporal_share(s.mean_abs, is_temporal);
  return s;
}

std::vector<double> average_ranks(const std::vector<double>& x) {
  check_finite("ranks", x);
  const size_t n = x.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t(0));
  std::sort(order.begin(), order.end(),
            [&](size_t i, size_t j) { return x[i] < x[j] || (x[i] == x[j] && i < j); });
  std::vector<double> rank(n);
  for (size_t i = 0; i < n;) {
    size_t j = i + 1;
    while (j < n && x[order[j]] == x[order[i]]) ++j;
    const double r = 0.5 * double(i + 1 + j);  // mean of the 1-based ranks i+1 .. j
    for (size_t k = i; k < j; ++k) rank[order[k]] = r;
    i = j;
  }
  return rank;
}

double auc(const std::vector<double>& score, const std::vector<int>& label) {
  MP_CHECK(score.size() == label.size(), "auc: ", score.size(), " scores for ", label.size(), " labels");
  double n_pos = 0, n_neg = 0;
  for (size_t i = 0; i < label.size(); ++i) {
    MP_CHECK(label[i] == 0 || label[i] == 1, "auc: label ", i, " is ", label[i], ", expected 0 or 1");
    (label[i] == 1 ? n_pos : n_neg) += 1;
  }
  if (n_pos == 0 || n_neg == 0) return kNaN;
  const std::vector<double> rank = average_ranks(score);
  double rank_sum = 0;
  for (size_t i = 0; i < rank.size(); ++i)
    if (label[i] == 1) rank_sum += rank[i];
  // Mann–Whitney U: the number of (positive, negative) pairs the positive wins, ties ½.
  const double u = rank_sum - n_pos * (n_pos + 1) / 2;
  return u / (n_pos * n_neg);
}

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  MP_CHECK(x.size() == y.size(), "spearman: ", x.size(), " values against ", y.size());
  const size_t n = x.size();
  if (n < 2) return kNaN;
  const std::vector<double> rx = average_ranks(x), ry = average_ranks(y);
  const double mean = 0.5 * double(n + 1);  // the mean of any average ranks
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < n; ++i) {
    const double dx = rx[i] - mean, dy = ry[i] - mean;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  if (sxx == 0 || syy == 0) return kNaN;
  return sxy / std::sqrt(sxx * syy);
}

}  // namespace metapo
