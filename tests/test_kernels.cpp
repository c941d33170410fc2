// Every CPU kernel: the fp32 forward against a straightforward double-precision loop, and the backward
// (run in double) against central finite differences of <r, forward(x)> for a random r.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include <omp.h>

#include "metapo/kernels/attention.h"
#include "metapo/kernels/embedding.h"
#include "metapo/kernels/gemm.h"
#include "metapo/kernels/logprob.h"
#include "metapo/kernels/rmsnorm.h"
#include "metapo/kernels/rope.h"
#include "metapo/kernels/swiglu.h"
#include "reference.h"
#include "test_util.h"

using namespace metapo;
using namespace metapo::test;
using std::vector;

// fp32 against a double loop: errors well below this for these sizes (values O(1), sums of <= 64
// terms: ~1e-6 relative); 1e-5 leaves margin for BLAS summation order.
constexpr double kFp32Tol = 1e-5;
// Central differences in double with h = 1e-6: truncation ~h^2, rounding ~1e-16/h ~ 1e-10.
constexpr double kFdTol = 1e-7;

// ---------- linear ----------
TEST(Kernels, LinearForwardMatchesDoubleLoop) {
  const int64_t n = 7, in = 13, out = 5;
  auto X = randn<double>(n * in, 1), W = randn<double>(out * in, 2), b = randn<double>(out, 3);
  auto ref = ref_linear(X, W, b.data(), n, in, out);
  vector<float> Y(n * out), Xf = cast<float>(X), Wf = cast<float>(W), bf = cast<float>(b);
  cpu::linear_forward(Y.data(), Xf.data(), Wf.data(), bf.data(), n, in, out);
  EXPECT_ERR_LT(rel_max_err(Y, ref), kFp32Tol, errname("Y"));
}

TEST(Kernels, LinearBackwardMatchesFiniteDifferences) {
  const int64_t n = 4, in = 6, out = 3;
  auto X = randn<double>(n * in, 1), W = randn<double>(out * in, 2), b = randn<double>(out, 3);
  auto R = randn<double>(n * out, 4);
  auto f = [&] { return dot(R, ref_linear(X, W, b.data(), n, in, out)); };
  vector<double> dX(n * in), dW(out * in, 0.0), db(out, 0.0);
  cpu::linear_backward(dX.data(), dW.data(), db.data(), R.data(), X.data(), W.data(), n, in, out);
  EXPECT_ERR_LT(rel_max_err(dX, fd_grad(X, f)), kFdTol, errname("dX"));
  EXPECT_ERR_LT(rel_max_err(dW, fd_grad(W, f)), kFdTol, errname("dW"));
  EXPECT_ERR_LT(rel_max_err(db, fd_grad(b, f)), kFdTol, errname("db"));
}

// ---------- ghost dot products of a linear layer (DESIGN §6) ----------
// Double loops: per row ⟨G_t, Ĝ A_t + ĝ_b⟩, dX = G W, dW = Σ_t G_tᵀ A_t, db = Σ_t G_t.
static vector<double> ref_ghost_rows(const vector<double>& A, const vector<double>& G, const vector<double>& Gh,
                                     const vector<double>* gb, int64_t n, int64_t in, int64_t out) {
  vector<double> r(size_t(n), 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double p = gb ? (*gb)[size_t(o)] : 0.0;
      for (int64_t i = 0; i < in; ++i) p += Gh[size_t(o * in + i)] * A[size_t(t * in + i)];
      r[size_t(t)] += G[size_t(t * out + o)] * p;
    }
  return r;
}

TEST(Kernels, LinearGhostDotsMatchDoubleLoopInBothGemmOrientations) {
  const int64_t n = 9;
  for (auto [in, out] : {std::pair<int64_t, int64_t>{13, 5}, {5, 13}})
    for (bool bias : {false, true}) {
      auto A = randn<double>(size_t(n * in), 1), G = randn<double>(size_t(n * out), 2);
      auto Gh = randn<double>(size_t(out * in), 3), gb = randn<double>(size_t(out), 4);
      auto ref = ref_ghost_rows(A, G, Gh, bias ? &gb : nullptr, n, in, out);
      vector<float> Af = cast<float>(A), Gf = cast<float>(G), Ghf = cast<float>(Gh), gbf = cast<float>(gb);
      vector<float> work(size_t(n * std::min(in, out)));
      vector<double> rdot(size_t(n), 1.0);  // adds onto what is there
      cpu::linear_ghost_dots(Af.data(), Gf.data(), Ghf.data(), bias ? gbf.data() : nullptr, n, in, out, work.data(),
                             rdot.data());
      for (double& x : rdot) x -= 1.0;
      EXPECT_ERR_LT(rel_max_err(rdot, ref), kFp32Tol,
                    errname("row dots in=" + std::to_string(in) + " out=" + std::to_string(out) + " bias=" + std::to_string(bias)));
    }
}

// linear_backward_ghost against double loops: dX, dW, db as linear_backward, and each segment's
// ⟨Ĝ, Σ_{t∈s} G_t A_tᵀ⟩ + ⟨ĝ_b, Σ_{t∈s} G_t⟩ on the segment's first row. Shapes that are not multiples
// of the kernel's register block, more columns than one packed column block (320 floats, 160 doubles)
// and more rows than one chunk (128) with segments across chunk boundaries and rows outside every
// segment; empty and one-row segments; the per-row fallback (short segments); accumulating onto a
// dW/db that holds values; float and double.
template <typename T>
void check_linear_backward_ghost(const vector<int64_t>& seg, int64_t in, int64_t out, bool bias, bool accumulate,
                                 double tol) {
  const int64_t n = seg.back(), n_seg = int64_t(seg.size()) - 1;
  auto A = randn<double>(size_t(n * in), 1), G = randn<double>(size_t(n * out), 2), W = randn<double>(size_t(out * in), 3);
  auto Gh = randn<double>(size_t(out * in), 4), gb = randn<double>(size_t(out), 5);
  auto dW0 = randn<double>(size_t(out * in), 6), db0 = randn<double>(size_t(out), 7);
  // References.
  vector<double> rdX(size_t(n * in), 0.0), rdW = accumulate ? dW0 : vector<double>(size_t(out * in), 0.0);
  vector<double> rdb = accumulate ? db0 : vector<double>(size_t(out), 0.0), rseg(size_t(n), 0.0);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < out; ++o) {
      const double g = G[size_t(t * out + o)];
      rdb[size_t(o)] += g;
      for (int64_t i = 0; i < in; ++i) {
        rdX[size_t(t * in + i)] += g * W[size_t(o * in + i)];
        rdW[size_t(o * in + i)] += g * A[size_t(t * in + i)];
      }
    }
  const vector<double> rows = ref_ghost_rows(A, G, Gh, bias ? &gb : nullptr, n, in, out);
  for (int64_t s = 0; s < n_seg; ++s)
    for (int64_t t = seg[size_t(s)]; t < seg[size_t(s) + 1]; ++t) rseg[size_t(seg[size_t(s)])] += rows[size_t(t)];
  // The kernel; dW/db hold garbage when they are to be overwritten.
  vector<T> At = cast<T>(A), Gt = cast<T>(G), Wt = cast<T>(W), Ght = cast<T>(Gh), gbt = cast<T>(gb);
  vector<T> dX(size_t(n * in), T(7)), dW = accumulate ? cast<T>(dW0) : vector<T>(size_t(out * in), T(7));
  vector<T> db = accumulate ? cast<T>(db0) : vector<T>(size_t(out), T(7));
  vector<double> rdot(size_t(n), 0.0);
  cpu::linear_backward_ghost(dX.data(), dW.data(), bias ? db.data() : nullptr, Gt.data(), At.data(), Wt.data(), n, in,
                             out, accumulate, Ght.data(), bias ? gbt.data() : nullptr, seg.data(), n_seg, rdot.data());
  const std::string what = std::string(sizeof(T) == 4 ? "float" : "double") + " n=" + std::to_string(n) + " segs=" +
                           std::to_string(n_seg) + " in=" + std::to_string(in) + " out=" + std::to_string(out) +
                           " bias=" + std::to_string(bias) + " acc=" + std::to_string(accumulate);
  if (n > 0) EXPECT_ERR_LT(rel_max_err(dX, rdX), tol, errname("dX " + what));
  EXPECT_ERR_LT(rel_max_err(dW, rdW), tol, errname("dW " + what));
  if (bias) EXPECT_ERR_LT(rel_max_err(db, rdb), tol, errname("db " + what));
  EXPECT_ERR_LT(rel_max_err(rdot, rseg), tol, errname("segment dots " + what));
  for (int64_t t = 0; t < n; ++t)  // only first rows of non-empty segments receive a dot
    if (rseg[size_t(t)] == 0.0) {
      EXPECT_EQ(rdot[size_t(t)], 0.0) << "row " << t;
    }
}

TEST(Kernels, LinearBackwardGhostMatchesDoubleLoops) {
  const vector<int64_t> tiled = {0, 5, 5, 17, 18, 40, 40};  // mean segment 8: the tiled path
  const vector<int64_t> short_segs = {0, 1, 3, 4, 4, 6, 7};  // mean < 4: the per-row fallback
  const vector<int64_t> one_long = {0, 70};
  for (const auto& seg : {tiled, short_segs, one_long})
    for (auto [in, out] : {std::pair<int64_t, int64_t>{600, 200}, {24, 9}, {9, 130}})
      for (bool bias : {false, true})
        for (bool acc : {false, true}) {
          check_linear_backward_ghost<float>(seg, in, out, bias, acc, 2 * kFp32Tol);
          check_linear_backward_ghost<double>(seg, in, out, bias, acc, 1e-12);
        }
  // Segments across the chunks of 128 rows; the first 3 rows are in no segment.
  const vector<int64_t> chunks = {3, 100, 129, 250, 250, 260, 300};
  for (bool acc : {false, true}) {
    check_linear_backward_ghost<float>(chunks, 600, 37, true, acc, 2 * kFp32Tol);
    check_linear_backward_ghost<double>(chunks, 600, 37, false, acc, 1e-12);
  }
  // No rows: dW (and db) are zeroed when overwritten, kept (up to their cast to float) when accumulated.
  check_linear_backward_ghost<float>({0, 0, 0}, 24, 9, true, false, 1e-7);
  check_linear_backward_ghost<float>({0}, 24, 9, true, true, 1e-7);
}

TEST(Kernels, LinearBackwardGhostIsTheSameForAnyThreadCount) {
  const vector<int64_t> seg = {0, 11, 30, 31, 52, 170, 200};  // across a chunk of 128 rows
  const int64_t n = seg.back(), in = 530, out = 300;
  auto A = cast<float>(randn<double>(size_t(n * in), 1)), G = cast<float>(randn<double>(size_t(n * out), 2));
  auto W = cast<float>(randn<double>(size_t(out * in), 3)), Gh = cast<float>(randn<double>(size_t(out * in), 4));
  auto run = [&](int threads, vector<float>& dW, vector<double>& rdot) {
    const int before = omp_get_max_threads();
    omp_set_num_threads(threads);
    vector<float> dX(size_t(n * in));
    dW.assign(size_t(out * in), 0.0f), rdot.assign(size_t(n), 0.0);
    cpu::linear_backward_ghost(dX.data(), dW.data(), (float*)nullptr, G.data(), A.data(), W.data(), n, in, out, false,
                               Gh.data(), (const float*)nullptr, seg.data(), int64_t(seg.size()) - 1, rdot.data());
    omp_set_num_threads(before);
  };
  vector<float> dW1, dW3;
  vector<double> r1, r3;
  run(1, dW1, r1), run(3, dW3, r3);
  EXPECT_EQ(dW1, dW3);
  EXPECT_EQ(r1, r3);
}

// ---------- rmsnorm ----------
TEST(Kernels, RmsNormForwardMatchesDoubleLoop) {
  const int64_t n = 5, C = 70;
  auto x = randn<double>(n * C, 1), w = randn<double>(C, 2, 0.2, 1.0);
  auto ref = ref_rmsnorm(x, w, n, C, 1e-5);
  vector<float> y(n * C), r(n), xf = cast<float>(x), wf = cast<float>(w);
  cpu::rmsnorm_forward(y.data(), r.data(), xf.data(), wf.data(), n, C, 1e-5);
  EXPECT_ERR_LT(rel_max_err(y, ref), kFp32Tol, errname("y"));
}

TEST(Kernels, RmsNormBackwardMatchesFiniteDifferences) {
  const int64_t n = 3, C = 70;  // C > 64 crosses the dw column-block boundary
  auto x = randn<double>(n * C, 1), w = randn<double>(C, 2, 0.2, 1.0), R = randn<double>(n * C, 3);
  auto f = [&] { return dot(R, ref_rmsnorm(x, w, n, C, 1e-5)); };
  vector<double> y(n * C), rstd(n), dx(n * C, 0.5), dw(C, 0.0);
  cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), n, C, 1e-5);
  vector<double> dx_acc = dx;
  cpu::rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), n, C, false);
  EXPECT_ERR_LT(rel_max_err(dx, fd_grad(x, f)), kFdTol, errname("dx"));
  EXPECT_ERR_LT(rel_max_err(dw, fd_grad(w, f)), kFdTol, errname("dw"));
  // accumulate = true adds onto what is there
  vector<double> dw2(C, 0.0);
  cpu::rmsnorm_backward(dx_acc.data(), dw2.data(), R.data(), x.data(), w.data(), rstd.data(), n, C, true);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx_acc[i], dx[i] + 0.5, 1e-12);
}

// ---------- swiglu ----------
TEST(Kernels, SwigluForwardAndBackward) {
  const int64_t n = 4, I = 9;
  auto gu = randn<double>(n * 2 * I, 1, 2.0);
  vector<float> h(n * I), guf = cast<float>(gu);
  cpu::swiglu_forward(h.data(), guf.data(), n, I);
  EXPECT_ERR_LT(rel_max_err(h, ref_swiglu(gu, n, I)), kFp32Tol, errname("h"));
  auto R = randn<double>(n * I, 2);
  vector<double> dgu(n * 2 * I);
  cpu::swiglu_backward(dgu.data(), R.data(), gu.data(), n, I);
  EXPECT_ERR_LT(rel_max_err(dgu, fd_grad(gu, [&] { return dot(R, ref_swiglu(gu, n, I)); })), kFdTol, errname("dgu"));
}

// ---------- embedding ----------
TEST(Kernels, EmbeddingForwardAndBackward) {
  const int64_t V = 11, C = 70, n = 6;
  vector<int32_t> tok = {3, 0, 10, 3, 7, 3};
  auto E = randn<double>(V * C, 1);
  vector<double> x(n * C);
  cpu::embedding_forward(x.data(), E.data(), tok.data(), n, C);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(x[t * C + c], E[tok[t] * C + c]);
  auto R = randn<double>(n * C, 2);
  vector<double> dE(V * C, 0.0);
  cpu::embedding_backward(dE.data(), R.data(), tok.data(), n, C);
  auto f = [&] {
    vector<double> y(n * C);
    cpu::embedding_forward(y.data(), E.data(), tok.data(), n, C);
    return dot(R, y);
  };
  EXPECT_ERR_LT(rel_max_err(dE, fd_grad(E, f)), kFdTol, errname("dE"));
}

// ---------- rope ----------
TEST(Kernels, RopeMatchesDoubleLoopAndInverseIsTranspose) {
  const int64_t n = 5, H = 3, D = 8, ld = H * D + 4;  // padded rows, as in the fused qkv buffer
  vector<double> inv = {1.0, 0.3, 0.05, 0.001};
  vector<int32_t> pos = {0, 1, 2, 0, 9};
  cpu::RopeTable<float> tf;
  tf.build(inv, 16);
  cpu::RopeTable<double> td;
  td.build(inv, 16);
  auto x = randn<double>(n * ld, 1);
  vector<double> ref = x;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < D / 2; ++i) {
        const double a = pos[t] * inv[i], x1 = x[t * ld + h * D + i], x2 = x[t * ld + h * D + i + D / 2];
        ref[t * ld + h * D + i] = x1 * std::cos(a) - x2 * std::sin(a);
        ref[t * ld + h * D + i + D / 2] = x2 * std::cos(a) + x1 * std::sin(a);
      }
  vector<float> xf = cast<float>(x);
  cpu::rope_apply(xf.data(), n, H, D, ld, pos.data(), tf, false);
  EXPECT_ERR_LT(rel_max_err(xf, ref), kFp32Tol, errname("xf"));
  // Backward = inverse rotation: <R, rope(x)> has gradient rope^{-1}(R).
  auto R = randn<double>(n * ld, 2);
  vector<double> g = R;
  cpu::rope_apply(g.data(), n, H, D, ld, pos.data(), td, true);
  auto f = [&] {
    vector<double> y = x;
    cpu::rope_apply(y.data(), n, H, D, ld, pos.data(), td, false);
    return dot(R, y);
  };
  EXPECT_ERR_LT(rel_max_err(g, fd_grad(x, f)), kFdTol, errname("g"));
}

// ---------- attention ----------
struct AttnShape {
  int64_t Hq, Hkv, D;
  vector<int64_t> cu;
};

template <typename T>
static cpu::AttentionParams<T> attn_params(T* qkv, T* out, T* lse, const AttnShape& s) {
  const int64_t n = s.cu.back(), Q = s.Hq * s.D, KV = s.Hkv * s.D;
  return {qkv, qkv + Q, qkv + Q + KV, Q + 2 * KV, out, Q, lse, s.cu.data(),
          int64_t(s.cu.size()) - 1, n, s.Hq, s.Hkv, s.D, T(1) / std::sqrt(T(s.D))};
}

class AttentionTest : public ::testing::TestWithParam<AttnShape> {};

TEST_P(AttentionTest, ForwardMatchesDoubleLoop) {
  const AttnShape& s = GetParam();
  const int64_t n = s.cu.back(), Q = s.Hq * s.D, ld = Q + 2 * s.Hkv * s.D;
  auto qkv = randn<double>(n * ld, 1);
  vector<float> qkvf = cast<float>(qkv), out(n * Q), lse(s.Hq * n);
  cpu::attention_forward(attn_params(qkvf.data(), out.data(), lse.data(), s));
  EXPECT_ERR_LT(rel_max_err(out, ref_attention(qkv, s.cu, s.Hq, s.Hkv, s.D)), kFp32Tol, errname("out"));
}

TEST_P(AttentionTest, BackwardMatchesFiniteDifferences) {
  const AttnShape& s = GetParam();
  const int64_t n = s.cu.back(), Q = s.Hq * s.D, ld = Q + 2 * s.Hkv * s.D;
  auto qkv = randn<double>(n * ld, 1), R = randn<double>(n * Q, 2);
  vector<double> out(n * Q), lse(s.Hq * n), dqkv(n * ld, 0.0);
  auto p = attn_params(qkv.data(), out.data(), lse.data(), s);
  cpu::attention_forward(p);
  cpu::attention_backward(p, cpu::AttentionGradParams<double>{R.data(), dqkv.data(), dqkv.data() + Q,
                                                              dqkv.data() + Q + s.Hkv * s.D, ld});
  EXPECT_ERR_LT(rel_max_err(dqkv, fd_grad(qkv, [&] { return dot(R, ref_attention(qkv, s.cu, s.Hq, s.Hkv, s.D)); })), kFdTol, errname("dqkv"));
}

// MHA, GQA, MQA; a length-1 sequence; a sequence longer than the 64-row block.
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(AttnShape{2, 2, 4, {0, 3, 4, 9}},
                                           AttnShape{4, 2, 6, {0, 5, 6, 13}},
                                           AttnShape{3, 1, 4, {0, 1, 8}},
                                           AttnShape{2, 1, 4, {0, 70, 75}}));

// ---------- log-probs through the LM head ----------
TEST(Kernels, LogprobForwardMatchesDoubleLoopWithAndWithoutCache) {
  const int64_t n = 420, C = 8, V = 37;  // 280 scored rows: more than one chunk of 256
  vector<int32_t> rows, tg;
  for (int32_t t = 0; t < n; ++t)
    if (t % 3 != 1) rows.push_back(t), tg.push_back((t * 7) % V);
  auto h = randn<double>(n * C, 1), W = randn<double>(V * C, 2);
  auto ref = ref_logprob(h, W, rows, tg, C, V);
  vector<float> hf = cast<float>(h), Wf = cast<float>(W);
  cpu::LogprobParams<float> p{hf.data(), Wf.data(), C, V, rows.data(), tg.data(), int64_t(rows.size())};
  vector<float> lp(rows.size()), lse(rows.size()), lp2(rows.size()), cache(rows.size() * V);
  cpu::logprob_forward(p, lp.data(), lse.data(), (float*)nullptr);
  cpu::logprob_forward(p, lp2.data(), lse.data(), cache.data());
  EXPECT_ERR_LT(rel_max_err(lp, ref), kFp32Tol, errname("lp"));
  EXPECT_EQ(lp, lp2);
}

TEST(Kernels, LogprobBackwardMatchesFiniteDifferences) {
  const int64_t n = 6, C = 5, V = 11;
  vector<int32_t> rows = {0, 2, 3, 5}, tg = {1, 10, 0, 1};
  auto h = randn<double>(n * C, 1), W = randn<double>(V * C, 2), coef = randn<double>(rows.size(), 3);
  auto f = [&] { return dot(coef, ref_logprob(h, W, rows, tg, C, V)); };
  for (bool use_cache : {false, true}) {
    cpu::LogprobParams<double> p{h.data(), W.data(), C, V, rows.data(), tg.data(), int64_t(rows.size())};
    vector<double> lp(rows.size()), lse(rows.size()), cache(rows.size() * V), dh(n * C, 0.0), dW(V * C, 0.0);
    cpu::logprob_forward(p, lp.data(), lse.data(), use_cache ? cache.data() : (double*)nullptr);
    cpu::logprob_backward(p, coef.data(), lse.data(), use_cache ? cache.data() : (double*)nullptr, dh.data(), dW.data());
    EXPECT_ERR_LT(rel_max_err(dh, fd_grad(h, f)), kFdTol, errname(std::string("dh cache=") + std::to_string(use_cache)));
    EXPECT_ERR_LT(rel_max_err(dW, fd_grad(W, f)), kFdTol, errname(std::string("dW cache=") + std::to_string(use_cache)));
    for (int64_t t : {1, 4})  // rows without a target get no gradient
      for (int64_t c = 0; c < C; ++c) EXPECT_EQ(dh[t * C + c], 0.0);
  }
}

TEST(Kernels, LogprobBackwardGhostDotsMatchDoubleLoop) {
  // row_dot[rows[i]] += ⟨dlogits_i, Ĝ h_i⟩ with dlogits_i = coef_i (onehot(target_i) - softmax(W h_i)).
  const int64_t n = 420, C = 8, V = 37;  // 280 scored rows: more than one chunk of 256
  vector<int32_t> rows, tg;
  for (int32_t t = 0; t < n; ++t)
    if (t % 3 != 1) rows.push_back(t), tg.push_back((t * 7) % V);
  const int64_t nr = int64_t(rows.size());
  auto h = randn<double>(size_t(n * C), 1), W = randn<double>(size_t(V * C), 2), Gh = randn<double>(size_t(V * C), 3);
  auto coef = randn<double>(size_t(nr), 4);
  vector<double> ref(size_t(n), 0.0);
  for (int64_t i = 0; i < nr; ++i) {
    const double* hr = h.data() + rows[size_t(i)] * C;
    vector<double> z(size_t(V), 0.0), gz(size_t(V), 0.0);
    double mx = -1e300, sum = 0;
    for (int64_t v = 0; v < V; ++v) {
      for (int64_t c = 0; c < C; ++c) z[size_t(v)] += W[size_t(v * C + c)] * hr[c], gz[size_t(v)] += Gh[size_t(v * C + c)] * hr[c];
      mx = std::max(mx, z[size_t(v)]);
    }
    for (double x : z) sum += std::exp(x - mx);
    for (int64_t v = 0; v < V; ++v) {
      const double d = coef[size_t(i)] * ((v == tg[size_t(i)] ? 1.0 : 0.0) - std::exp(z[size_t(v)] - mx) / sum);
      ref[size_t(rows[size_t(i)])] += d * gz[size_t(v)];
    }
  }
  vector<float> hf = cast<float>(h), Wf = cast<float>(W), Ghf = cast<float>(Gh), cf = cast<float>(coef);
  for (bool use_cache : {false, true}) {
    cpu::LogprobParams<float> p{hf.data(), Wf.data(), C, V, rows.data(), tg.data(), nr};
    vector<float> lp(size_t(nr), 0.0f), lse(size_t(nr), 0.0f), cache(size_t(nr * V), 0.0f), dh(size_t(n * C), 0.0f), dW(size_t(V * C), 0.0f);
    vector<double> rdot(size_t(n), 0.0);
    cpu::logprob_forward(p, lp.data(), lse.data(), use_cache ? cache.data() : (float*)nullptr);
    cpu::logprob_backward(p, cf.data(), lse.data(), use_cache ? cache.data() : (float*)nullptr, dh.data(), dW.data(),
                          false, Ghf.data(), rdot.data());
    EXPECT_ERR_LT(rel_max_err(rdot, ref), kFp32Tol, errname(std::string("ghost row dots cache=") + std::to_string(use_cache)));
  }
  // With segments of h's rows (the fused path): each segment's sum, the last across the chunk boundary
  // (scored row 256 is h's row 384), one with a single scored row (380), one with none (40); dW and dh
  // as without segments.
  const vector<int64_t> seg = {0, 40, 41, 170, 380, 381, 420};
  const int64_t n_seg = int64_t(seg.size()) - 1;
  for (bool acc : {false, true}) {
    cpu::LogprobParams<float> p{hf.data(), Wf.data(), C, V, rows.data(), tg.data(), nr};
    vector<float> lp(size_t(nr), 0.0f), lse(size_t(nr), 0.0f), dh0(size_t(n * C), 0.0f), dh1(size_t(n * C), 0.0f);
    vector<float> dW0(size_t(V * C), acc ? 0.5f : 9.0f), dW1 = dW0;
    vector<double> rdot0(size_t(n), 0.0), rdot1(size_t(n), 0.0);
    cpu::logprob_forward(p, lp.data(), lse.data(), (float*)nullptr);
    cpu::logprob_backward(p, cf.data(), lse.data(), (float*)nullptr, dh0.data(), dW0.data(), acc, Ghf.data(), rdot0.data());
    cpu::logprob_backward(p, cf.data(), lse.data(), (float*)nullptr, dh1.data(), dW1.data(), acc, Ghf.data(), rdot1.data(),
                          seg.data(), n_seg);
    vector<double> want(size_t(n_seg), 0.0), got(size_t(n_seg), 0.0);
    for (int64_t k = 0; k < n_seg; ++k)
      for (int64_t t = seg[size_t(k)]; t < seg[size_t(k) + 1]; ++t)
        want[size_t(k)] += ref[size_t(t)], got[size_t(k)] += rdot1[size_t(t)];
    const std::string what = std::string(" acc=") + std::to_string(acc);
    EXPECT_ERR_LT(rel_max_err(got, want), kFp32Tol, errname("ghost segment dots" + what));
    EXPECT_ERR_LT(rel_max_err(dW1, cast<double>(dW0)), kFp32Tol, errname("dW, fused against two GEMMs" + what));
    EXPECT_EQ(dh1, dh0);
    EXPECT_EQ(got[1], 0.0);  // row 40 has no target
  }
}

// ---------- vectorized exp ----------
#include "metapo/kernels/vec_math.h"

TEST(Kernels, VexpIsAccurateOverItsRange) {
  double worst = 0;
  for (float x = -87.0f; x < 88.0f; x += 0.00731f) {
    const double e = std::exp(double(x));
    worst = std::max(worst, std::abs(double(cpu::vexp(x)) - e) / e);
  }
  EXPECT_ERR_LT(worst, 2e-7, errname("max relative error on [-87, 88]"));
  EXPECT_EQ(cpu::vexp(0.0f), 1.0f);
  EXPECT_EQ(cpu::vexp(-100.0f), 0.0f);
  EXPECT_EQ(cpu::vexp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_GT(cpu::vexp(100.0f), 1e38f);
}
