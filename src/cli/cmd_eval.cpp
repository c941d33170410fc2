// metapo eval (preference metrics of a model on a split) and metapo precompute-ref (reference
// log-probs into the dataset file).
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>

#include <nlohmann/json.hpp>

#include "metapo/cli/commands.h"
#include "metapo/core/error.h"
#include "metapo/io/dataset_h5.h"
#include "metapo/io/hf_model.h"
#include "metapo/train/dpo.h"
#include "metapo/train/evaluation.h"

namespace metapo::cli {

int cmd_eval(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo eval options");
  std::string model_dir, data, split, loss, device, ref_dir, truncation_mode;
  LossConfig lc;
  Truncation cut_by;
  int64_t micro = 0, micro_tokens = 0, limit = 0;
  desc.add_options()
    ("model", po::value(&model_dir)->required(), "model directory (Hugging Face layout)")
    ("data", po::value(&data)->required(), "dataset .h5 with reference log-probs (metapo precompute-ref)")
    ("split", po::value(&split)->default_value("test"), "pair split: train, val or test")
    ("loss", po::value(&loss)->default_value("sigmoid"), "loss for the reported eval loss")
    ("beta", po::value(&lc.beta)->default_value(0.1), "DPO beta")
    ("label-smoothing", po::value(&lc.label_smoothing)->default_value(0.0), "label smoothing")
    ("simpo-gamma", po::value(&lc.simpo_gamma)->default_value(0.5), "SimPO target margin gamma (--loss simpo)")
    ("discopop-tau", po::value(&lc.discopop_tau)->default_value(0.05), "DiscoPOP temperature (--loss discopop)")
    ("micro-batch", po::value(&micro)->default_value(16), "pairs per forward")
    ("micro-batch-tokens", po::value(&micro_tokens)->default_value(0), "> 0: forwards of whole pairs up to N tokens instead of --micro-batch pairs")
    ("limit", po::value(&limit)->default_value(0), "evaluate the first N pairs only (0: all)")
    ("max-length", po::value(&cut_by.max_length)->default_value(0), "cut the pairs as train --max-length does (0: no limit); give the run's value to reproduce its eval/ metrics")
    ("max-prompt-length", po::value(&cut_by.max_prompt_length)->default_value(0), "prompt tokens kept, as train's (0: no limit)")
    ("truncation-mode", po::value(&truncation_mode)->default_value("keep_end"), "which end of a long prompt is kept: keep_end or keep_start")
    ("ref-model", po::value(&ref_dir), "reference model: scores the pairs the cut changed (their stored log-probs are of the uncut sequences), or every pair when the file has none");
  ParallelOptions par;
  add_parallel_options(desc, par);
  add_device_option(desc, device);
  po::variables_map vm;
  if (!parse_args("eval", "[mpirun -np N] metapo eval [--tp T] [--pp P] --model DIR --data FILE.h5 --split test [--max-length L --ref-model REF]", desc, argc, argv, vm, ctx))
    return 0;
  apply_parallel_options(ctx, par);
  const Device dev = check_device_option(device, par, ctx.topo.local_rank);
  MP_CHECK(micro > 0, "--micro-batch ", micro, ": must be positive");
  MP_CHECK(micro_tokens >= 0, "--micro-batch-tokens ", micro_tokens, ": must be >= 0 (0: --micro-batch pairs)");
  MP_CHECK(limit >= 0, "--limit ", limit, ": must be >= 0 (0: all pairs)");
  MP_CHECK(cut_by.max_length >= 0, "--max-length ", cut_by.max_length, ": must be >= 0 (0: no limit)");
  MP_CHECK(cut_by.max_prompt_length >= 0, "--max-prompt-length ", cut_by.max_prompt_length, ": must be >= 0 (0: no limit)");
  MP_CHECK(truncation_mode == "keep_end" || truncation_mode == "keep_start", "--truncation-mode ", truncation_mode,
           ": unknown (valid: keep_end, keep_start)");
  cut_by.keep_end = truncation_mode == "keep_end";
  MP_CHECK(!vm.count("ref-model") || !ref_dir.empty(), "--ref-model must not be empty");
  MP_CHECK(ref_dir.empty() || std::filesystem::is_directory(ref_dir), "--ref-model ", ref_dir, ": no such model directory");
  lc.type = parse_loss(loss);
  validate(lc);
  const LlamaConfig config = load_hf_config(model_dir);
  const DatasetInfo info = read_dataset_info(data);
  MP_CHECK(info.vocab_size <= config.vocab_size, data, ": vocab_size ", info.vocab_size,
           " is larger than the model's ", config.vocab_size, " (wrong tokenizer for this model?)");
  PairSplit s = read_pair_split(data, split);
  if (limit > 0 && limit < s.size()) s.keep_first(limit);  // the pairs evaluated, before any cut or scoring
  const bool uses_ref = loss_uses_reference(lc.type);
  // A reference-free loss (simpo) reads no reference log-probs: zeros stand in for absent ones.
  MP_CHECK(s.has_ref() || !uses_ref || !ref_dir.empty(), data, ": /", split,
           " has no reference log-probs (run metapo precompute-ref first, or give --ref-model)");
  const MicroBatching mb{micro, micro_tokens};
  // The cut of train's --max-length: stored reference log-probs are of the uncut sequences, so those of
  // the pairs it changes are computed again with --ref-model, as train computes them.
  const std::vector<int64_t> cut = cut_by.active() ? truncate_pairs(s, cut_by, data + ": /" + split) : std::vector<int64_t>();
  if (!cut.empty() && ctx.topo.is_root())
    std::fprintf(stderr, "%s: %lld of %lld pairs cut by %s\n", split.c_str(), (long long)cut.size(), (long long)s.size(),
                 cut_by.describe().c_str());
  check_token_budget(s.size(), [&](int64_t i) { return pair_tokens(s, i); }, s.sample_id, mb, data + ": /" + split,
                     cut_by.active() ? "raise it" : "raise it or set --max-length");
  note_past_context(s, config.max_position_embeddings, data + ": /" + split, ctx.topo.is_root());
  if (uses_ref && s.has_ref() && !cut.empty()) {
    MP_CHECK(!ref_dir.empty(), data, ": /", split, ": ", cut.size(), " pairs are cut by ", cut_by.describe(),
             ", and their stored reference log-probs are of the uncut sequences: give --ref-model (the reference "
             "model) to score them again");
    if (!s.ref_model_fingerprint.empty()) {
      const std::string have = model_fingerprint(HfModelReader(ref_dir));
      MP_CHECK(have == s.ref_model_fingerprint, data, ": /", split, ": the stored reference log-probs were computed with "
               "another model than --ref-model ", ref_dir, " (fingerprints ", s.ref_model_fingerprint, " and ", have, ")");
    }
  }
  if (uses_ref && !ref_dir.empty() && (!s.has_ref() || !cut.empty()))
    ensure_ref_logps(s, split, ref_dir, mb, ctx.topo, par.pp_layers, cut, dev);
  else if (!ref_dir.empty() && ctx.topo.is_root())
    std::fprintf(stderr, "note: --ref-model %s is not used (%s)\n", ref_dir.c_str(),
                 !uses_ref ? "the loss needs no reference" : "the stored reference log-probs serve every pair");
  s.zero_absent_ref();
  // Pairs split over DP; the TP ranks of a replica score the same pairs together.
  ShardedModel sm = load_sharded_model(model_dir, ctx.topo, par.pp_layers);
  place_on_device(sm, dev);
  const PairStats st = evaluate_pairs(*sm.model, sm.pp.get(), sm.model_params(), s, lc, mb, 0, ctx.topo.dp_comm());
  if (ctx.topo.is_root()) {
    nlohmann::json j;
    j["split"] = split, j["n"] = st.n;
    j["loss"] = st.loss / st.n, j["pref_acc"] = st.correct / st.n, j["margin"] = st.margin / st.n;
    j["rewards/chosen"] = st.reward_chosen / st.n, j["rewards/rejected"] = st.reward_rejected / st.n;
    j["rewards/accuracies"] = j["pref_acc"], j["rewards/margins"] = j["margin"];  // TRL's names, as metrics.jsonl
    j["logps/chosen"] = st.logp_chosen / st.n, j["logps/rejected"] = st.logp_rejected / st.n;
    std::cout << j.dump() << std::endl;
  }
  return 0;
}

int cmd_precompute_ref(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo precompute-ref options");
  std::string model_dir, data, device;
  int64_t micro = 0, micro_tokens = 0;
  desc.add_options()
    ("model", po::value(&model_dir)->required(), "reference model directory (Hugging Face layout)")
    ("data", po::value(&data)->required(), "dataset .h5; gains ref_logp_chosen/ref_logp_rejected in every pair split")
    ("micro-batch", po::value(&micro)->default_value(16), "pairs per forward")
    ("micro-batch-tokens", po::value(&micro_tokens)->default_value(0), "> 0: forwards of whole pairs up to N tokens instead of --micro-batch pairs");
  ParallelOptions par;
  add_parallel_options(desc, par);
  add_device_option(desc, device);
  po::variables_map vm;
  if (!parse_args("precompute-ref", "[mpirun -np N] metapo precompute-ref [--tp T] [--pp P] --model DIR --data FILE.h5", desc, argc,
                  argv, vm, ctx))
    return 0;
  apply_parallel_options(ctx, par);
  const Device dev = check_device_option(device, par, ctx.topo.local_rank);
  MP_CHECK(micro > 0, "--micro-batch ", micro, ": must be positive");
  MP_CHECK(micro_tokens >= 0, "--micro-batch-tokens ", micro_tokens, ": must be >= 0 (0: --micro-batch pairs)");
  const LlamaConfig config = load_hf_config(model_dir);
  // The file is rewritten through DATA.partial beside it: a directory it cannot write into is said
  // before the scoring, not after.
  if (ctx.topo.is_root()) {
    check_dir_writable(data, "--data");
    MP_CHECK(!std::filesystem::exists(data) || ::access(data.c_str(), W_OK) == 0, "--data ", data, ": is read-only (precompute-ref writes the reference "
             "log-probs into it); make it writable or work on a copy");
  }
  const Dataset d = read_dataset(data);
  MP_CHECK(d.info.vocab_size <= config.vocab_size, data, ": vocab_size ", d.info.vocab_size,
           " is larger than the model's ", config.vocab_size, " (wrong tokenizer for this model?)");
  MP_CHECK(!d.pairs.empty(), data, ": holds no pair split (train, val, test) to score");
  const MicroBatching mb{micro, micro_tokens};
  for (const auto& [name, split] : d.pairs) {
    check_token_budget(split.size(), [&](int64_t i) { return pair_tokens(split, i); }, split.sample_id, mb,
                       data + ": /" + name, "raise it");
    note_past_context(split, config.max_position_embeddings, data + ": /" + name, ctx.topo.is_root());
  }
  // Opened once: the shard, and on rank 0 the fingerprint stored beside the log-probs.
  const HfModelReader reader(model_dir);
  ShardedModel sm = load_sharded_model(reader, ctx.topo, par.pp_layers);
  place_on_device(sm, dev);
  std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> ref;
  for (const auto& [name, split] : d.pairs) {
    std::vector<int64_t> idx(static_cast<size_t>(split.size()));
    for (int64_t i = 0; i < split.size(); ++i) idx[size_t(i)] = i;
    auto& [c, r] = ref[name];
    pair_logps(*sm.model, sm.pp.get(), sm.model_params(), split, idx, mb, ctx.topo.dp_comm(), c, r);
    if (ctx.topo.is_root()) std::printf("%s: %lld pairs scored\n", name.c_str(), (long long)split.size());
  }
  if (ctx.topo.is_root())
    write_ref_logps(data, ref, model_dir, config.max_position_embeddings, model_fingerprint(reader));
  ctx.topo.world_comm().barrier();
  if (ctx.topo.is_root()) std::printf("wrote reference log-probs into %s\n", data.c_str());
  return 0;
}

}  // namespace metapo::cli
