// Rotary position embedding in place (the Hugging Face "rotate half" convention, kernels/rope.h): one
// thread per (token, head, pair); the cos/sin table is the device copy of a RopeTable, so Llama-3's
// frequency scaling, which only changes the table, needs nothing here.
#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

__global__ void rope_kernel(float* x, int64_t rows, int64_t heads, int64_t D, int64_t ld, const int32_t* pos,
                            const float* cos_t, const float* sin_t, float sgn) {
  const int64_t h2 = D / 2;
  MP_GRID_LOOP(k, rows * heads * h2) {
    const int64_t i = k % h2, h = (k / h2) % heads, t = k / (h2 * heads);
    float* v = x + t * ld + h * D;
    const int64_t p = int64_t(pos[t]) * h2 + i;
    const float a = v[i], b = v[i + h2], c = cos_t[p], s = sgn * sin_t[p];
    v[i] = a * c - b * s;
    v[i + h2] = b * c + a * s;
  }
}

}  // namespace

void rope(float* x, int64_t rows, int64_t heads, int64_t D, int64_t ld, const int32_t* pos, const float* cos,
          const float* sin, bool inverse, void* stream) {
  if (rows <= 0 || heads <= 0 || D < 2) return;
  rope_kernel<<<blocks_for(rows * heads * (D / 2)), 256, 0, as_stream(stream)>>>(x, rows, heads, D, ld, pos, cos, sin,
                                                                                 inverse ? -1.0f : 1.0f);
  check_launch("rope");
}

}  // namespace metapo::cuda
