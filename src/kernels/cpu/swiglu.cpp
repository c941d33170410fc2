#include "metapo/kernels/swiglu.h"

#include "metapo/kernels/vec_math.h"

namespace metapo::cpu {

template <typename T>
void swiglu_forward(T* h, const T* gu, int64_t n, int64_t I) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const T* g = gu + t * 2 * I;
    const T* u = g + I;
    T* ht = h + t * I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) ht[i] = g[i] / (T(1) + vexp(-g[i])) * u[i];
  }
}

template <typename T>
void swiglu_backward(T* dgu, const T* dh, const T* gu, int64_t n, int64_t I) {
  // silu(g) = g s, s = sigmoid(g); d silu / dg = s (1 + g (1 - s)).
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const T* g = gu + t * 2 * I;
    const T* u = g + I;
    const T* d = dh + t * I;
    T* dg = dgu + t * 2 * I;
    T* du = dg + I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) {
      const T s = T(1) / (T(1) + vexp(-g[i]));
      dg[i] = d[i] * u[i] * s * (T(1) + g[i] * (T(1) - s));
      du[i] = d[i] * g[i] * s;
    }
  }
}

template void swiglu_forward<float>(float*, const float*, int64_t, int64_t);
template void swiglu_forward<double>(double*, const double*, int64_t, int64_t);
template void swiglu_backward<float>(float*, const float*, const float*, int64_t, int64_t);
template void swiglu_backward<double>(double*, const double*, const double*, int64_t, int64_t);

}  // namespace metapo::cpu
