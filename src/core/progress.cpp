#include "metapo/core/progress.h"

#include <utility>

namespace metapo {

namespace {
std::function<void()> g_hook;
}  // namespace

void set_progress_hook(std::function<void()> hook) { g_hook = std::move(hook); }

void report_progress() {
  if (g_hook) g_hook();
}

}  // namespace metapo
