// A hung rank must not burn an allocation (docs/training.md "Hangs"). Every training rank runs a
// HangWatchdog thread. The trainer names the phase it enters (phase()) and reports each completed
// step (progress()); when no step completes within the limit, the watchdog reports which phase this
// rank has been waiting in and calls the abort function, which ends the whole job
// (abort_job(kExitHung) in the trainer, comm/mpi_session.h). A rank that is itself stopped (SIGSTOP, a dead peer's
// collective) cannot act, but the others block in a collective with it, and their watchdogs fire.
//
// The limit: fixed (--hang-timeout SECONDS), or "auto": max(floor, multiple × the median of the
// recent step times); before the first step is timed, the floor alone. While loading (set_loading)
// none until the first progress report, then at least the floor.
//
// Suspension: when the process itself was stopped (Slurm's `scontrol suspend`, a debugger), the
// watchdog's own clock checks arrive late; such a gap is not counted as waiting, so a job that is
// suspended and resumed is not aborted.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace metapo {

// The exit status of a job aborted by the watchdog: "hung, requeue as a failure" (docs/training.md).
constexpr int kExitHung = 125;

struct HangConfig {
  double timeout_s = -1;        // > 0: fixed; 0: off; < 0: auto (below)
  double floor_s = 600;         // auto: never below this
  double step_multiple = 20;    // auto: this many median step times
  double poll_s = 1;            // how often the watchdog looks (at most a tenth of a fixed limit)
};

class HangWatchdog {
 public:
  // on_hang(message) is called once, from the watchdog's thread, when the limit passes; it is
  // expected not to return (it aborts the job). `who` names this rank in the message.
  HangWatchdog(const HangConfig& cfg, std::string who, std::function<void(const std::string&)> on_hang);
  ~HangWatchdog();
  HangWatchdog(const HangWatchdog&) = delete;
  HangWatchdog& operator=(const HangWatchdog&) = delete;

  // The phase this rank enters, for the message ("gradient reduction"); step: the 1-based step it
  // belongs to (0: outside the steps). Cheap: no clock reset.
  void phase(const char* name, int64_t step);
  // A step completed in step_seconds (< 0: do not time it, e.g. a checkpoint restarting the clock).
  void progress(double step_seconds);
  // Loading (the start, until the training state exists: model, data, reference log-probs,
  // checkpoint): no limit until the first progress report (a piece of a model file, a chunk of a
  // pass over pairs), then at least the floor whatever --hang-timeout says. Restarts the clock.
  void set_loading(bool loading);
  // The limit in force now, in seconds (0: off; < 0: none yet, loading).
  double limit() const;

 private:
  void run();
  double limit_locked() const;

  HangConfig cfg_;
  std::string who_;
  std::function<void(const std::string&)> on_hang_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  const char* phase_ = "start-up";
  bool loading_ = false, loading_ticked_ = false;
  int64_t step_ = 0;
  double last_progress_ = 0;   // seconds on the watchdog's clock
  double phase_since_ = 0;
  std::vector<double> recent_;  // the last step times, for the median
  size_t next_ = 0;
  std::thread thread_;
};

}  // namespace metapo
