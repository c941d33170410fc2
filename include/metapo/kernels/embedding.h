// Token embedding lookup and its gradient.
#pragma once
#include <cstdint>

namespace metapo::cpu {

// x[t, :] = E[tokens[t], :]. E: [V, C]; x: [n, C]. Token ids are checked by the caller.
template <typename T>
void embedding_forward(T* x, const T* E, const int32_t* tokens, int64_t n, int64_t C);

// dE[tokens[t], :] += dx[t, :], in token order (deterministic: threads own column blocks).
template <typename T>
void embedding_backward(T* dE, const T* dx, const int32_t* tokens, int64_t n, int64_t C);

// Ghost dots of the embedding table: rdot[t] += ⟨Ĝ[tokens[t]], dx[t]⟩.
template <typename T>
void embedding_ghost_dots(const T* dx, const int32_t* tokens, const T* Ghat, int64_t n, int64_t C,
                          double* rdot);

}  // namespace metapo::cpu
