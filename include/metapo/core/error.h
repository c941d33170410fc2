// Errors: every bad input becomes one metapo::Error with a message that names the input (file, option,
// tensor) and the problem. The CLI catches it, prints one line, and aborts the MPI job so no rank hangs.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace metapo {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// An error that ends the command with its own exit status instead of 1: one a job script must tell
// apart from bad input (docs/slurm.md, the exit status table).
class ExitError : public Error {
 public:
  ExitError(const std::string& msg, int status) : Error(msg), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

// Concatenates its arguments with operator<< into one message.
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(str_cat(args...));
}

}  // namespace metapo

// Input validation (never assert): MP_CHECK(cond, "file ", path, ": bad thing").
#define MP_CHECK(cond, ...)                  \
  do {                                       \
    if (!(cond)) ::metapo::fail(__VA_ARGS__); \
  } while (0)
