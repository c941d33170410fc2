// Shared by the CUDA kernels: error checks that throw metapo::Error naming the op, launch geometry,
// block reductions with a fixed tree, and stream-ordered scratch memory.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "metapo/core/error.h"

namespace metapo::cuda {

// After a launch (or any runtime call): a failure becomes one error naming the op.
inline void check(cudaError_t e, const char* what) {
  MP_CHECK(e == cudaSuccess, "CUDA ", what, ": ", cudaGetErrorString(e));
}
inline void check_launch(const char* op) { check(cudaGetLastError(), op); }

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// Blocks of 256 threads covering n elements, capped (grid-stride loops take the rest).
inline unsigned blocks_for(int64_t n, int threads = 256) {
  const int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 1 ? 1 : (b > 65535 * 32 ? 65535 * 32 : b));
}

// for (i in [0, n)) over the whole grid.
#define MP_GRID_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

// The sum of every thread's v over the block (blockDim.x a power of two, at most 1024), the same tree
// on every launch; every thread gets the result. shared: blockDim.x elements.
template <typename T>
__device__ T block_sum(T v, T* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  const T r = shared[0];
  __syncthreads();
  return r;
}

template <typename T>
__device__ T block_max(T v, T* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s /= 2) {
    if (threadIdx.x < s) shared[threadIdx.x] = fmax(shared[threadIdx.x], shared[threadIdx.x + s]);
    __syncthreads();
  }
  const T r = shared[0];
  __syncthreads();
  return r;
}

// Whether the device has stream-ordered memory pools (cudaMallocAsync); when it has, the default pool
// keeps what it has grown to (release threshold: unlimited), so scratch allocations settle to none.
inline bool pools_supported() {
  static const bool ok = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMemoryPoolsSupported, dev) != cudaSuccess || v == 0) return false;
    cudaMemPool_t pool;
    if (cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
      uint64_t threshold = UINT64_MAX;
      cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
    }
    return true;
  }();
  return ok;
}

// Temporary device memory for one launcher, stream-ordered where the device has memory pools
// (cudaMallocAsync, freed on the stream after the work queued with it: no synchronization, no hold past
// the call); else cudaMalloc/cudaFree (which waits for the device).
template <typename T>
class Scratch {
 public:
  Scratch(size_t n, void* stream) : stream_(as_stream(stream)) {
    if (!n) return;
    if (pools_supported())
      check(cudaMallocAsync(reinterpret_cast<void**>(&p_), n * sizeof(T), stream_), "scratch allocation");
    else
      check(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)), "scratch allocation");
  }
  ~Scratch() {
    if (!p_) return;
    if (pools_supported())
      cudaFreeAsync(p_, stream_);
    else
      cudaFree(p_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
  cudaStream_t stream_;
};

}  // namespace metapo::cuda
