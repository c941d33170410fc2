// Linear layers (nn.Linear's layout, y = x w^T + b) on cuBLASLt, and the ghost dot products of their
// weight gradient (DESIGN §6): the bias through the GEMM's epilogue in the forward; in the backward the
// bias gradient is a column sum one thread per column in row order, and the ghost dots a GEMM
// P = x Ĝ^T, a row-wise dot with dy in double (one block per row, fixed tree) and a per-segment sum in
// row order. No atomics anywhere.
#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void column_sum_kernel(float* db, const float* dy, int64_t rows, int64_t out, bool accumulate) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= out) return;
  float s = 0;
  for (int64_t i = 0; i < rows; ++i) s += dy[i * out + c];
  db[c] = accumulate ? db[c] + s : s;
}

// row_dot[t] = Σ_o dy[t, o] (P[t, o] + ĝ_b[o]).
__global__ void row_dot_kernel(double* row_dot, const float* dy, const float* P, const float* ghat_b, int64_t out) {
  __shared__ double shared[kThreads];
  const int64_t t = blockIdx.x;
  double s = 0;
  for (int64_t o = threadIdx.x; o < out; o += kThreads)
    s += double(dy[t * out + o]) * (double(P[t * out + o]) + (ghat_b ? double(ghat_b[o]) : 0.0));
  s = block_sum(s, shared);
  if (threadIdx.x == 0) row_dot[t] = s;
}

// rdot[seg[s]] += Σ_{t ∈ [seg[s], seg[s+1])} row_dot[t], one thread per segment.
__global__ void segment_add_kernel(double* rdot, const double* row_dot, const int64_t* seg, int64_t n_seg) {
  MP_GRID_LOOP(s, n_seg) {
    const int64_t a = seg[s], b = seg[s + 1];
    if (a >= b) continue;
    double acc = 0;
    for (int64_t t = a; t < b; ++t) acc += row_dot[t];
    rdot[a] += acc;
  }
}

}  // namespace

void linear_forward(const BlasCall& blas, float* y, const float* x, const float* w, const float* b, int64_t rows, int64_t in,
                    int64_t out, void* stream) {
  // y[rows, out] = x[rows, in] w[out, in]^T (+ b[out], the epilogue)
  gemm(blas, false, true, rows, out, in, 1.0f, x, in, w, in, 0.0f, y, out, b, stream);
}

void linear_backward(const BlasCall& blas, float* dx, float* dw, float* db, const float* dy, const float* x, const float* w,
                     int64_t rows, int64_t in, int64_t out, bool accumulate, void* stream) {
  // dx[rows, in] = dy[rows, out] w[out, in]
  if (dx) gemm(blas, false, false, rows, in, out, 1.0f, dy, out, w, in, 0.0f, dx, in, nullptr, stream);
  // dw[out, in] (+)= dy^T x
  gemm(blas, true, false, out, in, rows, 1.0f, dy, out, x, in, accumulate ? 1.0f : 0.0f, dw, in, nullptr, stream);
  if (db && out > 0) {
    column_sum_kernel<<<unsigned((out + kThreads - 1) / kThreads), kThreads, 0, as_stream(stream)>>>(db, dy, rows, out,
                                                                                                   accumulate);
    check_launch("linear_backward (db)");
  }
}

void linear_ghost_dots(const BlasCall& blas, const float* x, const float* dy, const float* ghat_w, const float* ghat_b,
                       int64_t rows, int64_t in, int64_t out, const int64_t* seg, int64_t n_seg, double* rdot,
                       void* stream) {
  if (rows <= 0 || n_seg <= 0) return;
  Scratch<float> P(size_t(rows * out), stream);
  Scratch<double> row_dot(size_t(rows), stream);
  // P[rows, out] = x[rows, in] Ĝ[out, in]^T
  gemm(blas, false, true, rows, out, in, 1.0f, x, in, ghat_w, in, 0.0f, P.get(), out, nullptr, stream);
  row_dot_kernel<<<unsigned(rows), kThreads, 0, as_stream(stream)>>>(row_dot.get(), dy, P.get(), ghat_b, out);
  check_launch("linear_ghost_dots (rows)");
  segment_add_kernel<<<blocks_for(n_seg, 128), 128, 0, as_stream(stream)>>>(rdot, row_dot.get(), seg, n_seg);
  check_launch("linear_ghost_dots (segments)");
}

}  // namespace metapo::cuda
