// metapo bench: times forward + backward of the summed next-token log-probs of B packed sequences of
// length T (the work of one DPO micro-batch without the pair loss). The last line is JSON.
// --ghost adds the MetaPO ghost products (DESIGN §6) to the backward, with a fixed random ĝ, so the
// extra cost of a meta step's training backward can be read off (with --profile: per operation).
#include <algorithm>
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

namespace metapo::cli {

int cmd_bench(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo bench options");
  std::string model_dir, preset, recompute;
  int64_t T = 0, B = 0, R = 0;
  int steps = 0, warmup = 0;
  uint64_t seed = 0;
  desc.add_options()
    ("model", po::value(&model_dir), "model directory (Hugging Face layout)")
    ("preset", po::value(&preset), "or a preset (randomly initialized): tiny, bench-28m, or an .ini path")
    ("seq-len", po::value(&T)->default_value(256), "tokens per sequence")
    ("batch", po::value(&B)->default_value(8), "sequences per packed micro-batch")
    ("steps", po::value(&steps)->default_value(5), "timed steps")
    ("warmup", po::value(&warmup)->default_value(2), "untimed steps first")
    ("seed", po::value(&seed)->default_value(0), "seed for the tokens and a preset's weights")
    ("targets", po::value(&R)->default_value(0),
     "scored tokens per sequence: only the last N rows predict a token (a DPO response); 0: all")
    ("ghost", po::bool_switch(), "also take ghost dot products with a random ghat in the backward (MetaPO)")
    ("profile", po::bool_switch(), "print the time per operation over the timed steps")
    ("recompute", po::value(&recompute)->default_value("none"), "activation recomputation: none, selective, full (as train --recompute)");
  po::variables_map vm;
  if (!parse_args("bench", "metapo bench (--model DIR | --preset NAME) --seq-len T --batch B --steps S",
                  desc, argc, argv, vm, ctx))
    return 0;
  MP_CHECK(model_dir.empty() != preset.empty(), "metapo bench: give exactly one of --model and --preset");
  MP_CHECK(T >= 2 && B >= 1 && steps >= 1 && warmup >= 0 && R >= 0,
           "metapo bench: need --seq-len >= 2, --batch >= 1, --steps >= 1, --warmup >= 0, --targets >= 0");

  HfModel m;
  if (!model_dir.empty()) {
    m = load_hf_model(model_dir);
  } else {
    m.config = preset_config(preset);
    m.params = init_params(m.config, seed);
  }
  const LlamaConfig& c = m.config;
  LlamaModel<float> model(c);
  model.set_recompute(parse_recompute(recompute));
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
  Buffer<float> grads(m.params.size());
  const double flops = train_flops(c, b);

  const bool root = ctx.topo.is_root();
  if (root)
    std::printf("bench: %lld params, %lld x %lld tokens, %d threads, %.1f GFLOP/step%s\n",
                (long long)m.params.size(), (long long)B, (long long)T, ctx.threads, flops / 1e9,
                ghost ? " (without the ghost products)" : "");
  std::vector<double> times;
  for (int it = 0; it < warmup + steps; ++it) {
    model.profile().enabled = vm["profile"].as<bool>() && it >= warmup;
    Timer tm;
    model.forward(m.params.data(), b, targets.data(), logp.data());
    model.backward(m.params.data(), dlogp.data(), grads.data(), /*accumulate=*/false,
                   ghost ? ghat.data() : nullptr, ghost ? &seq_dots : nullptr);
    const double s = tm.seconds();
    const double obj = std::accumulate(logp.begin(), logp.end(), 0.0);
    if (it >= warmup) times.push_back(s);
    if (root)
      std::printf("%s %2d  %8.1f ms  %8.0f tokens/s  %6.1f GFLOP/s  objective %.4f\n",
                  it < warmup ? "warmup" : "step  ", it < warmup ? it : it - warmup, s * 1e3,
                  double(b.n_tokens()) / s, flops / s / 1e9, obj);
  }
  const double mean = std::accumulate(times.begin(), times.end(), 0.0) / double(times.size());
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
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

}  // namespace metapo::cli
