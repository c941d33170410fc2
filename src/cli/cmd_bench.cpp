// metapo bench: times forward + backward of the summed next-token log-probs of B packed sequences of
// length T (the work of one DPO micro-batch without the pair loss). The last line is JSON.
// --ghost adds the MetaPO ghost products (DESIGN §6) to the backward, with a fixed random ĝ, so the
// extra cost of a meta step's training backward can be read off (with --profile: per operation).
// --device cuda runs it on the GPU (parameters, activations and gradients in device memory) and adds
// TFLOP/s and MFU against the card's dense bf16 peak; --precision bf16 stores parameters and
// activations in bf16 (on the GPU its GEMMs then run on the tensor cores).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <numeric>

#include <nlohmann/json.hpp>

#include "metapo/cli/commands.h"
#include "metapo/core/buffer.h"
#include "metapo/core/error.h"
#include "metapo/core/rng.h"
#include "metapo/core/timer.h"
#include "metapo/io/hf_model.h"
#include "metapo/model/init.h"
#include "metapo/model/llama.h"
#include "metapo/ops/ops.h"

namespace metapo::cli {

int cmd_bench(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo bench options");
  std::string model_dir, preset, recompute, device, precision;
  double peak_tflops = 0;
  int64_t T = 0, B = 0, R = 0;
  int steps = 0, warmup = 0;
  uint64_t seed = 0;
  desc.add_options()
    ("model", po::value(&model_dir), "model directory (Hugging Face layout)")
    ("preset", po::value(&preset), "or a preset (randomly initialized): tiny, bench-28m, gpu-1.3b, or an .ini path")
    ("seq-len", po::value(&T)->default_value(256), "tokens per sequence")
    ("batch", po::value(&B)->default_value(8), "sequences per packed micro-batch")
    ("steps", po::value(&steps)->default_value(5), "timed steps")
    ("warmup", po::value(&warmup)->default_value(2), "untimed steps first")
    ("seed", po::value(&seed)->default_value(0), "seed for the tokens and a preset's weights")
    ("targets", po::value(&R)->default_value(0),
     "scored tokens per sequence: only the last N rows predict a token (a DPO response); 0: all")
    ("ghost", po::bool_switch(), "also take ghost dot products with a random ghat in the backward (MetaPO)")
    ("profile", po::bool_switch(), "print the time per operation over the timed steps")
    ("recompute", po::value(&recompute)->default_value("none"), "activation recomputation: none, selective, full (as train --recompute)")
    ("device", po::value(&device)->default_value("cpu"), "where to run: cpu, cuda")
    ("precision", po::value(&precision)->default_value("fp32"), "parameter and activation storage: fp32, bf16")
    ("peak-tflops", po::value(&peak_tflops)->default_value(0),
     "the device's dense bf16 peak for MFU (0: from the card's name; H100/H200 989, A100 312)");
  po::variables_map vm;
  if (!parse_args("bench", "metapo bench (--model DIR | --preset NAME) [--seq-len T] [--batch B] [--steps S]",
                  desc, argc, argv, vm, ctx))
    return 0;
  MP_CHECK(model_dir.empty() != preset.empty(), "give exactly one of --model and --preset");
  MP_CHECK(T >= 2 && B >= 1 && steps >= 1 && warmup >= 0 && R >= 0,
           "need --seq-len >= 2, --batch >= 1, --steps >= 1, --warmup >= 0, --targets >= 0");
  MP_CHECK(peak_tflops >= 0, "--peak-tflops ", peak_tflops, " (must be >= 0)");
  MP_CHECK(R < T, "--targets ", R, " must be below --seq-len ", T, " (a sequence's first token predicts nothing before it)");
  const Device dev = parse_device(device);
  const Precision prec = parse_precision(precision);
  ops::require_device(dev);  // before loading anything
  ops::select_device(dev, ctx.topo.local_rank);

  {
    // The parameters, their working copy and the gradients (and ĝ with --ghost), before allocating any.
    const LlamaConfig shape = model_dir.empty() ? preset_config(preset) : load_hf_config(model_dir);
    check_fits_memory(double(param_count(shape)) * sizeof(float) * (vm["ghost"].as<bool>() ? 4 : 3),
                      str_cat(model_dir.empty() ? "--preset " + preset : "--model " + model_dir, ": the model"));
  }
  HfModel m;
  if (!model_dir.empty()) {
    m = load_hf_model(model_dir);
  } else {
    m.config = preset_config(preset);
    m.params = init_params(m.config, seed);
  }
  const LlamaConfig& c = m.config;
  if (dev == Device::CPU) {  // the kept activations of T·B tokens (docs/training.md's count), before allocating them
    const double n = double(T) * double(B), L = double(c.num_hidden_layers), C = double(c.hidden_size);
    const double per_layer = 4 * C + 2 + double(c.qkv_dim() + c.q_dim() + c.num_attention_heads) + 3 * double(c.intermediate_size);
    check_fits_memory(4 * n * (L * per_layer + 2 * C + 1 + double(c.vocab_size)),
                      str_cat("--seq-len ", T, " --batch ", B, ": the activations of ", int64_t(n), " tokens"));
  }
  const ops::DeviceContext dc(dev);
  const ops::Context& ox = dc.get();
  LlamaModel<float> model(c, nullptr, {}, ox);
  model.set_recompute(parse_recompute(recompute));
  model.set_precision(prec);
  PackedBatch b;
  for (int64_t s = 0; s < B; ++s) {
    Philox rng = make_rng(seed, 0, uint32_t(s), RngPurpose::Bench);
    std::vector<int32_t> seq(static_cast<size_t>(T));
    for (auto& t : seq) t = int32_t(rng.below(uint64_t(c.vocab_size)));
    b.add(seq);
  }
  std::vector<uint8_t> mask;  // token t+1 is scored when mask[t+1]: the last R tokens of each sequence
  if (R > 0)
    for (int64_t s = 0; s < B; ++s)
      for (int64_t t = 0; t < T; ++t) mask.push_back(t >= T - R ? 1 : 0);
  const std::vector<int32_t> targets = next_token_targets(b, R > 0 ? mask.data() : nullptr);
  const bool ghost = vm["ghost"].as<bool>();
  std::vector<float> ghat;
  std::vector<double> seq_dots;
  if (ghost) {
    Philox rng = make_rng(seed, 1, 0, RngPurpose::Bench);
    ghat.resize(m.params.size());
    for (float& x : ghat) x = float(rng.uniform() - 0.5);
  }
  std::vector<float> logp(size_t(b.n_tokens())), dlogp(size_t(b.n_tokens()), 1.0f);
  // Parameters, gradients, ĝ, log-probs and their upstream gradient on the device (on the CPU: host
  // memory, copied once).
  auto on_device = [&](const float* src, size_t n, Mem cat) {
    ops::DeviceArray<float> a(dev, cat);
    a.resize_for_overwrite(n);
    if (src) ops::to_device(ox, a.data(), src, n * sizeof(float));
    return a;
  };
  ops::DeviceArray<float> params = on_device(m.params.data(), m.params.size(), Mem::Params),
                          grads = on_device(nullptr, m.params.size(), Mem::Grads),
                          ghat_d = on_device(ghost ? ghat.data() : nullptr, ghost ? ghat.size() : 0, Mem::Grads),
                          logp_d = on_device(nullptr, logp.size(), Mem::Activations),
                          dlogp_d = on_device(dlogp.data(), dlogp.size(), Mem::Activations);
  const double flops = train_flops(c, b);
  double peak = peak_tflops * 1e12;
  const std::string card = ops::device_description(dev);
  if (peak == 0 && dev == Device::CUDA) peak = ops::bf16_peak_flops(card);

  const bool root = ctx.topo.is_root();
  if (root)
    std::printf("bench: %lld params, %lld x %lld tokens, %s, %s, %d threads, %.1f GFLOP/step%s\n",
                (long long)m.params.size(), (long long)B, (long long)T, card.c_str(), precision_name(prec).c_str(),
                ctx.threads, flops / 1e9, ghost ? " (without the ghost products)" : "");
  std::vector<double> times;
  for (int it = 0; it < warmup + steps; ++it) {
    model.profile().enabled = vm["profile"].as<bool>() && it >= warmup;
    Timer tm;
    model.forward(params.data(), b, targets.data(), logp_d.data());
    model.backward(params.data(), dlogp_d.data(), grads.data(), /*accumulate=*/false,
                   ghost ? ghat_d.data() : nullptr, ghost ? &seq_dots : nullptr);
    ops::synchronize(ox);
    const double s = tm.seconds();
    ops::to_host(ox, logp.data(), logp_d.data(), logp.size() * sizeof(float));
    const double obj = std::accumulate(logp.begin(), logp.end(), 0.0);
    if (it >= warmup) times.push_back(s);
    if (root)
      std::printf("%s %2d  %8.1f ms  %8.0f tokens/s  %6.1f GFLOP/s  objective %.4f\n",
                  it < warmup ? "warmup" : "step  ", it < warmup ? it : it - warmup, s * 1e3,
                  double(b.n_tokens()) / s, flops / s / 1e9, obj);
  }
  const double mean = std::accumulate(times.begin(), times.end(), 0.0) / double(times.size());
  if (root && dev != Device::CPU)
    std::printf("%s: %.1f TFLOP/s%s\n", card.c_str(), flops / mean / 1e12,
                peak > 0 ? (", MFU " + std::to_string(int(std::round(100 * flops / mean / peak))) + "% of the dense bf16 peak").c_str() : "");
  if (root && vm["profile"].as<bool>()) {
    double tot = 0;
    for (const auto& [name, sec] : model.profile().seconds) tot += sec;
    std::printf("%-22s %10s %6s\n", "operation", "ms/step", "share");
    for (const auto& [name, sec] : model.profile().seconds)
      std::printf("%-22s %10.1f %5.1f%%\n", name.c_str(), sec / steps * 1e3, 100 * sec / tot);
  }
  if (root) {
    nlohmann::json j;
    j["tokens_per_s"] = double(b.n_tokens()) / mean;
    j["ms_per_step"] = mean * 1e3;
    j["gflops_per_s"] = flops / mean / 1e9;
    j["threads"] = ctx.threads;
    j["ghost"] = ghost;
    j["activation_mb"] = double(model.activation_bytes()) / (1 << 20);
    j["recompute"] = recompute_name(model.recompute());
    j["device"] = card;
    j["precision"] = precision_name(prec);
    j["attention"] = ops::attention_description(model.context());
    if (dev != Device::CPU) {
      j["tflops_per_s"] = flops / mean / 1e12;
      if (peak > 0) j["mfu"] = flops / mean / peak;
    }
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

}  // namespace metapo::cli
