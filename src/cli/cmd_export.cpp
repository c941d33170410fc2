#include <iostream>

#include "metapo/cli/commands.h"
#include "metapo/io/hf_model.h"
#include "metapo/model/layout.h"

namespace metapo::cli {

int cmd_export(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo export options");
  std::string model, out, dtype;
  desc.add_options()
    ("model", po::value(&model)->required(), "source model directory (Hugging Face layout)")
    ("out", po::value(&out)->required(), "output directory (written atomically)")
    ("dtype", po::value(&dtype)->default_value("float32"), "stored dtype: float32, bfloat16 or float16");
  po::variables_map vm;
  if (!parse_args("export", "metapo export --model SRC --out DIR [--dtype float32|bfloat16|float16]",
                  desc, argc, argv, vm, ctx))
    return 0;
  if (ctx.topo.is_root()) {
    const HfModel m = load_hf_model(model);
    save_hf_model(out, m.config, m.params, dtype);
    std::cout << "wrote " << out << " (" << m.params.size() << " parameters, " << dtype << ")\n";
  }
  return 0;
}

}  // namespace metapo::cli
