// metapo synth: writes a built-in synthetic preference dataset (data/synth.h describes the tasks and
// the vocabulary). Generation is cheap and deterministic; rank 0 builds and writes the file, every
// rank checks the options, so a bad value fails the same way on any number of ranks.
#include <filesystem>
#include <iostream>

#include "metapo/cli/commands.h"
#include "metapo/core/error.h"
#include "metapo/data/synth.h"
#include "metapo/io/dataset_h5.h"

namespace metapo::cli {

int cmd_synth(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo synth options");
  SynthConfig c;
  std::string out;
  desc.add_options()
    ("task", po::value(&c.task)->default_value(c.task), "sort | reverse | add")
    ("flip", po::value(&c.flip)->default_value(c.flip), "fraction of train pairs with chosen and rejected swapped, in [0, 0.5)")
    ("seed", po::value(&c.seed)->default_value(c.seed), "random seed")
    ("out", po::value(&out)->required(), "output dataset file (.h5)")
    ("n-train", po::value(&c.n_train)->default_value(c.n_train), "train pairs (0 leaves the split out)")
    ("n-val", po::value(&c.n_val)->default_value(c.n_val), "validation pairs (always clean)")
    ("n-test", po::value(&c.n_test)->default_value(c.n_test), "test pairs (always clean)")
    ("n-sft", po::value(&c.n_sft)->default_value(c.n_sft), "SFT examples (prompt + correct answer)")
    ("min-len", po::value(&c.min_len)->default_value(c.min_len), "fewest digits per operand")
    ("max-len", po::value(&c.max_len)->default_value(c.max_len), "most digits per operand")
    ("hard-fraction", po::value(&c.hard_fraction)->default_value(c.hard_fraction),
     "share of rejected answers that are near misses (else random digit strings)");
  po::variables_map vm;
  if (!parse_args("synth", "metapo synth --task sort|reverse|add --flip F --seed S --out FILE.h5", desc, argc,
                  argv, vm, ctx))
    return 0;
  check_synth_config(c);
  // An existing --out is replaced only when it is a dataset file (an earlier synth or
  // prepare_data.py output), never a file of the user's.
  check_output_file(out, "--out", {});
  std::error_code ec;
  if (std::filesystem::exists(out, ec) && std::filesystem::file_size(out, ec) > 0) {
    MP_CHECK(is_dataset_file(out), "--out ", out, ": exists and is not a metapo dataset file; metapo replaces only a file it "
             "wrote (remove it or choose another path)");
  }
  if (ctx.topo.is_root()) {
    const Dataset d = make_synth(c);
    write_dataset(out, d);
    // One line: what is in the file, including the realized flip and hard counts.
    std::string summary;
    for (const char* name : {"train", "val", "test"}) {
      if (!d.pairs.count(name)) continue;
      const PairSplit& s = d.pairs.at(name);
      int64_t flipped = 0, hard = 0;
      for (float q : s.quality) flipped += q == 0.0f;
      for (float h : s.columns.at("difficulty")) hard += h == 1.0f;
      summary += str_cat(", ", name, " ", s.size(), " pairs (", flipped, " flipped, ", hard, " hard)");
    }
    if (d.sft) summary += str_cat(", sft ", d.sft->size());
    std::cout << "wrote " << out << ": task " << c.task << summary << ", seed " << c.seed << "\n";
  }
  return 0;
}

}  // namespace metapo::cli
