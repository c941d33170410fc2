// The hang watchdog (train/watchdog.h).
#include "metapo/train/watchdog.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

namespace metapo {

namespace {

double clock_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr size_t kRecentSteps = 51;  // the median is over the last this many step times

}  // namespace

HangWatchdog::HangWatchdog(const HangConfig& cfg, std::string who, std::function<void(const std::string&)> on_hang)
    : cfg_(cfg), who_(std::move(who)), on_hang_(std::move(on_hang)) {
  last_progress_ = phase_since_ = clock_seconds();
  if (cfg_.timeout_s != 0) thread_ = std::thread([this] { run(); });
}

HangWatchdog::~HangWatchdog() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void HangWatchdog::phase(const char* name, int64_t step) {
  std::lock_guard<std::mutex> lk(mu_);
  phase_ = name, step_ = step, phase_since_ = clock_seconds();
}

void HangWatchdog::set_loading(bool loading) {
  std::lock_guard<std::mutex> lk(mu_);
  loading_ = loading, loading_ticked_ = false, last_progress_ = clock_seconds();
}

void HangWatchdog::progress(double step_seconds) {
  std::lock_guard<std::mutex> lk(mu_);
  last_progress_ = clock_seconds();
  if (loading_) loading_ticked_ = true;
  if (step_seconds < 0) return;
  if (recent_.size() < kRecentSteps) {
    recent_.push_back(step_seconds);
  } else {
    recent_[next_] = step_seconds;
    next_ = (next_ + 1) % kRecentSteps;
  }
}

double HangWatchdog::limit() const {
  std::lock_guard<std::mutex> lk(mu_);
  return limit_locked();
}

double HangWatchdog::limit_locked() const {
  if (cfg_.timeout_s == 0) return 0;
  // While loading (set_loading) no limit until the first progress report (before it, data files are
  // read, which report nothing and may take any time), then at least the floor.
  if (loading_) return loading_ticked_ ? std::max(cfg_.floor_s, cfg_.timeout_s) : -1;
  if (cfg_.timeout_s > 0) return cfg_.timeout_s;
  if (recent_.empty()) return cfg_.floor_s;
  std::vector<double> v = recent_;
  std::nth_element(v.begin(), v.begin() + long(v.size() / 2), v.end());
  return std::max(cfg_.floor_s, cfg_.step_multiple * v[v.size() / 2]);
}

void HangWatchdog::run() {
  std::unique_lock<std::mutex> lk(mu_);
  double last_look = clock_seconds();
  while (!stop_) {
    const double lim = limit_locked();
    const double poll = lim > 0 ? std::min(cfg_.poll_s, lim / 10) : cfg_.poll_s;
    cv_.wait_for(lk, std::chrono::duration<double>(poll), [this] { return stop_; });
    if (stop_) return;
    const double now = clock_seconds();
    // A look that comes much later than asked means this process was stopped (suspended, or in a
    // debugger) rather than waiting: that time is not counted against the limit.
    const double late = now - last_look - poll;
    last_look = now;
    if (late > std::max(2.0, 2 * poll)) last_progress_ += late, phase_since_ += late;
    if (lim < 0 || now - last_progress_ <= lim) continue;
    const std::string of_step = step_ > 0 ? " of step " + std::to_string(step_) : "";
    char msg[768];
    std::snprintf(msg, sizeof msg,
                  "%s: no step completed for %.0f s (--hang-timeout %s%g s); waiting in '%s'%s for %.0f s: another "
                  "rank is stopped, dead or deadlocked; aborting the job with exit status %d (hung: requeue as a failure)",
                  who_.c_str(), now - last_progress_, cfg_.timeout_s < 0 ? "auto: " : "", lim, phase_, of_step.c_str(),
                  now - phase_since_, kExitHung);
    stop_ = true;
    lk.unlock();
    on_hang_(msg);
    return;
  }
}

}  // namespace metapo
