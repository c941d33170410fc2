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
#include <random>
#include <string>
#include <vector>

#include "metapo/core/error.h"
#include "metapo/core/half.h"
#include "metapo/kernels/cuda.h"
#include "metapo/kernels/optim.h"
#include "metapo/kernels/rmsnorm.h"
#include "metapo/kernels/swiglu.h"
#include "metapo/kernels/tensor.h"

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
double rel_err(const vector<float>& a, const vector<float>& b) {
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(double(a[i]) - double(b[i])));
    den = std::max(den, std::abs(double(b[i])));
  }
  return num / den;
}

struct Row {
  std::string op;
  double err, tol;
};
vector<Row> rows;

void record(const std::string& op, double err, double tol) { rows.push_back({op, err, tol}); }

// fp32 on both sides; the CUDA kernels sum in another order (block trees, fused multiply-adds) and use
// the hardware exp, so elementwise ops agree to a few ulp and reductions over C to ~C ulp.
constexpr double kElementwise = 1e-6, kReduction = 1e-5;

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

}  // namespace

int main() {
  if (!cuda::device_available()) {
    std::printf("test_gpu_ops: no CUDA device here: skipped (tools/gpu-check.sh runs it on a GPU)\n");
    return 77;
  }
  std::printf("test_gpu_ops on %s: CUDA op vs CPU op, max |cuda - cpu| / max |cpu|\n\n", cuda::device_name());
  const std::vector<std::pair<const char*, std::function<void()>>> tests = {
      {"device memory", test_device_memory}, {"tensor", test_tensor}, {"rmsnorm", test_rmsnorm}, {"swiglu", test_swiglu}, {"adamw", test_adamw}};
  int failed = 0;
  for (const auto& [name, f] : tests) {
    try {
      f();
    } catch (const std::exception& e) {
      std::printf("%s: error: %s\n", name, e.what());
      ++failed;
    }
  }
  std::printf("| op | error | tolerance | |\n| --- | --- | --- | --- |\n");
  for (const Row& r : rows) {
    const bool ok = r.err <= r.tol;
    failed += !ok;
    std::printf("| %s | %.3e | %.1e | %s |\n", r.op.c_str(), r.err, r.tol, ok ? "ok" : "FAIL");
  }
  std::printf("\n%s\n", failed ? "test_gpu_ops: FAILED" : "test_gpu_ops: all ops within tolerance");
  return failed ? 1 : 0;
}
