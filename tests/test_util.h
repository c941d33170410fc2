// Helpers shared by the unit tests: seeded random fills and a central finite-difference gradient.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "metapo/core/error.h"
#include "metapo/core/rng.h"

namespace metapo::test {

template <typename T>
std::vector<T> randn(size_t n, uint64_t seed, double scale = 1.0, double shift = 0.0) {
  Philox r(seed, 11, 22, 33);
  std::vector<T> v(n);
  for (auto& x : v) x = T(shift + scale * r.normal());
  return v;
}

template <typename To, typename From>
std::vector<To> cast(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

// max |a - b| / max(max |b|, tiny): the error relative to the reference's scale.
template <typename A, typename B>
double rel_max_err(const std::vector<A>& a, const std::vector<B>& b) {
  double num = 0, den = 1e-300;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(double(a[i]) - double(b[i])));
    den = std::max(den, std::abs(double(b[i])));
  }
  return num / den;
}

// d f / d x by central differences, x perturbed in place and restored.
inline std::vector<double> fd_grad(std::vector<double>& x, const std::function<double()>& f,
                                   double h = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double fp = f();
    x[i] = x0 - h;
    const double fm = f();
    x[i] = x0;
    g[i] = (fp - fm) / (2 * h);
  }
  return g;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

}  // namespace metapo::test

// Checks err < tol and prints the figure, so a test log shows the largest errors measured
// (grep "[err]").
#define EXPECT_ERR_LT(err, tol, what)                                                          \
  do {                                                                                         \
    const double e_ = (err);                                                                   \
    std::printf("[err] %-55s %.3e (tol %.1e)\n", std::string(what).c_str(), e_, double(tol)); \
    EXPECT_LT(e_, (tol)) << (what);                                                            \
  } while (0)

namespace metapo::test {
// The message of the metapo::Error that f throws, or "(no error)".
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const ::metapo::Error& e) {
    return e.what();
  }
  return "(no error)";
}

// "Suite.Test[/param] what", for the [err] lines.
inline std::string errname(const std::string& what) {
  const auto* t = ::testing::UnitTest::GetInstance()->current_test_info();
  return std::string(t->test_suite_name()) + "." + t->name() + " " + what;
}
}  // namespace metapo::test
