// Tensor-parallel LlamaModel over a TP group of all ranks: run by tests/cli/tp_model_mpi.sh under
// `mpirun -np 1, 2, 4`. Every rank builds the SAME full parameters, gradient base and ĝ (counter-based
// RNG), keeps its shard (tp_split) and runs forward + backward on a packed batch; the log-probs, the
// gathered gradient (tp_gather, every tensor), the ghost seq_dots and the replicated outputs are
// compared with the single-rank model on the full buffers, with accumulate = false and true, with and
// without the probability cache. Configs: Llama GQA (8 q / 4 kv heads) with Llama-3 rope scaling and
// V = 37; Qwen2 (q/k/v bias, tied embeddings, MHA with 4 heads) with V = 23 — neither vocabulary is
// divisible by 2 or 4, so the last shard is padded. Non-divisible TP sizes fail with a clear message.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "metapo/comm/mpi_comm.h"
#include "metapo/model/llama.h"
#include "metapo/model/tp_layout.h"
#include "mpi_test_env.h"
#include "test_util.h"

using namespace metapo;
using metapo::test::randn;
using metapo::test::rel_max_err;
using metapo::testing_mpi::all_ranks;
using metapo::testing_mpi::same_on_all_ranks;
using std::vector;

namespace {

LlamaConfig config(bool qwen) {
  LlamaConfig c;
  c.num_hidden_layers = 2, c.hidden_size = 16, c.rms_norm_eps = 1e-5;
  if (!qwen) {
    c.vocab_size = 37, c.intermediate_size = 24;
    c.num_attention_heads = 8, c.num_key_value_heads = 4, c.head_dim = 4;
    c.rope_theta = 500000.0;
    // Llama-3 scaling with a short original context, so the rescaled band matters at these lengths.
    c.rope_scaling.type = "llama3", c.rope_scaling.factor = 8.0, c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0, c.rope_scaling.original_max_position_embeddings = 16;
  } else {
    c.model_type = "qwen2", c.attention_bias = true, c.tie_word_embeddings = true;
    c.vocab_size = 23, c.intermediate_size = 16;
    c.num_attention_heads = 4, c.num_key_value_heads = 4, c.head_dim = 6;
  }
  return c;
}

// Full parameters: O(0.3) matrices and biases, norm weights around 1.
template <typename T>
vector<T> full_params(const LlamaConfig& c) {
  const ParamLayout lay(c);
  vector<T> p = test::cast<T>(randn<double>(lay.total(), 3, 0.3));
  for (const auto& e : lay.tensors())
    if (e.name.find("norm") != std::string::npos)
      for (size_t i = 0; i < e.numel; ++i) p[e.offset + i] += T(1);
  return p;
}

// ||a - b|| / ||b|| over one tensor's range.
template <typename T>
double rel_norm_err(const vector<T>& a, const vector<T>& b, size_t off, size_t n) {
  double num = 0, den = 1e-300;
  for (size_t i = off; i < off + n; ++i) {
    const double d = double(a[i]) - double(b[i]);
    num += d * d, den += double(b[i]) * double(b[i]);
  }
  return std::sqrt(num / den);
}

template <typename T>
void tp_case(bool qwen, double tol) {
  MpiComm comm(MPI_COMM_WORLD);
  const int tp = comm.size(), r = comm.rank();
  const LlamaConfig c = config(qwen);
  const ParamLayout full_lay(c);
  const size_t N = full_lay.total(), NL = ParamLayout(tp_local_config(c, tp)).total();
  const vector<T> p = full_params<T>(c);
  const vector<T> base = test::cast<T>(randn<double>(N, 7, 0.5));  // gradient buffer before accumulating
  const vector<T> ghat = test::cast<T>(randn<double>(N, 5));

  PackedBatch b;
  b.add({1, 5, 7, 2, 11, 3, 9, 22});
  b.add({4, 8, int32_t(c.vocab_size - 1)});  // the last token sits on the padded shard
  b.add({12, 0, 9, 9, 22, 17, int32_t(c.vocab_size - 2), 6, 3, 1});
  vector<uint8_t> mask(size_t(b.n_tokens()), 1);
  mask[0] = mask[1] = mask[8] = mask[11] = mask[12] = 0;  // prompts
  const auto tg = next_token_targets(b, mask.data());
  const vector<T> dlogp = test::cast<T>(randn<double>(size_t(b.n_tokens()), 4));
  const std::string tag = std::string(qwen ? "qwen2" : "llama") + " tp=" + std::to_string(tp);

  // Split → gather is exact.
  vector<T> p_loc(NL), back(N);
  tp_split(c, tp, r, p.data(), p_loc.data());
  tp_gather(c, comm, p_loc.data(), back.data());
  EXPECT_TRUE(all_ranks(back == p)) << "split/gather round trip " << tag;
  vector<T> ghat_loc(NL), base_loc(NL);
  tp_split(c, tp, r, ghat.data(), ghat_loc.data());
  tp_split(c, tp, r, base.data(), base_loc.data());
  // Elements of the local buffer that hold parameters (the rest is vocabulary padding).
  vector<bool> covered(NL, false);
  for (const TpCopy& k : tp_shard_map(c, tp, r))
    for (size_t i = 0; i < k.count; ++i) covered[k.local + i] = true;

  LlamaModel<T> ref(c);
  LlamaModel<T> m(c, &comm);
  ASSERT_EQ(m.layout().total(), NL);
  for (bool accumulate : {false, true}) {
    const bool cache = !accumulate;  // the accumulating run recomputes the LM head instead
    ref.set_prob_cache_budget(cache ? size_t(1) << 20 : 0), m.set_prob_cache_budget(cache ? size_t(1) << 20 : 0);
    const std::string t2 = tag + (accumulate ? " accumulate" : "");
    vector<T> lp0(size_t(b.n_tokens())), g0 = base, lp(size_t(b.n_tokens()));
    vector<double> d0, d;
    ref.forward(p.data(), b, tg.data(), lp0.data());
    ref.backward(p.data(), dlogp.data(), g0.data(), accumulate, ghat.data(), &d0);

    // A NaN-filled gradient buffer when overwriting: every element must be written.
    vector<T> g_loc = accumulate ? base_loc : vector<T>(NL, std::numeric_limits<T>::quiet_NaN());
    comm.reset_volume();
    m.forward(p_loc.data(), b, tg.data(), lp.data());
    m.backward(p_loc.data(), dlogp.data(), g_loc.data(), accumulate, ghat_loc.data(), &d);
    if (tp > 1) {
      // Forward: embedding + 2 per layer of n·C, log-probs 3 doubles per row; backward: dhN + 2 per
      // layer of n·C, the row dots n doubles.
      const uint64_t n = uint64_t(b.n_tokens()), C = uint64_t(c.hidden_size), L = uint64_t(c.num_hidden_layers);
      uint64_t nr = 0;
      for (int32_t t : tg) nr += t >= 0;
      const uint64_t want = (2 * (1 + 2 * L) * n * C) * sizeof(T) + (3 * nr + n) * sizeof(double);
      EXPECT_EQ(comm.volume()[CommOp::AllReduce], want) << t2;
      EXPECT_EQ(comm.volume().calls[int(CommOp::AllReduce)], 2 * (1 + 2 * L) + 2 + 1) << t2;
    }
    EXPECT_ERR_LT(rel_max_err(lp, lp0), tol, test::errname("logp " + t2));
    EXPECT_ERR_LT(rel_max_err(d, d0), tol, test::errname("seq_dots " + t2));
    EXPECT_TRUE(same_on_all_ranks(lp)) << "logp differs between ranks " << t2;
    EXPECT_TRUE(same_on_all_ranks(d)) << "seq_dots differ between ranks " << t2;
    for (size_t i = 0; i < NL; ++i)
      if (!covered[i]) {
        ASSERT_EQ(g_loc[i], T(0)) << "padding gradient element " << i << " " << t2;
      }

    vector<T> g(N);
    tp_gather(c, comm, g_loc.data(), g.data());
    double worst = 0;
    for (const auto& e : full_lay.tensors()) {
      const double err = rel_norm_err(g, g0, e.offset, e.numel);
      worst = std::max(worst, err);
      EXPECT_LT(err, tol) << e.name << " " << t2;
    }
    EXPECT_ERR_LT(worst, tol, test::errname("grad (worst tensor) " + t2));
    // Replicated tensors (norm weights) must come out identical on every TP rank.
    const ModelView<T> lv = make_view(m.layout(), g_loc.data());
    vector<T> norms(lv.final_norm, lv.final_norm + c.hidden_size);
    for (const auto& l : lv.layers) {
      norms.insert(norms.end(), l.attn_norm, l.attn_norm + c.hidden_size);
      norms.insert(norms.end(), l.mlp_norm, l.mlp_norm + c.hidden_size);
    }
    EXPECT_TRUE(same_on_all_ranks(norms)) << "norm-weight gradients differ between ranks " << t2;
  }
}

class TpModelMpi : public ::testing::TestWithParam<bool> {};

TEST_P(TpModelMpi, Float) {
  REQUIRE_MPI("tests/cli/tp_model_mpi.sh");
  tp_case<float>(GetParam(), 1e-5);
}

TEST_P(TpModelMpi, Double) {
  REQUIRE_MPI("tests/cli/tp_model_mpi.sh");
  tp_case<double>(GetParam(), 1e-10);
}

INSTANTIATE_TEST_SUITE_P(Models, TpModelMpi, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Qwen2TiedBias" : "LlamaGqaRope3"; });

TEST(TpModelMpiErrors, NotDivisibleByTpSizeNamesFieldAndSize) {
  REQUIRE_MPI("tests/cli/tp_model_mpi.sh");
  LlamaConfig c = config(false);  // 8 q heads, 4 kv heads, intermediate 24
  EXPECT_THROW(tp_local_config(c, 3), Error);
  EXPECT_NE(test::error_of([&] { tp_local_config(c, 3); })
                .find("num_attention_heads (8) is not divisible by the TP size (3)"),
            std::string::npos)
      << test::error_of([&] { tp_local_config(c, 3); });
  c.num_attention_heads = 6, c.num_key_value_heads = 2;
  EXPECT_NE(test::error_of([&] { tp_local_config(c, 3); })
                .find("num_key_value_heads (2) is not divisible by the TP size (3)"),
            std::string::npos);
  c.num_key_value_heads = 3, c.intermediate_size = 16;
  EXPECT_NE(test::error_of([&] { tp_local_config(c, 3); })
                .find("intermediate_size (16) is not divisible by the TP size (3)"),
            std::string::npos);
  c.intermediate_size = 18;
  EXPECT_EQ(test::error_of([&] { tp_local_config(c, 3); }), "(no error)");
  // The model constructor refuses a TP group it cannot split (4 heads: e.g. `mpirun -np 3
  // test_tp_model_mpi --gtest_filter='TpModelMpiErrors.*'`; every rank throws alike, before any collective).
  MpiComm comm(MPI_COMM_WORLD);
  const LlamaConfig q = config(true);
  if (4 % comm.size() != 0) {
    const std::string msg = test::error_of([&] { LlamaModel<float> bad(q, &comm); });
    EXPECT_NE(msg.find("num_attention_heads (4) is not divisible by the TP size (" + std::to_string(comm.size()) + ")"),
              std::string::npos)
        << msg;
  }
}

}  // namespace
