#pragma once
#include <chrono>

namespace metapo {

class Timer {
 public:
  Timer() : t0_(std::chrono::steady_clock::now()) {}
  void reset() { t0_ = std::chrono::steady_clock::now(); }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace metapo

#include <functional>
#include <map>
#include <string>

namespace metapo {

// Seconds spent per named operation, accumulated while enabled (metapo bench --profile). On a device
// whose ops only queue work, `wait` (set by the model) waits for the queue before and after each timed
// operation, so each one's time is its own.
class OpProfile {
 public:
  bool enabled = false;
  std::map<std::string, double> seconds;
  std::function<void()> wait;
  template <typename F>
  void run(const char* name, F&& f) {
    if (!enabled) return f();
    if (wait) wait();
    Timer t;
    f();
    if (wait) wait();
    seconds[name] += t.seconds();
  }
};

}  // namespace metapo
