// Generation on the GPU against generation on the CPU (model/generate.h): the same KvCacheDecoder and
// generate() code through the ops seam, one context on Device::CPU (kernels/cpu) and one on Device::CUDA
// (kernels/cuda: the decode step's linear_rows and decode_attention among them), the same parameters and
// prompts, on the tiny preset's shape. Checks:
//   - the logits of every prefill and decode step, both sides fed the same tokens (the CPU's greedy
//     ones), against the CPU's;
//   - greedy generate(): the same tokens on both sides (the CPU's smallest top-1 / top-2 logit gap is
//     printed: a mismatch where that gap is far above the logits' error is a bug, not rounding);
//   - the GPU's batch invariance, as the CPU decoder guarantees it: each prompt decoded alone and all
//     of them together give bit-identical logits, and generate() with max_batch 1 and 8 the same tokens;
//   - the GPU run twice: bit-identical logits.
// Prints one table; exit 0 when every check is within its tolerance, 1 when one is not, 77 (CTest:
// skipped) without a CUDA device. `--harness-on-cpu` runs the "GPU" side on the CPU too, where every
// check must come out exactly 0: the harness itself checked, here and in CI (CTest
// gpu.generate_harness). Links the model, generation, the ops dispatch, both backends and the CUDA
// runtime, nothing else (no MPI, HDF5, Boost or BLAS: tests/gpu/naive_blas).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "metapo/kernels/cuda.h"
#include "metapo/model/config.h"
#include "metapo/model/generate.h"
#include "metapo/model/layout.h"
#include "metapo/ops/ops.h"
#include "report.h"
#include "shapes.h"

using namespace metapo;
using std::vector;

namespace {

Report report;
bool harness = false;  // both sides on the CPU: every error must be 0
void record(const std::string& c, double err, double tol) { report.record(c, err, harness ? 0.0 : tol); }

// Logits [prompt][position][V]: position 0 from the prefill, k > 0 from decode step k - 1.
using Logits = vector<vector<vector<float>>>;

// max over every row of max |a - b|, relative to the largest |b|.
double rel_err(const Logits& a, const Logits& b) {
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < b.size(); ++i)
    for (size_t k = 0; k < b[i].size(); ++k)
      for (size_t v = 0; v < b[i][k].size(); ++v) {
        num = std::max(num, std::abs(double(a[i][k][v]) - double(b[i][k][v])));
        den = std::max(den, std::abs(double(b[i][k][v])));
      }
  return num / den;
}

// Positions where a and b differ in any bit, over the prompts in `which`.
double mismatched_bits(const Logits& a, const Logits& b, const vector<size_t>& which) {
  double m = 0;
  for (size_t i : which)
    for (size_t k = 0; k < b[i].size(); ++k)
      for (size_t v = 0; v < b[i][k].size(); ++v) m += std::memcmp(&a[i][k][v], &b[i][k][v], sizeof(float)) != 0;
  return m;
}

// Prompts of several lengths (1 to 21 tokens), tokens in [3, V).
vector<vector<int32_t>> make_prompts(int64_t V, uint32_t seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<int32_t> tok(3, int32_t(V) - 1);
  vector<vector<int32_t>> p;
  for (int len : {1, 4, 9, 21, 2, 13, 6, 17}) {
    vector<int32_t> s(static_cast<size_t>(len));
    for (int32_t& t : s) t = tok(g);
    p.push_back(s);
  }
  return p;
}

// One device's context and its copy of the parameters (the host vector itself on the CPU).
struct Side {
  std::unique_ptr<ops::DeviceContext> owner;  // the CUDA context (null on the CPU)
  ops::Context ctx;
  ops::DeviceArray<float> dev_params;
  const float* params = nullptr;
  Side(Device d, const vector<float>& host) : dev_params(d, Mem::Params) {
    if (d == Device::CPU) {
      params = host.data();
      return;
    }
    owner = std::make_unique<ops::DeviceContext>(d);
    ctx = owner->get();
    dev_params.resize_for_overwrite(host.size());
    ops::to_device(ctx, dev_params.data(), host.data(), host.size() * sizeof(float));
    params = dev_params.data();
  }
};

// The decoder on one side over the prompts in `which`: each prefilled (its first row of logits), then
// `steps` decode steps with all of them in one batch, sequence i fed feed[i][k] at step k.
Logits drive(const LlamaConfig& c, const Side& s, const vector<vector<int32_t>>& prompts,
             const vector<vector<int32_t>>& feed, int64_t steps, const vector<size_t>& which) {
  const size_t V = size_t(c.vocab_size);
  KvCacheDecoder dec(c, s.params, {}, s.ctx);
  Logits out(prompts.size());
  vector<int64_t> handles;
  vector<float> z(V);
  for (size_t i : which) {
    handles.push_back(dec.add(prompts[i], steps, z.data()));
    out[i].push_back(z);
  }
  for (int64_t k = 0; k < steps; ++k) {
    vector<int32_t> toks;
    for (size_t i : which) toks.push_back(feed[i][size_t(k)]);
    z.resize(which.size() * V);
    dec.step(handles, toks, z.data());
    for (size_t r = 0; r < which.size(); ++r)
      out[which[r]].emplace_back(z.begin() + long(r * V), z.begin() + long((r + 1) * V));
  }
  for (int64_t h : handles) dec.remove(h);
  return out;
}

// Per row, the gap between the largest and the second largest logit, relative to the largest |logit|
// of all rows (the scale of rel_err): how far from a tie each greedy choice of the CPU is.
vector<double> top2_gaps(const Logits& z) {
  double scale = 1e-30;
  for (const auto& rows : z)
    for (const auto& r : rows)
      for (float x : r) scale = std::max(scale, double(std::abs(x)));
  vector<double> gaps;
  for (const auto& rows : z)
    for (const auto& r : rows) {
      vector<float> s = r;
      std::partial_sort(s.begin(), s.begin() + 2, s.end(), std::greater<float>());
      gaps.push_back((double(s[0]) - double(s[1])) / scale);
    }
  return gaps;
}

void check_shape(const std::string& name, const LlamaConfig& c, Device gpu_device) {
  const ParamLayout lay(c);
  std::mt19937 g(8);
  // std 0.3 (not HF's 0.02), as tests/test_generate.cpp: the next-token distribution is far from flat,
  // so the greedy path is well defined; norm weights near 1.
  std::normal_distribution<float> d(0.0f, 0.3f);
  vector<float> params(lay.total());
  for (float& x : params) x = d(g);
  for (const TensorEntry& e : lay.tensors())
    if (e.shape.size() == 1)
      for (size_t i = 0; i < e.numel; ++i) params[e.offset + i] = 1.0f + 0.1f * params[e.offset + i];
  const Side cpu(Device::CPU, params), gpu(gpu_device, params);
  const vector<vector<int32_t>> prompts = make_prompts(c.vocab_size, 6);
  vector<uint32_t> ids(prompts.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = uint32_t(100 + i);
  const int64_t steps = 24;
  vector<size_t> all(prompts.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;

  // Greedy generation on both sides.
  GenerateOptions opt;
  opt.max_new_tokens = steps + 1;
  opt.max_batch = 8;
  const auto tok_cpu = generate(c, cpu.params, prompts, ids, opt, {}, cpu.ctx);
  const auto tok_gpu = generate(c, gpu.params, prompts, ids, opt, {}, gpu.ctx);
  double mism = 0;
  for (size_t i = 0; i < prompts.size(); ++i)
    for (size_t k = 0; k < tok_cpu[i].size(); ++k) mism += k >= tok_gpu[i].size() || tok_gpu[i][k] != tok_cpu[i][k];
  record(name + ": greedy generate, mismatched tokens", mism, 0);
  vector<int32_t> distinct;
  for (const auto& t : tok_cpu) distinct.insert(distinct.end(), t.begin(), t.end());
  std::sort(distinct.begin(), distinct.end());
  const auto n_distinct = std::unique(distinct.begin(), distinct.end()) - distinct.begin();
  std::printf("%s: %zu greedy tokens, %ld distinct\n", name.c_str(), prompts.size() * size_t(opt.max_new_tokens),
              long(n_distinct));
  record(name + ": fewer than 8 distinct greedy tokens (a path repeating a few would test little)",
         n_distinct < 8 ? 1 : 0, 0);
  GenerateOptions one = opt;
  one.max_batch = 1;
  double mism1 = 0;
  const auto tok_gpu1 = generate(c, gpu.params, prompts, ids, one, {}, gpu.ctx);
  for (size_t i = 0; i < prompts.size(); ++i) mism1 += tok_gpu1[i] != tok_gpu[i];
  record(name + ": GPU greedy generate, max_batch 1 vs 8, mismatched prompts", mism1, 0);

  // Logits of every step, both sides fed the CPU's greedy tokens.
  const Logits z_cpu = drive(c, cpu, prompts, tok_cpu, steps, all);
  const Logits z_gpu = drive(c, gpu, prompts, tok_cpu, steps, all);
  // fp32 in another summation order in every op (cuBLASLt's prefill GEMMs, the warps' dot products,
  // block trees, expf) through 4 layers: test_gpu_model holds the model's log-probs to 1e-4.
  const double tol_logits = 1e-4;
  record(name + ": logits of every prefill and decode step", rel_err(z_gpu, z_cpu), tol_logits);
  // The token check above means something only where no greedy choice is within rounding of a tie: the
  // seeds (parameters 8, prompts 6) were picked for that, and this keeps them honest (on the CPU's
  // logits, so the harness checks it too). Smallest gap with them: 2.4e-3 of the largest |logit|.
  const vector<double> gaps = top2_gaps(z_cpu);
  std::printf("%s: CPU's smallest top-1/top-2 logit gap over %zu rows: %.3e of the largest |logit|\n", name.c_str(),
              gaps.size(), *std::min_element(gaps.begin(), gaps.end()));
  double near = 0;
  for (double gp : gaps) near += gp < 10 * tol_logits;
  record(name + ": CPU rows with a top-1/top-2 logit gap under 10x the logits' tolerance", near, 0);
  record(name + ": GPU rerun, mismatched logit bits", mismatched_bits(drive(c, gpu, prompts, tok_cpu, steps, all), z_gpu, all),
         0);
  // Batch invariance on the GPU: each prompt alone, and the odd ones as a batch of their own.
  double alone = 0;
  for (size_t i = 0; i < prompts.size(); ++i)
    alone += mismatched_bits(drive(c, gpu, prompts, tok_cpu, steps, {i}), z_gpu, {i});
  record(name + ": GPU batch invariance, each prompt alone vs all, mismatched logit bits", alone, 0);
  const vector<size_t> odd = {1, 3, 5, 7};
  record(name + ": GPU batch invariance, 4 prompts vs all, mismatched logit bits",
         mismatched_bits(drive(c, gpu, prompts, tok_cpu, steps, odd), z_gpu, odd), 0);
}

}  // namespace

int main(int argc, char** argv) {
  if (const int rc = begin_gpu_test("test_gpu_generate", "generation on CUDA vs on the CPU (fp32)", argc, argv, harness))
    return rc;
  int failed = 0;
  try {
    check_shape("tiny", gpu_shape("tiny"), harness ? Device::CPU : Device::CUDA);
  } catch (const std::exception& e) {  // one line and a failed table, not std::terminate
    std::printf("tiny: error: %s\n", e.what());
    ++failed;
  }
  failed += report.print("check");
  std::printf("\n%s\n", failed ? "test_gpu_generate: FAILED" : "test_gpu_generate: all checks within tolerance");
  return failed ? 1 : 0;
}
