// Data movement on the device: copies, fills, bf16 rounding and casts, gathers and scatters, per-segment
// sums, strided copies.
#include <cuda_bf16.h>

#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

template <typename T>
__global__ void fill_kernel(T* dst, T value, int64_t n) {
  MP_GRID_LOOP(i, n)
    dst[i] = value;
}

__global__ void round_bf16_kernel(float* dst, const float* src, int64_t n) {
  MP_GRID_LOOP(i, n)
    dst[i] = __bfloat162float(__float2bfloat16_rn(src[i]));
}

__global__ void to_bf16_kernel(uint16_t* dst, const float* src, int64_t n) {
  MP_GRID_LOOP(i, n)
    dst[i] = __bfloat16_as_ushort(__float2bfloat16_rn(src[i]));
}

__global__ void from_bf16_kernel(float* dst, const uint16_t* src, int64_t n) {
  MP_GRID_LOOP(i, n)
    dst[i] = __bfloat162float(__ushort_as_bfloat16(src[i]));
}

__global__ void gather_kernel(float* dst, const float* src, const int32_t* idx, int64_t n) {
  MP_GRID_LOOP(i, n) dst[i] = src[idx[i]];
}

__global__ void scatter_kernel(float* dst, const float* src, const int32_t* idx, int64_t n) {
  MP_GRID_LOOP(i, n) dst[idx[i]] = src[i];
}

// One thread per segment, summing in index order (the CPU's order: bit-identical).
__global__ void segment_sum_kernel(double* out, const double* x, const int64_t* cu, int64_t n_seg) {
  MP_GRID_LOOP(s, n_seg) {
    double acc = 0;
    for (int64_t i = cu[s]; i < cu[s + 1]; ++i) acc += x[i];
    out[s] = acc;
  }
}

__global__ void widen_kernel(double* dst, const float* src, int64_t n) {
  MP_GRID_LOOP(i, n) dst[i] = double(src[i]);
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
  MP_GRID_LOOP(i, n) x[i] += y[i];
}

__global__ void copy_rows_kernel(float* const* dst, const float* src, int64_t ld_src, int64_t width, int64_t n) {
  MP_GRID_LOOP(k, n * width) {
    const int64_t i = k / width, c = k % width;
    dst[i][c] = src[i * ld_src + c];
  }
}

// Launches an element-wise kernel over n elements (grid-stride) and checks the launch; nothing for n <= 0.
template <typename Kernel, typename... Args>
void elementwise(const char* op, Kernel kernel, int64_t n, void* stream, Args... args) {
  if (n <= 0) return;
  kernel<<<blocks_for(n), 256, 0, as_stream(stream)>>>(args...);
  check_launch(op);
}

}  // namespace

void synchronize(void* stream) { check(cudaStreamSynchronize(as_stream(stream)), "stream synchronize"); }

// On the stream, then waited for: ordered after the work queued there, and (pageable host memory
// being staged) complete when they return.
void to_device(void* dst, const void* src, size_t bytes, void* stream) {
  if (!bytes) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, as_stream(stream)), "copy to device");
  synchronize(stream);
}

void to_host(void* dst, const void* src, size_t bytes, void* stream) {
  if (!bytes) return;
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, as_stream(stream)), "copy to host");
  synchronize(stream);
}

bool device_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

const char* device_name() {
  static cudaDeviceProp prop{};
  static bool done = false;
  if (!done) {
    done = true;
    int dev = 0;
    if (!device_available() || cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess)
      prop.name[0] = '\0';
  }
  return prop.name;
}

void select_device(int local_rank) {
  int n = 0;
  check(cudaGetDeviceCount(&n), "select_device");
  if (n <= 0) return;  // require_device reports it
  check(cudaSetDevice(local_rank % n), "select_device");
}

void* device_alloc(size_t bytes) {
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "device_alloc");
  return p;
}

void device_free(void* p) { cudaFree(p); }

void copy(float* dst, const float* src, int64_t n, void* stream) {
  if (n > 0) check(cudaMemcpyAsync(dst, src, sizeof(float) * size_t(n), cudaMemcpyDeviceToDevice, as_stream(stream)), "copy");
}

void fill(float* dst, float value, int64_t n, void* stream) {
  elementwise("fill", fill_kernel<float>, n, stream, dst, value, n);
}

void fill(double* dst, double value, int64_t n, void* stream) {
  elementwise("fill", fill_kernel<double>, n, stream, dst, value, n);
}

void round_bf16(float* dst, const float* src, int64_t n, void* stream) {
  elementwise("round_bf16", round_bf16_kernel, n, stream, dst, src, n);
}

void cast_f32_to_bf16(uint16_t* dst, const float* src, int64_t n, void* stream) {
  elementwise("cast_f32_to_bf16", to_bf16_kernel, n, stream, dst, src, n);
}

void cast_bf16_to_f32(float* dst, const uint16_t* src, int64_t n, void* stream) {
  elementwise("cast_bf16_to_f32", from_bf16_kernel, n, stream, dst, src, n);
}

void gather(float* dst, const float* src, const int32_t* idx, int64_t n, void* stream) {
  elementwise("gather", gather_kernel, n, stream, dst, src, idx, n);
}

void scatter(float* dst, int64_t n_dst, const float* src, const int32_t* idx, int64_t n, void* stream) {
  fill(dst, 0.0f, n_dst, stream);
  elementwise("scatter", scatter_kernel, n, stream, dst, src, idx, n);
}

void segment_sum(double* out, const double* x, const int64_t* cu, int64_t n_seg, void* stream) {
  if (n_seg <= 0) return;
  segment_sum_kernel<<<blocks_for(n_seg, 128), 128, 0, as_stream(stream)>>>(out, x, cu, n_seg);
  check_launch("segment_sum");
}

void widen(double* dst, const float* src, int64_t n, void* stream) {
  elementwise("widen", widen_kernel, n, stream, dst, src, n);
}

void add(float* x, const float* y, int64_t n, void* stream) {
  elementwise("add", add_kernel, n, stream, x, y, n);
}

void copy_rows(float* const* dst, const float* src, int64_t ld_src, int64_t width, int64_t n, void* stream) {
  if (n <= 0 || width <= 0) return;
  copy_rows_kernel<<<blocks_for(n * width), 256, 0, as_stream(stream)>>>(dst, src, ld_src, width, n);
  check_launch("copy_rows");
}

void copy_2d(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t width, int64_t rows, void* stream) {
  if (rows <= 0 || width <= 0) return;
  check(cudaMemcpy2DAsync(dst, sizeof(float) * size_t(ld_dst), src, sizeof(float) * size_t(ld_src),
                          sizeof(float) * size_t(width), size_t(rows), cudaMemcpyDeviceToDevice, as_stream(stream)),
        "copy_2d");
}

void blocks_to_columns(float* dst, int64_t ld_dst, const float* src, int64_t block, int64_t rows, const int64_t* col0,
                       const int64_t* widths, int64_t n_blocks, void* stream) {
  for (int64_t r = 0; r < n_blocks; ++r)
    copy_2d(dst + col0[r], ld_dst, src + r * block, widths[r], widths[r], rows, stream);
}

}  // namespace metapo::cuda
