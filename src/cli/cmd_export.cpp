#include <filesystem>
#include <iostream>

#include "metapo/cli/commands.h"
#include "metapo/io/hf_model.h"
#include "metapo/model/layout.h"
#include "metapo/train/train_state.h"

namespace metapo::cli {

int cmd_export(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo export options");
  std::string model, out, dtype;
  desc.add_options()
    ("model", po::value(&model)->required(), "source: a model directory (Hugging Face layout), a checkpoint RUN/step_XXXXXXXX.h5, or a run directory RUN (its latest checkpoint)")
    ("out", po::value(&out)->required(), "output directory (written atomically)")
    ("dtype", po::value(&dtype)->default_value("float32"), "stored dtype: float32, bfloat16 or float16");
  po::variables_map vm;
  if (!parse_args("export", "metapo export --model SRC|RUN|RUN/step_XXXXXXXX.h5 --out DIR [--dtype float32|bfloat16|float16]",
                  desc, argc, argv, vm, ctx))
    return 0;
  if (ctx.topo.is_root()) {
    namespace fs = std::filesystem;
    std::error_code ec;
    HfModel m;
    std::string from = model;
    // A checkpoint file, or a run directory (no config.json) whose `latest` names one.
    const bool checkpoint = fs::is_regular_file(model, ec) ||
                            (fs::is_directory(model, ec) && !fs::exists(fs::path(model) / "config.json", ec) &&
                             fs::exists(fs::path(model) / "latest", ec));
    if (checkpoint) {
      from = resolve_checkpoint(model);
      read_checkpoint_model(from, m.config, m.params);
    } else {
      m = load_hf_model(model);
    }
    save_hf_model(out, m.config, m.params, dtype);
    std::cout << "wrote " << out << " from " << from << " (" << m.params.size() << " parameters, " << dtype << ")\n";
  }
  return 0;
}

}  // namespace metapo::cli
