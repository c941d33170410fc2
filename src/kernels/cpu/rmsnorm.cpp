#include "metapo/kernels/rmsnorm.h"

#include <algorithm>
#include <cmath>

namespace metapo::cpu {

template <typename T>
void rmsnorm_forward(T* y, T* rstd, const T* x, const T* w, int64_t n, int64_t C, double eps) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * C;
    T* yi = y + i * C;
    T ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += xi[c] * xi[c];
    const T r = T(1) / std::sqrt(ss / T(C) + T(eps));
    rstd[i] = r;
    for (int64_t c = 0; c < C; ++c) yi[c] = xi[c] * r * w[c];
  }
}

template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd, int64_t n,
                      int64_t C, bool accumulate) {
  // dx_c = r * w_c dy_c - x_c r^3 / C * sum_k(w_k dy_k x_k)
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * C;
    const T* gi = dy + i * C;
    T* dxi = dx + i * C;
    const T r = rstd[i];
    T dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += w[c] * gi[c] * xi[c];
    const T k = dot * r * r * r / T(C);
    if (accumulate)
      for (int64_t c = 0; c < C; ++c) dxi[c] += r * w[c] * gi[c] - k * xi[c];
    else
      for (int64_t c = 0; c < C; ++c) dxi[c] = r * w[c] * gi[c] - k * xi[c];
  }
  // dw_c += sum_i dy_ic x_ic r_i: blocks of columns per thread, rows in order, so the sum is
  // deterministic whatever the thread count.
  constexpr int64_t kBlock = 64;
  const int64_t nblk = (C + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nblk; ++b) {
    const int64_t c0 = b * kBlock, c1 = std::min(C, c0 + kBlock);
    T acc[kBlock] = {};
    for (int64_t i = 0; i < n; ++i) {
      const T r = rstd[i];
      for (int64_t c = c0; c < c1; ++c) acc[c - c0] += dy[i * C + c] * x[i * C + c] * r;
    }
    for (int64_t c = c0; c < c1; ++c) dw[c] += acc[c - c0];
  }
}

template <typename T>
void rmsnorm_ghost_dots(const T* dy, const T* x, const T* rstd, const T* ghat_w, int64_t n, int64_t C,
                        double* rdot) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; ++c) s += double(ghat_w[c]) * double(dy[i * C + c]) * double(x[i * C + c]);
    rdot[i] += s * double(rstd[i]);
  }
}

template void rmsnorm_ghost_dots<float>(const float*, const float*, const float*, const float*, int64_t,
                                        int64_t, double*);
template void rmsnorm_ghost_dots<double>(const double*, const double*, const double*, const double*,
                                         int64_t, int64_t, double*);
template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t,
                                     double);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int64_t,
                                      int64_t, double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*,
                                      const float*, int64_t, int64_t, bool);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*,
                                       const double*, const double*, int64_t, int64_t, bool);

}  // namespace metapo::cpu
