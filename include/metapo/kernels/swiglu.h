// SwiGLU: h = silu(gate) * up, with gate and up side by side in one row of the fused projection.
#pragma once
#include <cstdint>

namespace metapo::cpu {

// gu: [n, 2I] (gate in columns [0, I), up in [I, 2I)); h: [n, I].
template <typename T>
void swiglu_forward(T* h, const T* gu, int64_t n, int64_t I);

// dgu: [n, 2I] (overwritten) from dh: [n, I].
template <typename T>
void swiglu_backward(T* dgu, const T* dh, const T* gu, int64_t n, int64_t I);

}  // namespace metapo::cpu
