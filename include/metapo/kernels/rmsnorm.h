// RMSNorm (Llama): y = x / sqrt(mean(x^2) + eps) * w, per row of C channels.
#pragma once
#include <cstdint>

namespace metapo::cpu {

// y, x: [n, C]; w: [C]; rstd: [n] (kept for backward).
template <typename T>
void rmsnorm_forward(T* y, T* rstd, const T* x, const T* w, int64_t n, int64_t C, double eps);

// dx = (or +=, when accumulate) d/dx; dw += d/dw. dy, x: [n, C]; rstd from the forward.
template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd, int64_t n,
                      int64_t C, bool accumulate);

// Ghost dots of the norm weight: rdot[t] += Σ_c ĝ_c dy_tc x_tc rstd_t (row t's part of ⟨ĝ, dw⟩).
template <typename T>
void rmsnorm_ghost_dots(const T* dy, const T* x, const T* rstd, const T* ghat_w, int64_t n, int64_t C,
                        double* rdot);

}  // namespace metapo::cpu
