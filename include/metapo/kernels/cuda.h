// The CUDA backend's launchers (src/kernels/cuda/<op>.cu, one op per file): plain pointers into device
// memory, shapes in elements, and the stream to queue on (a cudaStream_t passed as void*, so this
// header needs no CUDA headers; null is the default stream). Each returns once the work is queued; an
// error of the launch throws metapo::Error naming the op. The ops dispatch (src/kernels/dispatch.cpp)
// calls them for ops whose context is Device::CUDA; tests/gpu checks each against the CPU op.
#pragma once
#include <cstddef>
#include <cstdint>

namespace metapo::cuda {

// Whether this process sees a CUDA device (false, not an error, on a machine without one).
bool device_available();
// The name of device 0 ("" without one), for logs.
const char* device_name();

// Device memory (tensor.cu): cudaMalloc'd bytes (256-byte aligned), and their release.
void* device_alloc(size_t bytes);
void device_free(void* p);

// ---- data movement (tensor.cu) ----
void copy(float* dst, const float* src, int64_t n, void* stream);
void fill(float* dst, float value, int64_t n, void* stream);
// dst = src rounded to bf16 (nearest even), kept in fp32.
void round_bf16(float* dst, const float* src, int64_t n, void* stream);
// fp32 <-> bf16 storage (bf16 as its raw 16 bits).
void cast_f32_to_bf16(uint16_t* dst, const float* src, int64_t n, void* stream);
void cast_bf16_to_f32(float* dst, const uint16_t* src, int64_t n, void* stream);

// ---- normalization and activation (rmsnorm.cu, swiglu.cu) ----
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t n, int64_t C, double eps,
                     void* stream);
// dx (+)= dL/dx (accumulate: add); dw += dL/dw, each column summed over the rows in row order (no
// atomics: the result does not depend on the launch).
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t n, int64_t C, bool accumulate, void* stream);
void swiglu_forward(float* h, const float* gu, int64_t n, int64_t I, void* stream);
void swiglu_backward(float* dgu, const float* dh, const float* gu, int64_t n, int64_t I, void* stream);

// ---- optimizer (adamw.cu) ----
void adamw_step(float* p, const float* g, float* m, float* v, const uint8_t* decay, size_t n, float b1, float b2,
                float step_size, float inv_bc2_sqrt, float eps, float wd, void* stream);
void scale(float* x, float f, size_t n, void* stream);

}  // namespace metapo::cuda
