// One function per subcommand (src/cli/cmd_<name>.cpp); argv[0] is the subcommand's name.
#pragma once
#include "metapo/cli/common.h"

namespace metapo::cli {

int cmd_init(Context& ctx, int argc, char** argv);
int cmd_score(Context& ctx, int argc, char** argv);
int cmd_export(Context& ctx, int argc, char** argv);
int cmd_bench(Context& ctx, int argc, char** argv);
int cmd_synth(Context& ctx, int argc, char** argv);
int cmd_train(Context& ctx, int argc, char** argv);
int cmd_sft(Context& ctx, int argc, char** argv);
int cmd_eval(Context& ctx, int argc, char** argv);
int cmd_precompute_ref(Context& ctx, int argc, char** argv);
int cmd_generate(Context& ctx, int argc, char** argv);
int cmd_analyze(Context& ctx, int argc, char** argv);
int cmd_plan(Context& ctx, int argc, char** argv);

}  // namespace metapo::cli
