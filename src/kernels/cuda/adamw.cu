// AdamW on fp32 master weights (a whole buffer or a ZeRO-1 shard), element-wise as the CPU op.
#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, const uint8_t* decay, int64_t n, float b1,
                             float b2, float step_size, float inv_bc2_sqrt, float eps, float wd) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float pi = p[i];
    if (decay[i]) pi -= wd * pi;  // decoupled decay, before the Adam update
    const float gi = g[i];
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    m[i] = mi, v[i] = vi;
    p[i] = pi - step_size * mi / (sqrtf(vi) * inv_bc2_sqrt + eps);
  }
}

__global__ void scale_kernel(float* x, float f, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] *= f;
}

}  // namespace

void adamw_step(float* p, const float* g, float* m, float* v, const uint8_t* decay, size_t n, float b1, float b2,
                float step_size, float inv_bc2_sqrt, float eps, float wd, void* stream) {
  if (n == 0) return;
  adamw_kernel<<<blocks_for(int64_t(n)), 256, 0, as_stream(stream)>>>(p, g, m, v, decay, int64_t(n), b1, b2, step_size,
                                                                      inv_bc2_sqrt, eps, wd);
  check_launch("adamw_step");
}

void scale(float* x, float f, size_t n, void* stream) {
  if (n == 0) return;
  scale_kernel<<<blocks_for(int64_t(n)), 256, 0, as_stream(stream)>>>(x, f, int64_t(n));
  check_launch("scale");
}

}  // namespace metapo::cuda
