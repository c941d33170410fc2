// Token embedding: the lookup, its gradient and its ghost dots. The gradient is deterministic without
// atomics: the token positions are sorted stably by token id (CUB's radix sort), then one block per
// distinct token adds that token's rows to its table row in token order: the CPU op's order, so the
// result is bit-identical to it.
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

constexpr int kThreads = 256;

__device__ bool in_range(int64_t tok, int64_t lo, int64_t hi) { return tok >= lo && (hi < 0 || tok < hi); }

__global__ void forward_kernel(float* x, const float* E, const int32_t* tokens, int64_t n, int64_t C, int64_t lo,
                               int64_t hi) {
  MP_GRID_LOOP(k, n * C) {
    const int64_t t = k / C, c = k % C, tok = tokens[t];
    x[k] = in_range(tok, lo, hi) ? E[(tok - lo) * C + c] : 0.0f;
  }
}

__global__ void iota_kernel(int32_t* v, int64_t n) {
  MP_GRID_LOOP(i, n) v[i] = int32_t(i);
}

// Block i: when sorted position i starts a run of one token, that token's rows in token order.
__global__ void backward_kernel(float* dE, const float* dx, const int32_t* tok_sorted, const int32_t* pos_sorted,
                                int64_t n, int64_t C, int64_t lo, int64_t hi) {
  const int64_t i = blockIdx.x;
  const int32_t tok = tok_sorted[i];
  if ((i > 0 && tok_sorted[i - 1] == tok) || !in_range(tok, lo, hi)) return;
  float* row = dE + (int64_t(tok) - lo) * C;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    float acc = row[c];
    for (int64_t j = i; j < n && tok_sorted[j] == tok; ++j) acc += dx[int64_t(pos_sorted[j]) * C + c];
    row[c] = acc;
  }
}

__global__ void ghost_kernel(const float* dx, const int32_t* tokens, const float* ghat, int64_t C, double* rdot,
                             int64_t lo, int64_t hi) {
  __shared__ double shared[kThreads];
  const int64_t t = blockIdx.x, tok = tokens[t];
  if (!in_range(tok, lo, hi)) return;  // the whole block leaves together
  const float* g = ghat + (tok - lo) * C;
  double s = 0;
  for (int64_t c = threadIdx.x; c < C; c += kThreads) s += double(g[c]) * double(dx[t * C + c]);
  s = block_sum(s, shared);
  if (threadIdx.x == 0) rdot[t] += s;
}

}  // namespace

void embedding_forward(float* x, const float* E, const int32_t* tokens, int64_t n, int64_t C, int64_t row_begin,
                       int64_t row_end, void* stream) {
  if (n <= 0 || C <= 0) return;
  forward_kernel<<<blocks_for(n * C), kThreads, 0, as_stream(stream)>>>(x, E, tokens, n, C, row_begin, row_end);
  check_launch("embedding_forward");
}

void embedding_backward(float* dE, const float* dx, const int32_t* tokens, int64_t n, int64_t C, int64_t row_begin,
                        int64_t row_end, void* stream) {
  if (n <= 0 || C <= 0) return;
  MP_CHECK(n < (int64_t(1) << 31), "embedding_backward: ", n, " tokens in one call");
  const cudaStream_t s = as_stream(stream);
  Scratch<int32_t> pos(size_t(n), s), tok_sorted(size_t(n), s), pos_sorted(size_t(n), s);
  iota_kernel<<<blocks_for(n), kThreads, 0, s>>>(pos.get(), n);
  check_launch("embedding_backward (positions)");
  size_t temp_bytes = 0;
  check(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, tokens, tok_sorted.get(), pos.get(), pos_sorted.get(),
                                        int(n), 0, 32, s),
        "embedding_backward (sort size)");
  Scratch<uint8_t> temp(temp_bytes, s);
  check(cub::DeviceRadixSort::SortPairs(temp.get(), temp_bytes, tokens, tok_sorted.get(), pos.get(), pos_sorted.get(),
                                        int(n), 0, 32, s),
        "embedding_backward (sort)");
  backward_kernel<<<unsigned(n), kThreads, 0, s>>>(dE, dx, tok_sorted.get(), pos_sorted.get(), n, C, row_begin, row_end);
  check_launch("embedding_backward");
}

void embedding_ghost_dots(const float* dx, const int32_t* tokens, const float* ghat, int64_t n, int64_t C,
                          double* rdot, int64_t row_begin, int64_t row_end, void* stream) {
  if (n <= 0 || C <= 0) return;
  ghost_kernel<<<unsigned(n), kThreads, 0, as_stream(stream)>>>(dx, tokens, ghat, C, rdot, row_begin, row_end);
  check_launch("embedding_ghost_dots");
}

}  // namespace metapo::cuda
