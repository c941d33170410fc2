// exp() that the compiler can vectorize (8x faster than scalar expf here). glibc's vector exp (libmvec)
// is only used under -ffast-math, which we do not want for the whole engine, so the fp32 kernels use
// this Cephes-style expf: range reduction by ln 2 in two parts (Cody-Waite) and a degree-6 minimax
// polynomial, relative error below 1e-7 on the clamped range (tested). Inputs below -87.3 (and -inf)
// give 0, above 88.3 about 2e38. Branch-free, so `omp simd` loops vectorize (needs -fno-trapping-math).
// double keeps std::exp: the double build is the finite-difference reference, where accuracy matters.
#pragma once
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>

namespace metapo::cpu {

inline float vexp(float x) {
  const float xc = std::min(std::max(x, -87.3f), 88.3f);
  // round to nearest: t + 0.5 is positive after adding 128, so truncation is floor
  const float n = float(int32_t(xc * 1.44269504088896341f + 128.5f) - 128);
  float r = xc - n * 0.693359375f;  // ln 2 = 0.693359375 - 2.12194440e-4, the first part exact
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;  // 2^n
  float s;
  std::memcpy(&s, &bits, sizeof s);
  return x < -87.3f ? 0.0f : y * s;
}

inline double vexp(double x) { return std::exp(x); }

}  // namespace metapo::cpu
