// The hang watchdog (train/watchdog.h) without MPI: the abort function is a recorder. It must fire
// once, naming the phase and the step, when no progress comes within a fixed limit; never while
// progress keeps coming; never when off; and the auto limit is max(floor, multiple x median step time).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>

#include "metapo/train/watchdog.h"

using namespace metapo;
using namespace std::chrono_literals;

namespace {

struct Recorder {
  std::mutex mu;
  std::string message;
  std::atomic<int> calls{0};
  std::function<void(const std::string&)> fn() {
    return [this](const std::string& m) {
      std::lock_guard<std::mutex> lk(mu);
      message = m;
      ++calls;
    };
  }
};

HangConfig fixed(double seconds) {
  HangConfig c;
  c.timeout_s = seconds, c.poll_s = 0.02;
  return c;
}

}  // namespace

TEST(Watchdog, FiresOnceNamingThePhaseAndTheStep) {
  Recorder rec;
  const auto t0 = std::chrono::steady_clock::now();
  {
    HangWatchdog w(fixed(0.3), "rank 1 of 2", rec.fn());
    w.progress(0.01);
    w.phase("gradient reduction (ZeRO-1 reduce-scatter)", 57);
    for (int i = 0; i < 200 && rec.calls == 0; ++i) std::this_thread::sleep_for(10ms);
    std::this_thread::sleep_for(200ms);  // time for a second call, which must not come
  }
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(rec.calls, 1);
  EXPECT_GE(waited, 0.3);
  EXPECT_NE(rec.message.find("rank 1 of 2: no step completed"), std::string::npos) << rec.message;
  EXPECT_NE(rec.message.find("waiting in 'gradient reduction (ZeRO-1 reduce-scatter)' of step 57"), std::string::npos)
      << rec.message;
  EXPECT_NE(rec.message.find("exit status 125"), std::string::npos) << rec.message;
  EXPECT_NE(rec.message.find("(--hang-timeout 0.3 s)"), std::string::npos) << rec.message;
}

TEST(Watchdog, SilentWhileStepsComplete) {
  Recorder rec;
  {
    HangWatchdog w(fixed(0.2), "rank 0", rec.fn());
    for (int step = 0; step < 60; ++step) {  // 0.6 s in all, each step well inside the limit
      w.phase("forward/backward", step + 1);
      std::this_thread::sleep_for(10ms);
      w.progress(0.01);
    }
  }
  EXPECT_EQ(rec.calls, 0) << rec.message;
}

// Loading (set_loading): no limit while nothing reports progress (reading files), then at least the
// floor, whatever the fixed limit; after loading, the fixed limit again.
TEST(Watchdog, LoadingHasNoLimitUntilItsFirstReportThenTheFloor) {
  Recorder rec;
  {
    HangConfig c = fixed(0.1);
    c.floor_s = 0.5;
    HangWatchdog w(c, "rank 0", rec.fn());
    w.set_loading(true);
    EXPECT_LT(w.limit(), 0);
    std::this_thread::sleep_for(400ms);  // four fixed limits without a report: still loading
    EXPECT_EQ(rec.calls, 0) << rec.message;
    w.progress(-1);  // a chunk of the reference pass
    EXPECT_DOUBLE_EQ(w.limit(), 0.5);
    std::this_thread::sleep_for(300ms);
    EXPECT_EQ(rec.calls, 0) << rec.message;
    w.set_loading(false);
    EXPECT_DOUBLE_EQ(w.limit(), 0.1);
    for (int i = 0; i < 100 && rec.calls == 0; ++i) std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(rec.calls, 1);
}

TEST(Watchdog, OffStartsNoThreadAndNeverFires) {
  Recorder rec;
  {
    HangWatchdog w(fixed(0), "rank 0", rec.fn());
    EXPECT_EQ(w.limit(), 0);
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(rec.calls, 0);
}

TEST(Watchdog, AutoLimitIsTheFloorOrAMultipleOfTheMedianStep) {
  Recorder rec;
  HangConfig c;
  c.timeout_s = -1, c.floor_s = 600, c.step_multiple = 20;
  HangWatchdog w(c, "rank 0", rec.fn());
  EXPECT_EQ(w.limit(), 600);  // no step timed yet
  for (int i = 0; i < 10; ++i) w.progress(2.0);
  EXPECT_EQ(w.limit(), 600);  // 20 x 2 s is below the floor
  for (int i = 0; i < 30; ++i) w.progress(60.0);
  EXPECT_EQ(w.limit(), 1200);  // median 60 s
  w.progress(10000.0);          // one slow step (a checkpoint, an evaluation) does not move the median
  EXPECT_EQ(w.limit(), 1200);
  EXPECT_EQ(rec.calls, 0);
}
