// The GPU tests' result table: one row per check with its largest error and the tolerance it is held
// to, printed as Markdown; the rows over their tolerance are counted as failures.
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include "metapo/kernels/cuda.h"

namespace metapo {

// The start of a GPU test that compares the GPU with the CPU: `--harness-on-cpu` (sets harness) runs
// the "GPU" side on the CPU too, where every error must be 0; without it and without a CUDA device the
// test is skipped. Prints what runs; returns 77 (CTest: skipped) to exit with, or 0 to go on.
inline int begin_gpu_test(const char* prog, const char* what, int argc, char** argv, bool& harness) {
  harness = argc > 1 && std::string(argv[1]) == "--harness-on-cpu";
  if (!harness && !cuda::device_available()) {
    std::printf("%s: no CUDA device here: skipped (tools/gpu-check.sh runs it on a GPU)\n", prog);
    return 77;
  }
  if (harness)
    std::printf("%s --harness-on-cpu: both sides on the CPU, every error must be 0\n\n", prog);
  else
    std::printf("%s on %s: %s\n\n", prog, cuda::device_name(), what);
  return 0;
}

class Report {
 public:
  void record(const std::string& check, double err, double tol) { rows_.push_back({check, err, tol}); }
  // Prints the table under a header naming the first column; returns the number of failed rows.
  int print(const char* what) const {
    std::printf("\n| %s | error | tolerance | |\n| --- | --- | --- | --- |\n", what);
    int failed = 0;
    for (const Row& r : rows_) {
      const bool ok = r.err <= r.tol;
      failed += !ok;
      std::printf("| %s | %.3e | %.1e | %s |\n", r.check.c_str(), r.err, r.tol, ok ? "ok" : "FAIL");
    }
    return failed;
  }

 private:
  struct Row {
    std::string check;
    double err, tol;
  };
  std::vector<Row> rows_;
};

}  // namespace metapo
