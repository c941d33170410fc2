// Shared by the CUDA kernels: error checks that throw metapo::Error naming the op, launch geometry,
// block and warp reductions with a fixed tree, the opt-in to large shared memory, and stream-ordered
// scratch memory.
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

// ⟨a, b⟩ over D by the calling warp: lane l sums d = l, l + 32, ...; then a fixed butterfly, so every
// lane gets the same value in the same order on every launch.
__device__ inline float warp_dot(const float* a, const float* b, int64_t D) {
  float s = 0;
  for (int64_t d = threadIdx.x % 32; d < D; d += 32) s += a[d] * b[d];
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

// One query row's attention by the whole block (blockDim.x a power of two): the scaled scores of qs
// (shared, [D]) against nk keys K + j ld, one warp's dot each, into S (shared, [nk]); softmax with the
// block's fixed trees; out[d] = Σ_j p_j V[j ld + d] / Σ_j p_j, one thread per d, keys in order. red:
// blockDim.x floats of shared memory. Returns the row's log-sum-exp of the scaled scores.
__device__ inline float attend_row(const float* qs, const float* K, const float* V, int64_t ld, int64_t nk, int64_t D,
                                   float scale, float* S, float* red, float* out) {
  const int64_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  float m = -INFINITY;
  for (int64_t j = warp; j < nk; j += warps) {
    const float sj = scale * warp_dot(qs, K + j * ld, D);
    if (lane == 0) S[j] = sj;
    m = fmaxf(m, sj);
  }
  const float mx = block_max(m, red);  // its barriers also publish S
  float s = 0;
  for (int64_t j = threadIdx.x; j < nk; j += blockDim.x) s += (S[j] = expf(S[j] - mx));
  const float sum = block_sum(s, red);  // its barriers also publish S
  const float inv = 1.0f / sum;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float acc = 0;
    for (int64_t j = 0; j < nk; ++j) acc += S[j] * V[j * ld + d];
    out[d] = acc * inv;
  }
  return mx + logf(sum);
}

// Opts the kernel in to `bytes` of dynamic shared memory (past the default 48 KiB), or fails naming the
// sequence length L whose rows the shared memory holds.
template <typename K>
void allow_shared(K kernel, size_t bytes, int64_t L, const char* op) {
  int dev = 0, max_optin = 0;
  check(cudaGetDevice(&dev), op);
  check(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), op);
  MP_CHECK(bytes <= size_t(max_optin), op, ": a sequence of ", L, " tokens needs ", bytes,
           " bytes of shared memory; this device has ", max_optin, " per block");
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), op);
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
