#include "metapo/kernels/rope.h"

#include <cmath>


namespace metapo {

template <typename T>
void RopeTable<T>::build(const std::vector<double>& inv_freq, int64_t mp) {
  device_copy.reset();
  half = int64_t(inv_freq.size());
  max_pos = mp;
  cos.resize(size_t(mp * half));
  sin.resize(size_t(mp * half));
  for (int64_t p = 0; p < mp; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(p) * inv_freq[i];
      cos[p * half + i] = T(std::cos(a));
      sin[p * half + i] = T(std::sin(a));
    }
}

template struct RopeTable<float>;
template struct RopeTable<double>;

}  // namespace metapo

namespace metapo::cpu {

template <typename T>
void rope_apply(T* x, int64_t n, int64_t n_heads, int64_t D, int64_t ld, const int32_t* pos,
                const RopeTable<T>& tab, bool inverse) {
  const int64_t h2 = D / 2;
  const T sgn = inverse ? T(-1) : T(1);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const T* cs = tab.cos.data() + int64_t(pos[t]) * h2;
    const T* sn = tab.sin.data() + int64_t(pos[t]) * h2;
    for (int64_t h = 0; h < n_heads; ++h) {
      T* v = x + t * ld + h * D;
      for (int64_t i = 0; i < h2; ++i) {
        const T a = v[i], b = v[i + h2], c = cs[i], s = sgn * sn[i];
        v[i] = a * c - b * s;
        v[i + h2] = b * c + a * s;
      }
    }
  }
}

template void rope_apply<float>(float*, int64_t, int64_t, int64_t, int64_t, const int32_t*,
                                const RopeTable<float>&, bool);
template void rope_apply<double>(double*, int64_t, int64_t, int64_t, int64_t, const int32_t*,
                                 const RopeTable<double>&, bool);

}  // namespace metapo::cpu
