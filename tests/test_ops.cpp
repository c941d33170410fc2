// Every op of the ops seam (ops/ops.h) called through the dispatch, as the model calls it: fp32
// forwards against straightforward double-precision loops written here, backwards (run in double
// through the same dispatch) against central finite differences of <r, forward(x)>, the data movement
// and optimizer ops exactly. A device with no backend in the build is refused with one clear error.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "metapo/core/half.h"
#include "metapo/ops/ops.h"
#include "reference.h"
#include "test_util.h"

using namespace metapo;
using namespace metapo::test;
using std::vector;

namespace {

constexpr double kFp32Tol = 1e-5;  // as in test_kernels: O(1) values, sums of <= 64 terms
constexpr double kFdTol = 1e-7;    // double, h = 1e-6

const ops::Context cpu_ctx{};

template <typename T>
ops::Attention<T> attention_args(T* qkv, T* out, T* lse, const vector<int64_t>& cu, int64_t Hq, int64_t Hkv,
                                 int64_t D) {
  const int64_t Q = Hq * D, KV = Hkv * D;
  return {qkv, qkv + Q, qkv + Q + KV, Q + 2 * KV, out, Q, lse, cu.data(), int64_t(cu.size()) - 1, cu.back(), Hq, Hkv, D,
          T(1) / std::sqrt(T(D))};
}

}  // namespace

TEST(Ops, GemmAndLinearForwardMatchDoubleLoops) {
  const int64_t n = 9, in = 21, out = 6;
  auto X = randn<double>(n * in, 1), W = randn<double>(out * in, 2), b = randn<double>(out, 3);
  vector<float> Xf = cast<float>(X), Wf = cast<float>(W), bf = cast<float>(b), Y(n * out), Yr(n * out);
  ops::linear_forward(cpu_ctx, ops::Linear<float>{Y.data(), Xf.data(), Wf.data(), bf.data(), n, in, out});
  EXPECT_ERR_LT(rel_max_err(Y, ref_linear(X, W, b.data(), n, in, out)), kFp32Tol, errname("linear_forward"));
  ops::linear_rows(cpu_ctx, ops::Linear<float>{Yr.data(), Xf.data(), Wf.data(), bf.data(), n, in, out});
  EXPECT_ERR_LT(rel_max_err(Yr, ref_linear(X, W, b.data(), n, in, out)), kFp32Tol, errname("linear_rows"));
  // linear_rows: a row's result does not depend on the rows beside it.
  vector<float> y1(out);
  ops::linear_rows(cpu_ctx, ops::Linear<float>{y1.data(), Xf.data() + 4 * in, Wf.data(), bf.data(), 1, in, out});
  EXPECT_TRUE(std::equal(y1.begin(), y1.end(), Yr.begin() + 4 * out));
  // gemm: C = 0.5 X W^T + 2 C0, with the transposes spelled out.
  auto C0 = randn<double>(n * out, 4);
  vector<float> Cf = cast<float>(C0);
  ops::gemm(cpu_ctx, ops::Gemm<float>{false, true, n, out, in, 0.5f, Xf.data(), in, Wf.data(), in, 2.0f, Cf.data(), out});
  vector<double> ref = ref_linear(X, W, nullptr, n, in, out);
  for (size_t i = 0; i < ref.size(); ++i) ref[i] = 0.5 * ref[i] + 2 * C0[i];
  EXPECT_ERR_LT(rel_max_err(Cf, ref), kFp32Tol, errname("gemm"));
}

TEST(Ops, LinearBackwardAndGhostDotsMatchFiniteDifferencesAndDoubleLoops) {
  const int64_t n = 5, in = 7, out = 4;
  auto X = randn<double>(n * in, 1), W = randn<double>(out * in, 2), b = randn<double>(out, 3), R = randn<double>(n * out, 4);
  auto f = [&] { return dot(R, ref_linear(X, W, b.data(), n, in, out)); };
  vector<double> dX(n * in), dW(out * in), db(out);
  ops::linear_backward(cpu_ctx, ops::LinearGrad<double>{dX.data(), dW.data(), db.data(), R.data(), X.data(), W.data(), n, in, out, false});
  EXPECT_ERR_LT(rel_max_err(dX, fd_grad(X, f)), kFdTol, errname("dX"));
  EXPECT_ERR_LT(rel_max_err(dW, fd_grad(W, f)), kFdTol, errname("dW"));
  EXPECT_ERR_LT(rel_max_err(db, fd_grad(b, f)), kFdTol, errname("db"));
  // Ghost dots per segment of rows: <ĝ, the segment's own (dW, db)>.
  auto Gw = randn<double>(out * in, 5), Gb = randn<double>(out, 6);
  const vector<int64_t> seg = {0, 2, 5};
  vector<double> rdot(n, 0.0), dX2(n * in), dW2(out * in), db2(out);
  ops::LinearGrad<double> a{dX2.data(), dW2.data(), db2.data(), R.data(), X.data(), W.data(), n, in, out, false};
  a.ghat_w = Gw.data(), a.ghat_b = Gb.data(), a.seg = seg.data(), a.n_seg = 2, a.rdot = rdot.data();
  ops::linear_backward(cpu_ctx, a);
  EXPECT_EQ(dW, dW2);
  for (int64_t k = 0; k < 2; ++k) {
    double ref = 0;
    for (int64_t i = seg[k]; i < seg[k + 1]; ++i)
      for (int64_t o = 0; o < out; ++o) {
        ref += Gb[o] * R[i * out + o];
        for (int64_t c = 0; c < in; ++c) ref += Gw[o * in + c] * R[i * out + o] * X[i * in + c];
      }
    double got = 0;
    for (int64_t i = seg[k]; i < seg[k + 1]; ++i) got += rdot[i];
    EXPECT_NEAR(got, ref, 1e-10 * (1 + std::abs(ref))) << "segment " << k;
  }
}

TEST(Ops, RmsNormForwardBackwardAndGhostDots) {
  const int64_t n = 4, C = 12;
  const double eps = 1e-5;
  auto x = randn<double>(n * C, 1), w = randn<double>(C, 2, 0.3, 1.0), R = randn<double>(n * C, 3);
  vector<float> xf = cast<float>(x), wf = cast<float>(w), y(n * C), rstd(n);
  ops::rmsnorm_forward(cpu_ctx, ops::RmsNorm<float>{y.data(), rstd.data(), xf.data(), wf.data(), n, C, eps});
  EXPECT_ERR_LT(rel_max_err(y, ref_rmsnorm(x, w, n, C, eps)), kFp32Tol, errname("rmsnorm_forward"));
  vector<double> yd(n * C), rd(n), dx(n * C), dw(C, 0.0), rdot(n, 0.0);
  ops::rmsnorm_forward(cpu_ctx, ops::RmsNorm<double>{yd.data(), rd.data(), x.data(), w.data(), n, C, eps});
  ops::rmsnorm_backward(cpu_ctx, ops::RmsNormGrad<double>{dx.data(), dw.data(), R.data(), x.data(), w.data(), rd.data(), n, C, false});
  auto f = [&] { return dot(R, ref_rmsnorm(x, w, n, C, eps)); };
  EXPECT_ERR_LT(rel_max_err(dx, fd_grad(x, f)), kFdTol, errname("dx"));
  EXPECT_ERR_LT(rel_max_err(dw, fd_grad(w, f)), kFdTol, errname("dw"));
  // Ghost dots: rdot[i] = <ĝ, row i's term of dw> = Σ_c ĝ_c R_ic x_ic rstd_i.
  auto G = randn<double>(C, 4);
  ops::rmsnorm_ghost_dots(cpu_ctx, ops::RmsNormGhost<double>{R.data(), x.data(), rd.data(), G.data(), n, C, rdot.data()});
  for (int64_t i = 0; i < n; ++i) {
    double ref = 0;
    for (int64_t c = 0; c < C; ++c) ref += G[c] * R[i * C + c] * x[i * C + c] * rd[i];
    EXPECT_NEAR(rdot[i], ref, 1e-12 * (1 + std::abs(ref)));
  }
}

TEST(Ops, RopeRotatesByPositionAndItsInverseIsTheTranspose) {
  const int64_t n = 5, H = 2, D = 8, ld = H * D;
  std::vector<double> inv_freq = {1.0, 0.1, 0.01, 0.001};
  RopeTable<double> tab;
  tab.build(inv_freq, 16);
  const vector<int32_t> pos = {0, 1, 2, 7, 3};
  auto x = randn<double>(n * ld, 1), R = randn<double>(n * ld, 2);
  vector<double> y = x;
  ops::rope(cpu_ctx, ops::Rope<double>{y.data(), n, H, D, ld, pos.data(), &tab, false});
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < D / 2; ++i) {
        const double a = double(pos[t]) * inv_freq[i], x0 = x[t * ld + h * D + i], x1 = x[t * ld + h * D + i + D / 2];
        EXPECT_NEAR(y[t * ld + h * D + i], x0 * std::cos(a) - x1 * std::sin(a), 1e-12);
        EXPECT_NEAR(y[t * ld + h * D + i + D / 2], x1 * std::cos(a) + x0 * std::sin(a), 1e-12);
      }
  vector<double> g = R;
  ops::rope(cpu_ctx, ops::Rope<double>{g.data(), n, H, D, ld, pos.data(), &tab, true});
  auto f = [&] {
    vector<double> z = x;
    ops::rope(cpu_ctx, ops::Rope<double>{z.data(), n, H, D, ld, pos.data(), &tab, false});
    return dot(R, z);
  };
  EXPECT_ERR_LT(rel_max_err(g, fd_grad(x, f)), kFdTol, errname("inverse"));
}

TEST(Ops, SwigluForwardAndBackward) {
  const int64_t n = 3, I = 10;
  auto gu = randn<double>(n * 2 * I, 1), R = randn<double>(n * I, 2);
  vector<float> guf = cast<float>(gu), h(n * I);
  ops::swiglu_forward(cpu_ctx, ops::SwiGlu<float>{h.data(), guf.data(), n, I});
  EXPECT_ERR_LT(rel_max_err(h, ref_swiglu(gu, n, I)), kFp32Tol, errname("swiglu_forward"));
  vector<double> dgu(n * 2 * I);
  ops::swiglu_backward(cpu_ctx, ops::SwiGluGrad<double>{dgu.data(), R.data(), gu.data(), n, I});
  auto f = [&] { return dot(R, ref_swiglu(gu, n, I)); };
  EXPECT_ERR_LT(rel_max_err(dgu, fd_grad(gu, f)), kFdTol, errname("dgu"));
}

TEST(Ops, AttentionForwardBackwardAndDecode) {
  const int64_t Hq = 4, Hkv = 2, D = 8, Q = Hq * D, KV = Hkv * D, ld = Q + 2 * KV;
  const vector<int64_t> cu = {0, 5, 6, 13};
  const int64_t n = cu.back();
  auto qkv = randn<double>(n * ld, 1);
  vector<float> qf = cast<float>(qkv), out(n * Q), lse(Hq * n);
  ops::attention_forward(cpu_ctx, attention_args(qf.data(), out.data(), lse.data(), cu, Hq, Hkv, D));
  const vector<double> ref = ref_attention(qkv, cu, Hq, Hkv, D);
  EXPECT_ERR_LT(rel_max_err(out, ref), kFp32Tol, errname("attention_forward"));

  // Backward in double against finite differences of <R, attention(qkv)>.
  auto R = randn<double>(n * Q, 2);
  vector<double> od(n * Q), ld_(Hq * n), dqkv(n * ld, 0.0);
  const ops::Attention<double> fwd = attention_args(qkv.data(), od.data(), ld_.data(), cu, Hq, Hkv, D);
  ops::attention_forward(cpu_ctx, fwd);
  ops::attention_backward(cpu_ctx, fwd, ops::AttentionGrad<double>{R.data(), dqkv.data(), dqkv.data() + Q, dqkv.data() + Q + KV, ld});
  auto f = [&] { return dot(R, ref_attention(qkv, cu, Hq, Hkv, D)); };
  EXPECT_ERR_LT(rel_max_err(dqkv, fd_grad(qkv, f)), kFdTol, errname("dqkv"));

  // Decode: the last row of each sequence as a new query over that sequence's keys, read from
  // per-row pointers into a cache of rows [KV] (here: the k / v columns copied out).
  const int64_t m = int64_t(cu.size()) - 1;
  vector<float> kc(n * KV), vc(n * KV), qrows(m * ld), dout(m * Q);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t e = 0; e < KV; ++e) kc[t * KV + e] = qf[t * ld + Q + e], vc[t * KV + e] = qf[t * ld + Q + KV + e];
  vector<const float*> kp(m), vp(m);
  vector<int64_t> nk(m);
  for (int64_t s = 0; s < m; ++s) {
    kp[s] = kc.data() + cu[s] * KV, vp[s] = vc.data() + cu[s] * KV, nk[s] = cu[s + 1] - cu[s];
    std::copy(qf.begin() + (cu[s + 1] - 1) * ld, qf.begin() + cu[s + 1] * ld, qrows.begin() + s * ld);
  }
  ops::decode_attention(cpu_ctx, ops::DecodeAttention{qrows.data(), ld, dout.data(), Q, kp.data(), vp.data(), KV, nk.data(), m, Hq, Hkv, D,
                                                      1.0f / std::sqrt(float(D))});
  vector<double> ref_last(m * Q);
  for (int64_t s = 0; s < m; ++s)
    std::copy(ref.begin() + (cu[s + 1] - 1) * Q, ref.begin() + cu[s + 1] * Q, ref_last.begin() + s * Q);
  EXPECT_ERR_LT(rel_max_err(dout, ref_last), kFp32Tol, errname("decode_attention"));
}

TEST(Ops, EmbeddingWholeTableAndShard) {
  const int64_t V = 10, C = 6, n = 7;
  const vector<int32_t> tok = {3, 0, 9, 3, 5, 4, 8};
  auto E = randn<double>(V * C, 1), dx = randn<double>(n * C, 2), G = randn<double>(V * C, 3);
  for (int64_t lo : {int64_t(0), int64_t(4)}) {
    const int64_t hi = lo == 0 ? -1 : 8;  // the whole table, or the shard [4, 8)
    const int64_t end = hi < 0 ? V : hi;
    vector<double> El(E.begin() + lo * C, E.begin() + end * C), x(n * C), dE(size_t((end - lo) * C), 0.0), rdot(n, 0.0);
    ops::embedding_forward(cpu_ctx, ops::Embedding<double>{x.data(), El.data(), tok.data(), n, C, lo, hi});
    ops::embedding_backward(cpu_ctx, ops::EmbeddingGrad<double>{dE.data(), dx.data(), tok.data(), n, C, lo, hi});
    ops::embedding_ghost_dots(cpu_ctx, ops::EmbeddingGhost<double>{dx.data(), tok.data(), G.data() + lo * C, n, C, rdot.data(), lo, hi});
    vector<double> dE_ref(dE.size(), 0.0);
    for (int64_t t = 0; t < n; ++t) {
      const bool own = tok[t] >= lo && tok[t] < end;
      double rd = 0;
      for (int64_t c = 0; c < C; ++c) {
        EXPECT_EQ(x[t * C + c], own ? E[tok[t] * C + c] : 0.0);
        if (own) dE_ref[(tok[t] - lo) * C + c] += dx[t * C + c], rd += G[tok[t] * C + c] * dx[t * C + c];
      }
      EXPECT_NEAR(rdot[t], rd, 1e-12);
    }
    EXPECT_EQ(dE, dE_ref);
  }
}

TEST(Ops, LogprobWholeVocabularyShardsAndBackward) {
  const int64_t n = 9, C = 6, V = 13;
  vector<int32_t> rows, tg;
  for (int32_t t = 0; t < n; ++t)
    if (t % 4 != 2) rows.push_back(t), tg.push_back((t * 5 + 1) % int32_t(V));
  const int64_t nr = int64_t(rows.size());
  auto h = randn<double>(n * C, 1), W = randn<double>(V * C, 2), coef = randn<double>(nr, 3);
  const vector<double> ref = ref_logprob(h, W, rows, tg, C, V);
  vector<float> hf = cast<float>(h), Wf = cast<float>(W), lp(nr), lse(nr);
  ops::logprob_forward(cpu_ctx, ops::Logprob<float>{hf.data(), Wf.data(), C, V, rows.data(), tg.data(), nr}, lp.data(), lse.data(), (float*)nullptr);
  EXPECT_ERR_LT(rel_max_err(lp, ref), kFp32Tol, errname("logprob_forward"));

  // Two shards [0, 7) and [7, 13), combined as the vocab-parallel code does (max, then sums).
  const int64_t cut = 7;
  vector<float> mx[2], se[2], tl[2];
  for (int s = 0; s < 2; ++s) {
    mx[s].resize(nr), se[s].resize(nr), tl[s].resize(nr);
    const int64_t b = s ? cut : 0, Vs = s ? V - cut : cut;
    ops::logprob_forward_shard(cpu_ctx, ops::Logprob<float>{hf.data(), Wf.data() + b * C, C, Vs, rows.data(), tg.data(), nr, b},
                               mx[s].data(), se[s].data(), tl[s].data(), (float*)nullptr);
  }
  vector<double> gmax(nr), red(2 * nr, 0.0), part(2 * nr);
  for (int64_t i = 0; i < nr; ++i) gmax[i] = std::max(double(mx[0][i]), double(mx[1][i]));
  for (int s = 0; s < 2; ++s) {
    ops::logprob_shard_partials(cpu_ctx, mx[s].data(), se[s].data(), tl[s].data(), gmax.data(), part.data(), nr);
    for (int64_t i = 0; i < 2 * nr; ++i) red[i] += part[i];
  }
  vector<float> lp2(nr), lse2(nr);
  ops::logprob_shard_finish(cpu_ctx, mx[0].data(), se[0].data(), gmax.data(), red.data(), lse2.data(), lp2.data(), (float*)nullptr, nr, cut);
  EXPECT_ERR_LT(rel_max_err(lp2, ref), kFp32Tol, errname("logprob over two shards"));

  // Backward in double, with and without the probability cache, against finite differences.
  auto f = [&] { return dot(coef, ref_logprob(h, W, rows, tg, C, V)); };
  for (bool cache : {false, true}) {
    const ops::Logprob<double> a{h.data(), W.data(), C, V, rows.data(), tg.data(), nr};
    vector<double> l(nr), ls(nr), probs(nr * V), dh(n * C, 0.0), dW(V * C, 0.0);
    ops::logprob_forward(cpu_ctx, a, l.data(), ls.data(), cache ? probs.data() : (double*)nullptr);
    ops::logprob_backward(cpu_ctx, a, ops::LogprobGrad<double>{coef.data(), ls.data(), cache ? probs.data() : nullptr, dh.data(), dW.data(), false});
    EXPECT_ERR_LT(rel_max_err(dh, fd_grad(h, f)), kFdTol, errname(std::string("dh cache=") + (cache ? "1" : "0")));
    EXPECT_ERR_LT(rel_max_err(dW, fd_grad(W, f)), kFdTol, errname(std::string("dW cache=") + (cache ? "1" : "0")));
  }
}

TEST(Ops, DataMovementIsExact) {
  auto src = randn<double>(24, 1);
  vector<double> dst(24, -1.0);
  ops::copy(cpu_ctx, dst.data(), src.data(), 24);
  EXPECT_EQ(dst, src);
  ops::fill(cpu_ctx, dst.data(), 2.5, 10);
  EXPECT_EQ(dst[9], 2.5);
  EXPECT_EQ(dst[10], src[10]);
  const vector<int32_t> idx = {5, 0, 17};
  vector<double> g(3), sc(24, 7.0);
  ops::gather(cpu_ctx, g.data(), src.data(), idx.data(), 3);
  EXPECT_EQ(g, (vector<double>{src[5], src[0], src[17]}));
  ops::scatter(cpu_ctx, sc.data(), 24, g.data(), idx.data(), 3);
  for (int64_t i = 0; i < 24; ++i) EXPECT_EQ(sc[i], i == 5 ? src[5] : i == 0 ? src[0] : i == 17 ? src[17] : 0.0);
  const vector<int64_t> cu = {0, 3, 3, 24};
  vector<double> seg(3);
  ops::segment_sum(cpu_ctx, seg.data(), src.data(), cu.data(), 3);
  EXPECT_EQ(seg[0], (src[0] + src[1]) + src[2]);
  EXPECT_EQ(seg[1], 0.0);
  EXPECT_NEAR(seg[2], std::accumulate(src.begin() + 3, src.end(), 0.0), 1e-12);
  vector<float> f = cast<float>(src), f2 = f;
  vector<double> wide(24);
  ops::widen(cpu_ctx, wide.data(), f.data(), 24);
  for (int64_t i = 0; i < 24; ++i) EXPECT_EQ(wide[i], double(f[i]));
  vector<float> r(24);
  ops::round_bf16(cpu_ctx, r.data(), f.data(), 24);
  for (int64_t i = 0; i < 24; ++i) {  // the nearest bf16 value: 8 significant bits
    const double rel = std::abs(double(r[i]) - double(f[i])) / std::abs(double(f[i]));
    EXPECT_LE(rel, std::ldexp(1.0, -8));  // unit roundoff of an 8-bit significand
    EXPECT_EQ(r[i], bf16_to_f32(f32_to_bf16(r[i])));  // representable in bf16
  }
  ops::add(cpu_ctx, f2.data(), f.data(), 24);
  for (int64_t i = 0; i < 24; ++i) EXPECT_EQ(f2[i], f[i] + f[i]);
  // Rows to pointers, strided 2-D copies, blocks to columns.
  vector<float> a(12, 0.0f), b(12, 0.0f);
  float* rows_dst[2] = {a.data() + 6, a.data()};
  ops::copy_rows(cpu_ctx, rows_dst, f.data(), 5, 3, 2);  // rows of 3 from a stride of 5
  EXPECT_EQ(vector<float>(a.begin() + 6, a.begin() + 9), vector<float>(f.begin(), f.begin() + 3));
  EXPECT_EQ(vector<float>(a.begin(), a.begin() + 3), vector<float>(f.begin() + 5, f.begin() + 8));
  ops::copy_2d(cpu_ctx, b.data(), 4, f.data(), 5, 2, 3);
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(b[i * 4 + j], j < 2 ? f[i * 5 + j] : 0.0f);
  // Two blocks of 2 rows: widths 3 and 2, into columns [0, 3) and [3, 5) of [2, 5].
  vector<float> cols(10);
  const vector<int64_t> col0 = {0, 3}, width = {3, 2};
  ops::blocks_to_columns(cpu_ctx, cols.data(), 5, f.data(), 6, 2, col0.data(), width.data(), 2);
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(cols[i * 5 + j], f[i * 3 + j]);
    for (int64_t j = 0; j < 2; ++j) EXPECT_EQ(cols[i * 5 + 3 + j], f[6 + i * 2 + j]);
  }
}

TEST(Ops, OptimizerArithmeticMatchesDoubleLoops) {
  const size_t n = 1000;
  auto p0 = randn<double>(n, 1), g = randn<double>(n, 2), m0 = randn<double>(n, 3, 0.1), v0 = randn<double>(n, 4, 0.1, 1.0);
  vector<uint8_t> decay(n);
  for (size_t i = 0; i < n; ++i) decay[i] = uint8_t(i % 3 != 0);
  vector<float> p = cast<float>(p0), gf = cast<float>(g), m = cast<float>(m0), v(n);
  for (size_t i = 0; i < n; ++i) v[i] = float(std::abs(v0[i]));
  const vector<float> v_start = v;
  const float b1 = 0.9f, b2 = 0.999f, step = 1e-3f, ibc = 1.2f, eps = 1e-8f, wd = 1e-4f;
  ops::adamw_step(cpu_ctx, ops::AdamW{p.data(), gf.data(), m.data(), v.data(), decay.data(), n, b1, b2, step, ibc, eps, wd});
  double worst = 0;
  for (size_t i = 0; i < n; ++i) {
    double pr = double(float(p0[i]));
    if (decay[i]) pr -= double(wd) * pr;
    const double gi = double(gf[i]);
    const double mr = double(b1) * double(float(m0[i])) + (1 - double(b1)) * gi;
    const double vr = double(b2) * double(v_start[i]) + (1 - double(b2)) * gi * gi;
    pr -= double(step) * mr / (std::sqrt(vr) * double(ibc) + double(eps));
    worst = std::max(worst, std::abs(pr - double(p[i])) / (1 + std::abs(pr)));
  }
  EXPECT_ERR_LT(worst, 1e-6, errname("adamw_step"));
  vector<float> s = gf;
  ops::scale(cpu_ctx, s.data(), 0.25f, n);
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(s[i], gf[i] * 0.25f);
  double ss = 0;
  for (float x : gf) ss += double(x) * double(x);
  EXPECT_NEAR(ops::sum_squares(cpu_ctx, gf.data(), n), ss, 1e-12 * ss);
  EXPECT_TRUE(ops::all_finite(cpu_ctx, gf.data(), n));
  for (float bad : {INFINITY, -INFINITY, NAN}) {
    vector<float> h = gf;
    h[n / 2] = bad;
    EXPECT_FALSE(ops::all_finite(cpu_ctx, h.data(), n)) << bad;
  }
  vector<float> d = gf;
  ops::adam_precondition(cpu_ctx, d.data(), v_start.data(), n, b2, 1 - b2, 0.5f, eps);
  worst = 0;
  for (size_t i = 0; i < n; ++i) {
    const double gi = gf[i], ref = gi / (std::sqrt((double(b2) * v_start[i] + double(1 - b2) * gi * gi) / 0.5) + double(eps));
    worst = std::max(worst, std::abs(ref - double(d[i])) / (1e-6 + std::abs(ref)));
  }
  EXPECT_ERR_LT(worst, 1e-6, errname("adam_precondition"));
}

TEST(Ops, ArenaHandsOutAlignedPiecesAndSettlesInOneBlock) {
  ops::Arena a;
  for (int round = 0; round < 3; ++round) {
    a.reset();
    float* x = a.alloc<float>(10);
    double* y = a.alloc<double>(100);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(x) % 16, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(y) % 16, 0u);
    // No overlap, in either order (an overflow piece has a block of its own, anywhere in memory).
    const char *xb = reinterpret_cast<char*>(x), *yb = reinterpret_cast<char*>(y);
    EXPECT_TRUE(xb + 40 <= yb || yb + 800 <= xb);
    x[9] = 1.0f, y[99] = 2.0;
  }
  EXPECT_EQ(a.capacity(), size_t(48 + 800));  // one block: what one round needs (pieces of 16 bytes)
  a.reset();
  a.alloc<double>(250);  // larger, first after a reset: the block is replaced, not joined by another
  EXPECT_EQ(a.capacity(), size_t(2000));
}

TEST(Ops, DeviceBufferKnowsItsDeviceAndCountsItsBytes) {
  auto now = [] { return mem_current()[size_t(Mem::Activations)]; };
  const int64_t before = now();
  {
    ops::DeviceBuffer b(Device::CPU, 1000, Mem::Activations);
    EXPECT_EQ(b.device(), Device::CPU);
    EXPECT_EQ(b.size(), 1000u);
    EXPECT_EQ(now() - before, 1000);
    b.data()[999] = 7;
    b.resize_for_overwrite(500);  // never shrinks
    EXPECT_EQ(b.size(), 1000u);
    b.resize_for_overwrite(3000);  // the old bytes freed first: never both counted
    EXPECT_EQ(now() - before, 3000);
    ops::DeviceBuffer moved = std::move(b);
    EXPECT_EQ(b.size(), 0u);
    EXPECT_EQ(moved.size(), 3000u);
    EXPECT_EQ(now() - before, 3000);
  }
  EXPECT_EQ(now(), before);
  if (std::string(ops::backends()) == "cpu") {
    EXPECT_EQ(error_of([] { ops::DeviceBuffer(Device::CUDA, 16); }),
              "a cuda buffer: this build has no cuda backend (built with: cpu)");
  }
}

TEST(Ops, DeviceArraysAndTransfersOnTheCpu) {
  // A DeviceArray counts its bytes under its category and keeps them across smaller sizes; the
  // transfers are plain copies on the CPU.
  auto now = [] { return mem_current()[size_t(Mem::Activations)]; };
  const int64_t before = now();
  {
    ops::DeviceArray<float> a(Device::CPU, Mem::Activations);
    EXPECT_TRUE(a.empty());
    a.resize_for_overwrite(100);
    EXPECT_EQ(a.size(), 100u);
    EXPECT_EQ(now() - before, 400);
    const vector<float> h = {1.5f, -2.0f, 3.25f};
    ops::Context cpu;
    ops::to_device(cpu, a.data(), h.data(), sizeof(float) * h.size());
    vector<float> back(3);
    ops::to_host(cpu, back.data(), a.data(), sizeof(float) * back.size());
    EXPECT_EQ(back, h);
    a.resize_for_overwrite(10);  // the memory stays
    EXPECT_EQ(a.size(), 10u);
    EXPECT_EQ(now() - before, 400);
  }
  EXPECT_EQ(now(), before);
  EXPECT_NO_THROW(ops::require_device(Device::CPU));
  EXPECT_EQ(ops::device_description(Device::CPU), "cpu");
  // Without a GPU (this machine, CI): one line naming the option, whichever the build.
  const std::string msg = error_of([] { ops::require_device(Device::CUDA, "--device"); });
  if (msg == "(no error)") GTEST_SKIP() << "a CUDA device is visible here";
  const bool have_cuda = std::string(ops::backends()) == "cpu, cuda";
  EXPECT_EQ(msg, have_cuda ? "--device cuda: no CUDA device is visible to this process"
                           : "--device cuda: this build has no cuda backend (built with: cpu)");
}

TEST(Ops, AnOpWithoutAKernelForTheDeviceIsRefusedByName) {
  ops::Context cuda;
  cuda.device = Device::CUDA;
  vector<double> x(4);
  const bool have_cuda = std::string(ops::backends()) == "cpu, cuda";
  const std::string why = have_cuda ? ": the cuda backend has no kernel for it (or for this element type) yet"
                                    : ": this build has no cuda backend (built with: cpu)";
  // Neither calls a kernel: the CUDA backend is fp32 (fp64 is the CPU's, for the finite-difference checks).
  EXPECT_EQ(error_of([&] { ops::add(cuda, x.data(), x.data(), 4); }), "op add" + why);
  EXPECT_EQ(error_of([&] { ops::copy(cuda, x.data(), x.data(), 4); }), "op copy" + why);
}
