// SwiGLU: h = silu(g) * u over rows of [g | u], and its backward, element-wise.
#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

__global__ void forward_kernel(float* h, const float* gu, int64_t n, int64_t I) {
  MP_GRID_LOOP(k, n * I) {
    const int64_t t = k / I, i = k % I;
    const float g = gu[t * 2 * I + i], u = gu[t * 2 * I + I + i];
    h[k] = g / (1.0f + expf(-g)) * u;
  }
}

// silu(g) = g s, s = sigmoid(g); d silu / dg = s (1 + g (1 - s)).
__global__ void backward_kernel(float* dgu, const float* dh, const float* gu, int64_t n, int64_t I) {
  MP_GRID_LOOP(k, n * I) {
    const int64_t t = k / I, i = k % I;
    const float g = gu[t * 2 * I + i], u = gu[t * 2 * I + I + i];
    const float s = 1.0f / (1.0f + expf(-g));
    dgu[t * 2 * I + i] = dh[k] * u * s * (1.0f + g * (1.0f - s));
    dgu[t * 2 * I + I + i] = dh[k] * g * s;
  }
}

}  // namespace

void swiglu_forward(float* h, const float* gu, int64_t n, int64_t I, void* stream) {
  if (n * I <= 0) return;
  forward_kernel<<<blocks_for(n * I), 256, 0, as_stream(stream)>>>(h, gu, n, I);
  check_launch("swiglu_forward");
}

void swiglu_backward(float* dgu, const float* dh, const float* gu, int64_t n, int64_t I, void* stream) {
  if (n * I <= 0) return;
  backward_kernel<<<blocks_for(n * I), 256, 0, as_stream(stream)>>>(dgu, dh, gu, n, I);
  check_launch("swiglu_backward");
}

}  // namespace metapo::cuda
