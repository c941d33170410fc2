// Built-in synthetic preference tasks (`metapo synth`): short digit-string problems whose answers a
// program can check, so "better alignment" is measured exactly — clean-validation preference accuracy
// and the accuracy of generated answers — with a known label-flip rate recorded as ground truth.
//
// Character vocabulary (64 ids, the tiny preset's vocab_size):
//
//   id     token     text form (synth_detokenize)
//   0      pad       <pad>
//   1      bos       <bos>
//   2      eos       <eos>
//   3      '='       =
//   4..13  '0'..'9'  0..9        (digit d is id 4 + d)
//   14     sort      sort
//   15     reverse   reverse
//   16     add       add
//   17     '+'       +
//   18..63 reserved  <18> .. <63>   (never produced; free for future tasks)
//
// Prompt = [bos, task, operand digits..., '='], for add [bos, add, digits, '+', digits, '='];
// answer = digits + [eos]. Tasks:
//   sort     the operand's digits in ascending order      <bos>sort3141=  ->  1134<eos>
//   reverse  the operand's digits in reverse order        <bos>reverse3141=  ->  1413<eos>
//   add      the sum, most significant digit first        <bos>add95+7=  ->  102<eos>
// Operands have min_len..max_len digits (add: each operand, without leading zeros).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "metapo/data/dataset.h"

namespace metapo {

namespace synth_vocab {
constexpr int32_t kPad = 0, kBos = 1, kEos = 2, kEquals = 3;
constexpr int32_t kDigit0 = 4;  // digit d is kDigit0 + d
constexpr int32_t kSort = 14, kReverse = 15, kAdd = 16, kPlus = 17;
constexpr int32_t kVocabSize = 64;
}  // namespace synth_vocab

struct SynthConfig {
  std::string task = "sort";  // sort | reverse | add
  double flip = 0.0;          // fraction of TRAIN pairs with chosen/rejected swapped, in [0, 0.5)
  uint64_t seed = 0;
  int64_t n_sft = 2000, n_train = 4000, n_val = 256, n_test = 512;  // 0 leaves the split out
  int64_t min_len = 3, max_len = 8;  // operand digits
  double hard_fraction = 0.5;        // share of rejected answers that are near misses
};

// Throws metapo::Error naming the option (as `metapo synth` spells it) of the first bad value.
void check_synth_config(const SynthConfig& c);

// The dataset `metapo synth` writes (tokenizer "metapo-synth-char", vocab 64, bos 1, eos 2, pad 0):
//   /sft    prompt + correct answer.
//   /train, /val, /test  pairs: chosen = the correct answer, rejected = a wrong one. With probability
//           hard_fraction it is a near miss of the kind a partly trained model makes (one digit
//           changed, two adjacent digits swapped, a digit dropped or duplicated; for add also the sum
//           off by one), else a random digit string of about the answer's length.
//           columns/difficulty = 1 near miss, 0 random. quality = 1 clean, 0 flipped.
//   Exactly round(flip * n_train) train pairs are flipped; val, test and sft are always clean.
//   Prompts are split by a fixed hash of their tokens (10% val, 10% test, 80% train and sft), so no
//   val or test prompt ever appears in train or sft, whatever the seed or sizes.
//   sample_id: train 0.., then val, test, sft, consecutive.
// Every draw comes from make_rng(seed, split index (train 0, val 1, test 2, sft 3), item index,
// RngPurpose::Synth): the same config gives the same file, and item i's prompt and answers do not
// depend on the split sizes (which train pairs are flipped does: the k smallest per-pair keys).
Dataset make_synth(const SynthConfig& c);

// The correct answer (digits + eos) to a synthetic prompt; throws when the prompt is not a `task`
// prompt ("sort", "reverse" or "add").
std::vector<int32_t> synth_correct_answer(const std::string& task, const std::vector<int32_t>& prompt);

// Whether generated tokens answer the prompt correctly: everything from the first eos on is ignored
// (the eos itself is optional), and what comes before must be exactly the correct digits.
bool synth_answer_correct(const std::string& task, const std::vector<int32_t>& prompt,
                          const std::vector<int32_t>& answer);

// Readable text ("<bos>sort3141=", "1134<eos>"); ids outside the table print as "<id>".
std::string synth_detokenize(const std::vector<int32_t>& tokens);
// The inverse of synth_detokenize; throws on text that is not in the vocabulary.
std::vector<int32_t> synth_tokenize(const std::string& text);

}  // namespace metapo
