// Data movement and small reductions on the CPU: copies, fills, row gathers and scatters, per-segment
// sums, casts. The model never moves data itself: these are its memcpy, fill and index loops, as ops
// (ops/ops.h), so a device backend supplies its own.
#pragma once
#include <cstdint>

namespace metapo::cpu {

// dst[i] = src[i], i < n (may not overlap).
template <typename T>
void copy(T* dst, const T* src, int64_t n);
// dst[i] = value, i < n.
template <typename T>
void fill(T* dst, T value, int64_t n);
// dst[i] = src[idx[i]], i < n.
template <typename T>
void gather(T* dst, const T* src, const int32_t* idx, int64_t n);
// dst[0, n_dst) = 0, then dst[idx[i]] = src[i], i < n (idx distinct).
template <typename T>
void scatter(T* dst, int64_t n_dst, const T* src, const int32_t* idx, int64_t n);
// out[s] = Σ x[cu[s] .. cu[s+1]), s < n_seg, summed in index order.
void segment_sum(double* out, const double* x, const int64_t* cu, int64_t n_seg);
// dst[i] = double(src[i]), i < n.
template <typename T>
void widen(double* dst, const T* src, int64_t n);
// x[i] = x[i] rounded to bf16 (nearest even), kept in fp32: bf16 storage with fp32 arithmetic. Or from
// src into dst (may be the same).
void round_bf16(float* dst, const float* src, int64_t n);
// x[i] += y[i], i < n.
template <typename T>
void add(T* x, const T* y, int64_t n);
// Rows of `width` elements: dst[i][0, width) = src[i * ld_src, + width), i < n (dst: one pointer per
// row, e.g. a row of each sequence's KV cache).
template <typename T>
void copy_rows(T* const* dst, const T* src, int64_t ld_src, int64_t width, int64_t n);
// dst[i * ld_dst, + width) = src[i * ld_src, + width), i < rows: a strided 2-D copy.
template <typename T>
void copy_2d(T* dst, int64_t ld_dst, const T* src, int64_t ld_src, int64_t width, int64_t rows);
// Block r of src (n_blocks blocks of rows x block_cols, rows contiguous) becomes columns
// [col0[r], + widths[r]) of dst [rows, ld_dst]: the vocab-parallel gather of logits, r < n_blocks.
template <typename T>
void blocks_to_columns(T* dst, int64_t ld_dst, const T* src, int64_t block, int64_t rows, const int64_t* col0,
                       const int64_t* widths, int64_t n_blocks);

}  // namespace metapo::cpu
