// Progress reports for the hang watchdog (train/watchdog.h) from code that knows nothing of it: a
// chunk of a pass over pairs (pair_logps), a piece of a model file read (HfModelReader). The trainer
// sets the hook while its watchdog runs (ProgressTicks in trainer.cpp); other commands leave it
// empty, and a report is then a no-op.
#pragma once
#include <functional>

namespace metapo {

// Set or clear (empty) the hook; from one thread, while no report is being made.
void set_progress_hook(std::function<void()> hook);
// Calls the hook when one is set. Safe from several threads at once (the hook must be too).
void report_progress();

}  // namespace metapo
