// Token embedding lookup and its gradient.
#pragma once
#include <cstdint>

namespace metapo::cpu {

// x[t, :] = E[tokens[t], :]. E: [V, C]; x: [n, C]. Token ids are checked by the caller. With a row range
// [row_begin, row_end) (a vocabulary shard), E holds only those rows and the other tokens' rows of x are
// zero; row_end < 0: the whole table.
template <typename T>
void embedding_forward(T* x, const T* E, const int32_t* tokens, int64_t n, int64_t C, int64_t row_begin = 0,
                       int64_t row_end = -1);

// dE[tokens[t], :] += dx[t, :], in token order (deterministic: threads own column blocks).
// With a row range [row_begin, row_end) (a vocabulary shard), dE holds only those rows
// (dE[tokens[t] - row_begin]) and the other tokens are skipped; row_end < 0: no upper bound.
template <typename T>
void embedding_backward(T* dE, const T* dx, const int32_t* tokens, int64_t n, int64_t C, int64_t row_begin = 0,
                        int64_t row_end = -1);

// Ghost dots of the embedding table: rdot[t] += ⟨Ĝ[tokens[t]], dx[t]⟩; with a row range as in
// embedding_backward, Ĝ holds those rows only and other tokens add nothing.
template <typename T>
void embedding_ghost_dots(const T* dx, const int32_t* tokens, const T* Ghat, int64_t n, int64_t C,
                          double* rdot, int64_t row_begin = 0, int64_t row_end = -1);

}  // namespace metapo::cpu
