#include "metapo/kernels/optim.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "metapo/core/simd.h"

namespace metapo::cpu {

void adamw_step(float* p, const float* g, float* m, float* v, const uint8_t* decay, size_t count, float b1,
                float b2, float step_size, float inv_bc2_sqrt, float eps, float wd) {
  const int64_t n = int64_t(count);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (decay[i]) p[i] -= wd * p[i];
    m[i] = b1 * m[i] + (1.0f - b1) * g[i];
    v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
    p[i] -= step_size * m[i] / (std::sqrt(v[i]) * inv_bc2_sqrt + eps);
  }
}

void scale(float* x, float f, size_t n) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) x[i] *= f;
}

double sum_squares(const float* g, size_t n) {
  constexpr size_t kBlock = 1 << 16;
  const size_t nb = (n + kBlock - 1) / kBlock;
  std::vector<double> part(nb, 0.0);
#pragma omp parallel for schedule(static)
  for (size_t b = 0; b < nb; ++b) {
    double s = 0;
    for (size_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) s += double(g[i]) * double(g[i]);
    part[b] = s;
  }
  double s = 0;
  for (double x : part) s += x;
  return s;
}

void adam_precondition(float* s, const float* v, size_t n, float b2, float b2c, float bc2, float eps) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) s[i] /= std::sqrt((b2 * v[i] + b2c * s[i] * s[i]) / bc2) + eps;
}

METAPO_WIDE_LOOPS bool all_finite(const float* x, size_t n) {
  uint32_t bad = 0;
#pragma omp parallel for reduction(| : bad) schedule(static) if (n > (1u << 16))
  for (size_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, x + i, 4);
    bad |= uint32_t((b & 0x7f800000u) == 0x7f800000u);
  }
  return !bad;
}

}  // namespace metapo::cpu
