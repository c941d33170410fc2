// Options shared by `metapo train` and `metapo sft` (TRL's names where TRL has one).
#pragma once
#include <string>

#include "metapo/cli/common.h"
#include "metapo/train/dpo.h"

namespace metapo::cli {

struct TrainOptionStrings {
  std::string loss = "sigmoid", weighting = "uniform", max_time, hang_timeout = "auto", recompute = "none", truncation_mode = "keep_end",
              precision = "fp32";
};

// A duration D-HH:MM:SS, HH:MM:SS, MM:SS or seconds, in seconds; throws naming the option.
double parse_duration(const std::string& text, const std::string& option);

// Adds the options to desc, storing into cfg / s.
void add_train_options(po::options_description& desc, TrainConfig& cfg, TrainOptionStrings& s, bool preference);
// Parses the string options into cfg and checks ranges; errors name the option.
void finish_train_options(TrainConfig& cfg, const TrainOptionStrings& s, bool preference, int argc, char** argv);

}  // namespace metapo::cli
