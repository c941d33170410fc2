// The CUDA backend against the CPU backend, op by op (as ggml's test-backend-ops compares backends): the
// same random inputs through kernels/cpu and kernels/cuda, the largest error relative to the CPU
// result's scale against a tolerance recorded per op. Prints one table; exit status 0 when every op is
// within its tolerance, 1 when one is not, 77 (CTest: skipped) when there is no CUDA device.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "metapo/core/error.h"
#include "metapo/core/half.h"
#include "metapo/kernels/attention.h"
#include "metapo/kernels/cuda.h"
#include "metapo/kernels/decode.h"
#include "metapo/kernels/embedding.h"
#include "metapo/kernels/gemm.h"
#include "metapo/kernels/logprob.h"
#include "metapo/kernels/optim.h"
#include "metapo/kernels/rmsnorm.h"
#include "metapo/kernels/rope.h"
#include "metapo/kernels/swiglu.h"
#include "metapo/kernels/tensor.h"
#include "report.h"

using namespace metapo;
using std::vector;

namespace {

vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f, float shift = 0.0f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  vector<float> v(n);
  for (float& x : v) x = shift + scale * d(g);
  return v;
}

// A device copy of a host vector, freed with the object.
template <typename T>
struct Dev {
  T* p = nullptr;
  size_t n = 0;
  explicit Dev(const vector<T>& h) : n(h.size()) {
    cuda_ok(cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(T)), "cudaMalloc");
    if (n) cuda_ok(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy to device");
  }
  explicit Dev(size_t count) : Dev(vector<T>(count)) {}
  ~Dev() { cudaFree(p); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void upload(const vector<T>& h) {
    MP_CHECK(h.size() == n, "upload: size");
    if (n) cuda_ok(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy to device");
  }
  vector<T> host() const {
    cuda_ok(cudaDeviceSynchronize(), "kernel");
    vector<T> h(n);
    if (n) cuda_ok(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy to host");
    return h;
  }
  static void cuda_ok(cudaError_t e, const char* what) {
    MP_CHECK(e == cudaSuccess, what, ": ", cudaGetErrorString(e));
  }
};

// max |a - b| / max(max |b|, tiny).
template <typename T>
double rel_err(const vector<T>& a, const vector<T>& b) {
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(double(a[i]) - double(b[i])));
    den = std::max(den, std::abs(double(b[i])));
  }
  return num / den;
}

Report report;
void record(const std::string& op, double err, double tol) { report.record(op, err, tol); }

// Positions where a and b differ in any bit.
template <typename T>
double mismatches(const vector<T>& a, const vector<T>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m += std::memcmp(&a[i], &b[i], sizeof(T)) != 0;
  return m;
}

vector<int32_t> random_ints(size_t n, int32_t lo, int32_t hi, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<int32_t> d(lo, hi - 1);
  vector<int32_t> v(n);
  for (int32_t& x : v) x = d(g);
  return v;
}

// fp32 on both sides; the CUDA kernels sum in another order (block trees, fused multiply-adds) and use
// the hardware exp, so elementwise ops agree to a few ulp and reductions over C to ~C ulp. The CPU
// reference's GEMMs accumulate in double here (naive_blas), cuBLASLt's in fp32: K ~ 100-1000 terms give
// ~1e-6 relative; attention and the log-prob chains compose a GEMM, an exp and a second GEMM.
constexpr double kElementwise = 1e-6, kReduction = 1e-5, kGemm = 2e-5, kChain = 1e-4;

void test_device_memory() {
  void* p = cuda::device_alloc(1 << 20);
  record("device_alloc (null pointers)", p == nullptr ? 1 : 0, 0);
  cuda::device_free(p);
}

void test_tensor() {
  const int64_t n = 100003;
  const vector<float> x = randn(size_t(n), 1, 3.0f);
  Dev<float> dx(x), dy(static_cast<size_t>(n));
  cuda::copy(dy.p, dx.p, n, nullptr);
  record("copy", rel_err(dy.host(), x), 0);
  cuda::fill(dy.p, 2.5f, n, nullptr);
  record("fill", rel_err(dy.host(), vector<float>(size_t(n), 2.5f)), 0);
  Dev<double> d64(size_t(1000));
  cuda::fill(d64.p, 0.25, 1000, nullptr);
  record("fill (fp64)", rel_err(d64.host(), vector<double>(1000, 0.25)), 0);
  vector<float> r(static_cast<size_t>(n));
  cpu::round_bf16(r.data(), x.data(), n);
  cuda::round_bf16(dy.p, dx.p, n, nullptr);
  record("round_bf16", rel_err(dy.host(), r), 0);
  Dev<uint16_t> b16(static_cast<size_t>(n));
  cuda::cast_f32_to_bf16(b16.p, dx.p, n, nullptr);
  const vector<uint16_t> hb = b16.host();
  double mism = 0;
  for (int64_t i = 0; i < n; ++i) mism += hb[size_t(i)] != f32_to_bf16(x[size_t(i)]);
  record("cast_f32_to_bf16 (mismatches)", mism, 0);
  cuda::cast_bf16_to_f32(dy.p, b16.p, n, nullptr);
  record("cast_bf16_to_f32", rel_err(dy.host(), r), 0);
}

void test_rmsnorm() {
  const int64_t n = 37, C = 2048;
  const vector<float> x = randn(size_t(n * C), 2), w = randn(size_t(C), 3, 0.2f, 1.0f), g = randn(size_t(n * C), 4);
  vector<float> y(x.size()), rstd(static_cast<size_t>(n)), dx(x.size(), 0.5f), dw(size_t(C), 0.25f);
  cpu::rmsnorm_forward(y.data(), rstd.data(), x.data(), w.data(), n, C, 1e-5);
  cpu::rmsnorm_backward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), n, C, true);
  Dev<float> dX(x), dW(w), dG(g), dY(x.size()), dR(static_cast<size_t>(n)), dDX(vector<float>(x.size(), 0.5f)),
      dDW(vector<float>(size_t(C), 0.25f));
  cuda::rmsnorm_forward(dY.p, dR.p, dX.p, dW.p, n, C, 1e-5, nullptr);
  record("rmsnorm_forward", rel_err(dY.host(), y), kReduction);
  record("rmsnorm_forward (rstd)", rel_err(dR.host(), rstd), kReduction);
  cuda::rmsnorm_backward(dDX.p, dDW.p, dG.p, dX.p, dW.p, dR.p, n, C, true, nullptr);
  record("rmsnorm_backward (dx)", rel_err(dDX.host(), dx), kReduction);
  record("rmsnorm_backward (dw)", rel_err(dDW.host(), dw), kReduction);
}

void test_swiglu() {
  const int64_t n = 41, I = 1000;
  const vector<float> gu = randn(size_t(n * 2 * I), 5, 2.0f), dh = randn(size_t(n * I), 6);
  vector<float> h(size_t(n * I)), dgu(gu.size());
  cpu::swiglu_forward(h.data(), gu.data(), n, I);
  cpu::swiglu_backward(dgu.data(), dh.data(), gu.data(), n, I);
  Dev<float> dGU(gu), dDH(dh), dH(h.size()), dDGU(gu.size());
  cuda::swiglu_forward(dH.p, dGU.p, n, I, nullptr);
  record("swiglu_forward", rel_err(dH.host(), h), kElementwise);
  cuda::swiglu_backward(dDGU.p, dDH.p, dGU.p, n, I, nullptr);
  record("swiglu_backward", rel_err(dDGU.host(), dgu), kElementwise);
}

void test_adamw() {
  const size_t n = 200001;
  vector<float> p = randn(n, 7), g = randn(n, 8), m = randn(n, 9, 0.1f), v = randn(n, 10, 0.1f);
  for (float& x : v) x = std::abs(x);
  vector<uint8_t> decay(n);
  for (size_t i = 0; i < n; ++i) decay[i] = uint8_t(i % 3 != 0);
  Dev<float> dP(p), dG(g), dM(m), dV(v);
  Dev<uint8_t> dD(decay);
  cpu::adamw_step(p.data(), g.data(), m.data(), v.data(), decay.data(), n, 0.9f, 0.999f, 1e-3f, 1.2f, 1e-8f, 1e-4f);
  cuda::adamw_step(dP.p, dG.p, dM.p, dV.p, dD.p, n, 0.9f, 0.999f, 1e-3f, 1.2f, 1e-8f, 1e-4f, nullptr);
  record("adamw_step (p)", rel_err(dP.host(), p), kElementwise);
  record("adamw_step (m)", rel_err(dM.host(), m), kElementwise);
  record("adamw_step (v)", rel_err(dV.host(), v), kElementwise);
  cpu::scale(g.data(), 0.3f, n);
  cuda::scale(dG.p, 0.3f, n, nullptr);
  record("scale", rel_err(dG.host(), g), 0);
}


void test_gemm(void* blas) {
  MP_CHECK(blas != nullptr, "no cuBLASLt handle");
  // Odd shapes, padded leading dimensions, every transposition, alpha and beta.
  const int64_t M = 77, N = 131, K = 65, pad = 3;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
      const vector<float> A = randn(size_t((ta ? K : M) * lda), 11), B = randn(size_t((tb ? N : K) * ldb), 12),
                          C0 = randn(size_t(M * ldc), 13);
      vector<float> C = C0;
      cpu::gemm<float>(ta, tb, M, N, K, 0.7f, A.data(), lda, B.data(), ldb, 0.5f, C.data(), ldc);
      Dev<float> dA(A), dB(B), dC(C0);
      cuda::gemm(blas, ta, tb, M, N, K, 0.7f, dA.p, lda, dB.p, ldb, 0.5f, dC.p, ldc, nullptr, nullptr);
      record(std::string("gemm ") + (ta ? "T" : "N") + (tb ? "T" : "N"), rel_err(dC.host(), C), kGemm);
    }
  // Operands as the model passes them: column ranges and arena pieces, aligned to 16 bytes only, or to
  // 4 (one float off); the bias too (below 16 bytes the bias epilogue is replaced by a kernel).
  for (int64_t off : {4, 1}) {
    const int64_t m = 33, n = 40, k = 24;
    const vector<float> x = randn(size_t(m * k + off), 17), w = randn(size_t(n * k + off), 18),
                        bias = randn(size_t(n + off), 19);
    vector<float> y(size_t(m * n));
    cpu::linear_forward(y.data(), x.data() + off, w.data() + off, bias.data() + off, m, k, n);
    Dev<float> dx(x), dw(w), db(bias), dy(size_t(m * n + off));
    cuda::linear_forward(blas, dy.p + off, dx.p + off, dw.p + off, db.p + off, m, k, n, nullptr);
    vector<float> got = dy.host();
    got.erase(got.begin(), got.begin() + off);
    record("linear_forward, operands " + std::to_string(4 * off) + "-byte aligned", rel_err(got, y), kGemm);
  }
  // K = 0: C = beta C.
  vector<float> C = randn(40, 14);
  Dev<float> dC(C), dA(size_t(8)), dB(size_t(8));
  cuda::gemm(blas, false, false, 5, 8, 0, 1.0f, dA.p, 1, dB.p, 8, 0.5f, dC.p, 8, nullptr, nullptr);
  for (float& x : C) x *= 0.5f;
  record("gemm (k = 0)", rel_err(dC.host(), C), 0);
}

void test_gemm_bf16(void* blas) {
  MP_CHECK(blas != nullptr, "no cuBLASLt handle");
  const int64_t M = 96, N = 160, K = 256;
  vector<float> A = randn(size_t(M * K), 15), B = randn(size_t(N * K), 16);
  cpu::round_bf16(A.data(), A.data(), int64_t(A.size()));
  cpu::round_bf16(B.data(), B.data(), int64_t(B.size()));
  vector<float> C(size_t(M * N));
  cpu::gemm<float>(false, true, M, N, K, 1.0f, A.data(), K, B.data(), K, 0.0f, C.data(), N);
  Dev<float> fA(A), fB(B), dC(C.size());
  Dev<uint16_t> bA(A.size()), bB(B.size()), bC(C.size());
  cuda::cast_f32_to_bf16(bA.p, fA.p, int64_t(A.size()), nullptr);
  cuda::cast_f32_to_bf16(bB.p, fB.p, int64_t(B.size()), nullptr);
  // bf16 products are exact in fp32: only the accumulation order differs.
  cuda::gemm_bf16(blas, false, true, M, N, K, 1.0f, bA.p, K, bB.p, K, 0.0f, dC.p, N, false, nullptr);
  record("gemm_bf16 (fp32 out)", rel_err(dC.host(), C), kGemm);
  cuda::gemm_bf16(blas, false, true, M, N, K, 1.0f, bA.p, K, bB.p, K, 0.0f, bC.p, N, true, nullptr);
  Dev<float> back(C.size());
  cuda::cast_bf16_to_f32(back.p, bC.p, int64_t(C.size()), nullptr);
  record("gemm_bf16 (bf16 out)", rel_err(back.host(), C), 1.0 / 128);  // one bf16 rounding: 2^-8 of |C|
}

void test_linear(void* blas) {
  MP_CHECK(blas != nullptr, "no cuBLASLt handle");
  const int64_t n = 70, in = 96, out = 48;
  const vector<float> x = randn(size_t(n * in), 21), w = randn(size_t(out * in), 22, 0.1f), b = randn(size_t(out), 23),
                      dy = randn(size_t(n * out), 24), gw = randn(size_t(out * in), 25), gb = randn(size_t(out), 26);
  vector<float> y(size_t(n * out));
  cpu::linear_forward(y.data(), x.data(), w.data(), b.data(), n, in, out);
  Dev<float> dX(x), dW(w), dB(b), dDY(dy), dY(y.size()), dGW(gw), dGB(gb);
  cuda::linear_forward(blas, dY.p, dX.p, dW.p, dB.p, n, in, out, nullptr);
  record("linear_forward (bias epilogue)", rel_err(dY.host(), y), kGemm);
  for (int acc = 0; acc < 2; ++acc) {
    vector<float> dx(x.size()), dw(w.size(), 0.5f), db(b.size(), 0.25f);
    cpu::linear_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), n, in, out, acc);
    Dev<float> ddx(dx.size()), ddw(vector<float>(w.size(), 0.5f)), ddb(vector<float>(b.size(), 0.25f));
    cuda::linear_backward(blas, ddx.p, ddw.p, ddb.p, dDY.p, dX.p, dW.p, n, in, out, acc, nullptr);
    const std::string tag = acc ? " accumulate" : "";
    record("linear_backward dx" + tag, rel_err(ddx.host(), dx), kGemm);
    record("linear_backward dw" + tag, rel_err(ddw.host(), dw), kGemm);
    record("linear_backward db" + tag, rel_err(ddb.host(), db), kReduction);
  }
  // Ghost dots per segment (an empty one included) against the CPU's fused form.
  const vector<int64_t> seg = {0, 9, 9, 40, 41, 70};
  vector<double> rdot(size_t(n), 0.125);
  vector<float> dx(x.size()), dw(w.size()), db(b.size());
  cpu::linear_backward_ghost(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(), n, in, out, false,
                             gw.data(), gb.data(), seg.data(), int64_t(seg.size()) - 1, rdot.data());
  Dev<double> drdot(vector<double>(size_t(n), 0.125));
  Dev<int64_t> dseg(seg);
  cuda::linear_ghost_dots(blas, dX.p, dDY.p, dGW.p, dGB.p, n, in, out, dseg.p, int64_t(seg.size()) - 1, drdot.p,
                          nullptr);
  record("linear ghost dots", rel_err(drdot.host(), rdot), kGemm);
}

void test_rmsnorm_ghost() {
  const int64_t n = 29, C = 1000;
  const vector<float> x = randn(size_t(n * C), 31), dy = randn(size_t(n * C), 32), g = randn(size_t(C), 33),
                      r = randn(size_t(n), 34, 0.1f, 1.0f);
  vector<double> rdot(size_t(n), 1.0);
  cpu::rmsnorm_ghost_dots(dy.data(), x.data(), r.data(), g.data(), n, C, rdot.data());
  Dev<float> dX(x), dDY(dy), dG(g), dR(r);
  Dev<double> dRdot(vector<double>(size_t(n), 1.0));
  cuda::rmsnorm_ghost_dots(dDY.p, dX.p, dR.p, dG.p, n, C, dRdot.p, nullptr);
  record("rmsnorm_ghost_dots", rel_err(dRdot.host(), rdot), 1e-12);  // double sums, another order
}

void test_rope() {
  const int64_t n = 50, heads = 6, D = 64, ld = heads * D + 32, max_pos = 300;
  std::vector<double> inv_freq(size_t(D / 2));
  for (int64_t i = 0; i < D / 2; ++i) inv_freq[size_t(i)] = std::pow(500000.0, -2.0 * double(i) / double(D));
  RopeTable<float> tab;
  tab.build(inv_freq, max_pos);
  const vector<int32_t> pos = random_ints(size_t(n), 0, int32_t(max_pos), 35);
  const vector<float> x = randn(size_t(n * ld), 36);
  Dev<float> dX(x), dCos(tab.cos), dSin(tab.sin);
  Dev<int32_t> dPos(pos);
  for (int inverse = 0; inverse < 2; ++inverse) {
    vector<float> y = x;
    cpu::rope_apply(y.data(), n, heads, D, ld, pos.data(), tab, inverse);
    Dev<float> dY(x);
    cuda::rope(dY.p, n, heads, D, ld, dPos.p, dCos.p, dSin.p, inverse, nullptr);
    record(inverse ? "rope (inverse)" : "rope", rel_err(dY.host(), y), kElementwise);
  }
}

void test_embedding() {
  const int64_t V = 300, n = 1000, C = 72;
  const vector<int32_t> tok = random_ints(size_t(n), 0, int32_t(V), 41);  // many repeats
  const vector<float> E = randn(size_t(V * C), 42), dx = randn(size_t(n * C), 43), ghat = randn(size_t(V * C), 44);
  Dev<int32_t> dTok(tok);
  Dev<float> dE(E), dDX(dx), dGhat(ghat);
  for (const auto& [lo, hi] : {std::pair<int64_t, int64_t>{0, -1}, {100, 200}}) {
    const int64_t rows = hi < 0 ? V : hi - lo;
    const std::string tag = hi < 0 ? "" : " (shard)";
    vector<float> x(size_t(n * C));
    cpu::embedding_forward(x.data(), E.data() + lo * C, tok.data(), n, C, lo, hi);
    Dev<float> dx_out(x.size());
    cuda::embedding_forward(dx_out.p, dE.p + lo * C, dTok.p, n, C, lo, hi, nullptr);
    record("embedding_forward" + tag, rel_err(dx_out.host(), x), 0);
    const vector<float> dE0 = randn(size_t(rows * C), 45);
    vector<float> g = dE0;
    cpu::embedding_backward(g.data(), dx.data(), tok.data(), n, C, lo, hi);
    Dev<float> dG(dE0);
    cuda::embedding_backward(dG.p, dDX.p, dTok.p, n, C, lo, hi, nullptr);
    record("embedding_backward" + tag + " (mismatched bits)", mismatches(dG.host(), g), 0);  // the CPU's order
    vector<double> rdot(size_t(n), 0.5);
    cpu::embedding_ghost_dots(dx.data(), tok.data(), ghat.data() + lo * C, n, C, rdot.data(), lo, hi);
    Dev<double> dRdot(vector<double>(size_t(n), 0.5));
    cuda::embedding_ghost_dots(dDX.p, dTok.p, dGhat.p + lo * C, n, C, dRdot.p, lo, hi, nullptr);
    record("embedding_ghost_dots" + tag, rel_err(dRdot.host(), rdot), 1e-12);
  }
}

void test_logprob(void* blas) {
  MP_CHECK(blas != nullptr, "no cuBLASLt handle");
  const int64_t n = 90, C = 64, V = 1000, nr = 61;
  const vector<float> h = randn(size_t(n * C), 51), W = randn(size_t(V * C), 52, 0.3f),
                      coef = randn(size_t(nr), 53), ghat = randn(size_t(V * C), 54);
  vector<int32_t> rows(static_cast<size_t>(nr));
  for (int64_t i = 0; i < nr; ++i) rows[size_t(i)] = int32_t((i * 37) % n);  // distinct, out of order
  const vector<int32_t> targets = random_ints(size_t(nr), 0, int32_t(V), 55);
  Dev<float> dH(h), dW(W), dCoef(coef), dGhat(ghat);
  Dev<int32_t> dRows(rows), dTargets(targets);
  const cpu::LogprobParams<float> p{h.data(), W.data(), C, V, rows.data(), targets.data(), nr};
  const cuda::LogprobArgs a{dH.p, dW.p, C, V, dRows.p, dTargets.p, nr, 0};
  vector<float> logp(static_cast<size_t>(nr)), lse(static_cast<size_t>(nr)), cache(size_t(nr * V));
  cpu::logprob_forward(p, logp.data(), lse.data(), cache.data());
  Dev<float> dLogp(logp.size()), dLse(lse.size()), dCache(cache.size());
  cuda::logprob_forward(blas, a, dLogp.p, dLse.p, nullptr, nullptr);
  record("logprob_forward (logp)", rel_err(dLogp.host(), logp), kChain);
  record("logprob_forward (lse)", rel_err(dLse.host(), lse), kChain);
  cuda::logprob_forward(blas, a, dLogp.p, dLse.p, dCache.p, nullptr);
  record("logprob_forward (probability cache)", rel_err(dCache.host(), cache), kChain);
  // Backward: recomputed logits, then from the cache, with the ghost dots; dh accumulates.
  for (int cached = 0; cached < 2; ++cached) {
    vector<float> dh(h.size(), 0.5f), dWc(W.size()), cache_c = cache;
    vector<double> rdot(size_t(n), 0.25);
    cpu::logprob_backward(p, coef.data(), lse.data(), cached ? cache_c.data() : nullptr, dh.data(), dWc.data(), false,
                          ghat.data(), rdot.data());
    Dev<float> ddh(vector<float>(h.size(), 0.5f)), ddW(W.size());
    Dev<double> drdot(vector<double>(size_t(n), 0.25));
    cuda::logprob_backward(blas, a, dCoef.p, dLse.p, cached ? dCache.p : nullptr, ddh.p, ddW.p, false, dGhat.p,
                           drdot.p, nullptr);
    const std::string tag = cached ? " (cache)" : "";
    record("logprob_backward dh" + tag, rel_err(ddh.host(), dh), kChain);
    record("logprob_backward dW" + tag, rel_err(ddW.host(), dWc), kChain);
    record("logprob_backward ghost dots" + tag, rel_err(drdot.host(), rdot), kChain);
  }
  // Two vocabulary shards [0, 400) and [400, 1000), combined as the vocab-parallel head does.
  const int64_t split = 400;
  vector<double> gmax(static_cast<size_t>(nr), -1e300), red(size_t(2 * nr), 0.0);
  vector<float> lse_s(static_cast<size_t>(nr)), logp_s(static_cast<size_t>(nr));
  Dev<double> dGmax(gmax.size()), dRed(red.size());
  vector<vector<float>> mx(2), se(2), tl(2);
  vector<std::unique_ptr<Dev<float>>> dmx, dse, dtl;
  for (int s = 0; s < 2; ++s) {
    const int64_t b = s ? split : 0, Vs = s ? V - split : split;
    mx[size_t(s)].resize(size_t(nr)), se[size_t(s)].resize(size_t(nr)), tl[size_t(s)].resize(size_t(nr));
    const cpu::LogprobParams<float> ps{h.data(), W.data() + b * C, C, Vs, rows.data(), targets.data(), nr};
    cpu::logprob_forward_shard(ps, b, mx[size_t(s)].data(), se[size_t(s)].data(), tl[size_t(s)].data(), static_cast<float*>(nullptr));
    dmx.push_back(std::make_unique<Dev<float>>(size_t(nr)));
    dse.push_back(std::make_unique<Dev<float>>(size_t(nr)));
    dtl.push_back(std::make_unique<Dev<float>>(size_t(nr)));
    const cuda::LogprobArgs as{dH.p, dW.p + b * C, C, Vs, dRows.p, dTargets.p, nr, b};
    cuda::logprob_forward_shard(blas, as, dmx.back()->p, dse.back()->p, dtl.back()->p, nullptr, nullptr);
    record("logprob_forward_shard " + std::to_string(s) + " (max)", rel_err(dmx.back()->host(), mx[size_t(s)]), kGemm);
    record("logprob_forward_shard " + std::to_string(s) + " (sumexp)", rel_err(dse.back()->host(), se[size_t(s)]),
           kChain);
    for (int64_t i = 0; i < nr; ++i) gmax[size_t(i)] = std::max(gmax[size_t(i)], double(mx[size_t(s)][size_t(i)]));
  }
  dGmax.upload(gmax);
  for (int s = 0; s < 2; ++s) {
    vector<double> part(red.size());
    cpu::logprob_shard_partials(mx[size_t(s)].data(), se[size_t(s)].data(), tl[size_t(s)].data(), gmax.data(),
                                part.data(), nr);
    Dev<double> dPart(part.size());
    cuda::logprob_shard_partials(dmx[size_t(s)]->p, dse[size_t(s)]->p, dtl[size_t(s)]->p, dGmax.p, dPart.p, nr, nullptr);
    record("logprob_shard_partials " + std::to_string(s), rel_err(dPart.host(), part), kChain);
    for (size_t i = 0; i < red.size(); ++i) red[i] += part[i];
  }
  dRed.upload(red);
  cpu::logprob_shard_finish(mx[0].data(), se[0].data(), gmax.data(), red.data(), lse_s.data(), logp_s.data(), static_cast<float*>(nullptr),
                            nr, split);
  Dev<float> dLse_s(lse_s.size()), dLogp_s(logp_s.size());
  cuda::logprob_shard_finish(dmx[0]->p, dse[0]->p, dGmax.p, dRed.p, dLse_s.p, dLogp_s.p, nullptr, nr, split, nullptr);
  record("logprob_shard_finish (logp)", rel_err(dLogp_s.host(), logp_s), kChain);
  record("logprob shards = whole vocabulary (logp)", rel_err(dLogp_s.host(), logp), kChain);
}

// Packed sequences cu with Hq query heads over Hkv KV heads of dimension D: q, k, v column ranges of one
// fused row with padding, random inputs (rounded to bf16 when `bf16`), the CPU's forward and backward,
// and the device copies the CUDA ops read.
struct AttentionCase {
  vector<int64_t> cu;
  int64_t n, Hq, Hkv, D, ld, ld_out;
  vector<float> qkv, dout, out, lse, dqkv;
  std::unique_ptr<Dev<float>> dQKV, dOut, dLse, dDout, dDqkv;
  std::unique_ptr<Dev<int64_t>> dCu;
  cuda::AttentionArgs a{};

  AttentionCase(vector<int64_t> cu_, int64_t hq, int64_t hkv, int64_t d, bool bf16, uint32_t seed)
      : cu(std::move(cu_)), n(cu.back()), Hq(hq), Hkv(hkv), D(d), ld((hq + 2 * hkv) * d + 8), ld_out(hq * d) {
    qkv = randn(size_t(n * ld), seed), dout = randn(size_t(n * ld_out), seed + 1);
    if (bf16) {
      for (float& x : qkv) x = bf16_to_f32(f32_to_bf16(x));
      for (float& x : dout) x = bf16_to_f32(f32_to_bf16(x));
    }
    out.resize(size_t(n * ld_out)), lse.resize(size_t(Hq * n)), dqkv.assign(size_t(n * ld), 0.0f);
    const float scale = 1.0f / std::sqrt(float(D));
    cpu::AttentionParams<float> p{qkv.data(), qkv.data() + Hq * D, qkv.data() + (Hq + Hkv) * D, ld, out.data(), ld_out,
                                  lse.data(), cu.data(), int64_t(cu.size()) - 1, n, Hq, Hkv, D, scale};
    cpu::attention_forward(p);
    cpu::attention_backward(p, cpu::AttentionGradParams<float>{dout.data(), dqkv.data(), dqkv.data() + Hq * D,
                                                               dqkv.data() + (Hq + Hkv) * D, ld});
    dQKV = std::make_unique<Dev<float>>(qkv), dOut = std::make_unique<Dev<float>>(out.size());
    dLse = std::make_unique<Dev<float>>(lse.size()), dDout = std::make_unique<Dev<float>>(dout);
    dDqkv = std::make_unique<Dev<float>>(vector<float>(dqkv.size(), 0.0f)), dCu = std::make_unique<Dev<int64_t>>(cu);
    float* x = dQKV->p;
    a = cuda::AttentionArgs{x, x + Hq * D, x + (Hq + Hkv) * D, ld, dOut->p, ld_out, dLse->p, dCu->p,
                            int64_t(cu.size()) - 1, n, Hq, Hkv, D, scale};
  }
  float* dq() const { return dDqkv->p; }
  float* dk() const { return dDqkv->p + Hq * D; }
  float* dv() const { return dDqkv->p + (Hq + Hkv) * D; }
};

void test_attention() {
  // Packed sequences of lengths 1, 7, 33, 64 and 15; 4 query heads over 2 KV heads (grouped).
  const AttentionCase c({0, 1, 8, 41, 105, 120}, 4, 2, 32, false, 61);
  cuda::attention_forward(c.a, nullptr);
  record("attention_forward (out)", rel_err(c.dOut->host(), c.out), kChain);
  record("attention_forward (lse)", rel_err(c.dLse->host(), c.lse), kChain);
  cuda::attention_backward(c.a, c.dDout->p, c.dq(), c.dk(), c.dv(), c.ld, nullptr);
  const vector<float> g1 = c.dDqkv->host();
  record("attention_backward (dq, dk, dv)", rel_err(g1, c.dqkv), kChain);
  cuda::attention_backward(c.a, c.dDout->p, c.dq(), c.dk(), c.dv(), c.ld, nullptr);
  record("attention_backward rerun (mismatched bits)", mismatches(c.dDqkv->host(), g1), 0);
}

// cuDNN's fused attention (bf16 training) against the CPU on the same bf16-exact inputs: the errors are
// cuDNN's bf16 roundings (P before P V, the outputs, dO and the gradients), each 2^-9 relative, a few
// of which add up in a row: 1e-2 for out, 2e-2 for the gradients; lse is fp32 throughout (1e-4). The
// rows also check: reruns bit-identical (the deterministic backward), each implementation's backward
// on the other's forward (lse transposed between the layouts), and the fallback for a head dimension
// cuDNN does not take. Two shapes: grouped-query heads at d = 64 with 6 sequences (padded to 8 for the
// graph), and as many KV heads as heads at d = 128 with 3 (padded to 4).
void attention_cudnn_case(const std::string& tag, const vector<int64_t>& cu, int64_t Hq, int64_t Hkv, int64_t D,
                          bool required) {
  const AttentionCase c(cu, Hq, Hkv, D, true, 63);
  const std::string t = "cudnn attention " + tag + ": ";
  const bool fwd = cuda::cudnn_attention_forward(c.a, nullptr);
  std::printf("attention (cuDNN) %s: forward on %s\n", tag.c_str(), cuda::cudnn_attention_status());
  record(t + "forward ran on cuDNN where it is used (0: yes)", fwd || !required ? 0 : 1, 0);
  if (!fwd) return;
  const vector<float> o1 = c.dOut->host(), l1 = c.dLse->host();
  record(t + "forward (out)", rel_err(o1, c.out), 1e-2);
  record(t + "forward (lse)", rel_err(l1, c.lse), 1e-4);
  cuda::cudnn_attention_forward(c.a, nullptr);
  record(t + "forward rerun (mismatched bits)", mismatches(c.dOut->host(), o1) + mismatches(c.dLse->host(), l1), 0);
  cuda::attention_backward(c.a, c.dDout->p, c.dq(), c.dk(), c.dv(), c.ld, nullptr);  // plain, on cuDNN's forward
  record(t + "plain backward on the cuDNN forward", rel_err(c.dDqkv->host(), c.dqkv), 2e-2);
  const bool bwd = cuda::cudnn_attention_backward(c.a, c.dDout->p, c.dq(), c.dk(), c.dv(), c.ld, nullptr);
  std::printf("attention (cuDNN) %s: backward on %s\n", tag.c_str(), cuda::cudnn_attention_status());
  record(t + "backward ran on cuDNN where it is used (0: yes)", bwd || !required ? 0 : 1, 0);
  if (!bwd) return;
  const vector<float> g1 = c.dDqkv->host();
  record(t + "backward (dq, dk, dv)", rel_err(g1, c.dqkv), 2e-2);
  cuda::cudnn_attention_backward(c.a, c.dDout->p, c.dq(), c.dk(), c.dv(), c.ld, nullptr);
  record(t + "backward rerun (mismatched bits)", mismatches(c.dDqkv->host(), g1), 0);
  // cuDNN's backward on the plain forward (fp32 out and lse).
  cuda::attention_forward(c.a, nullptr);
  cuda::cudnn_attention_backward(c.a, c.dDout->p, c.dq(), c.dk(), c.dv(), c.ld, nullptr);
  record(t + "backward on the plain forward", rel_err(c.dDqkv->host(), c.dqkv), 2e-2);
}

void test_attention_cudnn() {
  if (!cuda::cudnn_attention_built()) {
    std::printf("attention (cuDNN): built without the cuDNN front end (tools/setup.sh fetches it): skipped\n");
    return;
  }
  // metapo uses cuDNN's attention on sm_90 and newer (attention_cudnn.cpp); elsewhere it must fall back.
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const bool required = prop.major >= 9;
  attention_cudnn_case("GQA d64", {0, 1, 8, 41, 169, 184, 440}, 8, 2, 64, required);
  attention_cudnn_case("MHA d128", {0, 100, 101, 357}, 4, 4, 128, required);
  vector<int64_t> cu = {0, 5, 12};
  Dev<int64_t> dCu(cu);
  Dev<float> x(size_t(12 * 3 * 2 * 12)), o(size_t(12 * 2 * 12)), l(size_t(2 * 12));
  const cuda::AttentionArgs odd{x.p, x.p + 24, x.p + 48, 72, o.p, 24, l.p, dCu.p, 2, 12, 2, 2, 12, 0.3f};  // d = 12
  record("cudnn attention falls back for head dimension 12 (0: yes)", cuda::cudnn_attention_forward(odd, nullptr) ? 1 : 0, 0);
}

// Rows [r0, r0 + rows) of a row-major [*, width] host matrix.
vector<float> row_range(const vector<float>& a, int64_t width, int64_t r0, int64_t rows) {
  return vector<float>(a.begin() + long(r0 * width), a.begin() + long((r0 + rows) * width));
}

void test_linear_rows() {
  // Odd sizes: the lanes' stride over `in` and the warps' groups of 8 rows both end part-way.
  const int64_t m = 13, in = 203, out = 77;
  const vector<float> x = randn(size_t(m * in), 91), w = randn(size_t(out * in), 92, 0.1f), b = randn(size_t(out), 93);
  Dev<float> dX(x), dW(w), dB(b), dY(size_t(m * out)), dY1(static_cast<size_t>(out)), dY9(size_t(9 * out));
  for (int bias = 0; bias < 2; ++bias) {
    const std::string tag = bias ? " (bias)" : "";
    vector<float> y(size_t(m * out));
    cpu::linear_rows(y.data(), x.data(), w.data(), bias ? b.data() : nullptr, m, in, out);
    cuda::linear_rows(dY.p, dX.p, dW.p, bias ? dB.p : nullptr, m, in, out, nullptr);
    const vector<float> all = dY.host();
    record("linear_rows" + tag, rel_err(all, y), kReduction);  // 203-term dot products in another order
    // Batch invariance: row r alone (m = 1), and rows 4..12 as a call of 9 (each row at another place in
    // its warp's group), bit for bit the rows of the call of 13.
    double bad = 0;
    for (int64_t r : {0, 7, 12}) {
      cuda::linear_rows(dY1.p, dX.p + r * in, dW.p, bias ? dB.p : nullptr, 1, in, out, nullptr);
      bad += mismatches(dY1.host(), row_range(all, out, r, 1));
    }
    cuda::linear_rows(dY9.p, dX.p + 4 * in, dW.p, bias ? dB.p : nullptr, 9, in, out, nullptr);
    bad += mismatches(dY9.host(), row_range(all, out, 4, 9));
    record("linear_rows" + tag + ": a row alone or in 9 vs in 13 (mismatched bits)", bad, 0);
    cuda::linear_rows(dY.p, dX.p, dW.p, bias ? dB.p : nullptr, m, in, out, nullptr);
    record("linear_rows" + tag + ": rerun (mismatched bits)", mismatches(dY.host(), all), 0);
  }
  // A wider layer (an LM head's shape): 1000-term dot products.
  const int64_t m2 = 3, in2 = 1000, out2 = 1500;
  const vector<float> x2 = randn(size_t(m2 * in2), 94), w2 = randn(size_t(out2 * in2), 95, 0.05f);
  vector<float> y2(size_t(m2 * out2));
  cpu::linear_rows(y2.data(), x2.data(), w2.data(), nullptr, m2, in2, out2);
  Dev<float> dX2(x2), dW2(w2), dY2(y2.size());
  cuda::linear_rows(dY2.p, dX2.p, dW2.p, nullptr, m2, in2, out2, nullptr);
  record("linear_rows (in 1000, out 1500)", rel_err(dY2.host(), y2), kReduction);
  // in = 0: the bias alone; m = 0: nothing written.
  vector<float> yb(size_t(2 * out));
  cpu::linear_rows(yb.data(), x.data(), w.data(), b.data(), 2, 0, out);
  Dev<float> dYb(vector<float>(yb.size(), 7.0f));
  cuda::linear_rows(dYb.p, dX.p, dW.p, dB.p, 2, 0, out, nullptr);
  record("linear_rows (in = 0: the bias; mismatched bits)", mismatches(dYb.host(), yb), 0);
  cuda::linear_rows(dYb.p, dX.p, dW.p, dB.p, 0, in, out, nullptr);
  record("linear_rows (m = 0: untouched; mismatched bits)", mismatches(dYb.host(), yb), 0);
}

void test_decode_attention() {
  // Five sequences' caches of 1, 5, 37, 130 and 8 keys, 8 query heads over 2 KV heads, head_dim 40 (not a
  // multiple of the warp), padded rows of q, out and the cache.
  const vector<int64_t> nk = {1, 5, 37, 130, 8};
  const int64_t m = int64_t(nk.size()), Hq = 8, Hkv = 2, D = 40, Q = Hq * D, KV = Hkv * D;
  const int64_t ld_q = Q + 2 * KV + 4, ld_out = Q + 3, ld_kv = KV + 5;
  vector<int64_t> first(size_t(m) + 1, 0);  // sequence i's cache rows [first[i], first[i + 1]) of one buffer
  for (int64_t i = 0; i < m; ++i) first[size_t(i) + 1] = first[size_t(i)] + nk[size_t(i)];
  const vector<float> q = randn(size_t(m * ld_q), 96), kc = randn(size_t(first.back() * ld_kv), 97),
                      vc = randn(size_t(first.back() * ld_kv), 98);
  vector<const float*> kp(static_cast<size_t>(m)), vp(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) kp[size_t(i)] = kc.data() + first[size_t(i)] * ld_kv, vp[size_t(i)] = vc.data() + first[size_t(i)] * ld_kv;
  const float scale = 1.0f / std::sqrt(float(D));
  vector<float> out(size_t(m * ld_out), 0.0f);
  cpu::decode_attention(cpu::DecodeAttentionParams{q.data(), ld_q, out.data(), ld_out, kp.data(), vp.data(), ld_kv,
                                                   nk.data(), m, Hq, Hkv, D, scale});
  Dev<float> dQ(q), dK(kc), dV(vc), dOut(vector<float>(out.size(), 0.0f)), dOut1(static_cast<size_t>(ld_out));
  vector<const float*> dkp(static_cast<size_t>(m)), dvp(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) dkp[size_t(i)] = dK.p + first[size_t(i)] * ld_kv, dvp[size_t(i)] = dV.p + first[size_t(i)] * ld_kv;
  Dev<const float*> dKp(dkp), dVp(dvp);
  Dev<int64_t> dNk(nk);
  cuda::DecodeAttentionArgs a{dQ.p, ld_q, dOut.p, ld_out, dKp.p, dVp.p, ld_kv, dNk.p, m, Hq, Hkv, D, scale, 130};
  cuda::decode_attention(a, nullptr);
  const vector<float> got = dOut.host();
  record("decode_attention", rel_err(got, out), kChain);
  // max_keys left to the launcher (a host copy of n_keys), and a rerun: the same bits.
  a.max_keys = 0;
  cuda::decode_attention(a, nullptr);
  record("decode_attention: max_keys found, rerun (mismatched bits)", mismatches(dOut.host(), got), 0);
  // Batch invariance: each row alone (m = 1) bit for bit its row of the call of 5.
  double bad = 0;
  for (int64_t i = 0; i < m; ++i) {
    cuda::DecodeAttentionArgs one = a;
    one.q = dQ.p + i * ld_q, one.out = dOut1.p, one.k = dKp.p + i, one.v = dVp.p + i, one.n_keys = dNk.p + i;
    one.m = 1, one.max_keys = nk[size_t(i)];
    cuda::decode_attention(one, nullptr);
    bad += mismatches(row_range(dOut1.host(), ld_out, 0, 1), row_range(got, ld_out, i, 1));
  }
  record("decode_attention: a row alone vs in 5 (mismatched bits)", bad, 0);
}

void test_data_movement() {
  const int64_t n = 5000, m = 700;
  const vector<float> x = randn(size_t(n), 71), y = randn(size_t(n), 72);
  vector<int32_t> idx(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) idx[size_t(i)] = int32_t((i * 7919) % n);  // distinct
  Dev<float> dX(x), dY(y), dG(static_cast<size_t>(m)), dS(static_cast<size_t>(n));
  Dev<int32_t> dIdx(idx);
  vector<float> g(static_cast<size_t>(m)), sc(static_cast<size_t>(n));
  cpu::gather(g.data(), x.data(), idx.data(), m);
  cuda::gather(dG.p, dX.p, dIdx.p, m, nullptr);
  record("gather", mismatches(dG.host(), g), 0);
  cpu::scatter(sc.data(), n, g.data(), idx.data(), m);
  cuda::scatter(dS.p, n, dG.p, dIdx.p, m, nullptr);
  record("scatter", mismatches(dS.host(), sc), 0);
  vector<double> w(static_cast<size_t>(n)), seg_out(4);
  cpu::widen(w.data(), x.data(), n);
  Dev<double> dW(static_cast<size_t>(n)), dSeg(seg_out.size());
  cuda::widen(dW.p, dX.p, n, nullptr);
  record("widen", mismatches(dW.host(), w), 0);
  const vector<int64_t> cu = {0, 10, 10, 4000, 5000};
  Dev<int64_t> dCu(cu);
  cpu::segment_sum(seg_out.data(), w.data(), cu.data(), 4);
  cuda::segment_sum(dSeg.p, dW.p, dCu.p, 4, nullptr);
  record("segment_sum (mismatched bits)", mismatches(dSeg.host(), seg_out), 0);  // the same order
  vector<float> s = x;
  cpu::add(s.data(), y.data(), n);
  Dev<float> dA(x);
  cuda::add(dA.p, dY.p, n, nullptr);
  record("add", mismatches(dA.host(), s), 0);
  // copy_2d and blocks_to_columns: two blocks of 3 rows into columns of a [3, 12] matrix.
  const int64_t rows = 3, ld = 12;
  vector<float> dst(size_t(rows * ld), 0.0f);
  const vector<int64_t> col0 = {1, 6}, widths = {4, 5};
  cpu::blocks_to_columns(dst.data(), ld, x.data(), 20, rows, col0.data(), widths.data(), 2);
  Dev<float> dDst(vector<float>(dst.size(), 0.0f));
  cuda::blocks_to_columns(dDst.p, ld, dX.p, 20, rows, col0.data(), widths.data(), 2, nullptr);
  record("blocks_to_columns (copy_2d)", mismatches(dDst.host(), dst), 0);
  // copy_rows: rows of a [4, 9] source into four separate device buffers.
  Dev<float> r0(size_t(6)), r1(size_t(6)), r2(size_t(6)), r3(size_t(6));
  const vector<float*> ptrs = {r0.p, r1.p, r2.p, r3.p};
  Dev<float*> dPtrs(ptrs);
  cuda::copy_rows(dPtrs.p, dX.p, 9, 6, 4, nullptr);
  double bad = 0;
  const Dev<float>* outs[] = {&r0, &r1, &r2, &r3};
  for (int i = 0; i < 4; ++i) {
    const vector<float> r = outs[i]->host();
    for (int c = 0; c < 6; ++c) bad += r[size_t(c)] != x[size_t(i * 9 + c)];
  }
  record("copy_rows", bad, 0);
}

void test_optim_reductions() {
  const size_t n = 300007;
  vector<float> x = randn(n, 81), v = randn(n, 82, 0.01f);
  for (float& e : v) e = std::abs(e);
  Dev<float> dX(x), dV(v);
  const double ss = cpu::sum_squares(x.data(), n), ss_gpu = cuda::sum_squares(dX.p, n, nullptr);
  record("sum_squares", std::abs(ss_gpu - ss) / ss, 1e-12);  // double partial sums over other blocks
  record("all_finite (finite)", cuda::all_finite(dX.p, n, nullptr) ? 0 : 1, 0);
  x[n / 2] = INFINITY;
  Dev<float> dBad(x);
  record("all_finite (one inf)", cuda::all_finite(dBad.p, n, nullptr) ? 1 : 0, 0);
  vector<float> s = randn(n, 83);
  Dev<float> dS(s);
  cpu::adam_precondition(s.data(), v.data(), n, 0.999f, 0.001f, 0.05f, 1e-8f);
  cuda::adam_precondition(dS.p, dV.p, n, 0.999f, 0.001f, 0.05f, 1e-8f, nullptr);
  record("adam_precondition", rel_err(dS.host(), s), kElementwise);
}
}  // namespace

int main() {
  if (!cuda::device_available()) {
    std::printf("test_gpu_ops: no CUDA device here: skipped (tools/gpu-check.sh runs it on a GPU)\n");
    return 77;
  }
  std::printf("test_gpu_ops on %s: CUDA op vs CPU op, max |cuda - cpu| / max |cpu|\n\n", cuda::device_name());
  void* blas = nullptr;  // cuBLASLt (dlopen'd): without it the GEMM tests fail and the others still run
  try {
    blas = cuda::blas_create();
  } catch (const std::exception& e) {
    std::printf("cuBLASLt: error: %s\n", e.what());
    record("blas_create", 1, 0);
  }
  const std::vector<std::pair<const char*, std::function<void()>>> tests = {
      {"device memory", test_device_memory},
      {"tensor", test_tensor},
      {"data movement", test_data_movement},
      {"gemm", [&] { test_gemm(blas); }},
      {"gemm bf16", [&] { test_gemm_bf16(blas); }},
      {"linear", [&] { test_linear(blas); }},
      {"rmsnorm", test_rmsnorm},
      {"rmsnorm ghost", test_rmsnorm_ghost},
      {"rope", test_rope},
      {"swiglu", test_swiglu},
      {"embedding", test_embedding},
      {"logprob", [&] { test_logprob(blas); }},
      {"attention", test_attention},
      {"attention (cuDNN)", test_attention_cudnn},
      {"linear_rows", test_linear_rows},
      {"decode attention", test_decode_attention},
      {"adamw", test_adamw},
      {"optimizer reductions", test_optim_reductions}};
  int failed = 0;
  for (const auto& [name, f] : tests) {
    try {
      f();
    } catch (const std::exception& e) {
      std::printf("%s: error: %s\n", name, e.what());
      ++failed;
    }
  }
  cuda::blas_destroy(blas);
  failed += report.print("op");
  std::printf("\n%s\n", failed ? "test_gpu_ops: FAILED" : "test_gpu_ops: all ops within tolerance");
  return failed ? 1 : 0;
}
