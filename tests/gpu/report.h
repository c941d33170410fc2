// The GPU tests' result table: one row per check with its largest error and the tolerance it is held
// to, printed as Markdown; the rows over their tolerance are counted as failures.
#pragma once
#include <cstdio>
#include <string>
#include <vector>

namespace metapo {

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
