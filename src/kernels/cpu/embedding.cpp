#include "metapo/kernels/embedding.h"

#include <algorithm>
#include <cstring>
#include <limits>

namespace metapo::cpu {

template <typename T>
void embedding_forward(T* x, const T* E, const int32_t* tokens, int64_t n, int64_t C, int64_t row_begin,
                       int64_t row_end) {
  if (row_end < 0) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < n; ++t) std::memcpy(x + t * C, E + int64_t(tokens[t]) * C, sizeof(T) * C);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    if (tokens[t] >= row_begin && tokens[t] < row_end)
      std::memcpy(x + t * C, E + (int64_t(tokens[t]) - row_begin) * C, sizeof(T) * C);
    else
      std::fill(x + t * C, x + (t + 1) * C, T(0));
  }
}

template <typename T>
void embedding_backward(T* dE, const T* dx, const int32_t* tokens, int64_t n, int64_t C, int64_t row_begin,
                        int64_t row_end) {
  const int64_t hi = row_end < 0 ? std::numeric_limits<int64_t>::max() : row_end;
  constexpr int64_t kBlock = 64;
  const int64_t nblk = (C + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nblk; ++b) {
    const int64_t c0 = b * kBlock, c1 = std::min(C, c0 + kBlock);
    for (int64_t t = 0; t < n; ++t) {
      if (tokens[t] < row_begin || tokens[t] >= hi) continue;  // another shard's row
      T* row = dE + (int64_t(tokens[t]) - row_begin) * C;
      const T* g = dx + t * C;
      for (int64_t c = c0; c < c1; ++c) row[c] += g[c];
    }
  }
}

template <typename T>
void embedding_ghost_dots(const T* dx, const int32_t* tokens, const T* Ghat, int64_t n, int64_t C,
                          double* rdot, int64_t row_begin, int64_t row_end) {
  const int64_t hi = row_end < 0 ? std::numeric_limits<int64_t>::max() : row_end;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    if (tokens[t] < row_begin || tokens[t] >= hi) continue;
    const T* g = Ghat + (int64_t(tokens[t]) - row_begin) * C;
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < C; ++c) s += double(g[c]) * double(dx[t * C + c]);
    rdot[t] += s;
  }
}

template void embedding_ghost_dots<float>(const float*, const int32_t*, const float*, int64_t, int64_t, double*,
                                          int64_t, int64_t);
template void embedding_ghost_dots<double>(const double*, const int32_t*, const double*, int64_t, int64_t,
                                           double*, int64_t, int64_t);
template void embedding_forward<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t, int64_t);
template void embedding_forward<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t,
                                         int64_t);
template void embedding_backward<float>(float*, const float*, const int32_t*, int64_t, int64_t, int64_t, int64_t);
template void embedding_backward<double>(double*, const double*, const int32_t*, int64_t, int64_t, int64_t,
                                         int64_t);

}  // namespace metapo::cpu
