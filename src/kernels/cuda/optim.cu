// Optimizer arithmetic on fp32 master weights (a whole buffer or a ZeRO-1 shard): AdamW and scaling
// element-wise as the CPU ops; the gradient norm's Σ x² in double over fixed blocks summed by a fixed
// tree; the finiteness test; Adam's preconditioning of MetaPO's validation gradient.
#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, const uint8_t* decay, int64_t n, float b1,
                             float b2, float step_size, float inv_bc2_sqrt, float eps, float wd) {
  MP_GRID_LOOP(i, n) {
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
  MP_GRID_LOOP(i, n)
    x[i] *= f;
}

constexpr int kThreads = 256;
constexpr int64_t kBlock = 1 << 16;  // elements per partial sum (as the CPU op)

__global__ void sum_squares_kernel(double* part, const float* x, int64_t n) {
  __shared__ double shared[kThreads];
  const int64_t b0 = blockIdx.x * kBlock, b1 = min(n, b0 + kBlock);
  double s = 0;
  for (int64_t i = b0 + threadIdx.x; i < b1; i += kThreads) s += double(x[i]) * double(x[i]);
  s = block_sum(s, shared);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// One thread sums the block partials in order.
__global__ void sum_parts_kernel(double* out, const double* part, int64_t nb) {
  double s = 0;
  for (int64_t b = 0; b < nb; ++b) s += part[b];
  *out = s;
}

__global__ void nonfinite_kernel(unsigned* bad, const float* x, int64_t n) {
  unsigned b = 0;
  MP_GRID_LOOP(i, n) b |= unsigned((__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u);
  if (b) *bad = 1;  // every writer writes the same value: no race on the result
}

__global__ void precondition_kernel(float* s, const float* v, int64_t n, float b2, float b2c, float bc2, float eps) {
  MP_GRID_LOOP(i, n) s[i] /= sqrtf((b2 * v[i] + b2c * s[i] * s[i]) / bc2) + eps;
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

double sum_squares(const float* x, size_t n, void* stream) {
  if (n == 0) return 0.0;
  const int64_t nb = (int64_t(n) + kBlock - 1) / kBlock;
  Scratch<double> part(size_t(nb) + 1, stream);
  sum_squares_kernel<<<unsigned(nb), kThreads, 0, as_stream(stream)>>>(part.get(), x, int64_t(n));
  check_launch("sum_squares");
  sum_parts_kernel<<<1, 1, 0, as_stream(stream)>>>(part.get() + nb, part.get(), nb);
  check_launch("sum_squares (parts)");
  double r = 0;
  check(cudaMemcpyAsync(&r, part.get() + nb, sizeof r, cudaMemcpyDeviceToHost, as_stream(stream)), "sum_squares");
  synchronize(stream);
  return r;
}

bool all_finite(const float* x, size_t n, void* stream) {
  if (n == 0) return true;
  Scratch<unsigned> bad(1, stream);
  check(cudaMemsetAsync(bad.get(), 0, sizeof(unsigned), as_stream(stream)), "all_finite");
  nonfinite_kernel<<<blocks_for(int64_t(n)), kThreads, 0, as_stream(stream)>>>(bad.get(), x, int64_t(n));
  check_launch("all_finite");
  unsigned r = 0;
  check(cudaMemcpyAsync(&r, bad.get(), sizeof r, cudaMemcpyDeviceToHost, as_stream(stream)), "all_finite");
  synchronize(stream);
  return r == 0;
}

void adam_precondition(float* s, const float* v, size_t n, float b2, float b2c, float bc2, float eps, void* stream) {
  if (n == 0) return;
  precondition_kernel<<<blocks_for(int64_t(n)), kThreads, 0, as_stream(stream)>>>(s, v, int64_t(n), b2, b2c, bc2, eps);
  check_launch("adam_precondition");
}

}  // namespace metapo::cuda
