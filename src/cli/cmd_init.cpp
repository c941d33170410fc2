#include <cmath>
#include <iostream>

#include "metapo/cli/commands.h"
#include "metapo/io/hf_model.h"
#include "metapo/model/init.h"
#include "metapo/model/layout.h"

namespace metapo::cli {

int cmd_init(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo init options");
  std::string preset, out, dtype;
  uint64_t seed = 0;
  int64_t layers = 0;
  double std_dev = 0.02;
  desc.add_options()
    ("preset", po::value(&preset)->required(), "model shape: a name from configs/presets/ (tiny, bench-28m, gpu-1.3b) or configs/models/ (llama-3-8b, llama-2-70b, qwen2-7b, ...), or an .ini or config.json path")
    ("layers", po::value(&layers)->default_value(0), "decoder layers (0: the preset's): a real model's shape with a few layers")
    ("out", po::value(&out)->required(), "output model directory (Hugging Face layout)")
    ("seed", po::value(&seed)->default_value(0), "random seed")
    ("init-std", po::value(&std_dev)->default_value(0.02), "standard deviation of the weight matrices")
    ("dtype", po::value(&dtype)->default_value("float32"), "stored dtype: float32, bfloat16 or float16");
  po::variables_map vm;
  if (!parse_args("init", "metapo init --preset NAME --out DIR [--layers N] [--seed S] [--init-std X] [--dtype D]", desc, argc, argv, vm, ctx))
    return 0;
  MP_CHECK(layers >= 0, "--layers ", layers, ": must be >= 0");
  MP_CHECK(!out.empty(), "--out must not be empty");
  MP_CHECK(std::isfinite(std_dev) && std_dev >= 0, "--init-std ", std_dev, ": must be finite and >= 0");
  check_save_dtype(dtype, "--dtype");
  LlamaConfig c = preset_config(preset);
  if (layers > 0) c.num_hidden_layers = layers;
  c.validate("--preset " + preset);
  // The fp32 parameters; the file is written from them a chunk at a time (measured peak: 4 bytes a
  // parameter, fp32 or bf16 files alike).
  check_fits_memory(double(param_count(c)) * sizeof(float) + double(64 << 20),
                    str_cat("--preset ", preset, layers > 0 ? str_cat(" --layers ", layers) : std::string(), ": the model"));
  if (ctx.topo.is_root()) {
    save_hf_model(out, c, init_params(c, seed, std_dev), dtype);
    std::cout << "wrote " << out << " (" << param_count(c) << " parameters, preset " << preset
              << ", seed " << seed << ")\n";
  }
  return 0;
}

}  // namespace metapo::cli
