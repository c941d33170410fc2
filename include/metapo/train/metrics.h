// Rank 0's training log: one progress line per step on stdout, a progress bar on stderr when it is a
// terminal, and the same figures appended to RUN/metrics.jsonl (flushed per line, so a killed run
// keeps what it logged).
#pragma once
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "metapo/core/timer.h"

namespace metapo {

class MetricsLog {
 public:
  // path empty or enabled == false: nothing is written (non-root ranks). A new run starts the file
  // empty; a resumed one (append) continues it, and its ETA counts from first_step.
  MetricsLog(const std::string& path, bool enabled, int64_t total_steps, bool append = false, int64_t first_step = 0);
  ~MetricsLog();
  // Appends j to the JSONL file; prints `line` (with an ETA) and updates the bar. A line that cannot
  // be appended (a full disk) throws naming the file and leaves no part of it there.
  void step(int64_t step, const nlohmann::json& j, const std::string& line);
  void event(const nlohmann::json& j, const std::string& line);  // eval lines and the like

 private:
  int fd_ = -1;
  std::string path_;
  bool enabled_, tty_;
  int64_t total_, first_;
  Timer clock_;
};

std::string format_duration(double seconds);

}  // namespace metapo
