// Generation with the KV cache against the training forward (LlamaModel<float>::forward re-run on
// the whole prefix at every step), plus sampling determinism, nucleus sampling, EOS and length limits.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "metapo/core/error.h"
#include "metapo/model/generate.h"
#include "metapo/model/init.h"
#include "metapo/model/llama.h"
#include "test_util.h"

namespace metapo {
namespace {

struct Variant {
  const char* name;
  LlamaConfig cfg;
};

// Tiny shapes; one variant runs past max_position_embeddings (RoPE just continues).
std::vector<Variant> variants() {
  LlamaConfig a;  // Llama, grouped-query, untied head
  a.vocab_size = 48, a.hidden_size = 32, a.intermediate_size = 64, a.num_hidden_layers = 2;
  a.num_attention_heads = 4, a.num_key_value_heads = 2, a.head_dim = 8;
  a.max_position_embeddings = 16, a.rms_norm_eps = 1e-5;
  LlamaConfig b = a;  // Qwen2-style: q/k/v bias, tied head, MHA, llama3 RoPE scaling
  b.model_type = "qwen2", b.attention_bias = true, b.tie_word_embeddings = true;
  b.num_key_value_heads = 4, b.max_position_embeddings = 64;
  b.rope_scaling.type = "llama3", b.rope_scaling.factor = 8, b.rope_scaling.original_max_position_embeddings = 8;
  LlamaConfig m = a;  // multi-query, odd hidden size (exercises the row kernel's tails)
  m.hidden_size = 36, m.intermediate_size = 50, m.num_attention_heads = 2, m.num_key_value_heads = 1;
  m.head_dim = 10, m.vocab_size = 37, m.max_position_embeddings = 64;
  for (LlamaConfig* c : {&a, &b, &m}) c->validate("test config");
  return {{"llama_gqa", a}, {"qwen2_tied_bias", b}, {"mqa_odd", m}};
}

// std 0.3 (not HF's 0.02): the next-token distribution is far from flat, so argmax is well defined.
std::vector<float> params_for(const LlamaConfig& c) { return init_params(c, 7, 0.3); }

std::vector<std::vector<int32_t>> test_prompts(int64_t V) {
  std::vector<std::vector<int32_t>> p;
  for (int len : {1, 3, 7, 12, 5}) {
    std::vector<int32_t> s;
    for (int t = 0; t < len; ++t) s.push_back(int32_t((17 * t + 5 * len + 3) % V));
    p.push_back(s);
  }
  return p;
}

std::vector<uint32_t> iota_ids(size_t n, uint32_t first = 100) {
  std::vector<uint32_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = first + uint32_t(i);
  return ids;
}

// log p(v | prefix) for every v, from the training forward: V copies of prefix + [v], each scored
// at its last row. This is the reference the cache must reproduce.
std::vector<double> full_logp(LlamaModel<float>& model, const float* params,
                              const std::vector<int32_t>& prefix) {
  const int64_t V = model.config().vocab_size, L = int64_t(prefix.size());
  PackedBatch b;
  for (int64_t v = 0; v < V; ++v) {
    std::vector<int32_t> s = prefix;
    s.push_back(int32_t(v));
    b.add(s);
  }
  const std::vector<int32_t> tg = next_token_targets(b, nullptr);
  std::vector<float> logp(size_t(b.n_tokens()));
  model.forward(params, b, tg.data(), logp.data());
  std::vector<double> out(static_cast<size_t>(V));
  for (int64_t v = 0; v < V; ++v) out[v] = logp[size_t(b.cu_seqlens[v] + L - 1)];
  return out;
}

std::vector<double> log_softmax(const float* z, int64_t V) {
  double mx = -std::numeric_limits<double>::infinity(), s = 0;
  for (int64_t v = 0; v < V; ++v) mx = std::max(mx, double(z[v]));
  for (int64_t v = 0; v < V; ++v) s += std::exp(double(z[v]) - mx);
  std::vector<double> out(static_cast<size_t>(V));
  for (int64_t v = 0; v < V; ++v) out[v] = double(z[v]) - mx - std::log(s);
  return out;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

class GenerateVsForward : public ::testing::TestWithParam<int> {};

TEST_P(GenerateVsForward, GreedyEqualsFullForwardArgmax) {
  const Variant var = variants()[size_t(GetParam())];
  const LlamaConfig& c = var.cfg;
  const std::vector<float> params = params_for(c);
  const auto prompts = test_prompts(c.vocab_size);
  GenerateOptions opt;
  opt.max_new_tokens = 14;  // 12 + 14 - 1 > 16: variant llama_gqa runs past max_position_embeddings
  const auto gen = generate(c, params.data(), prompts, iota_ids(prompts.size()), opt);
  LlamaModel<float> model(c);
  double min_gap = 1e30;  // smallest top-1 vs top-2 log-prob gap met: how robust the argmax is
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(int64_t(gen[i].size()), opt.max_new_tokens) << var.name << " prompt " << i;
    std::vector<int32_t> prefix = prompts[i];
    for (size_t k = 0; k < gen[i].size(); ++k) {
      const std::vector<double> lp = full_logp(model, params.data(), prefix);
      const int32_t want = int32_t(std::max_element(lp.begin(), lp.end()) - lp.begin());
      std::vector<double> sorted = lp;
      std::sort(sorted.rbegin(), sorted.rend());
      min_gap = std::min(min_gap, sorted[0] - sorted[1]);
      ASSERT_EQ(gen[i][k], want) << var.name << " prompt " << i << " new token " << k;
      prefix.push_back(gen[i][k]);
    }
  }
  std::printf("[info] %s: smallest top-1/top-2 log-prob gap %.3e\n", var.name, min_gap);
  // A greedy path that keeps repeating one token would test little.
  std::vector<int32_t> all;
  for (const auto& g : gen) all.insert(all.end(), g.begin(), g.end());
  std::sort(all.begin(), all.end());
  EXPECT_GT(std::unique(all.begin(), all.end()) - all.begin(), 4) << var.name;
}

TEST_P(GenerateVsForward, CachedLogitsMatchFullForward) {
  const Variant var = variants()[size_t(GetParam())];
  const LlamaConfig& c = var.cfg;
  const int64_t V = c.vocab_size;
  const std::vector<float> params = params_for(c);
  const auto prompts = test_prompts(V);
  LlamaModel<float> model(c);
  KvCacheDecoder dec(c, params.data());
  const int64_t steps = 9;
  std::vector<int64_t> handles;
  std::vector<std::vector<int32_t>> prefix = prompts;
  std::vector<float> logits(static_cast<size_t>(V));
  double err = 0;
  for (const auto& p : prompts) {
    handles.push_back(dec.add(p, steps, logits.data()));
    err = std::max(err, max_abs_diff(log_softmax(logits.data(), V), full_logp(model, params.data(), p)));
  }
  EXPECT_ERR_LT(err, 1e-4, test::errname(std::string(var.name) + " prefill log-softmax vs forward"));
  // Decode arbitrary (not greedy) tokens, all sequences in one batch, then only some of them.
  err = 0;
  for (int64_t k = 0; k < steps; ++k) {
    std::vector<int64_t> hs;
    std::vector<int32_t> toks;
    std::vector<size_t> which;
    for (size_t i = 0; i < prompts.size(); ++i) {
      if (k >= 5 && i % 2 == 1) continue;
      hs.push_back(handles[i]);
      toks.push_back(int32_t((31 * k + 7 * int64_t(i) + 1) % V));
      which.push_back(i);
    }
    logits.resize(hs.size() * size_t(V));
    dec.step(hs, toks, logits.data());
    for (size_t r = 0; r < hs.size(); ++r) {
      prefix[which[r]].push_back(toks[r]);
      EXPECT_EQ(dec.length(hs[r]), int64_t(prefix[which[r]].size()));
      err = std::max(err, max_abs_diff(log_softmax(logits.data() + r * size_t(V), V),
                                       full_logp(model, params.data(), prefix[which[r]])));
    }
  }
  EXPECT_ERR_LT(err, 1e-4, test::errname(std::string(var.name) + " decode log-softmax vs forward"));
  for (int64_t h : handles) dec.remove(h);
  EXPECT_EQ(dec.cache_bytes(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Variants, GenerateVsForward, ::testing::Values(0, 1, 2),
                         [](const ::testing::TestParamInfo<int>& i) {
                           return std::string(variants()[size_t(i.param)].name);
                         });

GenerateOptions sampled(uint64_t seed) {
  GenerateOptions o;
  o.greedy = false, o.temperature = 0.9, o.top_p = 0.95, o.seed = seed, o.max_new_tokens = 10;
  return o;
}

TEST(Generate, SamplingIsDeterministicAndBatchInvariant) {
  const LlamaConfig c = variants()[0].cfg;
  const std::vector<float> params = params_for(c);
  const auto prompts = test_prompts(c.vocab_size);
  const auto ids = iota_ids(prompts.size());
  const auto a = generate(c, params.data(), prompts, ids, sampled(11));
  EXPECT_EQ(a, generate(c, params.data(), prompts, ids, sampled(11)));
  // One prompt at a time, and two at a time: the same tokens per prompt.
  for (int64_t mb : {1, 2}) {
    GenerateOptions o = sampled(11);
    o.max_batch = mb;
    EXPECT_EQ(a, generate(c, params.data(), prompts, ids, o)) << "max_batch " << mb;
  }
  // Another selection and order of the prompts (as another rank count would give): ids travel with
  // their prompts, so each prompt's sample is the same.
  std::vector<std::vector<int32_t>> sub;
  std::vector<uint32_t> sub_ids;
  for (size_t i : {4u, 1u, 3u}) sub.push_back(prompts[i]), sub_ids.push_back(ids[i]);
  const auto b = generate(c, params.data(), sub, sub_ids, sampled(11));
  EXPECT_EQ(b[0], a[4]);
  EXPECT_EQ(b[1], a[1]);
  EXPECT_EQ(b[2], a[3]);
  // The same prompt under two ids, and another seed, draw differently; sampling is not greedy.
  EXPECT_NE(generate(c, params.data(), {prompts[3]}, {1}, sampled(11))[0],
            generate(c, params.data(), {prompts[3]}, {2}, sampled(11))[0]);
  EXPECT_NE(a, generate(c, params.data(), prompts, ids, sampled(12)));
  GenerateOptions g;
  g.max_new_tokens = 10;
  EXPECT_NE(a, generate(c, params.data(), prompts, ids, g));
}

TEST(Generate, TinyTopPIsGreedy) {
  const LlamaConfig c = variants()[1].cfg;
  const std::vector<float> params = params_for(c);
  const auto prompts = test_prompts(c.vocab_size);
  GenerateOptions g;
  g.max_new_tokens = 10;
  GenerateOptions s = sampled(3);
  s.top_p = 1e-9, s.temperature = 1.7;
  EXPECT_EQ(generate(c, params.data(), prompts, iota_ids(prompts.size()), s),
            generate(c, params.data(), prompts, iota_ids(prompts.size()), g));
}

TEST(Generate, StopsAfterEosAndAtMaxNewTokens) {
  const LlamaConfig c = variants()[0].cfg;
  const std::vector<float> params = params_for(c);
  const auto prompts = test_prompts(c.vocab_size);
  const auto ids = iota_ids(prompts.size());
  GenerateOptions o;
  o.max_new_tokens = 12;
  const auto full = generate(c, params.data(), prompts, ids, o);
  // EOS = the token prompt 0 produces third: prompt 0 then stops right after it, included.
  o.eos_id = full[0][2];
  const auto cut = generate(c, params.data(), prompts, ids, o);
  int64_t stopped = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto it = std::find(full[i].begin(), full[i].end(), int32_t(o.eos_id));
    const std::vector<int32_t> want(full[i].begin(), it == full[i].end() ? it : it + 1);
    EXPECT_EQ(cut[i], want) << "prompt " << i;
    stopped += it != full[i].end();
  }
  EXPECT_LE(cut[0].size(), 3u);
  EXPECT_GE(stopped, 1);
  // More end tokens (a chat model's end of turn beside its EOS): a sequence stops after whichever
  // comes first.
  GenerateOptions m = o;
  m.eos_id = -1, m.more_eos_ids = {full[1][1], o.eos_id};
  const auto cut2 = generate(c, params.data(), prompts, ids, m);
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto it = std::find_if(full[i].begin(), full[i].end(), [&](int32_t t) {
      return t == int32_t(m.more_eos_ids[0]) || t == int32_t(m.more_eos_ids[1]);
    });
    const std::vector<int32_t> want(full[i].begin(), it == full[i].end() ? it : it + 1);
    EXPECT_EQ(cut2[i], want) << "prompt " << i;
  }
  EXPECT_LE(cut2[1].size(), 2u);
  // Length limits: exactly max_new_tokens without EOS; 0 gives empty completions.
  for (int64_t n : {0, 1, 5}) {
    GenerateOptions l;
    l.max_new_tokens = n;
    const auto r = generate(c, params.data(), prompts, ids, l);
    ASSERT_EQ(r.size(), prompts.size());
    for (size_t i = 0; i < r.size(); ++i) {
      ASSERT_EQ(int64_t(r[i].size()), n);
      EXPECT_TRUE(std::equal(r[i].begin(), r[i].end(), full[i].begin()));
    }
  }
}

TEST(Generate, ChooseToken) {
  // Greedy: the lowest index among tied maxima.
  const float tied[5] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
  GenerateOptions g;
  EXPECT_EQ(choose_token(tied, 5, g, 0, 0), 1);
  // Sampling frequencies follow softmax(z / T); top_p keeps the smallest head of mass >= top_p.
  const float z[4] = {std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)};
  for (double top_p : {1.0, 0.5}) {
    GenerateOptions s;
    s.greedy = false, s.top_p = top_p, s.seed = 9;
    std::vector<double> freq(4, 0);
    const int n = 40000;
    for (int i = 0; i < n; ++i) freq[size_t(choose_token(z, 4, s, uint64_t(i % 7), uint32_t(i)))] += 1.0 / n;
    const std::vector<double> want = top_p == 1.0 ? std::vector<double>{0.4, 0.3, 0.2, 0.1}
                                                   : std::vector<double>{0.4 / 0.7, 0.3 / 0.7, 0, 0};
    for (int v = 0; v < 4; ++v) EXPECT_NEAR(freq[v], want[v], 0.01) << "top_p " << top_p << " token " << v;
  }
  // A large, flat vocabulary with ties, whose nucleus holds hundreds of tokens (choose_token selects
  // the top k and grows k): the same token as sorting the whole vocabulary, for the documented draw.
  {
    const int64_t V = 3000;
    std::vector<float> big = test::randn<float>(size_t(V), 5, 0.5);
    for (int64_t v = 0; v < V; v += 7) big[size_t(v)] = 0.25f;  // exact ties
    GenerateOptions s;
    s.greedy = false, s.temperature = 1.3, s.top_p = 0.8, s.seed = 4;
    std::vector<double> p(static_cast<size_t>(V));
    const double mx = *std::max_element(big.begin(), big.end());
    for (int64_t v = 0; v < V; ++v) p[size_t(v)] = std::exp((double(big[size_t(v)]) - mx) / s.temperature);
    std::vector<int32_t> order(static_cast<size_t>(V));
    for (int64_t v = 0; v < V; ++v) order[size_t(v)] = int32_t(v);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
    double total = 0, mass = 0;
    for (double x : p) total += x;
    size_t kept = 0;
    while (kept < order.size() && mass < s.top_p * total) mass += p[size_t(order[kept++])];
    EXPECT_GT(kept, 500u);  // far beyond the first selection of 64
    for (uint32_t id = 0; id < 200; ++id) {
      Philox rng = make_rng(s.seed, 3, id, RngPurpose::Sample);
      const uint64_t hi = rng.next_u32() >> 5, lo = rng.next_u32() >> 6;
      const double u = (double(hi) * 67108864.0 + double(lo)) / 9007199254740992.0 * mass;
      double cum = 0;
      int32_t want = order[kept - 1];
      for (size_t k = 0; k < kept; ++k)
        if (u < (cum += p[size_t(order[k])])) {
          want = order[k];
          break;
        }
      ASSERT_EQ(choose_token(big.data(), V, s, 3, id), want) << "id " << id;
    }
  }
  // Temperature sharpens: at T = 0.05 the top token (p 0.4 vs 0.3) wins almost always.
  GenerateOptions cold;
  cold.greedy = false, cold.temperature = 0.05;
  int top = 0;
  for (uint32_t i = 0; i < 1000; ++i) top += choose_token(z, 4, cold, 0, i) == 0;
  EXPECT_GT(top, 990);
}

TEST(Generate, Errors) {
  LlamaConfig c = variants()[0].cfg;
  const std::vector<float> params = params_for(c);
  const auto expect_error = [&](const LlamaConfig& cfg, const std::vector<std::vector<int32_t>>& p,
                                const std::vector<uint32_t>& ids, const GenerateOptions& o,
                                const std::string& want) {
    try {
      generate(cfg, params.data(), p, ids, o);
      ADD_FAILURE() << "no error, expected: " << want;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  GenerateOptions o;
  expect_error(c, {{1, 2}}, {0, 1}, o, "1 prompts but 2 ids");
  expect_error(c, {{}}, {0}, o, "empty prompt");
  expect_error(c, {{1, 48}}, {0}, o, "token id 48");
  GenerateOptions t = sampled(1);
  t.temperature = 0;
  expect_error(c, {{1}}, {0}, t, "temperature must be > 0");
  for (double p : {0.0, 1.5}) {
    t = sampled(1);
    t.top_p = p;
    expect_error(c, {{1}}, {0}, t, "top_p must be in (0, 1]");
  }
  o.max_new_tokens = -1;
  expect_error(c, {{1}}, {0}, o, "max_new_tokens must be >= 0");
  // Sliding window: prompt 4 + 6 new tokens feeds 9 tokens; a window of 8 refuses, 9 accepts.
  c.sliding_window = 8;
  o.max_new_tokens = 6;
  expect_error(c, {{1, 2, 3, 4}}, {0}, o, "sliding_window (8)");
  c.sliding_window = 9;
  EXPECT_EQ(generate(c, params.data(), {{1, 2, 3, 4}}, {0}, o)[0].size(), 6u);
}

}  // namespace
}  // namespace metapo
