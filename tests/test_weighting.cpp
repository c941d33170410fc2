// The static weighting baselines on small inputs, against values worked out by hand, and the checks on
// their inputs (dataset column, sizes, options).
#include <gtest/gtest.h>

#include "test_util.h"

#include <cmath>
#include <string>

#include "metapo/align/weighting.h"
#include "metapo/core/error.h"

using namespace metapo;
using metapo::test::error_of;
using std::vector;

namespace {

PairLossResult with_margin(double m) {
  PairLossResult r;
  r.margin = m;
  return r;
}

const vector<PairLogps> kPairs = {
    {-4.0, -6.0, -5.0, -5.0, 4, 3},    // per-token logps -1 and -2
    {-10.0, -1.0, -9.0, -2.0, 10, 2},  // -1 and -0.5
    {-0.3, -0.9, -0.1, -0.2, 3, 9},    // -0.1 and -0.1
};

}  // namespace

TEST(Weighting, NamesRoundTrip) {
  for (Weighting w : {Weighting::Uniform, Weighting::Wpo, Weighting::Margin, Weighting::Column, Weighting::Metapo})
    EXPECT_EQ(parse_weighting(weighting_name(w)), w);
  EXPECT_EQ(parse_weighting("metapo"), Weighting::Metapo);
  EXPECT_EQ(error_of([] { parse_weighting("wp0"); }),
            "--weighting wp0: unknown weighting (valid: uniform, wpo, margin, column, metapo)");
}

TEST(Weighting, UniformIsOne) {
  EXPECT_EQ(static_pair_weights(Weighting::Uniform, kPairs, {}, {}, {}), (vector<double>{1.0, 1.0, 1.0}));
  EXPECT_TRUE(static_pair_weights(Weighting::Uniform, {}, {}, {}, {}).empty());
}

TEST(Weighting, WpoIsPerTokenProbabilityOfBothResponses) {
  // w = exp(α (logπ(y_w)/|y_w| + logπ(y_l)/|y_l|)); the reference log-probs play no part.
  const vector<double> w = static_pair_weights(Weighting::Wpo, kPairs, {}, {}, {});
  ASSERT_EQ(w.size(), 3u);
  EXPECT_NEAR(w[0], std::exp(-3.0), 1e-16);  // 0.049787068...
  EXPECT_NEAR(w[1], std::exp(-1.5), 1e-16);  // 0.223130160...
  EXPECT_NEAR(w[2], std::exp(-0.2), 1e-16);  // 0.818730753...

  WeightOptions half;
  half.wpo_alpha = 0.5;
  EXPECT_NEAR(static_pair_weights(Weighting::Wpo, kPairs, {}, {}, half)[0], std::exp(-1.5), 1e-16);
  WeightOptions zero;
  zero.wpo_alpha = 0.0;  // α = 0 switches WPO off: uniform
  EXPECT_EQ(static_pair_weights(Weighting::Wpo, kPairs, {}, {}, zero), (vector<double>{1.0, 1.0, 1.0}));

  const vector<PairLogps> empty_response = {{-4.0, 0.0, -5.0, 0.0, 4, 0}};
  EXPECT_NE(error_of([&] { static_pair_weights(Weighting::Wpo, empty_response, {}, {}, {}); })
                .find("--weighting wpo: pair 0 has an empty response"),
            std::string::npos);
  const vector<PairLogps> underflow = {{-1e6, -1e6, 0.0, 0.0, 1, 1}};
  EXPECT_NE(error_of([&] { static_pair_weights(Weighting::Wpo, underflow, {}, {}, {}); })
                .find("is not a positive finite number"),
            std::string::npos);
}

TEST(Weighting, MarginIsSigmoidOfMarginOverTau) {
  const vector<PairLossResult> losses = {with_margin(0.0), with_margin(2.0), with_margin(-2.0)};
  const vector<double> w = static_pair_weights(Weighting::Margin, kPairs, losses, {}, {});
  EXPECT_EQ(w[0], 0.5);
  EXPECT_NEAR(w[1], 0.8807970779778823, 1e-16);  // σ(2)
  EXPECT_NEAR(w[2], 0.1192029220221175, 1e-16);  // σ(−2)

  WeightOptions t2;
  t2.margin_tau = 2.0;
  const vector<double> w2 = static_pair_weights(Weighting::Margin, kPairs, losses, {}, t2);
  EXPECT_NEAR(w2[1], 0.7310585786300049, 1e-16);  // σ(1)
  EXPECT_NEAR(w2[2], 0.2689414213699951, 1e-16);  // σ(−1)

  EXPECT_NE(error_of([&] { static_pair_weights(Weighting::Margin, kPairs, {with_margin(1.0)}, {}, {}); })
                .find("--weighting margin: 1 loss results for 3 pairs"),
            std::string::npos);
  const vector<PairLossResult> hopeless = {with_margin(-1e4), with_margin(0), with_margin(0)};
  EXPECT_NE(error_of([&] { static_pair_weights(Weighting::Margin, kPairs, hopeless, {}, {}); }).find("underflow"),
            std::string::npos);
}

TEST(Weighting, ColumnPassesValuesThroughAndChecksThem) {
  WeightOptions opt;
  opt.column = "quality";
  EXPECT_EQ(static_pair_weights(Weighting::Column, kPairs, {}, {0.5, 0.0, 3.0}, opt), (vector<double>{0.5, 0.0, 3.0}));

  EXPECT_EQ(error_of([&] { static_pair_weights(Weighting::Column, kPairs, {}, {1.0, -0.5, 1.0}, opt); }),
            "--weighting column: column 'quality' value -0.5 of pair 1 is not a finite number >= 0");
  EXPECT_NE(error_of([&] { static_pair_weights(Weighting::Column, kPairs, {}, {1.0, 1.0, NAN}, opt); })
                .find("of pair 2 is not a finite number"),
            std::string::npos);
  EXPECT_NE(error_of([&] { static_pair_weights(Weighting::Column, kPairs, {}, {INFINITY, 1.0, 1.0}, opt); })
                .find("of pair 0 is not a finite number"),
            std::string::npos);
  EXPECT_EQ(error_of([&] { static_pair_weights(Weighting::Column, kPairs, {}, {1.0, 1.0}, opt); }),
            "--weighting column: column 'quality' has 2 values for 3 pairs");
}

TEST(Weighting, MetapoIsNotStatic) {
  EXPECT_NE(error_of([] { static_pair_weights(Weighting::Metapo, kPairs, {}, {}, {}); }).find("weight net"),
            std::string::npos);
}

TEST(Weighting, ValidateOptions) {
  WeightOptions o;
  o.wpo_alpha = -1;
  EXPECT_NE(error_of([&] { validate(Weighting::Wpo, o); }).find("--wpo-alpha -1: must be >= 0"), std::string::npos);
  EXPECT_NO_THROW(validate(Weighting::Uniform, o));  // options of other weightings are not read
  o = {};
  o.margin_tau = 0;
  EXPECT_NE(error_of([&] { validate(Weighting::Margin, o); }).find("--margin-tau 0: must be > 0"), std::string::npos);
  o = {};
  o.column = "";
  EXPECT_NE(error_of([&] { validate(Weighting::Column, o); }).find("empty column name"), std::string::npos);
  EXPECT_NO_THROW(validate(Weighting::Column, WeightOptions{}));
}
