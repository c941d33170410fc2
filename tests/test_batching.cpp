// Training-time truncation and token-budget micro-batches: --max-length cuts every case the way
// tools/prepare_data.py does (tests/data/truncation_cases.json, made by tools/make_truncation_cases.py
// from its truncate()); micro_batches and the balanced dp_share keep every example exactly once,
// respect the budget, and are pure functions of their input.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <random>

#include <nlohmann/json.hpp>

#include "metapo/core/error.h"
#include "metapo/data/dataset.h"
#include "metapo/train/pairs.h"

using namespace metapo;

namespace {

std::vector<int32_t> ints(const nlohmann::json& j) { return j.get<std::vector<int32_t>>(); }

PairSplit one_pair(const std::vector<int32_t>& p, const std::vector<int32_t>& c, const std::vector<int32_t>& r) {
  PairSplit s;
  s.prompt.push(p), s.chosen.push(c), s.rejected.push(r);
  s.sample_id = {41};
  return s;
}

}  // namespace

TEST(Truncation, CutsEveryCaseAsPrepareDataDoes) {
  std::ifstream f(std::string(METAPO_TEST_DATA) + "/truncation_cases.json");
  ASSERT_TRUE(f) << "tests/data/truncation_cases.json missing (python3 tools/make_truncation_cases.py)";
  const nlohmann::json cases = nlohmann::json::parse(f)["cases"];
  ASSERT_GE(cases.size(), 100u);
  int refused = 0, cut = 0;
  for (size_t k = 0; k < cases.size(); ++k) {
    const nlohmann::json& c = cases[k];
    PairSplit s = one_pair(ints(c["prompt"]), ints(c["chosen"]), ints(c["rejected"]));
    Truncation t;
    t.max_length = c["max_length"], t.max_prompt_length = c["max_prompt_length"];
    t.keep_end = c["truncation_mode"] == "keep_end";
    if (c["refused"].get<bool>()) {
      try {
        truncate_pairs(s, t, "d.h5: /train");
        ADD_FAILURE() << "case " << k << ": not refused";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("d.h5: /train: pair 0 (sample_id 41)"), std::string::npos) << e.what();
      }
      ++refused;
      continue;
    }
    const std::vector<int64_t> changed = truncate_pairs(s, t, "d.h5: /train");
    const nlohmann::json& w = c["want"];
    EXPECT_EQ(s.prompt.item(0), ints(w["prompt"])) << "case " << k;
    EXPECT_EQ(s.chosen.item(0), ints(w["chosen"])) << "case " << k;
    EXPECT_EQ(s.rejected.item(0), ints(w["rejected"])) << "case " << k;
    const bool same = w["prompt"] == c["prompt"] && w["chosen"] == c["chosen"] && w["rejected"] == c["rejected"];
    EXPECT_EQ(changed.size(), same ? 0u : 1u) << "case " << k;
    cut += !same;
  }
  EXPECT_GT(refused, 0);
  EXPECT_GT(cut, 20);  // the fixture exercises the cuts, not just the pass-through
}

TEST(Truncation, SftCutsTheAnswerAndLeavesShortExamples) {
  SftSplit s;
  s.prompt.push({1, 2, 3, 4}), s.answer.push({5, 6, 7, 8, 9});
  s.prompt.push({1, 2}), s.answer.push({3});
  s.sample_id = {0, 1};
  Truncation t;
  t.max_length = 6, t.max_prompt_length = 3, t.keep_end = false;
  EXPECT_EQ(truncate_sft(s, t, "d.h5: /sft"), 1);
  EXPECT_EQ(s.prompt.item(0), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(s.answer.item(0), (std::vector<int32_t>{5, 6, 7}));
  EXPECT_EQ(s.prompt.item(1), (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(s.answer.item(1), (std::vector<int32_t>{3}));
}

TEST(MicroBatches, PairCountsKeepTheOrder) {
  const std::vector<int64_t> idx{9, 4, 7, 1, 0};
  const auto mb = micro_batches(idx, [](int64_t) { return int64_t(1); }, MicroBatching{2, 0});
  ASSERT_EQ(mb.size(), 3u);
  EXPECT_EQ(mb[0], (std::vector<int64_t>{9, 4}));
  EXPECT_EQ(mb[1], (std::vector<int64_t>{7, 1}));
  EXPECT_EQ(mb[2], (std::vector<int64_t>{0}));
}

TEST(MicroBatches, TokenBudgetHoldsEveryExampleOnceLongestFirst) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 50; ++trial) {
    const int64_t budget = 64 + int64_t(rng() % 200);
    std::vector<int64_t> len(300), idx;
    for (int64_t& l : len) l = 1 + int64_t(rng() % uint32_t(budget));
    for (int64_t i = 0; i < int64_t(len.size()); i += 1 + int64_t(rng() % 3)) idx.push_back(i);
    const TokensOf tok = [&](int64_t i) { return len[size_t(i)]; };
    const auto mb = micro_batches(idx, tok, MicroBatching{8, budget});
    std::vector<int64_t> seen;
    int64_t prev = budget + 1, total = 0;
    for (const auto& m : mb) {
      ASSERT_FALSE(m.empty());
      int64_t used = 0;
      for (int64_t i : m) {
        used += tok(i);
        EXPECT_LE(tok(i), prev) << "not longest first";
        prev = tok(i);
        seen.push_back(i);
      }
      EXPECT_LE(used, budget);
      total += used;
    }
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(seen, idx);
    // Filled in order: each micro-batch but the last could not take the next example.
    for (size_t m = 0; m + 1 < mb.size(); ++m) {
      int64_t used = 0;
      for (int64_t i : mb[m]) used += tok(i);
      EXPECT_GT(used + tok(mb[m + 1].front()), budget);
    }
    // The same call gives the same cut (every stage and TP rank cuts alike).
    EXPECT_EQ(micro_batches(idx, tok, MicroBatching{8, budget}), mb);
  }
}

TEST(MicroBatches, BudgetRefusesAnExampleThatCannotFit) {
  const PairSplit s = one_pair({1, 2, 3}, {4, 5}, {6});
  EXPECT_EQ(pair_tokens(s, 0), 9);
  check_token_budget(1, [&](int64_t i) { return pair_tokens(s, i); }, s.sample_id, MicroBatching{8, 9}, "d.h5: /train");
  try {
    check_token_budget(1, [&](int64_t i) { return pair_tokens(s, i); }, s.sample_id, MicroBatching{8, 8}, "d.h5: /train");
    FAIL() << "not refused";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("d.h5: /train: example 0 (sample_id 41) has 9 tokens, more than --micro-batch-tokens 8", 0), 0u)
        << e.what();
  }
}

TEST(MicroBatches, BalancedShareSplitsTheGlobalBatchEvenly) {
  std::mt19937 rng(3);
  for (int dp : {1, 2, 3, 4, 8}) {
    std::vector<int64_t> len(500), global;
    for (int64_t& l : len) l = 2 + int64_t(rng() % 300);
    for (int64_t i = 0; i < 64; ++i) global.push_back(int64_t(rng() % 500));
    std::sort(global.begin(), global.end());
    global.erase(std::unique(global.begin(), global.end()), global.end());
    const TokensOf tok = [&](int64_t i) { return len[size_t(i)]; };
    std::vector<int64_t> all, load;
    int64_t longest = 0;
    for (int64_t i : global) longest = std::max(longest, tok(i));
    for (int r = 0; r < dp; ++r) {
      const std::vector<int64_t> mine = dp_share(global, r, dp, tok, MicroBatching{8, 1000});
      EXPECT_FALSE(mine.empty());
      int64_t l = 0;
      for (int64_t i : mine) l += tok(i), all.push_back(i);
      load.push_back(l);
    }
    std::sort(all.begin(), all.end());
    EXPECT_EQ(all, global) << "dp " << dp;
    const auto [lo, hi] = std::minmax_element(load.begin(), load.end());
    EXPECT_LE(*hi - *lo, longest) << "dp " << dp;  // greedy longest-first: within one example
  }
  // Without a budget: the contiguous equal share, as before.
  const std::vector<int64_t> g{5, 6, 7, 8};
  EXPECT_EQ(dp_share(g, 1, 2, [](int64_t) { return int64_t(1); }, MicroBatching{8, 0}), (std::vector<int64_t>{7, 8}));
}
