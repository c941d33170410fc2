// Vocab-parallel embedding and log-probs over a TP group of all ranks: run by
// tests/cli/vocab_parallel_mpi.sh under `mpirun -np 1, 2, 3`. Every rank builds the SAME full matrices
// (counter-based RNG), keeps its vocabulary shard (padded rows filled with NaN: they must never be
// read) and compares against the single-rank cpu kernels on the full matrices: log-probs and lse,
// dh and the ghost row dots after the caller's TP all-reduce, the gathered dW / dE (padding exactly
// zero), the embedding output; also that the outputs are identical on every rank and the collective
// volume. Neither V = 23 nor 64 is divisible by 3 ranks (23 not by 2 either), so the last shard is
// padded; V = 2 over 3 ranks leaves one shard of padding only.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "metapo/comm/mpi_comm.h"
#include "metapo/core/rng.h"
#include "metapo/kernels/embedding.h"
#include "metapo/kernels/logprob.h"
#include "metapo/parallel/vocab_parallel.h"
#include "mpi_test_env.h"
#include "test_util.h"

using namespace metapo;
using metapo::test::rel_max_err;
using metapo::testing_mpi::all_ranks;
using metapo::testing_mpi::same_on_all_ranks;
using std::vector;

namespace {

template <typename T>
vector<T> random_vector(size_t n, uint32_t id, double scale = 1.0) {
  Philox r = make_rng(11, 0, id, RngPurpose::Bench);
  vector<T> v(n);
  for (T& x : v) x = T(scale * (2.0 * double(r.uniform()) - 1.0));
  return v;
}

vector<int32_t> random_tokens(size_t n, uint32_t id, int64_t V) {
  Philox r = make_rng(11, 1, id, RngPurpose::Bench);
  vector<int32_t> v(n);
  for (int32_t& x : v) x = int32_t(r.below(uint64_t(V)));
  v.front() = int32_t(V - 1), v.back() = 0;  // the last real token (on the padded shard) and the first
  return v;
}

// This rank's rows of a full [V, C] matrix; padded rows NaN, so any read of them shows.
template <typename T>
vector<T> shard_of(const vector<T>& full, const VocabShard& s, int64_t C) {
  vector<T> loc(static_cast<size_t>(s.rows * C), std::numeric_limits<T>::quiet_NaN());
  std::memcpy(loc.data(), full.data() + s.begin * C, sizeof(T) * size_t(s.real * C));
  return loc;
}

// All ranks' [rows, C] shards concatenated: [Vp, C].
template <typename T>
vector<T> gather(Comm& comm, const vector<T>& local) {
  vector<uint8_t> bytes;
  vector<size_t> counts;
  comm.allgatherv(local.data(), local.size() * sizeof(T), bytes, counts);
  vector<T> all(bytes.size() / sizeof(T));
  std::memcpy(all.data(), bytes.data(), bytes.size());
  return all;
}

// The real rows of a gathered [Vp, C] matrix against the reference [V, C]; the padded rows exactly 0.
template <typename T>
void expect_gathered(const vector<T>& all, const vector<T>& ref, const VocabShard& s, int64_t C, double tol,
                     const std::string& what) {
  ASSERT_EQ(all.size(), size_t(s.padded * C)) << what;
  const vector<T> real(all.begin(), all.begin() + s.vocab * C);
  EXPECT_ERR_LT(rel_max_err(real, ref), tol, test::errname(what));
  for (int64_t i = s.vocab * C; i < s.padded * C; ++i) EXPECT_EQ(all[size_t(i)], T(0)) << what << " padding " << i;
}

class VocabParallelMpi : public ::testing::TestWithParam<int64_t> {};

template <typename T>
void logprob_case(int64_t V, double tol) {
  MpiComm comm(MPI_COMM_WORLD);
  const VocabShard s(V, comm.size(), comm.rank());
  const int64_t n = 400, C = 10;  // more than one 256-row chunk of rows with a target
  vector<int32_t> rows, targets;
  const vector<int32_t> tok = random_tokens(size_t(n), 1, V);
  for (int32_t t = 0; t < n; ++t)
    if (t % 3 != 1) rows.push_back(t), targets.push_back(tok[size_t(t)]);
  const int64_t nr = int64_t(rows.size());
  const vector<T> h = random_vector<T>(size_t(n * C), 1), W = random_vector<T>(size_t(V * C), 2, 2.0),
                  G = random_vector<T>(size_t(V * C), 3), coef = random_vector<T>(size_t(nr), 4),
                  base = random_vector<T>(size_t(V * C), 5);

  // Reference: the single-rank kernels on the full matrices.
  cpu::LogprobParams<T> ref{h.data(), W.data(), C, V, rows.data(), targets.data(), nr};
  vector<T> lp0(static_cast<size_t>(nr)), lse0(static_cast<size_t>(nr)), dh0(size_t(n * C), T(0)), dW0(size_t(V * C));
  vector<double> rd0(size_t(n), 0.0);
  cpu::logprob_forward(ref, lp0.data(), lse0.data(), (T*)nullptr);
  cpu::logprob_backward(ref, coef.data(), lse0.data(), (T*)nullptr, dh0.data(), dW0.data(), false, G.data(),
                        rd0.data());
  vector<T> dW0_acc = base;  // base + dW: the accumulating path
  for (size_t i = 0; i < dW0_acc.size(); ++i) dW0_acc[i] += dW0[i];

  const vector<T> W_loc = shard_of(W, s, C), G_loc = shard_of(G, s, C);
  vector<T> base_loc = shard_of(base, s, C);
  std::fill(base_loc.begin() + s.real * C, base_loc.end(), T(0));  // padded gradient rows start at zero
  VocabParallelLogprobParams<T> p{h.data(), W_loc.data(), C, s, rows.data(), targets.data(), nr};
  for (bool use_cache : {false, true}) {
    for (bool accumulate : {false, true}) {
      const std::string tag = std::string(" V=") + std::to_string(V) + " tp=" + std::to_string(comm.size()) +
                              (use_cache ? " cache" : "") + (accumulate ? " accumulate" : "");
      vector<T> lp(static_cast<size_t>(nr)), lse(static_cast<size_t>(nr)), cache(use_cache ? size_t(nr * s.real) : 0);
      comm.reset_volume();
      vocab_parallel_logprob_forward(ops::Context{}, p, comm, lp.data(), lse.data(), use_cache ? cache.data() : nullptr);
      // Two all-reduces: the row maxima, then sum-exp and target logit (3 doubles per row in all).
      EXPECT_EQ(comm.volume()[CommOp::AllReduce], uint64_t(3 * nr) * sizeof(double));
      EXPECT_EQ(comm.volume().calls[int(CommOp::AllReduce)], 2u);
      EXPECT_ERR_LT(rel_max_err(lp, lp0), tol, test::errname("logp" + tag));
      EXPECT_ERR_LT(rel_max_err(lse, lse0), tol, test::errname("lse" + tag));
      EXPECT_TRUE(same_on_all_ranks(lp)) << "logp differs between ranks" << tag;
      EXPECT_TRUE(same_on_all_ranks(lse)) << "lse differs between ranks" << tag;

      vector<T> dh(size_t(n * C), T(0)), dW = accumulate ? base_loc : vector<T>(size_t(s.rows * C), T(5));
      vector<double> rd(size_t(n), 0.0);
      comm.reset_volume();
      vocab_parallel_logprob_backward(ops::Context{}, p, ops::LogprobGrad<T>{coef.data(), lse.data(), use_cache ? cache.data() : nullptr, dh.data(), dW.data(), accumulate, G_loc.data(), rd.data()});
      EXPECT_EQ(comm.volume()[CommOp::AllReduce], 0u) << "the backward communicates nothing";
      comm.allreduce_sum(dh.data(), dh.size());  // the caller's TP all-reduces of the partial sums
      comm.allreduce_sum(rd.data(), rd.size());
      EXPECT_ERR_LT(rel_max_err(dh, dh0), tol, test::errname("dh" + tag));
      EXPECT_ERR_LT(rel_max_err(rd, rd0), tol, test::errname("row_dot" + tag));
      expect_gathered(gather(comm, dW), accumulate ? dW0_acc : dW0, s, C, tol, "dW" + tag);
    }
  }
}

template <typename T>
void embedding_case(int64_t V, double tol) {
  MpiComm comm(MPI_COMM_WORLD);
  const VocabShard s(V, comm.size(), comm.rank());
  const int64_t n = 90, C = 70;  // C > one 64-column block of the backward
  const vector<int32_t> tok = random_tokens(size_t(n), 2, V);
  const vector<T> E = random_vector<T>(size_t(V * C), 6), G = random_vector<T>(size_t(V * C), 7),
                  dx = random_vector<T>(size_t(n * C), 8);
  vector<T> x0(size_t(n * C)), dE0(size_t(V * C), T(0));
  vector<double> rd0(size_t(n), 0.0);
  cpu::embedding_forward(x0.data(), E.data(), tok.data(), n, C);
  cpu::embedding_backward(dE0.data(), dx.data(), tok.data(), n, C);
  cpu::embedding_ghost_dots(dx.data(), tok.data(), G.data(), n, C, rd0.data());

  const std::string tag = std::string(" V=") + std::to_string(V) + " tp=" + std::to_string(comm.size());
  const vector<T> E_loc = shard_of(E, s, C), G_loc = shard_of(G, s, C);
  vector<T> x(size_t(n * C), T(3)), dE(size_t(s.rows * C), T(0));
  vector<double> rd(size_t(n), 0.0);
  comm.reset_volume();
  vocab_parallel_embedding_forward(ops::Context{}, x.data(), E_loc.data(), tok.data(), n, C, s, comm);
  EXPECT_EQ(comm.volume()[CommOp::AllReduce], uint64_t(n * C) * sizeof(T));
  EXPECT_EQ(rel_max_err(x, x0), 0.0) << "the lookup is exact" << tag;
  vocab_parallel_embedding_backward(ops::Context{}, dE.data(), dx.data(), tok.data(), n, C, s);
  vocab_parallel_embedding_ghost_dots(ops::Context{}, dx.data(), tok.data(), G_loc.data(), n, C, s, rd.data());
  comm.allreduce_sum(rd.data(), rd.size());  // the caller's TP all-reduce of the partial dots
  EXPECT_ERR_LT(rel_max_err(rd, rd0), tol, test::errname("embedding rdot" + tag));
  expect_gathered(gather(comm, dE), dE0, s, C, tol, "dE" + tag);
}

TEST_P(VocabParallelMpi, LogprobFloat) {
  REQUIRE_MPI("tests/cli/vocab_parallel_mpi.sh");
  logprob_case<float>(GetParam(), 1e-5);
}

TEST_P(VocabParallelMpi, LogprobDouble) {
  REQUIRE_MPI("tests/cli/vocab_parallel_mpi.sh");
  logprob_case<double>(GetParam(), 1e-10);
}

TEST_P(VocabParallelMpi, EmbeddingFloat) {
  REQUIRE_MPI("tests/cli/vocab_parallel_mpi.sh");
  embedding_case<float>(GetParam(), 1e-5);
}

TEST_P(VocabParallelMpi, EmbeddingDouble) {
  REQUIRE_MPI("tests/cli/vocab_parallel_mpi.sh");
  embedding_case<double>(GetParam(), 1e-10);
}

INSTANTIATE_TEST_SUITE_P(Vocab, VocabParallelMpi, ::testing::Values(int64_t(23), int64_t(64), int64_t(2)));

}  // namespace
