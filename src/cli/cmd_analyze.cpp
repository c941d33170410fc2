// metapo analyze: what a MetaPO run's weight net decides and why (DESIGN §6, "Interpretability";
// docs/metapo.md). The computation is in train/analyze.h; this file parses options, checks that the
// inputs belong together, and writes the outputs on rank 0.
#include <cstdio>
#include <filesystem>
#include <iostream>

#include <nlohmann/json.hpp>

#include "metapo/cli/commands.h"
#include "metapo/core/error.h"
#include "metapo/io/dataset_h5.h"
#include "metapo/io/hf_model.h"
#include "metapo/train/analyze.h"
#include "metapo/train/evaluation.h"

namespace metapo::cli {

namespace fs = std::filesystem;

int cmd_analyze(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo analyze options");
  std::string run_dir, data, split, model_dir, out;
  AnalyzeOptions opt;
  int64_t micro = 0;
  desc.add_options()
    ("run", po::value(&run_dir)->required(), "run directory of `metapo train --weighting metapo` (metapo.json, run.json, final/)")
    ("data", po::value(&data)->required(), "dataset .h5 the run trained on, with reference log-probs")
    ("split", po::value(&split)->default_value("train"), "pair split to analyze (pairs of other splits have no history)")
    ("model", po::value(&model_dir), "model for the instantaneous margin and loss (default: RUN/final)")
    ("ig-steps", po::value(&opt.ig_steps)->default_value(64), "integrated gradients: trapezoid intervals")
    ("permutation-repeats", po::value(&opt.permutation_repeats)->default_value(3), "permutation importance: shuffles per feature")
    ("max-pairs", po::value(&opt.max_pairs)->default_value(2000), "pairs attributed (a seeded sample when more; 0: all)")
    ("seed", po::value(&opt.seed)->default_value(0), "seed of the attribution sample and the permutations")
    ("micro-batch", po::value(&micro)->default_value(16), "pairs per forward")
    ("out", po::value(&out), "analysis JSON (default: RUN/analysis.json); pair_weights.jsonl goes next to it");
  po::variables_map vm;
  if (!parse_args("analyze", "[mpirun -np N] metapo analyze --run RUN --data FILE.h5 [--split train]", desc, argc,
                  argv, vm, ctx))
    return 0;
  MP_CHECK(fs::is_directory(run_dir), "--run ", run_dir, ": no such run directory");
  if (model_dir.empty()) model_dir = (fs::path(run_dir) / "final").string();
  if (out.empty()) out = (fs::path(run_dir) / "analysis.json").string();
  const std::string pairs_out = (fs::path(out).parent_path() / "pair_weights.jsonl").string();
  // Neither output may replace what analyze reads, nor the other output.
  const std::vector<std::string> inputs = {(fs::path(run_dir) / "metapo.json").string(), (fs::path(run_dir) / "run.json").string(),
                                           (fs::path(run_dir) / "metrics.jsonl").string(), data, model_dir};
  MP_CHECK(fs::path(out).filename() != "pair_weights.jsonl", "--out ", out,
           ": pair_weights.jsonl is the name of analyze's other output, written next to --out; choose another name");
  const OwnOutput own_analysis{
      [](const nlohmann::json& j) { return j.is_object() && j.contains("with_history") && j.contains("summary"); },
      "an analyze output (analysis.json)", true};
  const OwnOutput own_pairs{
      [](const nlohmann::json& j) { return j.is_object() && j.contains("sample_id") && j.contains("weight_normalized"); },
      "an analyze output (pair_weights.jsonl)", false};
  check_output_file(out, "--out", inputs, own_analysis);
  check_output_file(pairs_out, "--out " + out + ": its pair_weights.jsonl", inputs, own_pairs);

  const MetaRun run = read_meta_run((fs::path(run_dir) / "metapo.json").string());
  std::vector<std::string> notes;
  const std::string run_json = (fs::path(run_dir) / "run.json").string();
  const RunRecord record = read_run_record(run_json);
  const LossConfig loss = record.loss(run_json, &notes);
  const DatasetInfo info = read_dataset_info(data);
  PairSplit s = read_pair_split(data, split);
  MP_CHECK(s.size() > 0, data, ": /", split, " has no pairs");
  MP_CHECK(s.has_ref() || !loss_uses_reference(loss.type), data, ": /", split,
           " has no reference log-probs, which loss ", loss_name(loss.type),
           " needs (run metapo precompute-ref with the run's reference model first)");
  // The run's training split, as run.json records it (runs before it was recorded are not checked).
  if (split == "train" && record.options.contains("data_fingerprint") && record.options["data_fingerprint"].is_string()) {
    const std::string want = record.options["data_fingerprint"].get<std::string>(), have = fingerprint(s);
    MP_CHECK(have == want, data, ": /train is not the training split ", run_dir, " was trained on (fingerprint ", have,
             ", run.json records ", want, ")");
  }
  // The training split's every pair has a row in the table; an id past it means another dataset.
  if (split == "train")
    for (int64_t id : s.sample_id)
      MP_CHECK(id >= 0 && id < run.stat_rows, data, ": /train sample id ", id, " is outside ", run_dir,
               "/metapo.json's pair table of ", run.stat_rows, " rows (not the dataset this run trained on?)");
  // The run's cut of the sequences (run.json's --max-length, --max-prompt-length, --truncation-mode):
  // the features are those of the pairs as the trainer saw them, and the reference log-probs of the
  // pairs cut are computed again on the cut sequences with the run's reference model, as it did.
  Truncation cut_by;
  auto option_int = [&](const char* key) {
    return record.options.contains(key) && record.options[key].is_number_integer() ? record.options[key].get<int64_t>()
                                                                                   : int64_t(0);
  };
  cut_by.max_length = option_int("max_length"), cut_by.max_prompt_length = option_int("max_prompt_length");
  cut_by.keep_end = record.options.value("truncation_mode", std::string("keep_end")) != "keep_start";
  if (cut_by.active()) {
    const std::vector<int64_t> cut = truncate_pairs(s, cut_by, data + ": /" + split);
    if (!cut.empty()) {
      notes.push_back(str_cat(cut.size(), " of ", s.size(), " pairs cut as the run cut them (", cut_by.describe(), ")"));
      if (s.has_ref()) {
        const std::string key = record.options.contains("ref_model") ? "ref_model" : "model";
        const std::string ref_dir =
            record.options.contains(key) && record.options[key].is_string() ? record.options[key].get<std::string>() : "";
        MP_CHECK(!ref_dir.empty() && fs::is_directory(ref_dir), data, ": /", split, ": ", cut.size(),
                 " pairs are cut as the run cut them (", cut_by.describe(), "), and their reference log-probs must be computed again with the "
                 "run's reference model ", ref_dir.empty() ? "(not recorded)" : ref_dir, ", which is not found from here");
        ensure_ref_logps(s, split, ref_dir, MicroBatching{micro, 0}, ctx.topo, {}, cut, Device::CPU);
      }
    }
  }
  const HfModel hf = load_hf_model(model_dir);
  MP_CHECK(info.vocab_size <= hf.config.vocab_size, data, ": vocab_size ", info.vocab_size,
           " is larger than the model's ", hf.config.vocab_size, " (", model_dir, ")");

  LlamaModel<float> model(hf.config);
  const AnalyzeInput in = analysis_input(model, hf.params.data(), s, run, loss, micro, ctx.topo);
  // Replicated: every rank computes the same result; only rank 0 reports and writes.
  opt.features = run.features_used;
  const AnalyzeResult r = analyze_weights(run.make_net(), run.make_standardizer(), in, opt);
  if (!ctx.topo.is_root()) return 0;

  for (const std::string& n : notes) std::printf("note: %s\n", n.c_str());
  std::printf("metapo analyze: %s, /%s of %s, model %s, loss %s (beta %g)\n", run_dir.c_str(), split.c_str(),
              data.c_str(), model_dir.c_str(), loss_name(loss.type).c_str(), loss.beta);
  std::fputs(summary_text(r).c_str(), stdout);
  nlohmann::json context;
  context["run"] = run_dir, context["data"] = data, context["split"] = split, context["model"] = model_dir;
  context["loss"] = loss_name(loss.type), context["beta"] = loss.beta;
  context["options"] = {{"ig_steps", opt.ig_steps}, {"permutation_repeats", opt.permutation_repeats},
                        {"max_pairs", opt.max_pairs}, {"seed", opt.seed}};
  context["notes"] = notes;
  write_files_atomic({{out, analysis_json(r, context).dump(2) + "\n"}, {pairs_out, pair_weights_jsonl(r, in)}});
  std::printf("wrote %s and %s\n", out.c_str(), pairs_out.c_str());
  std::cout << summary_json(r).dump() << std::endl;
  return 0;
}

}  // namespace metapo::cli
