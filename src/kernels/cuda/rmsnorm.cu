// RMSNorm forward and backward: one block per row, the row's sums reduced in shared memory by a fixed
// tree (so a row's result does not depend on the launch); the weight gradient summed over chunks of
// rows and then over the chunks, each in a fixed order (no atomics); the ghost dots one block per
// row, in double.
#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void forward_kernel(float* y, float* rstd, const float* x, const float* w, int64_t C, float eps) {
  __shared__ float shared[kThreads];
  const float* xi = x + blockIdx.x * C;
  float ss = 0;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) ss += xi[c] * xi[c];
  ss = block_sum(ss, shared);
  const float r = 1.0f / sqrtf(ss / float(C) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  float* yi = y + blockIdx.x * C;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) yi[c] = xi[c] * r * w[c];
}

__global__ void backward_dx_kernel(float* dx, const float* dy, const float* x, const float* w, const float* rstd,
                                   int64_t C, bool accumulate) {
  __shared__ float shared[kThreads];
  const float* xi = x + blockIdx.x * C;
  const float* gi = dy + blockIdx.x * C;
  float* dxi = dx + blockIdx.x * C;
  const float r = rstd[blockIdx.x];
  float dot = 0;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) dot += w[c] * gi[c] * xi[c];
  dot = block_sum(dot, shared);
  const float k = dot * r * r * r / float(C);
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    const float d = r * w[c] * gi[c] - k * xi[c];
    dxi[c] = accumulate ? dxi[c] + d : d;
  }
}

// The weight gradient in two fixed-order stages, so that it uses the whole GPU without atomics:
// part[k][c] = Σ over rows [k kRowChunk, (k+1) kRowChunk) of dy x rstd (one thread per column and
// chunk, rows in order), then dw[c] += Σ_k part[k][c] (one thread per column, chunks in order).
constexpr int64_t kRowChunk = 64;

__global__ void backward_dw_partial_kernel(float* part, const float* dy, const float* x, const float* rstd, int64_t n,
                                           int64_t C) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, k = blockIdx.y;
  if (c >= C) return;
  float s = 0;
  for (int64_t i = k * kRowChunk; i < min(n, (k + 1) * kRowChunk); ++i) s += dy[i * C + c] * x[i * C + c] * rstd[i];
  part[k * C + c] = s;
}

__global__ void backward_dw_sum_kernel(float* dw, const float* part, int64_t chunks, int64_t C) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= C) return;
  float s = 0;
  for (int64_t k = 0; k < chunks; ++k) s += part[k * C + c];
  dw[c] += s;
}

__global__ void ghost_kernel(const float* dy, const float* x, const float* rstd, const float* ghat_w, int64_t C,
                             double* rdot) {
  __shared__ double shared[kThreads];
  const int64_t i = blockIdx.x;
  double s = 0;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) s += double(ghat_w[c]) * double(dy[i * C + c]) * double(x[i * C + c]);
  s = block_sum(s, shared);
  if (threadIdx.x == 0) rdot[i] += s * double(rstd[i]);
}

}  // namespace

void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t n, int64_t C, double eps,
                     void* stream) {
  if (n <= 0) return;
  forward_kernel<<<unsigned(n), kThreads, 0, as_stream(stream)>>>(y, rstd, x, w, C, float(eps));
  check_launch("rmsnorm_forward");
}

void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t n, int64_t C, bool accumulate, void* stream) {
  if (n <= 0 || C <= 0) return;
  backward_dx_kernel<<<unsigned(n), kThreads, 0, as_stream(stream)>>>(dx, dy, x, w, rstd, C, accumulate);
  check_launch("rmsnorm_backward (dx)");
  const int64_t chunks = (n + kRowChunk - 1) / kRowChunk;
  MP_CHECK(chunks <= 65535, "rmsnorm_backward: ", n, " rows (at most ", 65535 * kRowChunk, ")");
  Scratch<float> part(size_t(chunks * C), stream);
  const unsigned col_blocks = unsigned((C + kThreads - 1) / kThreads);
  backward_dw_partial_kernel<<<dim3(col_blocks, unsigned(chunks)), kThreads, 0, as_stream(stream)>>>(part.get(), dy, x,
                                                                                                     rstd, n, C);
  check_launch("rmsnorm_backward (dw, partial sums)");
  backward_dw_sum_kernel<<<col_blocks, kThreads, 0, as_stream(stream)>>>(dw, part.get(), chunks, C);
  check_launch("rmsnorm_backward (dw)");
}

void rmsnorm_ghost_dots(const float* dy, const float* x, const float* rstd, const float* ghat_w, int64_t n,
                        int64_t C, double* rdot, void* stream) {
  if (n <= 0) return;
  ghost_kernel<<<unsigned(n), kThreads, 0, as_stream(stream)>>>(dy, x, rstd, ghat_w, C, rdot);
  check_launch("rmsnorm_ghost_dots");
}

}  // namespace metapo::cuda
