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

#include <map>
#include <string>

namespace metapo {

// Seconds spent per named operation, accumulated while enabled (metapo bench --profile).
class OpProfile {
 public:
  bool enabled = false;
  std::map<std::string, double> seconds;
  template <typename F>
  void run(const char* name, F&& f) {
    if (!enabled) return f();
    Timer t;
    f();
    seconds[name] += t.seconds();
  }
};

}  // namespace metapo
