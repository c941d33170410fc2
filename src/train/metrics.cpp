#include "metapo/train/metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "metapo/core/error.h"
#include "metapo/io/checkpoint.h"

namespace metapo {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long t = long(s + 0.5);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

MetricsLog::MetricsLog(const std::string& path, bool enabled, int64_t total, bool append, int64_t first_step)
    : enabled_(enabled), tty_(enabled && isatty(STDERR_FILENO)), total_(total), first_(first_step) {
  if (!enabled_ || path.empty()) return;
  path_ = path;
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (append ? 0 : O_TRUNC), 0666);
  MP_CHECK(fd_ >= 0, path, ": cannot open for appending (", std::strerror(errno), ")");
}

MetricsLog::~MetricsLog() {
  if (fd_ >= 0) ::close(fd_);
  if (tty_) std::fprintf(stderr, "\n");
}

void MetricsLog::event(const nlohmann::json& j, const std::string& line) {
  if (!enabled_) return;
  if (fd_ >= 0) append_whole(fd_, path_, j.dump() + "\n");
  if (tty_) std::fprintf(stderr, "\r\033[K");
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

void MetricsLog::step(int64_t step, const nlohmann::json& j, const std::string& line) {
  if (!enabled_) return;
  const double el = clock_.seconds(), eta = el / double(std::max<int64_t>(step + 1 - first_, 1)) * double(total_ - step - 1);
  event(j, line + " | ETA " + format_duration(eta));
  if (tty_) {
    const int width = 30, done = int(double(width) * double(step + 1) / double(std::max<int64_t>(total_, 1)));
    std::fprintf(stderr, "[%s%s] %lld/%lld", std::string(size_t(done), '#').c_str(),
                 std::string(size_t(width - done), '.').c_str(), (long long)(step + 1), (long long)total_);
    std::fflush(stderr);
  }
}

}  // namespace metapo
