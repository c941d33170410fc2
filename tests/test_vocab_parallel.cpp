// Vocab-parallel embedding and log-probs (parallel/vocab_parallel.h) in one process: with SelfComm
// (tp = 1) they must equal the single-rank cpu kernels bit for bit; the shard kernels
// (logprob_forward_shard / logprob_backward_shard), combined by hand over several shards, must equal
// the whole-vocabulary kernels. The multi-rank runs are in test_vocab_parallel_mpi.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/kernels/embedding.h"
#include "metapo/kernels/logprob.h"
#include "metapo/parallel/vocab_parallel.h"
#include "test_util.h"

using namespace metapo;
using namespace metapo::test;
using std::vector;

namespace {

template <typename T>
bool same_bits(const vector<T>& a, const vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

// n rows of h, about two thirds with a target (more than one 256-row chunk), targets cover the ends.
struct Rows {
  vector<int32_t> rows, targets;
};
Rows make_rows(int64_t n, int64_t V) {
  Rows r;
  for (int32_t t = 0; t < n; ++t)
    if (t % 3 != 1) r.rows.push_back(t), r.targets.push_back(int32_t((t * 7) % V));
  r.targets.front() = int32_t(V - 1), r.targets.back() = 0;
  return r;
}

}  // namespace

TEST(VocabShard, SplitsAndPads) {
  const VocabShard a(23, 3, 2);  // 23 → 24 rows, 8 per rank; rank 2 holds 16..22 and one padded row
  EXPECT_EQ(a.padded, 24);
  EXPECT_EQ(a.rows, 8);
  EXPECT_EQ(a.begin, 16);
  EXPECT_EQ(a.real, 7);
  EXPECT_TRUE(a.owns(22));
  EXPECT_FALSE(a.owns(23));
  EXPECT_FALSE(a.owns(15));
  EXPECT_EQ(a.end(), 23);
  const VocabShard b(23, 3, 0);
  EXPECT_EQ(b.begin, 0);
  EXPECT_EQ(b.real, 8);
  const VocabShard c(5, 4, 3);  // 5 → 8 rows, 2 per rank: rank 3 holds padding only
  EXPECT_EQ(c.padded, 8);
  EXPECT_EQ(c.begin, 6);
  EXPECT_EQ(c.real, 0);
  EXPECT_FALSE(c.owns(6));
  EXPECT_EQ(VocabShard(5, 4, 2).real, 1);
  const VocabShard d(64, 1, 0);
  EXPECT_EQ(d.padded, 64);
  EXPECT_EQ(d.rows, 64);
  EXPECT_EQ(d.real, 64);
  int64_t total = 0;
  for (int r = 0; r < 3; ++r) total += VocabShard(64, 3, r).real;
  EXPECT_EQ(total, 64);
  EXPECT_NE(error_of([] { VocabShard(0, 2, 0); }).find("vocabulary size must be positive"), std::string::npos);
  EXPECT_NE(error_of([] { VocabShard(10, 0, 0); }).find("tensor-parallel size"), std::string::npos);
  EXPECT_NE(error_of([] { VocabShard(10, 2, 2); }).find("rank 2 is outside"), std::string::npos);
}

template <typename T>
class VocabParallel : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(VocabParallel, Types);

// tp = 1: the vocab-parallel log-probs are the single-rank kernels, bit for bit.
TYPED_TEST(VocabParallel, LogprobWithSelfCommIsTheSingleRankKernel) {
  using T = TypeParam;
  const int64_t n = 400, C = 12, V = 37;
  const Rows r = make_rows(n, V);
  const int64_t nr = int64_t(r.rows.size());
  const vector<T> h = cast<T>(randn<double>(n * C, 1)), W = cast<T>(randn<double>(V * C, 2)),
                  G = cast<T>(randn<double>(V * C, 3)), coef = cast<T>(randn<double>(nr, 4));
  SelfComm self;
  const VocabShard s(V, 1, 0);
  cpu::LogprobParams<T> ref{h.data(), W.data(), C, V, r.rows.data(), r.targets.data(), nr};
  VocabParallelLogprobParams<T> vp{h.data(), W.data(), C, s, r.rows.data(), r.targets.data(), nr};
  for (bool use_cache : {false, true}) {
    for (bool accumulate : {false, true}) {
      vector<T> lp0(nr), lse0(nr), lp1(nr), lse1(nr), cache0(use_cache ? nr * V : 0), cache1 = cache0;
      cpu::logprob_forward(ref, lp0.data(), lse0.data(), use_cache ? cache0.data() : nullptr);
      vocab_parallel_logprob_forward(ops::Context{}, vp, self, lp1.data(), lse1.data(), use_cache ? cache1.data() : nullptr);
      EXPECT_TRUE(same_bits(lp0, lp1)) << "logp, cache " << use_cache;
      EXPECT_TRUE(same_bits(lse0, lse1)) << "lse, cache " << use_cache;
      EXPECT_TRUE(same_bits(cache0, cache1)) << "probability cache";

      const vector<T> start = cast<T>(randn<double>(V * C, 5));  // dW before the call
      vector<T> dh0(n * C, T(0)), dh1 = dh0, dW0 = start, dW1 = start;
      vector<double> rd0(n, 0.0), rd1(n, 0.0);
      cpu::logprob_backward(ref, coef.data(), lse0.data(), use_cache ? cache0.data() : nullptr, dh0.data(),
                            dW0.data(), accumulate, G.data(), rd0.data());
      vocab_parallel_logprob_backward(ops::Context{}, vp, ops::LogprobGrad<T>{coef.data(), lse1.data(), use_cache ? cache1.data() : nullptr, dh1.data(), dW1.data(), accumulate, G.data(), rd1.data()});
      EXPECT_TRUE(same_bits(dh0, dh1)) << "dh, cache " << use_cache << " accumulate " << accumulate;
      EXPECT_TRUE(same_bits(dW0, dW1)) << "dW, cache " << use_cache << " accumulate " << accumulate;
      EXPECT_TRUE(same_bits(rd0, rd1)) << "row dots, cache " << use_cache << " accumulate " << accumulate;
    }
  }
}

TYPED_TEST(VocabParallel, EmbeddingWithSelfCommIsTheSingleRankKernel) {
  using T = TypeParam;
  const int64_t n = 50, C = 70, V = 23;  // C > one 64-column block of the backward
  vector<int32_t> tok(n);
  for (int64_t t = 0; t < n; ++t) tok[t] = int32_t((t * 5 + t / 7) % V);
  const vector<T> E = cast<T>(randn<double>(V * C, 1)), G = cast<T>(randn<double>(V * C, 2)),
                  dx = cast<T>(randn<double>(n * C, 3));
  SelfComm self;
  const VocabShard s(V, 1, 0);
  vector<T> x0(n * C), x1(n * C, T(7));
  cpu::embedding_forward(x0.data(), E.data(), tok.data(), n, C);
  vocab_parallel_embedding_forward(ops::Context{}, x1.data(), E.data(), tok.data(), n, C, s, self);
  EXPECT_TRUE(same_bits(x0, x1));
  vector<T> dE0 = cast<T>(randn<double>(V * C, 4)), dE1 = dE0;
  cpu::embedding_backward(dE0.data(), dx.data(), tok.data(), n, C);
  vocab_parallel_embedding_backward(ops::Context{}, dE1.data(), dx.data(), tok.data(), n, C, s);
  EXPECT_TRUE(same_bits(dE0, dE1));
  vector<double> rd0(n, 0.5), rd1(n, 0.5);
  cpu::embedding_ghost_dots(dx.data(), tok.data(), G.data(), n, C, rd0.data());
  vocab_parallel_embedding_ghost_dots(ops::Context{}, dx.data(), tok.data(), G.data(), n, C, s, rd1.data());
  EXPECT_TRUE(same_bits(rd0, rd1));
}

// Several shards in one process, reduced by hand as the TP all-reduces would: the shard kernels give
// the whole-vocabulary numbers, including a shard of padding only (V = 5 over 4 ranks).
TEST(VocabParallelShards, CombineToTheWholeVocabulary) {
  for (const auto& [V, tp] : vector<std::pair<int64_t, int>>{{23, 3}, {5, 4}, {64, 3}}) {
    SCOPED_TRACE("V " + std::to_string(V) + " tp " + std::to_string(tp));
    const int64_t n = 30, C = 6;
    const Rows r = make_rows(n, V);
    const int64_t nr = int64_t(r.rows.size());
    const vector<double> h = randn<double>(n * C, 1), W = randn<double>(V * C, 2), G = randn<double>(V * C, 3),
                         coef = randn<double>(nr, 4);
    cpu::LogprobParams<double> ref{h.data(), W.data(), C, V, r.rows.data(), r.targets.data(), nr};
    vector<double> lp(nr), lse(nr), dh(n * C, 0.0), dW(V * C), rd(n, 0.0);
    cpu::logprob_forward(ref, lp.data(), lse.data(), (double*)nullptr);
    cpu::logprob_backward(ref, coef.data(), lse.data(), (double*)nullptr, dh.data(), dW.data(), false, G.data(),
                          rd.data());

    vector<double> M(nr, -std::numeric_limits<double>::infinity()), S(nr, 0.0), Z(nr, 0.0);
    vector<vector<double>> mx(tp), se(tp);
    for (int k = 0; k < tp; ++k) {  // forward statistics per shard, then max
      const VocabShard s(V, tp, k);
      cpu::LogprobParams<double> p{h.data(), W.data() + std::min(s.begin, V) * C, C, s.real, r.rows.data(), r.targets.data(), nr};
      mx[k].resize(nr), se[k].resize(nr);
      vector<double> tl(nr);
      cpu::logprob_forward_shard(p, s.begin, mx[k].data(), se[k].data(), tl.data(), (double*)nullptr);
      for (int64_t i = 0; i < nr; ++i) M[i] = std::max(M[i], mx[k][i]), Z[i] += tl[i];
    }
    for (int k = 0; k < tp; ++k)
      for (int64_t i = 0; i < nr; ++i)
        if (se[k][i] > 0) S[i] += se[k][i] * std::exp(mx[k][i] - M[i]);
    vector<double> lse_tp(nr), lp_tp(nr);
    for (int64_t i = 0; i < nr; ++i) lse_tp[i] = M[i] + std::log(S[i]), lp_tp[i] = Z[i] - lse_tp[i];
    EXPECT_LT(rel_max_err(lp_tp, lp), 1e-13);
    EXPECT_LT(rel_max_err(lse_tp, lse), 1e-13);

    vector<double> dh_tp(n * C, 0.0), dW_tp(V * C, -1.0), rd_tp(n, 0.0);
    for (int k = 0; k < tp; ++k) {
      const VocabShard s(V, tp, k);
      cpu::LogprobParams<double> p{h.data(), W.data() + std::min(s.begin, V) * C, C, s.real, r.rows.data(), r.targets.data(), nr};
      double* dWk = dW_tp.data() + std::min(s.begin, V) * C;  // one past the end for a padding-only shard
      cpu::logprob_backward_shard(p, s.begin, coef.data(), lse_tp.data(), (double*)nullptr, dh_tp.data(), dWk,
                                  false, G.data() + std::min(s.begin, V) * C, rd_tp.data());
    }
    EXPECT_LT(rel_max_err(dh_tp, dh), 1e-13);
    EXPECT_LT(rel_max_err(dW_tp, dW), 1e-13);  // every real row written exactly once
    EXPECT_LT(rel_max_err(rd_tp, rd), 1e-13);
  }
}

TEST(VocabParallelErrors, BadInputFailsWithAClearMessage) {
  SelfComm self;
  const int64_t C = 2, V = 5;
  vector<float> E(V * C, 1.0f), x(3 * C), dx(3 * C, 1.0f);
  vector<int32_t> tok = {0, 5, 1};
  EXPECT_NE(error_of([&] { vocab_parallel_embedding_forward(ops::Context{}, x.data(), E.data(), tok.data(), 3, C, VocabShard(V, 1, 0), self); })
                .find("token id 5 at position 1 is outside the vocabulary [0, 5)"),
            std::string::npos);
  tok[1] = -1;
  EXPECT_NE(error_of([&] { vocab_parallel_embedding_backward(ops::Context{}, E.data(), dx.data(), tok.data(), 3, C, VocabShard(V, 1, 0)); })
                .find("token id -1"),
            std::string::npos);
  tok[1] = 2;
  // A shard made for another group than the communicator's.
  EXPECT_NE(error_of([&] { vocab_parallel_embedding_forward(ops::Context{}, x.data(), E.data(), tok.data(), 3, C, VocabShard(V, 2, 1), self); })
                .find("the vocabulary shard is for rank 1 of 2 but the communicator is rank 0 of 1"),
            std::string::npos);
  vector<int32_t> rows = {0}, targets = {7};
  vector<float> lp(1), lse(1);
  VocabParallelLogprobParams<float> p{x.data(), E.data(), C, VocabShard(V, 1, 0), rows.data(), targets.data(), 1};
  EXPECT_NE(error_of([&] { vocab_parallel_logprob_forward(ops::Context{}, p, self, lp.data(), lse.data(), (float*)nullptr); })
                .find("token id 7"),
            std::string::npos);
}
