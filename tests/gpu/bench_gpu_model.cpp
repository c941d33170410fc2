// The model's training step on one GPU: tokens/s, TFLOP/s and MFU (against the card's dense bf16 peak)
// of a forward+backward, a DPO step and a MetaPO step at meta-interval 1, on packed sequences of one
// length, the same LlamaModel code and ops the trainer runs. Links the CUDA runtime and the C++ runtime
// only (tools/gpu-check.sh runs it on the device machine, where tools/bench_torch.py gives PyTorch's
// figures for the same shapes in the same run).
//   bench_gpu_model [--shape 1.3b|bench-28m|tiny] [--seq-len 2048] [--batch 4] [--steps 3] [--warmup 1]
//                   [--precision bf16|fp32] [--recompute none|selective|full] [--val-pairs N]
//                   [--peak-tflops T] [--device cuda|cpu] [--attention cudnn|plain]
// (--attention: in bf16 on CUDA, cuDNN's fused attention where it takes the shape (the default) or the
// plain kernel; the line under the table says which ran.)
// (--device cpu runs the same steps on the CPU backend: a check of this program where there is no GPU.)
// The steps, as the trainer takes them (reference log-probs precomputed, so no reference forward):
//   fwd+bwd  forward and backward of the batch (the FLOPs are train_flops: 6 per parameter and token
//            plus causal attention, the same count as tools/bench_torch.py);
//   DPO      fwd+bwd, the per-sequence sums and pair loss on the host, AdamW on the fp32 master weights;
//   MetaPO   the DPO step plus the validation gradient (forward and backward of --val-pairs pairs,
//            default a quarter of the batch's pairs, as tools/bench-meta-cost.sh) and the ghost dot
//            products in the training backward; the weight net's update is host arithmetic on a few
//            numbers per pair and is left out.
// MFU counts the useful FLOPs of the step (train_flops of the training batch; the MetaPO step's extra
// work is its cost, not useful FLOPs), so MetaPO/DPO is the ratio of step times.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "metapo/core/error.h"
#include "metapo/kernels/cuda.h"
#include "metapo/model/batch.h"
#include "metapo/model/config.h"
#include "metapo/model/llama.h"
#include "metapo/ops/ops.h"
#include "shapes.h"

using namespace metapo;
using std::vector;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

int main(int argc, char** argv) try {
  std::string shape_name = "1.3b", precision = "bf16", recompute = "none", device = "cuda", attention = "cudnn";
  int64_t seq_len = 2048, batch = 4, steps = 3, warmup = 1, val_pairs = -1;
  double peak = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    MP_CHECK(i + 1 < argc, a, ": needs a value");
    const std::string v = argv[++i];
    if (a == "--shape") shape_name = v;
    else if (a == "--seq-len") seq_len = std::stoll(v);
    else if (a == "--batch") batch = std::stoll(v);
    else if (a == "--steps") steps = std::stoll(v);
    else if (a == "--warmup") warmup = std::stoll(v);
    else if (a == "--precision") precision = v;
    else if (a == "--recompute") recompute = v;
    else if (a == "--val-pairs") val_pairs = std::stoll(v);
    else if (a == "--peak-tflops") peak = std::stod(v) * 1e12;
    else if (a == "--device") device = v;
    else if (a == "--attention") attention = v;
    else fail(a, ": unknown option");
  }
  MP_CHECK(attention == "cudnn" || attention == "plain", "--attention ", attention, ": cudnn or plain");
  MP_CHECK(batch >= 2 && batch % 2 == 0, "--batch ", batch, ": an even number of sequences (chosen, rejected)");
  MP_CHECK(seq_len >= 2 && steps >= 1 && warmup >= 0, "--seq-len, --steps, --warmup: out of range");
  const LlamaConfig cfg = gpu_shape(shape_name);
  const Precision prec = parse_precision(precision);
  MP_CHECK(device == "cuda" || device == "cpu", "--device ", device, ": cuda or cpu");
  const Device where = device == "cuda" ? Device::CUDA : Device::CPU;
  if (where == Device::CUDA && !cuda::device_available()) {
    std::printf("bench_gpu_model: no CUDA device here: nothing to measure\n");
    return 77;
  }
  const std::string card = where == Device::CUDA ? cuda::device_name() : "cpu";
  if (peak == 0) peak = ops::bf16_peak_flops(card);
  const int64_t pairs = batch / 2, vp = val_pairs >= 0 ? val_pairs : std::max<int64_t>(1, pairs / 4);

  ops::Context ctx;
  ctx.device = where;
  if (where == Device::CUDA) ctx.blas = cuda::blas_create();
  ctx.fused_attention = attention == "cudnn";
  auto sync = [&] {
    if (where == Device::CUDA) cuda::synchronize(nullptr);
  };
  LlamaModel<float> model(cfg, nullptr, {}, ctx);
  model.set_precision(prec);
  model.set_recompute(parse_recompute(recompute));
  model.set_ghost_group(2);
  const ParamLayout& lay = model.layout();
  const size_t np = lay.total();

  // Parameters: a pool of 2^20 draws of N(0, 0.02) laid out with a stride (drawing 1.4e9 normals
  // would take the benchmark half a minute); norm weights 1. Then AdamW state and the batches.
  std::mt19937 g(1);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  vector<float> pool(size_t(1) << 20);
  for (float& x : pool) x = nd(g);
  vector<float> h(np);
  for (size_t i = 0; i < np; ++i) h[i] = pool[(i * 7919) & (pool.size() - 1)];
  for (const TensorEntry& e : lay.tensors())
    if (e.shape.size() == 1) std::fill(h.begin() + long(e.offset), h.begin() + long(e.offset + e.numel), 1.0f);
  auto dev = [&](size_t n, Mem m) {
    ops::DeviceArray<float> a(where, m);
    a.resize_for_overwrite(n);
    return a;
  };
  ops::DeviceArray<float> params = dev(np, Mem::Params), grads = dev(np, Mem::Grads), m = dev(np, Mem::Optimizer),
                          v = dev(np, Mem::Optimizer), ghat = dev(np, Mem::Grads);
  ops::DeviceArray<uint8_t> decay(where, Mem::Optimizer);
  decay.resize_for_overwrite(np);
  ops::to_device(ctx, params.data(), h.data(), np * sizeof(float));
  ops::fill(ctx, m.data(), 0.0f, int64_t(np)), ops::fill(ctx, v.data(), 0.0f, int64_t(np));
  ops::fill(ctx, ghat.data(), 0.0f, int64_t(np));
  {
    vector<uint8_t> d(np, 1);
    ops::to_device(ctx, decay.data(), d.data(), np);
  }
  auto make_batch = [&](int64_t n_seqs, uint32_t seed) {
    std::mt19937 gg(seed);
    std::uniform_int_distribution<int32_t> tok(3, int32_t(cfg.vocab_size) - 1);
    PackedBatch b;
    for (int64_t s = 0; s < n_seqs; ++s) {
      vector<int32_t> t(static_cast<size_t>(seq_len));
      for (int32_t& x : t) x = tok(gg);
      b.add(t);
    }
    return b;
  };
  const PackedBatch train = make_batch(batch, 2), val = make_batch(2 * vp, 3);
  const vector<int32_t> train_targets = next_token_targets(train, nullptr), val_targets = next_token_targets(val, nullptr);
  const int64_t n = train.n_tokens(), nv = val.n_tokens();
  ops::DeviceArray<float> logp = dev(size_t(std::max(n, nv)), Mem::Activations),
                          dlogp = dev(size_t(std::max(n, nv)), Mem::Activations);

  // The pair loss on the host: per-sequence sums, -log σ(β Δ), and dL/dlogp per token.
  auto pair_loss = [&](const PackedBatch& b) {
    vector<float> lp(size_t(b.n_tokens())), coef(size_t(b.n_tokens()), 0.0f);
    ops::to_host(ctx, lp.data(), logp.data(), lp.size() * sizeof(float));
    const double beta = 0.1;
    for (int64_t p = 0; p < b.n_seqs() / 2; ++p) {
      double d = 0;
      for (int k = 0; k < 2; ++k)
        for (int64_t t = b.cu_seqlens[size_t(2 * p + k)]; t < b.cu_seqlens[size_t(2 * p + k + 1)]; ++t)
          d += (k ? -1 : 1) * double(lp[size_t(t)]);
      const double dz = -beta / (1.0 + std::exp(beta * d)) / double(b.n_seqs() / 2);
      for (int k = 0; k < 2; ++k)
        for (int64_t t = b.cu_seqlens[size_t(2 * p + k)]; t < b.cu_seqlens[size_t(2 * p + k + 1)]; ++t)
          coef[size_t(t)] = float(k ? -dz : dz);
    }
    ops::to_device(ctx, dlogp.data(), coef.data(), coef.size() * sizeof(float));
  };
  int64_t adam_t = 0;
  auto adamw = [&] {
    ++adam_t;
    const float b1 = 0.9f, b2 = 0.95f, lr = 1e-5f;
    const double bc1 = 1 - std::pow(double(b1), double(adam_t)), bc2 = 1 - std::pow(double(b2), double(adam_t));
    ops::adamw_step(ctx, ops::AdamW{params.data(), grads.data(), m.data(), v.data(), decay.data(), np, b1, b2,
                                    float(lr / bc1), float(1 / std::sqrt(bc2)), 1e-8f, lr * 0.1f});
  };
  auto fwdbwd = [&] {
    model.forward(params.data(), train, train_targets.data(), logp.data());
    ops::fill(ctx, dlogp.data(), 1.0f, n);
    model.backward(params.data(), dlogp.data(), grads.data(), false);
  };
  auto dpo = [&] {
    model.forward(params.data(), train, train_targets.data(), logp.data());
    pair_loss(train);
    model.backward(params.data(), dlogp.data(), grads.data(), false);
    adamw();
  };
  vector<double> dots;
  auto metapo = [&] {
    // The validation gradient ĝ (into ghat), then the training step with the ghost dots against it.
    model.forward(params.data(), val, val_targets.data(), logp.data());
    pair_loss(val);
    model.backward(params.data(), dlogp.data(), ghat.data(), false);
    model.forward(params.data(), train, train_targets.data(), logp.data());
    pair_loss(train);
    model.backward(params.data(), dlogp.data(), grads.data(), false, ghat.data(), &dots);
    adamw();
  };
  const double flops = train_flops(cfg, train);
  std::printf("bench_gpu_model on %s: shape %s (%.3fB parameters), %s, recompute %s, %lld x %lld tokens, "
              "%lld validation pairs\n",
              card.c_str(), shape_name.c_str(), double(np) / 1e9, precision_name(prec).c_str(), recompute.c_str(),
              (long long)batch, (long long)seq_len, (long long)vp);
  std::printf("\n| step | ms | tokens/s | TFLOP/s | MFU |\n| --- | --- | --- | --- | --- |\n");
  std::string json = "{\"card\":\"" + card + "\",\"shape\":\"" + shape_name + "\",\"precision\":\"" +
                     precision_name(prec) + "\",\"tokens\":" + std::to_string(n);
  double dpo_ms = 0;
  for (const auto& [name, f] : vector<std::pair<std::string, std::function<void()>>>{
           {"fwd+bwd", fwdbwd}, {"DPO", dpo}, {"MetaPO (interval 1)", metapo}}) {
    for (int64_t i = 0; i < warmup; ++i) f();
    sync();
    vector<double> t;
    for (int64_t i = 0; i < steps; ++i) {
      const double t0 = now();
      f();
      sync();
      t.push_back(now() - t0);
    }
    std::sort(t.begin(), t.end());
    const double s = t[t.size() / 2];  // median
    const double tflops = flops / s / 1e12;
    if (name == "DPO") dpo_ms = s * 1e3;
    std::printf("| %s | %.1f | %.0f | %.1f | %s |\n", name.c_str(), s * 1e3, double(n) / s, tflops,
                peak > 0 ? (std::to_string(int(std::round(100 * flops / s / peak))) + "%").c_str() : "n/a");
    json += ",\"" + name.substr(0, name.find(' ')) + "_ms\":" + std::to_string(s * 1e3);
    if (name.rfind("MetaPO", 0) == 0 && dpo_ms > 0) {
      std::printf("\nMetaPO / DPO step time: %.2f\n", s * 1e3 / dpo_ms);
      json += ",\"metapo_over_dpo\":" + std::to_string(s * 1e3 / dpo_ms);
    }
  }
  std::string att = where == Device::CUDA ? cuda::cudnn_attention_status() : "cpu";
  std::printf("\nattention: %s\n", att.c_str());
  std::replace(att.begin(), att.end(), '"', '\'');  // a JSON string
  json += ",\"attention\":\"" + att + "\"";
  std::printf("%s,\"peak_tflops\":%.0f,\"train_flops\":%.4g}\n", json.c_str(), peak / 1e12, flops);
  if (ctx.blas) cuda::blas_destroy(ctx.blas);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_gpu_model: error: %s\n", e.what());
  return 1;
}
