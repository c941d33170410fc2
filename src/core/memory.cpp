#include "metapo/core/memory.h"

#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstdio>

#include "metapo/core/error.h"

namespace metapo {

namespace {

struct Counters {
  std::atomic<int64_t> now[kNumMem] = {}, peak[kNumMem] = {};
  std::atomic<int64_t> total{0}, total_peak{0};
};
Counters& counters() {
  static Counters c;
  return c;
}

void raise(std::atomic<int64_t>& peak, int64_t v) {
  int64_t p = peak.load(std::memory_order_relaxed);
  while (v > p && !peak.compare_exchange_weak(p, v, std::memory_order_relaxed)) {
  }
}

}  // namespace

const char* mem_name(Mem m) {
  static const char* const names[kNumMem] = {"other",       "params",    "grads",  "optimizer", "activations",
                                             "workspace",   "metapo",    "comm",   "data"};
  return names[int(m)];
}

void mem_add(Mem m, int64_t bytes) {
  Counters& c = counters();
  const int k = int(m);
  raise(c.peak[k], c.now[k].fetch_add(bytes, std::memory_order_relaxed) + bytes);
  raise(c.total_peak, c.total.fetch_add(bytes, std::memory_order_relaxed) + bytes);
}

MemBytes mem_current() {
  MemBytes b{};
  for (int k = 0; k < kNumMem; ++k) b[std::size_t(k)] = counters().now[k].load(std::memory_order_relaxed);
  return b;
}

MemBytes mem_peak() {
  MemBytes b{};
  for (int k = 0; k < kNumMem; ++k) b[std::size_t(k)] = counters().peak[k].load(std::memory_order_relaxed);
  return b;
}

int64_t mem_peak_total() { return counters().total_peak.load(std::memory_order_relaxed); }

void mem_reset_peaks() {
  Counters& c = counters();
  for (int k = 0; k < kNumMem; ++k) c.peak[k].store(c.now[k].load());
  c.total_peak.store(c.total.load());
}

void check_fits_memory(double bytes, const std::string& what) {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return;
  const double have = double(pages) * double(page);
  char need[32], total[32];
  std::snprintf(need, sizeof need, "%.3g", bytes / double(1ull << 30));
  std::snprintf(total, sizeof total, "%.1f", have / double(1ull << 30));
  MP_CHECK(bytes <= have, what, " needs ", need, " GiB, more than this machine's ", total, " GiB of memory");
}

}  // namespace metapo
