// ZeRO-1 (ZeroAdamW) over several ranks: run by tests/cli/zero_mpi.sh under `mpirun -np 1, 2, 3`.
// Every rank holds its own gradient; the reference is plain AdamW (optimizer.h) on the sum of all
// ranks' gradients, computed by every rank on its own. The sharded optimizer must give the same
// parameters (bit for bit on one rank), the same gradient norm, the same parameters on every rank,
// zero padding, the state split over the ranks, and collective volumes that match the formula.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#include "metapo/comm/mpi_comm.h"
#include "metapo/core/rng.h"
#include "metapo/model/config.h"
#include "metapo/model/layout.h"
#include "metapo/train/optimizer.h"
#include "metapo/train/zero.h"
#include "mpi_test_env.h"

using namespace metapo;
using metapo::testing_mpi::same_on_all_ranks;
using std::vector;

namespace {

// An odd-sized layout (qwen2 biases, tied head) so that the last shard carries padding.
LlamaConfig config() {
  LlamaConfig c;
  c.vocab_size = 23, c.hidden_size = 16, c.intermediate_size = 24, c.num_hidden_layers = 2;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 6, c.rms_norm_eps = 1e-5;
  c.model_type = "qwen2", c.attention_bias = true, c.tie_word_embeddings = true;
  return c;
}

vector<float> random_vector(size_t n, uint64_t step, uint32_t id, float scale) {
  Philox r = make_rng(5, step, id, RngPurpose::Bench);
  vector<float> v(n);
  for (float& x : v) x = scale * (2.0f * r.uniform() - 1.0f);
  return v;
}

double rel_diff(const float* a, const float* b, size_t n) {
  double d = 0, s = 0;
  for (size_t i = 0; i < n; ++i) d += (double(a[i]) - b[i]) * (double(a[i]) - b[i]), s += double(b[i]) * b[i];
  return std::sqrt(d / std::max(s, 1e-300));
}

class ZeroMpi : public ::testing::TestWithParam<size_t> {};

TEST_P(ZeroMpi, MatchesAdamWOnTheSummedGradient) {
  REQUIRE_MPI("tests/cli/zero_mpi.sh");
  const LlamaConfig c = config();
  const ParamLayout lay(c);
  const size_t n = lay.total();
  MpiComm comm(MPI_COMM_WORLD, GetParam());
  const int p = comm.size(), rank = comm.rank();
  AdamWConfig cfg;
  cfg.weight_decay = 0.1;
  ZeroAdamW zero(lay, cfg, comm);
  AdamW ref(lay, cfg);
  ASSERT_EQ(zero.padded_size() % size_t(p), 0u);
  ASSERT_GE(zero.padded_size(), n);
  ASSERT_LT(zero.padded_size() - n, size_t(p));

  vector<float> params = random_vector(n, 0, 999, 0.5f), ref_params = params;
  params.resize(zero.padded_size(), 0.0f);
  const double scale = 0.7;
  for (int step = 0; step < 6; ++step) {
    vector<float> sum(n, 0.0f), mine;
    for (int r = 0; r < p; ++r) {
      const vector<float> g = random_vector(n, uint64_t(step + 1), uint32_t(r), 1.0f);
      for (size_t i = 0; i < n; ++i) sum[i] += g[i];
      if (r == rank) mine = g;
    }
    for (float& x : sum) x *= float(scale);
    const double norm = grad_norm(sum.data(), n);
    const double max_norm = step % 2 ? 0.5 * norm : 0.0;  // clip on odd steps only
    clip_grads(sum.data(), n, norm, max_norm);
    const double lr = 1e-2 * (step + 1);
    ref.step(ref_params.data(), sum.data(), lr);

    mine.resize(zero.padded_size(), 0.0f);
    const double got = zero.step(params.data(), mine.data(), lr, scale, max_norm);
    EXPECT_NEAR(got, norm, 1e-6 * norm) << "step " << step;
  }
  const double d = rel_diff(params.data(), ref_params.data(), n);
  if (p == 1) {
    EXPECT_EQ(std::memcmp(params.data(), ref_params.data(), n * sizeof(float)), 0) << "one rank: plain AdamW";
  }
  EXPECT_LT(d, 1e-6) << "parameters vs AdamW on the summed gradient, " << p << " ranks";
  for (size_t i = n; i < params.size(); ++i) EXPECT_EQ(params[i], 0.0f) << "padding " << i;

  EXPECT_TRUE(same_on_all_ranks(params)) << "parameters differ between ranks";

  // The moments are split over the ranks: together they hold one copy of the state.
  uint64_t state = zero.state_bytes();
  MPI_Allreduce(MPI_IN_PLACE, &state, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_EQ(state, 2 * n * sizeof(float));

  // Per step: one reduce-scatter and one all-gather of the padded buffer, and the norm's all-reduce
  // (one rank moves nothing: it updates in place).
  const CommVolume& v = comm.volume();
  const uint64_t padded_bytes = p > 1 ? zero.padded_size() * sizeof(float) : 0;
  EXPECT_EQ(v[CommOp::ReduceScatter], 6 * padded_bytes);
  EXPECT_EQ(v[CommOp::AllGather], 6 * padded_bytes);
  EXPECT_EQ(v[CommOp::AllReduce], p > 1 ? 6 * sizeof(double) : 0);
}

TEST_P(ZeroMpi, PreconditionedAllReduceUsesTheShardedSecondMoment) {
  REQUIRE_MPI("tests/cli/zero_mpi.sh");
  const ParamLayout lay(config());
  const size_t n = lay.total();
  MpiComm comm(MPI_COMM_WORLD, GetParam());
  const int p = comm.size(), rank = comm.rank();
  AdamWConfig cfg;
  ZeroAdamW zero(lay, cfg, comm);
  AdamW ref(lay, cfg);
  vector<float> params(zero.padded_size(), 0.0f), ref_params(n, 0.0f);
  for (int step = 0; step < 3; ++step) {  // build up a second moment
    vector<float> sum(n, 0.0f), mine;
    for (int r = 0; r < p; ++r) {
      const vector<float> g = random_vector(n, uint64_t(10 + step), uint32_t(r), 1.0f);
      for (size_t i = 0; i < n; ++i) sum[i] += g[i];
      if (r == rank) mine = g;
    }
    ref.step(ref_params.data(), sum.data(), 1e-3);
    mine.resize(zero.padded_size(), 0.0f);
    zero.step(params.data(), mine.data(), 1e-3, 1.0, 0.0);
  }
  for (bool precondition : {false, true}) {
    vector<float> expect(n, 0.0f), mine;
    for (int r = 0; r < p; ++r) {
      const vector<float> g = random_vector(n, 50, uint32_t(r), 1.0f);
      for (size_t i = 0; i < n; ++i) expect[i] += g[i];
      if (r == rank) mine = g;
    }
    if (precondition) {
      // Adam's second moment as it would be after taking g as its 4th gradient, bias-corrected; in
      // double from the reference AdamW's state.
      const double b2 = cfg.beta2, bc2 = 1.0 - std::pow(b2, 4.0);
      for (size_t i = 0; i < n; ++i) {
        const double g = expect[i], v = (b2 * double(ref.exp_avg_sq()[i]) + (1.0 - b2) * g * g) / bc2;
        expect[i] = float(g / (std::sqrt(v) + cfg.eps));
      }
    }
    mine.resize(zero.padded_size(), 0.0f);
    zero.allreduce_preconditioned(mine.data(), precondition);
    EXPECT_LT(rel_diff(mine.data(), expect.data(), n), 1e-6) << "precondition " << precondition;
    for (size_t i = n; i < mine.size(); ++i) EXPECT_EQ(mine[i], 0.0f);
  }
}

// INT_MAX: one MPI call per collective; 64 bytes: every block split into pieces.
INSTANTIATE_TEST_SUITE_P(MessageSizes, ZeroMpi, ::testing::Values(size_t(INT_MAX), size_t(64)));

}  // namespace
