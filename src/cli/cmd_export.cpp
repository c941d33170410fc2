#include <filesystem>
#include <iostream>
#include <memory>

#include "metapo/cli/commands.h"
#include "metapo/io/hf_model.h"
#include "metapo/model/layout.h"
#include "metapo/train/run_files.h"
#include "metapo/train/train_state.h"

namespace metapo::cli {

int cmd_export(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo export options");
  std::string model, out, dtype, max_shard;
  desc.add_options()
    ("model", po::value(&model)->required(), "source: a model directory (Hugging Face layout), a checkpoint RUN/step_XXXXXXXX.h5, or a run directory RUN (its latest checkpoint)")
    ("out", po::value(&out)->required(), "output directory (written atomically)")
    ("dtype", po::value(&dtype)->default_value("auto"), "stored dtype: float32, bfloat16, float16, or auto (the dtype the source's config.json names; for a checkpoint, that of the run's model)")
    ("max-shard-size", po::value(&max_shard)->default_value("5GB"), "largest safetensors file (bytes, or with KB/MB/GB): a bigger model is split into model-0000k-of-0000n.safetensors with model.safetensors.index.json, as transformers' save_pretrained does");
  po::variables_map vm;
  if (!parse_args("export", "[mpirun -np N] metapo export --model SRC|RUN|RUN/step_XXXXXXXX.h5 --out DIR [--dtype auto|float32|bfloat16|float16]",
                  desc, argc, argv, vm, ctx))
    return 0;
  namespace fs = std::filesystem;
  std::error_code ec;
  // Before any reading: the dtype, and an --out that is new or a model directory.
  check_save_dtype(dtype, "--dtype", true);
  const uint64_t max_shard_bytes = parse_bytes(max_shard, "--max-shard-size");
  check_model_dir_target(out);
  MP_CHECK(!fs::exists(out, ec) || !fs::equivalent(out, model, ec), "--out ", out,
           ": is --model itself; export into another directory (an export never replaces its own source)");
  {
    const fs::path target = model_dir_path(out);
    MP_CHECK(target.filename() != "final" || !fs::exists(target.parent_path() / "run.json", ec), "--out ", out,
             ": the model a run wrote (", target.parent_path().string(),
             "/run.json, metrics.jsonl and metapo.json describe it); export into another directory");
  }
  // A checkpoint file, or a run directory (no config.json) whose `latest` names one.
  const bool checkpoint = fs::is_regular_file(model, ec) ||
                          (fs::is_directory(model, ec) && !fs::exists(fs::path(model) / "config.json", ec) &&
                           fs::exists(fs::path(model) / "latest", ec));
  // A run directory without checkpoints (a short run: --save-every-minutes never came): say what to give.
  MP_CHECK(checkpoint || !fs::exists(fs::path(model) / "run.json", ec), "--model ", model,
           ": a run directory without checkpoints (no `latest`); export its model with --model ",
           (fs::path(model) / "final").string(), ", or a checkpoint RUN/step_XXXXXXXX.h5");
  const std::string from = checkpoint ? resolve_checkpoint(model) : model;
  std::unique_ptr<HfModelReader> reader;
  if (!checkpoint) reader = std::make_unique<HfModelReader>(model);
  const LlamaConfig config = checkpoint ? read_checkpoint_config(from) : reader->config();
  // Each rank reads its window of the flat buffer and writes it: no rank holds the whole model.
  const size_t n = ParamLayout(config).total(), rank = size_t(ctx.topo.world_rank), ranks = size_t(ctx.topo.world_size);
  const size_t lo = n * rank / ranks, hi = n * (rank + 1) / ranks;
  std::vector<float> part(hi - lo);
  if (checkpoint)
    read_checkpoint_model(from, ctx.topo.world_comm(), config, lo, hi, part.data());
  else
    reader->read_runs({{lo, 0, hi - lo, false}}, part.data());
  // The model the weights came from, for its tokenizer files, generation_config.json and the
  // config.json keys metapo does not manage: --model itself, or for a checkpoint the run's --model.
  std::string source = checkpoint ? "" : model;
  if (checkpoint) {
    const fs::path run_dir = fs::is_directory(model, ec) ? fs::path(model) : fs::path(from).parent_path();
    std::string recorded;
    try {
      const RunRecord r = read_run_record((run_dir / "run.json").string());
      if (r.options.contains("model") && r.options["model"].is_string()) recorded = r.options["model"].get<std::string>();
    } catch (const Error&) {
    }
    if (!recorded.empty() && fs::is_regular_file(fs::path(recorded) / "config.json", ec))
      source = recorded;
    else if (ctx.topo.is_root())
      std::cout << "note: the run's model directory" << (recorded.empty() ? "" : " " + recorded)
                << " is not found from here: no tokenizer files or generation_config.json are copied into " << out
                << "\n";
  }
  const std::string write_dtype = resolve_save_dtype(dtype, config);
  save_hf_model_parallel(out, config, {{lo, 0, hi - lo, false}}, true, part.data(), write_dtype, ctx.topo.world_comm(),
                         max_shard_bytes, source);
  if (ctx.topo.is_root())
    std::cout << "wrote " << out << " from " << from << " (" << n << " parameters, " << write_dtype << ", " << ranks
              << " rank" << (ranks > 1 ? "s" : "") << ")\n";
  return 0;
}

}  // namespace metapo::cli
