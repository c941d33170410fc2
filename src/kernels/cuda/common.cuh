// Shared by the CUDA kernels: error checks that throw metapo::Error naming the op, launch geometry.
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

}  // namespace metapo::cuda
