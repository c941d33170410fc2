// Synthetic tasks: deterministic output, exact flip counts only in train, a checker that agrees with
// the labels, near misses that are wrong but close, ids inside the 64-token vocabulary, and held-out
// prompts that never occur in training data.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "metapo/core/error.h"
#include "metapo/data/synth.h"
#include "metapo/io/dataset_h5.h"

namespace fs = std::filesystem;
using namespace metapo;
using namespace metapo::synth_vocab;

namespace {

const char* const kTasks[] = {"sort", "reverse", "add"};

SynthConfig small(const std::string& task, double flip = 0.0, uint64_t seed = 0) {
  SynthConfig c;
  c.task = task;
  c.flip = flip;
  c.seed = seed;
  c.n_sft = 300, c.n_train = 1000, c.n_val = 200, c.n_test = 200;
  return c;
}

template <typename F>
void expect_error(F f, std::vector<std::string> parts) {
  try {
    f();
    FAIL() << "no metapo::Error thrown";
  } catch (const Error& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "message \"" << e.what() << "\" lacks \"" << p << "\"";
  }
}

bool same(const Ragged& a, const Ragged& b) { return a.tokens == b.tokens && a.offsets == b.offsets; }

bool same(const Dataset& a, const Dataset& b) {
  if (a.info.source != b.info.source || a.pairs.size() != b.pairs.size() || a.sft.has_value() != b.sft.has_value())
    return false;
  for (const auto& [name, s] : a.pairs) {
    const PairSplit& t = b.pairs.at(name);
    if (!same(s.prompt, t.prompt) || !same(s.chosen, t.chosen) || !same(s.rejected, t.rejected) ||
        s.sample_id != t.sample_id || s.quality != t.quality || s.columns != t.columns)
      return false;
  }
  return !a.sft || (same(a.sft->prompt, b.sft->prompt) && same(a.sft->answer, b.sft->answer) &&
                    a.sft->sample_id == b.sft->sample_id);
}

std::vector<int32_t> toks(const std::string& s) { return synth_tokenize(s); }

// Digits of an answer (eos dropped) as a string: "1134".
std::string digits(const std::vector<int32_t>& answer) {
  std::string s;
  for (int32_t t : answer)
    if (t >= kDigit0 && t < kDigit0 + 10) s += char('0' + t - kDigit0);
  return s;
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

TEST(Synth, CheckerOnKnownProblems) {
  EXPECT_EQ(synth_correct_answer("sort", toks("<bos>sort3141=")), toks("1134<eos>"));
  EXPECT_EQ(synth_correct_answer("reverse", toks("<bos>reverse3141=")), toks("1413<eos>"));
  EXPECT_EQ(synth_correct_answer("add", toks("<bos>add95+7=")), toks("102<eos>"));
  EXPECT_EQ(synth_correct_answer("add", toks("<bos>add999+1=")), toks("1000<eos>"));
  EXPECT_EQ(synth_correct_answer("add", toks("<bos>add0+0=")), toks("0<eos>"));
  const auto p = toks("<bos>sort3141=");
  EXPECT_TRUE(synth_answer_correct("sort", p, toks("1134<eos>")));
  EXPECT_TRUE(synth_answer_correct("sort", p, toks("1134")));                 // eos optional
  EXPECT_TRUE(synth_answer_correct("sort", p, toks("1134<eos>99<eos><pad>")));  // after eos: ignored
  EXPECT_FALSE(synth_answer_correct("sort", p, toks("113<eos>")));
  EXPECT_FALSE(synth_answer_correct("sort", p, toks("11345<eos>")));
  EXPECT_FALSE(synth_answer_correct("sort", p, toks("1143<eos>")));
  EXPECT_FALSE(synth_answer_correct("sort", p, toks("11=34<eos>")));
  EXPECT_FALSE(synth_answer_correct("sort", p, toks("<eos>1134")));
  EXPECT_FALSE(synth_answer_correct("sort", p, {}));
  // A prompt of another task or a malformed one is a bug in the caller, not a wrong answer.
  expect_error([&] { synth_answer_correct("add", p, toks("1134")); }, {"<bos>sort3141=", "'add'"});
  expect_error([&] { synth_answer_correct("sort", toks("<bos>sort31"), toks("1")); }, {"not a 'sort' prompt"});
  expect_error([&] { synth_answer_correct("sort", toks("<bos>sort=3="), toks("1")); }, {"not a 'sort' prompt"});
  expect_error([&] { synth_answer_correct("add", toks("<bos>add1+2+3="), toks("6")); }, {"not a 'add' prompt"});
  expect_error([&] { synth_answer_correct("frob", p, toks("1")); }, {"frob", "unknown task"});
}

TEST(Synth, TokenizeRoundTrip) {
  const std::vector<int32_t> all = {0, 1, 2, 3, 4, 13, 14, 15, 16, 17, 18, 63};
  EXPECT_EQ(synth_detokenize(all), "<pad><bos><eos>=09sortreverseadd+<18><63>");
  EXPECT_EQ(synth_tokenize(synth_detokenize(all)), all);
  EXPECT_EQ(synth_detokenize({1, 14, 7, 5, 8, 5, 3}), "<bos>sort3141=");
  expect_error([] { synth_tokenize("sort x"); }, {"sort x", "offset 4"});
  expect_error([] { synth_tokenize("<64>"); }, {"<64>", "outside the vocabulary"});
}

TEST(Synth, Deterministic) {
  for (const char* task : kTasks) {
    const Dataset a = make_synth(small(task, 0.2, 7));
    EXPECT_TRUE(same(a, make_synth(small(task, 0.2, 7)))) << task;
    EXPECT_FALSE(same(a, make_synth(small(task, 0.2, 8)))) << task;
  }
  // An item's prompt and answers do not depend on the split sizes.
  SynthConfig c = small("add", 0.0, 3);
  const Dataset big = make_synth(c);
  c.n_train = 100, c.n_val = 10, c.n_sft = 7;
  const Dataset few = make_synth(c);
  const PairSplit& b = big.pairs.at("train");
  const PairSplit& f = few.pairs.at("train");
  for (int64_t i = 0; i < f.size(); ++i) {
    EXPECT_EQ(b.prompt.item(i), f.prompt.item(i));
    EXPECT_EQ(b.rejected.item(i), f.rejected.item(i));
  }
  for (int64_t i = 0; i < few.sft->size(); ++i) EXPECT_EQ(big.sft->prompt.item(i), few.sft->prompt.item(i));
}

TEST(Synth, LayoutInfoAndIds) {
  const Dataset d = make_synth(small("reverse", 0.1, 1));
  EXPECT_EQ(d.info.tokenizer, "metapo-synth-char");
  EXPECT_EQ(d.info.task, "reverse");
  EXPECT_EQ(d.info.vocab_size, 64);
  EXPECT_EQ(d.info.bos_token_id, 1);
  EXPECT_EQ(d.info.eos_token_id, 2);
  EXPECT_EQ(d.info.pad_token_id, 0);
  EXPECT_NE(d.info.source.find("--task reverse --flip 0.1 --seed 1"), std::string::npos) << d.info.source;
  EXPECT_EQ(d.pairs.at("train").size(), 1000);
  EXPECT_EQ(d.pairs.at("val").size(), 200);
  EXPECT_EQ(d.pairs.at("test").size(), 200);
  ASSERT_TRUE(d.sft);
  EXPECT_EQ(d.sft->size(), 300);
  // train 0.., then val, test, sft: consecutive.
  EXPECT_EQ(d.pairs.at("train").sample_id.front(), 0);
  EXPECT_EQ(d.pairs.at("val").sample_id.front(), 1000);
  EXPECT_EQ(d.pairs.at("test").sample_id.front(), 1200);
  EXPECT_EQ(d.sft->sample_id.front(), 1400);
  EXPECT_EQ(d.sft->sample_id.back(), 1699);
  EXPECT_NO_THROW(check_dataset(d, "synth"));  // offsets, ids < vocab, unique ids across splits

  // A split of size 0 is left out.
  SynthConfig c = small("sort");
  c.n_sft = 0, c.n_test = 0;
  const Dataset e = make_synth(c);
  EXPECT_FALSE(e.sft);
  EXPECT_EQ(e.pairs.count("test"), 0u);
  EXPECT_EQ(e.pairs.at("val").sample_id.front(), 1000);
}

TEST(Synth, TokensAndShapes) {
  for (const char* task : kTasks) {
    SynthConfig c = small(task, 0.2);
    c.min_len = 1, c.max_len = 12;
    const Dataset d = make_synth(c);
    const int32_t tt = std::string(task) == "sort" ? kSort : std::string(task) == "reverse" ? kReverse : kAdd;
    auto check_prompt = [&](const std::vector<int32_t>& p) {
      ASSERT_GE(p.size(), 4u);
      EXPECT_EQ(p[0], kBos);
      EXPECT_EQ(p[1], tt);
      EXPECT_EQ(p.back(), kEquals);
      const int64_t n_digits = std::count_if(p.begin(), p.end(), [](int32_t t) { return t >= 4 && t < 14; });
      EXPECT_GE(n_digits, c.min_len * (tt == kAdd ? 2 : 1));
      EXPECT_LE(n_digits, c.max_len * (tt == kAdd ? 2 : 1));
    };
    auto check_answer = [&](const std::vector<int32_t>& a) {
      ASSERT_GE(a.size(), 2u);  // at least one digit + eos
      EXPECT_EQ(a.back(), kEos);
      for (size_t i = 0; i + 1 < a.size(); ++i) EXPECT_TRUE(a[i] >= kDigit0 && a[i] < kDigit0 + 10);
    };
    for (const auto& [name, s] : d.pairs) {
      for (const Ragged* r : {&s.prompt, &s.chosen, &s.rejected})
        for (int32_t t : r->tokens) ASSERT_TRUE(t >= 0 && t < 64) << task << " " << name;
      for (int64_t i = 0; i < s.size(); ++i) {
        check_prompt(s.prompt.item(i));
        check_answer(s.chosen.item(i));
        check_answer(s.rejected.item(i));
      }
    }
    for (int64_t i = 0; i < d.sft->size(); ++i) {
      check_prompt(d.sft->prompt.item(i));
      check_answer(d.sft->answer.item(i));
    }
  }
}

TEST(Synth, FlipsExactlyTheRequestedShareOfTrainOnly) {
  for (const char* task : kTasks) {
    for (double flip : {0.0, 0.1, 0.3, 0.45}) {
      const Dataset d = make_synth(small(task, flip, 11));
      for (const auto& [name, s] : d.pairs) {
        int64_t flipped = 0;
        for (float q : s.quality) flipped += q == 0.0f;
        const int64_t want = name == "train" ? std::llround(flip * double(s.size())) : 0;
        EXPECT_EQ(flipped, want) << task << " " << name << " flip " << flip;
      }
    }
  }
}

TEST(Synth, CheckerAgreesWithTheLabels) {
  for (const char* task : kTasks) {
    SynthConfig c = small(task, 0.25, 5);
    c.min_len = 1, c.max_len = 10;
    const Dataset d = make_synth(c);
    for (const auto& [name, s] : d.pairs) {
      for (int64_t i = 0; i < s.size(); ++i) {
        const auto p = s.prompt.item(i);
        const bool clean = s.quality[size_t(i)] == 1.0f;
        EXPECT_EQ(synth_answer_correct(task, p, s.chosen.item(i)), clean)
            << task << " " << name << " " << synth_detokenize(p) << " chosen " << synth_detokenize(s.chosen.item(i));
        EXPECT_EQ(synth_answer_correct(task, p, s.rejected.item(i)), !clean)
            << task << " " << name << " " << synth_detokenize(p) << " rejected "
            << synth_detokenize(s.rejected.item(i));
      }
    }
    for (int64_t i = 0; i < d.sft->size(); ++i)
      EXPECT_TRUE(synth_answer_correct(task, d.sft->prompt.item(i), d.sft->answer.item(i))) << task;
  }
}

TEST(Synth, HardNegativesAreNearMisses) {
  for (const char* task : kTasks) {
    SynthConfig c = small(task, 0.0, 2);
    c.n_train = 4000;
    const Dataset d = make_synth(c);
    const PairSplit& s = d.pairs.at("train");
    const std::vector<float>& hard = s.columns.at("difficulty");
    int64_t n_hard = 0, n_len_change = 0;
    for (int64_t i = 0; i < s.size(); ++i) {
      const std::string good = digits(s.chosen.item(i)), bad = digits(s.rejected.item(i));
      EXPECT_NE(good, bad) << task;
      if (hard[size_t(i)] != 1.0f) continue;
      ++n_hard;
      // One edit: the length moves by at most one, and at most two positions differ when it does not.
      const long dl = long(bad.size()) - long(good.size());
      EXPECT_LE(std::abs(dl), 1) << task << " " << good << " vs " << bad;
      n_len_change += dl != 0;
      if (dl == 0) {
        int diff = 0;
        for (size_t j = 0; j < good.size(); ++j) diff += good[j] != bad[j];
        EXPECT_LE(diff, std::string(task) == "add" ? int(good.size()) : 2) << task << " " << good << " vs " << bad;
      }
    }
    // hard_fraction 0.5 of 4000: 5 sigma is about 160.
    EXPECT_NEAR(double(n_hard), 2000.0, 160.0) << task;
    EXPECT_GT(n_len_change, 0) << task;  // drops and duplicates do occur
  }
  SynthConfig c = small("sort");
  c.hard_fraction = 1.0;
  const Dataset all_hard = make_synth(c);
  for (float h : all_hard.pairs.at("val").columns.at("difficulty")) EXPECT_EQ(h, 1.0f);
  c.hard_fraction = 0.0;
  const Dataset all_easy = make_synth(c);
  for (float h : all_easy.pairs.at("val").columns.at("difficulty")) EXPECT_EQ(h, 0.0f);
}

TEST(Synth, HeldOutPromptsNeverAppearInTraining) {
  for (const char* task : kTasks) {
    // Short operands make collisions likely if the splits were not disjoint by construction.
    SynthConfig c = small(task, 0.1, 9);
    c.min_len = 2, c.max_len = 3;
    const Dataset d = make_synth(c);
    std::set<std::vector<int32_t>> training, val, test;
    for (int64_t i = 0; i < d.pairs.at("train").size(); ++i) training.insert(d.pairs.at("train").prompt.item(i));
    for (int64_t i = 0; i < d.sft->size(); ++i) training.insert(d.sft->prompt.item(i));
    for (int64_t i = 0; i < d.pairs.at("val").size(); ++i) val.insert(d.pairs.at("val").prompt.item(i));
    for (int64_t i = 0; i < d.pairs.at("test").size(); ++i) test.insert(d.pairs.at("test").prompt.item(i));
    for (const auto& p : val) {
      EXPECT_EQ(training.count(p), 0u) << task << " val prompt in training: " << synth_detokenize(p);
      EXPECT_EQ(test.count(p), 0u) << task << " val prompt in test: " << synth_detokenize(p);
    }
    for (const auto& p : test) EXPECT_EQ(training.count(p), 0u) << task << " test prompt in training";
    EXPECT_GT(val.size(), 20u) << task;  // and the held-out sets are not degenerate
  }
}

TEST(Synth, BadConfigsNameTheOption) {
  auto with = [](auto edit) {
    SynthConfig c;
    edit(c);
    return c;
  };
  expect_error([&] { make_synth(with([](SynthConfig& c) { c.task = "frob"; })); }, {"--task", "frob", "sort, reverse, add"});
  expect_error([&] { make_synth(with([](SynthConfig& c) { c.flip = 0.5; })); }, {"--flip 0.5", "[0, 0.5)"});
  expect_error([&] { make_synth(with([](SynthConfig& c) { c.flip = -0.1; })); }, {"--flip -0.1"});
  expect_error([&] { make_synth(with([](SynthConfig& c) { c.flip = NAN; })); }, {"--flip"});
  expect_error([&] { make_synth(with([](SynthConfig& c) { c.hard_fraction = 1.5; })); }, {"--hard-fraction 1.5"});
  expect_error([&] { make_synth(with([](SynthConfig& c) { c.min_len = 0; })); }, {"--min-len 0"});
  expect_error([&] { make_synth(with([](SynthConfig& c) { c.min_len = 5, c.max_len = 4; })); },
               {"--max-len 4", "--min-len (5)"});
  expect_error([&] { make_synth(with([](SynthConfig& c) { c.max_len = 500; })); }, {"--max-len 500", "at most 120"});
  expect_error([&] { make_synth(with([](SynthConfig& c) { c.n_val = -1; })); }, {"--n-val -1"});
}

TEST(Synth, WritesAndReadsBackByteIdentically) {
  const fs::path dir = fs::temp_directory_path() / ("metapo_synth_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string a = (dir / "a.h5").string(), b = (dir / "b.h5").string();
  const Dataset d = make_synth(small("add", 0.2, 4));
  write_dataset(a, d);
  write_dataset(b, make_synth(small("add", 0.2, 4)));
  EXPECT_EQ(file_bytes(a), file_bytes(b));  // same config, same file
  EXPECT_TRUE(same(read_dataset(a), d));
  EXPECT_EQ(read_dataset_info(a).task, "add");
  fs::remove_all(dir);
}
