// The model on the GPU against the model on the CPU: the same LlamaModel code through the ops seam, one
// context on Device::CPU (kernels/cpu) and one on Device::CUDA (kernels/cuda), the same parameters and
// packed batch. Checks, per model shape (the tiny and bench-28m presets' shapes):
//   - log-probs, every parameter gradient (per tensor) and the per-sequence ghost dots of one
//     forward + backward, fp32, against the CPU fp32 path;
//   - the same with bf16 storage (parameters and activations rounded to bf16, as set_precision
//     emulates on the CPU);
//   - the GPU run twice: bit-identical;
//   - 50 steps of DPO (reference log-probs fixed, AdamW through ops::adamw_step) and 50 steps with
//     MetaPO-shaped per-pair weights (from the ghost dots against a fixed validation direction), the
//     GPU's loss curve against the CPU's (10 steps each on bench-28m).
// Prints one table; exit 0 when every check is within its tolerance, 1 when one is not, 77 (CTest:
// skipped) without a CUDA device. `--harness-on-cpu` runs the "GPU" side on the CPU too, where every
// check must come out exactly 0: the harness itself checked, here and in CI (CTest gpu.model_harness). Links the model, the ops dispatch, both backends and the CUDA
// runtime, nothing else (no MPI, HDF5, Boost or BLAS: tests/gpu/naive_blas).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "metapo/kernels/cuda.h"
#include "metapo/model/batch.h"
#include "metapo/model/config.h"
#include "metapo/model/layout.h"
#include "metapo/model/llama.h"
#include "metapo/ops/ops.h"
#include "report.h"
#include "shapes.h"

using namespace metapo;
using std::vector;

namespace {

Report report;
bool harness = false;  // both sides on the CPU: every error must be 0
void record(const std::string& c, double err, double tol) { report.record(c, err, harness ? 0.0 : tol); }

template <typename T>
double rel_err(const T* a, const T* b, size_t n) {
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < n; ++i) {
    num = std::max(num, std::abs(double(a[i]) - double(b[i])));
    den = std::max(den, std::abs(double(b[i])));
  }
  return num / den;
}

vector<float> randn(size_t n, uint32_t seed, float scale) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.0f, scale);
  vector<float> v(n);
  for (float& x : v) x = d(g);
  return v;
}

// Pairs (chosen, rejected) of random sequences sharing a prompt, packed.
PackedBatch make_batch(const LlamaConfig& c, int pairs, int64_t len, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<int32_t> tok(3, int32_t(c.vocab_size) - 1);
  std::uniform_int_distribution<int64_t> extra(0, len / 2);
  PackedBatch b;
  for (int p = 0; p < pairs; ++p) {
    vector<int32_t> prompt(size_t(len / 2));
    for (int32_t& t : prompt) t = tok(g);
    for (int k = 0; k < 2; ++k) {
      vector<int32_t> s = prompt;
      for (int64_t i = 0, m = len / 4 + extra(g); i < m; ++i) s.push_back(tok(g));
      b.add(s);
    }
  }
  return b;
}

// One device's model, its parameters, gradients and optimizer state.
struct Side {
  ops::Context ctx;
  LlamaModel<float> model;
  ops::DeviceArray<float> params, grads, m, v, ghat, logp, dlogp;
  ops::DeviceArray<uint8_t> decay;
  Side(const LlamaConfig& c, const ops::Context& cx)
      : ctx(cx), model(c, nullptr, {}, cx), params(cx.device), grads(cx.device), m(cx.device), v(cx.device),
        ghat(cx.device), logp(cx.device), dlogp(cx.device), decay(cx.device) {}
  void upload(ops::DeviceArray<float>& dst, const vector<float>& src) {
    dst.resize_for_overwrite(src.size());
    ops::to_device(ctx, dst.data(), src.data(), src.size() * sizeof(float));
  }
  vector<float> download(const ops::DeviceArray<float>& src) {
    vector<float> h(src.size());
    ops::to_host(ctx, h.data(), src.data(), h.size() * sizeof(float));
    return h;
  }
};

// One forward + backward on both sides from the same host data; compares logp, every gradient tensor
// and the ghost dots.
void compare_step(const std::string& name, Side& cpu, Side& gpu, const PackedBatch& b,
                  const vector<float>& params, double tol_logp, double tol_grad, double tol_dots) {
  const int64_t n = b.n_tokens();
  const vector<int32_t> targets = next_token_targets(b, nullptr);
  const vector<float> dlogp = randn(size_t(n), 7, 1.0f), ghat = randn(params.size(), 8, 0.02f);
  vector<vector<float>> logp(2), grads(2);
  vector<vector<double>> dots(2);
  Side* sides[2] = {&cpu, &gpu};
  for (int k = 0; k < 2; ++k) {
    Side& s = *sides[k];
    s.upload(s.params, params), s.upload(s.dlogp, dlogp), s.upload(s.ghat, ghat);
    s.logp.resize_for_overwrite(size_t(n)), s.grads.resize_for_overwrite(params.size());
    s.model.forward(s.params.data(), b, targets.data(), s.logp.data());
    s.model.backward(s.params.data(), s.dlogp.data(), s.grads.data(), false, s.ghat.data(), &dots[size_t(k)]);
    logp[size_t(k)] = s.download(s.logp), grads[size_t(k)] = s.download(s.grads);
  }
  record(name + ": log-probs", rel_err(logp[1].data(), logp[0].data(), logp[0].size()), tol_logp);
  double worst = 0;
  std::string worst_name;
  const ParamLayout& lay = cpu.model.layout();
  for (const TensorEntry& e : lay.tensors()) {
    const double err = rel_err(grads[1].data() + e.offset, grads[0].data() + e.offset, e.numel);
    if (err >= worst) worst = err, worst_name = e.name;
  }
  record(name + ": gradients, worst tensor (" + worst_name + ")", worst, tol_grad);
  record(name + ": ghost dots per sequence", rel_err(dots[1].data(), dots[0].data(), dots[0].size()), tol_dots);
}

// Loss curves of `steps` optimizer steps on both sides: DPO with fixed reference log-probs, optionally
// with per-pair weights from the ghost dots (MetaPO's shape of computation). Returns the largest
// |loss_gpu - loss_cpu| over the steps relative to the CPU curve's largest loss.
double curve(Side& cpu, Side& gpu, const PackedBatch& b, const vector<float>& params0,
             int steps, bool weighted, vector<double>* gpu_losses) {
  const vector<int32_t> targets = next_token_targets(b, nullptr);
  const int64_t n = b.n_tokens(), pairs = b.n_seqs() / 2;
  const vector<float> ghat = randn(params0.size(), 9, 0.02f);
  const ParamLayout& lay = cpu.model.layout();
  vector<uint8_t> decay(params0.size(), 1);
  for (const TensorEntry& e : lay.tensors())
    if (e.shape.size() == 1) std::fill(decay.begin() + long(e.offset), decay.begin() + long(e.offset + e.numel), 0);
  double worst = 0, first = 0;
  vector<double> losses[2];
  Side* sides[2] = {&cpu, &gpu};
  for (int k = 0; k < 2; ++k) {
    Side& s = *sides[k];
    s.upload(s.params, params0), s.upload(s.ghat, ghat);
    s.upload(s.m, vector<float>(params0.size(), 0.0f)), s.upload(s.v, vector<float>(params0.size(), 0.0f));
    s.decay.resize_for_overwrite(decay.size());
    ops::to_device(s.ctx, s.decay.data(), decay.data(), decay.size());
    s.grads.resize_for_overwrite(params0.size()), s.logp.resize_for_overwrite(size_t(n));
    s.dlogp.resize_for_overwrite(size_t(n));
    const double beta = 0.1, lr = 1e-3;
    vector<double> prev_dots;
    for (int step = 0; step < steps; ++step) {
      s.model.forward(s.params.data(), b, targets.data(), s.logp.data());
      vector<float> lp(static_cast<size_t>(n));
      ops::to_host(s.ctx, lp.data(), s.logp.data(), lp.size() * sizeof(float));
      // Per-sequence sums on the host (the trainer's objective does the same), the pair loss
      // -log σ(β (chosen - rejected)) (reference log-probs 0), its coefficient on every token's logp.
      vector<double> seq(size_t(b.n_seqs()), 0.0);
      for (int64_t q = 0; q < b.n_seqs(); ++q)
        for (int64_t t = b.cu_seqlens[size_t(q)]; t < b.cu_seqlens[size_t(q) + 1]; ++t) seq[size_t(q)] += lp[size_t(t)];
      // MetaPO's shape: each pair weighted by how its gradient aligns with a validation direction
      // (its ghost dots from the last step), w = 2 σ(a / rms(a)), normalised to mean 1.
      vector<double> w(size_t(pairs), 1.0);
      if (weighted && !prev_dots.empty()) {
        vector<double> a(static_cast<size_t>(pairs));
        double ss = 1e-30, sum = 0;
        for (int64_t p = 0; p < pairs; ++p) a[size_t(p)] = prev_dots[size_t(2 * p)] + prev_dots[size_t(2 * p + 1)];
        for (double x : a) ss += x * x;
        const double rms = std::sqrt(ss / double(pairs));
        for (int64_t p = 0; p < pairs; ++p) sum += (w[size_t(p)] = 2.0 / (1.0 + std::exp(-a[size_t(p)] / rms)));
        for (double& x : w) x *= double(pairs) / sum;
      }
      double loss = 0;
      vector<float> coef(static_cast<size_t>(n), 0.0f);
      for (int64_t p = 0; p < pairs; ++p) {
        const double z = beta * (seq[size_t(2 * p)] - seq[size_t(2 * p + 1)]);
        loss += w[size_t(p)] * std::log1p(std::exp(-z)) / double(pairs);
        const double dz = -w[size_t(p)] * beta / (1.0 + std::exp(z)) / double(pairs);  // dL/d(chosen sum)
        for (int k2 = 0; k2 < 2; ++k2) {
          const int64_t q = 2 * p + k2;
          for (int64_t t = b.cu_seqlens[size_t(q)]; t < b.cu_seqlens[size_t(q) + 1]; ++t)
            coef[size_t(t)] = float(k2 ? -dz : dz);
        }
      }
      losses[k].push_back(loss);
      ops::to_device(s.ctx, s.dlogp.data(), coef.data(), coef.size() * sizeof(float));
      s.model.backward(s.params.data(), s.dlogp.data(), s.grads.data(), false, weighted ? s.ghat.data() : nullptr,
                       weighted ? &prev_dots : nullptr);
      const float b1 = 0.9f, b2 = 0.999f;
      const double bc1 = 1 - std::pow(b1, step + 1), bc2 = 1 - std::pow(b2, step + 1);
      ops::adamw_step(s.ctx, ops::AdamW{s.params.data(), s.grads.data(), s.m.data(), s.v.data(), s.decay.data(),
                                        params0.size(), b1, b2, float(lr / bc1), float(1 / std::sqrt(bc2)), 1e-8f,
                                        float(lr * 0.01)});
    }
  }
  // Relative to the curve's largest loss (the first can be tiny when a pair starts well separated).
  first = 1e-30;
  for (double l : losses[0]) first = std::max(first, std::abs(l));
  for (int step = 0; step < steps; ++step)
    worst = std::max(worst, std::abs(losses[1][size_t(step)] - losses[0][size_t(step)]) / first);
  if (gpu_losses) *gpu_losses = losses[1];
  return worst;
}

}  // namespace

int main(int argc, char** argv) {
  if (const int rc = begin_gpu_test("test_gpu_model", "the model on CUDA vs on the CPU", argc, argv, harness)) return rc;
  void* blas = nullptr;
  if (!harness) {
    try {
      blas = cuda::blas_create();
    } catch (const std::exception& e) {  // one line and a failed table, not std::terminate
      std::printf("cuBLASLt: error: %s\n", e.what());
      std::printf("\ntest_gpu_model: FAILED\n");
      return 1;
    }
  }
  int failed = 0;
  // The harness check (here and in CI, on 2 cores and plain-loop GEMMs) takes the tiny shape only.
  vector<std::pair<std::string, LlamaConfig>> shapes = {{"tiny", gpu_shape("tiny")}};
  if (!harness) shapes.push_back({"bench-28m", gpu_shape("bench-28m")});
  for (const auto& [name, cfg] : shapes) {
    try {
      ops::Context cpu_ctx;
      ops::Context gpu_ctx;
      gpu_ctx.device = harness ? Device::CPU : Device::CUDA, gpu_ctx.blas = blas;
      Side cpu(cfg, cpu_ctx), gpu(cfg, gpu_ctx);
      const size_t np = cpu.model.layout().total();
      vector<float> params = randn(np, 1, 0.02f);
      for (const TensorEntry& e : cpu.model.layout().tensors())  // norm weights near 1
        if (e.shape.size() == 1)
          for (size_t i = 0; i < e.numel; ++i) params[e.offset + i] += 1.0f;
      const PackedBatch b = make_batch(cfg, 4, name == "tiny" ? 24 : 96, 2);
      // fp32: different summation orders (cuBLASLt tiles, block trees) and expf; the gradients compose
      // every layer's backward.
      compare_step(name + " fp32", cpu, gpu, b, params, 1e-4, 1e-3, 1e-3);
      // The GPU twice: bit-identical.
      vector<float> g1 = gpu.download(gpu.grads);
      compare_step(name + " fp32 (again)", cpu, gpu, b, params, 1e-4, 1e-3, 1e-3);
      vector<float> g2 = gpu.download(gpu.grads);
      double diff = 0;
      for (size_t i = 0; i < g1.size(); ++i) diff += std::memcmp(&g1[i], &g2[i], 4) != 0;
      record(name + ": GPU rerun, mismatched gradient bits", diff, 0);
      // bf16 storage on both: an element that lands on the other side of a rounding boundary moves
      // by 2^-8 relative, so the tolerances are those of bf16 (tests/test_precision.cpp's bf16 vs fp32).
      cpu.model.set_precision(Precision::bf16()), gpu.model.set_precision(Precision::bf16());
      // On the GPU bf16 runs attention on cuDNN's fused kernel (bf16 P V: one more rounding, within
      // the same bound), and again on the plain kernel, the reference.
      compare_step(name + " bf16", cpu, gpu, b, params, 5e-3, 5e-2, 5e-2);
      if (!harness) std::printf("%s bf16 attention: %s\n", name.c_str(), cuda::cudnn_attention_status());
      {
        ops::Context plain_ctx = gpu_ctx;
        plain_ctx.fused_attention = false;
        Side plain(cfg, plain_ctx);
        plain.model.set_precision(Precision::bf16());
        compare_step(name + " bf16, plain attention", cpu, plain, b, params, 5e-3, 5e-2, 5e-2);
      }
      cpu.model.set_precision(Precision::fp32()), gpu.model.set_precision(Precision::fp32());
      // 50 AdamW steps amplify rounding differences: on the CPU, the same run with every parameter one
      // ulp apart ends 9e-7 (DPO) and 1.1e-6 (weighted) apart relative to the first loss (tiny). The
      // GPU's fp32 differs from the CPU's by summation order in every op, so 1e-3 leaves a wide margin
      // and still catches a wrong gradient (which changes the curve at the first step's scale).
      // 50 steps on the tiny shape; 10 on bench-28m, whose CPU side (plain-loop GEMMs) is the slow one.
      const int steps = name == "tiny" ? 50 : 10;
      const std::string n_steps = std::to_string(steps);
      vector<double> losses;
      record(name + ": " + n_steps + " DPO steps, loss curve", curve(cpu, gpu, b, params, steps, false, &losses), 1e-3);
      std::printf("%s DPO loss: step 0 %.6f, step %d %.6f\n", name.c_str(), losses.front(), steps - 1, losses.back());
      record(name + ": " + n_steps + " ghost-dot steps, loss curve", curve(cpu, gpu, b, params, steps, true, &losses),
             1e-3);
    } catch (const std::exception& e) {
      std::printf("%s: error: %s\n", name.c_str(), e.what());
      ++failed;
    }
  }
  if (blas) cuda::blas_destroy(blas);
  failed += report.print("check");
  std::printf("\n%s\n", failed ? "test_gpu_model: FAILED" : "test_gpu_model: all checks within tolerance");
  return failed ? 1 : 0;
}
