// The device-side helpers of the attention through cuDNN (attention_cudnn.cpp has the graphs): the
// ragged offsets and sequence lengths cuDNN reads, the strided casts between the model's fp32 rows and
// cuDNN's packed bf16 tensors, and the transpose between cuDNN's token-major softmax statistics and the
// head-major layout of this backend. Without the cuDNN front end at build time, the stubs at the end
// say so and the dispatch runs the plain kernel.
#include <cuda_bf16.h>

#include "common.cuh"
#include "metapo/kernels/cuda.h"

namespace metapo::cuda {

namespace {

__global__ void ragged_kernel(const int64_t* cu, int64_t n_seqs, int64_t n_pad, int64_t q_stride, int64_t kv_stride,
                              int64_t stats_stride, int32_t* seq_len, int32_t* q_off, int32_t* kv_off,
                              int32_t* stats_off) {
  MP_GRID_LOOP(i, n_pad + 1) {
    const int64_t c = cu[i < n_seqs ? i : n_seqs];  // the padding sequences: empty, at the end
    q_off[i] = int32_t(c * q_stride), kv_off[i] = int32_t(c * kv_stride), stats_off[i] = int32_t(c * stats_stride);
    if (i < n_pad) seq_len[i] = i < n_seqs ? int32_t(cu[i + 1] - c) : 0;
  }
}

__global__ void to_bf16_2d_kernel(uint16_t* dst, const float* src, int64_t ld_src, int64_t width, int64_t n) {
  MP_GRID_LOOP(i, n) {
    const int64_t r = i / width, c = i % width;
    dst[i] = __bfloat16_as_ushort(__float2bfloat16_rn(src[r * ld_src + c]));
  }
}

__global__ void from_bf16_2d_kernel(float* dst, int64_t ld_dst, const uint16_t* src, int64_t width, int64_t n) {
  MP_GRID_LOOP(i, n) {
    const int64_t r = i / width, c = i % width;
    dst[r * ld_dst + c] = __bfloat162float(__ushort_as_bfloat16(src[i]));
  }
}

__global__ void transpose_kernel(float* dst, const float* src, int64_t rows, int64_t cols) {
  MP_GRID_LOOP(i, rows * cols) {
    const int64_t c = i / rows, r = i % rows;  // writes in dst order
    dst[i] = src[r * cols + c];
  }
}

}  // namespace

void ragged_offsets(const int64_t* cu_seqlens, int64_t n_seqs, int64_t n_pad, int64_t q_stride, int64_t kv_stride,
                    int64_t stats_stride, int32_t* seq_len, int32_t* q_off, int32_t* kv_off, int32_t* stats_off,
                    void* stream) {
  if (n_seqs <= 0 || n_pad < n_seqs) return;
  ragged_kernel<<<blocks_for(n_pad + 1), 256, 0, as_stream(stream)>>>(cu_seqlens, n_seqs, n_pad, q_stride, kv_stride,
                                                                      stats_stride, seq_len, q_off, kv_off, stats_off);
  check_launch("ragged_offsets");
}

void cast_f32_to_bf16_2d(uint16_t* dst, const float* src, int64_t ld_src, int64_t width, int64_t rows, void* stream) {
  const int64_t n = width * rows;
  if (n <= 0) return;
  to_bf16_2d_kernel<<<blocks_for(n), 256, 0, as_stream(stream)>>>(dst, src, ld_src, width, n);
  check_launch("cast_f32_to_bf16_2d");
}

void cast_bf16_to_f32_2d(float* dst, int64_t ld_dst, const uint16_t* src, int64_t width, int64_t rows, void* stream) {
  const int64_t n = width * rows;
  if (n <= 0) return;
  from_bf16_2d_kernel<<<blocks_for(n), 256, 0, as_stream(stream)>>>(dst, ld_dst, src, width, n);
  check_launch("cast_bf16_to_f32_2d");
}

void transpose_f32(float* dst, const float* src, int64_t rows, int64_t cols, void* stream) {
  if (rows <= 0 || cols <= 0) return;
  transpose_kernel<<<blocks_for(rows * cols), 256, 0, as_stream(stream)>>>(dst, src, rows, cols);
  check_launch("transpose_f32");
}

#ifndef METAPO_HAVE_CUDNN
bool cudnn_attention_built() { return false; }
const char* cudnn_attention_status() { return "plain kernel (built without the cuDNN front end)"; }
bool cudnn_attention_forward(const AttentionArgs&, void*) { return false; }
bool cudnn_attention_backward(const AttentionArgs&, const float*, float*, float*, float*, int64_t, void*) {
  return false;
}
#endif

}  // namespace metapo::cuda
