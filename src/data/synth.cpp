#include "metapo/data/synth.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "metapo/core/error.h"
#include "metapo/core/rng.h"

namespace metapo {

using namespace synth_vocab;

namespace {

using Digits = std::vector<int>;  // one decimal digit (0..9) per entry, as read left to right

// Split indices: the rng's "step" coordinate, so each split draws from its own streams.
enum Split : uint64_t { kTrain = 0, kVal = 1, kTest = 2, kSft = 3 };

// Operand lengths are capped so that the longest add pair (2 * 120 + 4 prompt tokens + 122 answer
// tokens) fits the tiny preset's 512 positions.
constexpr int64_t kMaxLen = 120;
// Item counts are capped so every sample id and rng item index fits in 32 bits.
constexpr int64_t kMaxItems = int64_t(1) << 30;

// `what` names where the task came from: "--task" for a config, "synth: task" for the checker.
int32_t task_token(const std::string& task, const char* what) {
  if (task == "sort") return kSort;
  if (task == "reverse") return kReverse;
  if (task == "add") return kAdd;
  fail(what, " '", task, "': unknown task (sort, reverse, add)");
}

// ---- digit arithmetic (operands may be longer than any machine integer) ----

Digits add_digits(const Digits& a, const Digits& b) {
  Digits r;
  int carry = 0;
  for (size_t i = 0; i < std::max(a.size(), b.size()) || carry; ++i) {
    int s = carry;
    if (i < a.size()) s += a[a.size() - 1 - i];
    if (i < b.size()) s += b[b.size() - 1 - i];
    r.push_back(s % 10);
    carry = s / 10;
  }
  std::reverse(r.begin(), r.end());
  return r;
}

// n ± 1 for a non-negative n without leading zeros; n - 1 needs n > 0.
Digits plus_one(Digits n) {
  for (size_t i = n.size(); i-- > 0;) {
    if (n[i] < 9) {
      ++n[i];
      return n;
    }
    n[i] = 0;
  }
  n.insert(n.begin(), 1);
  return n;
}
Digits minus_one(Digits n) {
  for (size_t i = n.size(); i-- > 0;) {
    if (n[i] > 0) {
      --n[i];
      break;
    }
    n[i] = 9;
  }
  if (n.size() > 1 && n[0] == 0) n.erase(n.begin());
  return n;
}

// ---- prompts ----

struct Problem {
  Digits a, b;  // b: add's second operand only
};

std::vector<int32_t> prompt_tokens(int32_t task, const Problem& p) {
  std::vector<int32_t> t = {kBos, task};
  for (int d : p.a) t.push_back(kDigit0 + d);
  if (task == kAdd) {
    t.push_back(kPlus);
    for (int d : p.b) t.push_back(kDigit0 + d);
  }
  t.push_back(kEquals);
  return t;
}

Digits correct_digits(int32_t task, const Problem& p) {
  Digits r = p.a;
  if (task == kSort) std::sort(r.begin(), r.end());
  if (task == kReverse) std::reverse(r.begin(), r.end());
  if (task == kAdd) r = add_digits(p.a, p.b);
  return r;
}

std::vector<int32_t> answer_tokens(const Digits& d) {
  std::vector<int32_t> t;
  for (int x : d) t.push_back(kDigit0 + x);
  t.push_back(kEos);
  return t;
}

Digits draw_number(Philox& rng, const SynthConfig& c, bool no_leading_zero) {
  const int64_t len = c.min_len + int64_t(rng.below(uint64_t(c.max_len - c.min_len + 1)));
  Digits d(static_cast<size_t>(len));
  for (int& x : d) x = int(rng.below(10));
  // add's operands are numbers: no leading zero, so the sum reads like one (a single 0 is fine).
  if (no_leading_zero && len > 1) d[0] = 1 + int(rng.below(9));
  return d;
}

// Which split a prompt belongs to, by a fixed hash of its tokens: 0 val, 1 test, 2..9 train and sft.
// Seed-independent, so the held-out prompts are a property of the task, disjoint from training
// prompts by construction rather than by a check against whatever train happened to draw.
int prompt_bucket(const std::vector<int32_t>& prompt) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a, then a splitmix64 finalizer to spread the low bits
  for (int32_t t : prompt) h = (h ^ uint64_t(uint32_t(t))) * 0x100000001b3ull;
  h ^= h >> 30, h *= 0xbf58476d1ce4e5b9ull, h ^= h >> 27, h *= 0x94d049bb133111ebull, h ^= h >> 31;
  return int(h % 10);
}

bool bucket_fits(int bucket, Split s) {
  if (s == kVal) return bucket == 0;
  if (s == kTest) return bucket == 1;
  return bucket >= 2;
}

// Draws prompts until one falls in the split's bucket (about 1.25 tries for train, 10 for val/test).
Problem draw_problem(Philox& rng, const SynthConfig& c, int32_t task, Split s) {
  for (int tries = 0; tries < 100000; ++tries) {
    Problem p;
    p.a = draw_number(rng, c, task == kAdd);
    if (task == kAdd) p.b = draw_number(rng, c, true);
    if (bucket_fits(prompt_bucket(prompt_tokens(task, p)), s)) return p;
  }
  fail("--max-len ", c.max_len, ": task ", c.task,
       " has too few distinct prompts to keep train, val and test prompts disjoint; raise --max-len");
}

// ---- wrong answers ----

// A near miss of the correct answer, of the kinds a partly trained model makes. Each edit below
// yields a string different from `good` by construction (a changed digit, a swap of two unequal
// digits, a length change, a different number), so no retry loop is needed.
Digits near_miss(Philox& rng, const Digits& good, int32_t task) {
  enum Edit { kChange, kSwap, kDrop, kDuplicate, kOffByOne };
  std::vector<size_t> swappable;  // j with good[j] != good[j + 1]
  for (size_t j = 0; j + 1 < good.size(); ++j)
    if (good[j] != good[j + 1]) swappable.push_back(j);
  std::vector<Edit> edits = {kChange, kDuplicate};
  if (!swappable.empty()) edits.push_back(kSwap);
  if (good.size() >= 2) edits.push_back(kDrop);  // never an empty answer: that is no near miss
  if (task == kAdd) edits.push_back(kOffByOne);
  Digits w = good;
  const size_t pos = rng.below(good.size());
  switch (edits[rng.below(edits.size())]) {
    case kChange: w[pos] = (w[pos] + 1 + int(rng.below(9))) % 10; break;
    case kSwap: {
      const size_t j = swappable[rng.below(swappable.size())];
      std::swap(w[j], w[j + 1]);
      break;
    }
    case kDrop: w.erase(w.begin() + long(pos)); break;
    case kDuplicate: {
      const int v = w[pos];
      w.insert(w.begin() + long(pos), v);
      break;
    }
    case kOffByOne: {
      const bool zero = good.size() == 1 && good[0] == 0;
      w = (zero || rng.below(2)) ? plus_one(good) : minus_one(good);
      break;
    }
  }
  return w;
}

// A random digit string of the answer's length ± 1: obviously wrong.
Digits random_wrong(Philox& rng, const Digits& good) {
  for (int tries = 0; tries < 100; ++tries) {
    const int64_t len = std::max<int64_t>(1, int64_t(good.size()) - 1 + int64_t(rng.below(3)));
    Digits w(static_cast<size_t>(len));
    for (int& x : w) x = int(rng.below(10));
    if (w != good) return w;
  }
  // Only reachable for one-digit answers with astronomically bad luck; still deterministic.
  Digits w = good;
  w[0] = (w[0] + 1) % 10;
  return w;
}

struct Item {
  std::vector<int32_t> prompt, good, bad;  // good/bad: answer tokens with eos
  bool hard = false;
  float flip_key = 0;  // train: the flip_count pairs with the smallest keys are flipped
};

Item make_item(const SynthConfig& c, int32_t task, Split s, int64_t i) {
  Philox rng = make_rng(c.seed, s, uint32_t(i), RngPurpose::Synth);
  Item it;
  it.flip_key = rng.uniform();  // drawn first, so it does not depend on the rejection loop below
  const Problem p = draw_problem(rng, c, task, s);
  const Digits good = correct_digits(task, p);
  it.prompt = prompt_tokens(task, p);
  it.good = answer_tokens(good);
  it.hard = rng.uniform() < c.hard_fraction;
  it.bad = answer_tokens(it.hard ? near_miss(rng, good, task) : random_wrong(rng, good));
  return it;
}

PairSplit make_pairs(const SynthConfig& c, int32_t task, Split s, int64_t n, int64_t first_id) {
  std::vector<Item> items;
  items.reserve(size_t(n));
  for (int64_t i = 0; i < n; ++i) items.push_back(make_item(c, task, s, i));
  // Exactly round(flip * n) flips (not a Bernoulli draw per pair), so the flip rate of a run is the
  // one asked for; the set is the pairs with the smallest keys, ties by index.
  std::vector<bool> flipped(static_cast<size_t>(n), false);
  if (s == kTrain) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t x, int64_t y) { return items[size_t(x)].flip_key < items[size_t(y)].flip_key; });
    const int64_t k = std::llround(c.flip * double(n));
    for (int64_t j = 0; j < k; ++j) flipped[size_t(order[size_t(j)])] = true;
  }
  PairSplit out;
  std::vector<float>& difficulty = out.columns["difficulty"];
  for (int64_t i = 0; i < n; ++i) {
    const Item& it = items[size_t(i)];
    const bool f = flipped[size_t(i)];
    out.prompt.push(it.prompt);
    out.chosen.push(f ? it.bad : it.good);
    out.rejected.push(f ? it.good : it.bad);
    out.sample_id.push_back(first_id + i);
    out.quality.push_back(f ? 0.0f : 1.0f);
    difficulty.push_back(it.hard ? 1.0f : 0.0f);
  }
  return out;
}

SftSplit make_sft(const SynthConfig& c, int32_t task, int64_t n, int64_t first_id) {
  SftSplit out;
  for (int64_t i = 0; i < n; ++i) {
    Philox rng = make_rng(c.seed, kSft, uint32_t(i), RngPurpose::Synth);
    const Problem p = draw_problem(rng, c, task, kSft);
    out.prompt.push(prompt_tokens(task, p));
    out.answer.push(answer_tokens(correct_digits(task, p)));
    out.sample_id.push_back(first_id + i);
  }
  return out;
}

// Reads a prompt back into its problem; throws unless it is exactly a `task` prompt.
Problem parse_prompt(const std::string& task, const std::vector<int32_t>& prompt) {
  const int32_t tt = task_token(task, "synth: task");
  auto bad = [&]() { fail("synth: prompt '", synth_detokenize(prompt), "' is not a '", task, "' prompt"); };
  size_t i = 0;
  if (prompt.size() < 2 || prompt[i++] != kBos || prompt[i++] != tt) bad();
  Problem p;
  Digits* cur = &p.a;
  for (; i < prompt.size() && prompt[i] != kEquals; ++i) {
    const int32_t t = prompt[i];
    if (t >= kDigit0 && t < kDigit0 + 10)
      cur->push_back(t - kDigit0);
    else if (t == kPlus && tt == kAdd && cur == &p.a)
      cur = &p.b;
    else
      bad();
  }
  if (i + 1 != prompt.size() || p.a.empty() || (tt == kAdd && p.b.empty())) bad();  // '=' ends it
  return p;
}

const char* const kNames[] = {"<pad>", "<bos>", "<eos>", "=", "0", "1", "2", "3", "4",
                              "5",     "6",     "7",     "8", "9", "sort", "reverse", "add", "+"};
constexpr int32_t kNamed = int32_t(sizeof(kNames) / sizeof(kNames[0]));

}  // namespace

void check_synth_config(const SynthConfig& c) {
  task_token(c.task, "--task");
  MP_CHECK(c.flip >= 0 && c.flip < 0.5, "--flip ", c.flip,
           ": must be in [0, 0.5) (at 0.5 the labels carry no preference at all)");
  MP_CHECK(c.hard_fraction >= 0 && c.hard_fraction <= 1, "--hard-fraction ", c.hard_fraction,
           ": must be in [0, 1]");
  MP_CHECK(c.min_len >= 1, "--min-len ", c.min_len, ": must be at least 1");
  MP_CHECK(c.max_len >= c.min_len, "--max-len ", c.max_len, ": must be at least --min-len (", c.min_len, ")");
  MP_CHECK(c.max_len <= kMaxLen, "--max-len ", c.max_len, ": must be at most ", kMaxLen,
           " (so the longest prompt and answer fit the tiny preset's 512 positions)");
  const std::pair<const char*, int64_t> counts[] = {
      {"--n-train", c.n_train}, {"--n-val", c.n_val}, {"--n-test", c.n_test}, {"--n-sft", c.n_sft}};
  for (const auto& [name, n] : counts)
    MP_CHECK(n >= 0 && n <= kMaxItems, name, " ", n, ": must be in [0, ", kMaxItems, "] (0 leaves the split out)");
  MP_CHECK(c.n_train + c.n_val + c.n_test + c.n_sft > 0, "--n-train/--n-val/--n-test/--n-sft: all are 0");
}

Dataset make_synth(const SynthConfig& c) {
  check_synth_config(c);
  const int32_t task = task_token(c.task, "--task");
  Dataset d;
  d.info.tokenizer = "metapo-synth-char";
  d.info.task = c.task;
  d.info.vocab_size = kVocabSize;
  d.info.bos_token_id = kBos;
  d.info.eos_token_id = kEos;
  d.info.pad_token_id = kPad;
  // The canonical command line: `source` is enough to regenerate the file bit for bit.
  d.info.source = str_cat("metapo synth --task ", c.task, " --flip ", c.flip, " --seed ", c.seed, " --n-train ",
                          c.n_train, " --n-val ", c.n_val, " --n-test ", c.n_test, " --n-sft ", c.n_sft,
                          " --min-len ", c.min_len, " --max-len ", c.max_len, " --hard-fraction ", c.hard_fraction);
  int64_t id = 0;
  const std::pair<const char*, std::pair<Split, int64_t>> splits[] = {
      {"train", {kTrain, c.n_train}}, {"val", {kVal, c.n_val}}, {"test", {kTest, c.n_test}}};
  for (const auto& [name, sn] : splits) {
    if (sn.second == 0) continue;
    d.pairs[name] = make_pairs(c, task, sn.first, sn.second, id);
    id += sn.second;
  }
  if (c.n_sft > 0) d.sft = make_sft(c, task, c.n_sft, id);
  return d;
}

std::vector<int32_t> synth_correct_answer(const std::string& task, const std::vector<int32_t>& prompt) {
  return answer_tokens(correct_digits(task_token(task, "synth: task"), parse_prompt(task, prompt)));
}

bool synth_answer_correct(const std::string& task, const std::vector<int32_t>& prompt,
                          const std::vector<int32_t>& answer) {
  std::vector<int32_t> want = synth_correct_answer(task, prompt);
  want.pop_back();  // the eos
  const auto end = std::find(answer.begin(), answer.end(), kEos);
  return std::equal(answer.begin(), end, want.begin(), want.end());
}

std::string synth_detokenize(const std::vector<int32_t>& tokens) {
  std::string s;
  for (int32_t t : tokens) s += (t >= 0 && t < kNamed) ? std::string(kNames[t]) : str_cat("<", t, ">");
  return s;
}

std::vector<int32_t> synth_tokenize(const std::string& text) {
  std::vector<int32_t> out;
  size_t i = 0;
  while (i < text.size()) {
    // Longest name first is not needed: no name is a prefix of another one.
    int32_t found = -1;
    for (int32_t t = 0; t < kNamed && found < 0; ++t)
      if (text.compare(i, std::string(kNames[t]).size(), kNames[t]) == 0) found = t;
    if (found >= 0) {
      out.push_back(found);
      i += std::string(kNames[found]).size();
      continue;
    }
    // "<id>" for the ids without a name.
    const size_t close = text.find('>', i);
    MP_CHECK(text[i] == '<' && close != std::string::npos && close > i + 1 && close - i - 1 <= 9 &&
                 text.find_first_not_of("0123456789", i + 1) == close,
             "synth: cannot tokenize '", text, "' at offset ", i, " (not in the synthetic vocabulary)");
    const int64_t id = std::stoll(text.substr(i + 1, close - i - 1));
    MP_CHECK(id < kVocabSize, "synth: token <", id, "> in '", text, "' is outside the vocabulary [0, ", kVocabSize, ")");
    out.push_back(int32_t(id));
    i = close + 1;
  }
  return out;
}

}  // namespace metapo
