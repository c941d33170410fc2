#include "metapo/kernels/tensor.h"

#include <algorithm>
#include <cstring>

#include "metapo/core/half.h"

namespace metapo::cpu {

template <typename T>
void copy(T* dst, const T* src, int64_t n) {
  if (n > 0) std::memcpy(dst, src, sizeof(T) * size_t(n));
}

template <typename T>
void fill(T* dst, T value, int64_t n) {
  if (n > 0) std::fill(dst, dst + n, value);
}

template <typename T>
void gather(T* dst, const T* src, const int32_t* idx, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[idx[i]];
}

template <typename T>
void scatter(T* dst, int64_t n_dst, const T* src, const int32_t* idx, int64_t n) {
  fill(dst, T(0), n_dst);
  for (int64_t i = 0; i < n; ++i) dst[idx[i]] = src[i];
}

void segment_sum(double* out, const double* x, const int64_t* cu, int64_t n_seg) {
  for (int64_t s = 0; s < n_seg; ++s) {
    double acc = 0.0;
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t) acc += x[t];
    out[s] = acc;
  }
}

template <typename T>
void widen(double* dst, const T* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = double(src[i]);
}

void round_bf16(float* dst, const float* src, int64_t n) {
#pragma omp parallel for schedule(static) if (n > (int64_t(1) << 16))
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(f32_to_bf16(src[i]));
}

template <typename T>
void add(T* x, const T* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

template <typename T>
void copy_rows(T* const* dst, const T* src, int64_t ld_src, int64_t width, int64_t n) {
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst[i], src + i * ld_src, sizeof(T) * size_t(width));
}

template <typename T>
void copy_2d(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t width, int64_t rows) {
  for (int64_t i = 0; i < rows; ++i) std::memcpy(dst + i * ld_dst, src + i * ld_src, sizeof(T) * size_t(width));
}

template <typename T>
void blocks_to_columns(T* dst, int64_t ld_dst, const T* src, int64_t block, int64_t rows, const int64_t* col0,
                       const int64_t* widths, int64_t n_blocks) {
  for (int64_t r = 0; r < n_blocks; ++r)
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(dst + i * ld_dst + col0[r], src + r * block + i * widths[r], sizeof(T) * size_t(widths[r]));
}

#define MP_INSTANTIATE(T)                                                                               \
  template void copy<T>(T*, const T*, int64_t);                                                        \
  template void fill<T>(T*, T, int64_t);                                                               \
  template void gather<T>(T*, const T*, const int32_t*, int64_t);                                      \
  template void scatter<T>(T*, int64_t, const T*, const int32_t*, int64_t);                            \
  template void widen<T>(double*, const T*, int64_t);                                                  \
  template void add<T>(T*, const T*, int64_t);                                                         \
  template void copy_rows<T>(T* const*, const T*, int64_t, int64_t, int64_t);                          \
  template void copy_2d<T>(T*, int64_t, const T*, int64_t, int64_t, int64_t);                             \
  template void blocks_to_columns<T>(T*, int64_t, const T*, int64_t, int64_t, const int64_t*, const int64_t*, \
                                     int64_t);
MP_INSTANTIATE(float)
MP_INSTANTIATE(double)
#undef MP_INSTANTIATE

}  // namespace metapo::cpu
