// Data movement on the device: copies, fills, bf16 rounding and casts.
#include <cuda_bf16.h>

#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

__global__ void fill_kernel(float* dst, float value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = value;
}

__global__ void round_bf16_kernel(float* dst, const float* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __bfloat162float(__float2bfloat16_rn(src[i]));
}

__global__ void to_bf16_kernel(uint16_t* dst, const float* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __bfloat16_as_ushort(__float2bfloat16_rn(src[i]));
}

__global__ void from_bf16_kernel(float* dst, const uint16_t* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = __bfloat162float(__ushort_as_bfloat16(src[i]));
}

}  // namespace

bool device_available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

const char* device_name() {
  static cudaDeviceProp prop{};
  static bool done = false;
  if (!done) {
    done = true;
    if (!device_available() || cudaGetDeviceProperties(&prop, 0) != cudaSuccess) prop.name[0] = '\0';
  }
  return prop.name;
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
  if (n <= 0) return;
  fill_kernel<<<blocks_for(n), 256, 0, as_stream(stream)>>>(dst, value, n);
  check_launch("fill");
}

void round_bf16(float* dst, const float* src, int64_t n, void* stream) {
  if (n <= 0) return;
  round_bf16_kernel<<<blocks_for(n), 256, 0, as_stream(stream)>>>(dst, src, n);
  check_launch("round_bf16");
}

void cast_f32_to_bf16(uint16_t* dst, const float* src, int64_t n, void* stream) {
  if (n <= 0) return;
  to_bf16_kernel<<<blocks_for(n), 256, 0, as_stream(stream)>>>(dst, src, n);
  check_launch("cast_f32_to_bf16");
}

void cast_bf16_to_f32(float* dst, const uint16_t* src, int64_t n, void* stream) {
  if (n <= 0) return;
  from_bf16_kernel<<<blocks_for(n), 256, 0, as_stream(stream)>>>(dst, src, n);
  check_launch("cast_bf16_to_f32");
}

}  // namespace metapo::cuda
