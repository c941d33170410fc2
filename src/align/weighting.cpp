// The static weighting baselines. Formulas and the reasons for them: docs/losses.md, "Weighting".
#include "metapo/align/weighting.h"

#include <cmath>

#include "metapo/core/error.h"

namespace metapo {
namespace {

struct WeightingInfo {
  Weighting w;
  const char* name;
};
constexpr WeightingInfo kWeightings[] = {
    {Weighting::Uniform, "uniform"}, {Weighting::Wpo, "wpo"},       {Weighting::Margin, "margin"},
    {Weighting::Column, "column"},   {Weighting::Metapo, "metapo"},
};

// σ(x) without overflow for either sign.
double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

}  // namespace

Weighting parse_weighting(const std::string& name) {
  for (const auto& wi : kWeightings)
    if (name == wi.name) return wi.w;
  std::string valid;
  for (const auto& wi : kWeightings) valid += std::string(valid.empty() ? "" : ", ") + wi.name;
  fail("--weighting ", name, ": unknown weighting (valid: ", valid, ")");
}

std::string weighting_name(Weighting w) {
  for (const auto& wi : kWeightings)
    if (wi.w == w) return wi.name;
  fail("weighting ", int(w), " has no entry in the weighting table (src/align/weighting.cpp)");
}

void validate(Weighting w, const WeightOptions& opt) {
  if (w == Weighting::Wpo)
    MP_CHECK(std::isfinite(opt.wpo_alpha) && opt.wpo_alpha >= 0, "--wpo-alpha ", opt.wpo_alpha, ": must be >= 0");
  if (w == Weighting::Margin)
    MP_CHECK(std::isfinite(opt.margin_tau) && opt.margin_tau > 0, "--margin-tau ", opt.margin_tau, ": must be > 0");
  if (w == Weighting::Column) MP_CHECK(!opt.column.empty(), "--weight-column: empty column name");
}

std::vector<double> static_pair_weights(Weighting w, const std::vector<PairLogps>& pairs,
                                        const std::vector<PairLossResult>& losses,
                                        const std::vector<double>& column_values, const WeightOptions& opt) {
  const size_t n = pairs.size();
  std::vector<double> out(n, 1.0);
  switch (w) {
    case Weighting::Uniform:
      break;
    case Weighting::Wpo:
      // WPO's weight of a pair: the policy's per-token (geometric-mean) probability of y_w times that
      // of y_l, exp(logπ(y_w)/|y_w| + logπ(y_l)/|y_l|). Length-normalized so long responses are not
      // driven to weight 0 by their length alone.
      for (size_t i = 0; i < n; ++i) {
        const PairLogps& p = pairs[i];
        MP_CHECK(p.len_chosen >= 1 && p.len_rejected >= 1, "--weighting wpo: pair ", i,
                 " has an empty response (len_chosen = ", p.len_chosen, ", len_rejected = ", p.len_rejected, ")");
        const double mean_logp = p.policy_chosen / double(p.len_chosen) + p.policy_rejected / double(p.len_rejected);
        out[i] = std::exp(opt.wpo_alpha * mean_logp);
        MP_CHECK(std::isfinite(out[i]) && out[i] > 0, "--weighting wpo: pair ", i, " weight exp(", opt.wpo_alpha,
                 " * ", mean_logp, ") is not a positive finite number");
      }
      break;
    case Weighting::Margin:
      MP_CHECK(losses.size() == n, "--weighting margin: ", losses.size(), " loss results for ", n, " pairs");
      for (size_t i = 0; i < n; ++i) {
        out[i] = sigmoid(losses[i].margin / opt.margin_tau);
        MP_CHECK(std::isfinite(out[i]) && out[i] > 0, "--weighting margin: pair ", i, " margin ", losses[i].margin,
                 " gives weight sigmoid(margin / ", opt.margin_tau, ") = ", out[i], " (underflow or not finite)");
      }
      break;
    case Weighting::Column:
      MP_CHECK(column_values.size() == n, "--weighting column: column '", opt.column, "' has ",
               column_values.size(), " values for ", n, " pairs");
      for (size_t i = 0; i < n; ++i) {
        MP_CHECK(std::isfinite(column_values[i]) && column_values[i] >= 0, "--weighting column: column '",
                 opt.column, "' value ", column_values[i], " of pair ", i, " is not a finite number >= 0");
        out[i] = column_values[i];
      }
      break;
    case Weighting::Metapo:
      fail("--weighting metapo: weights come from the weight net, not from static_pair_weights");
  }
  return out;
}

}  // namespace metapo
