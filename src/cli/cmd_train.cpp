// metapo train (preference optimization) and metapo sft (supervised fine-tuning).
#include "metapo/cli/commands.h"
#include "metapo/cli/train_options.h"

namespace metapo::cli {

int cmd_train(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo train options");
  TrainConfig cfg;
  TrainOptionStrings s;
  add_train_options(desc, cfg, s, true);
  ParallelOptions par;
  add_parallel_options(desc, par);
  std::string device;
  add_device_option(desc, device);
  po::variables_map vm;
  if (!parse_args("train", "[mpirun -np N] metapo train [--tp T] [--pp P] --model DIR --data FILE.h5 --out RUN [--loss L] [--weighting W]",
                  desc, argc, argv, vm, ctx))
    return 0;
  finish_train_options(cfg, s, true, argc, argv);
  if (cfg.weighting != Weighting::Metapo && ctx.topo.is_root()) {
    // Given, but read only by MetaPO (an INI file shared between runs may hold them): said, not refused.
    for (const auto& [name, value] : vm) {
      const bool meta_only = name.rfind("meta-", 0) == 0 || name.rfind("stats-", 0) == 0 || name == "hypergrad" ||
                             name == "weight-floor";
      if (meta_only && !value.defaulted())
        std::printf("warning: --%s has no effect without --weighting metapo\n", name.c_str());
    }
    std::fflush(stdout);
  }
  if (ctx.topo.is_root()) {
    // A loss's or a weighting's own parameter given for another one: said, not refused, as above.
    const std::pair<const char*, bool> used[] = {
        {"simpo-gamma", cfg.loss.type == LossType::Simpo},     {"discopop-tau", cfg.loss.type == LossType::Discopop},
        {"wpo-alpha", cfg.weighting == Weighting::Wpo},        {"margin-tau", cfg.weighting == Weighting::Margin},
        {"weight-column", cfg.weighting == Weighting::Column}};
    for (const auto& [name, is_used] : used)
      if (!is_used && vm.count(name) && !vm[name].defaulted())
        std::printf("warning: --%s has no effect with --loss %s --weighting %s\n", name, loss_name(cfg.loss.type).c_str(),
                    weighting_name(cfg.weighting).c_str());
    std::fflush(stdout);
  }
  apply_parallel_options(ctx, par);
  cfg.device = check_device_option(device, par, ctx.topo.local_rank);
  cfg.pp_layers = par.pp_layers;
  return run_dpo(ctx.topo, cfg);
}

int cmd_sft(Context& ctx, int argc, char** argv) {
  po::options_description desc("metapo sft options");
  TrainConfig cfg;
  TrainOptionStrings s;
  add_train_options(desc, cfg, s, false);
  ParallelOptions par;
  add_parallel_options(desc, par);
  std::string device;
  add_device_option(desc, device);
  po::variables_map vm;
  if (!parse_args("sft", "[mpirun -np N] metapo sft [--tp T] [--pp P] --model DIR --data FILE.h5 --out RUN", desc, argc, argv, vm, ctx))
    return 0;
  finish_train_options(cfg, s, false, argc, argv);
  apply_parallel_options(ctx, par);
  cfg.device = check_device_option(device, par, ctx.topo.local_rank);
  cfg.pp_layers = par.pp_layers;
  return run_sft(ctx.topo, cfg);
}

}  // namespace metapo::cli
