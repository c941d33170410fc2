// Dense matrix products through BLAS (OpenBLAS on the CPU), row-major, float and double.
#pragma once
#include <cstdint>

namespace metapo::cpu {

// C[M,N] = alpha * op(A) op(B) + beta * C, where op(A) is [M,K] and op(B) is [K,N];
// ta/tb say whether A/B are stored transposed. Leading dimensions are row strides.
template <typename T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

// Y[n, out] = X[n, in] W[out, in]^T (+ b[out]); the layout of nn.Linear.
template <typename T>
void linear_forward(T* Y, const T* X, const T* W, const T* b, int64_t n, int64_t in, int64_t out);

// Backward of linear_forward. dX = dY W (overwritten, skipped when dX is null);
// dW += dY^T X and db += column sums of dY when accumulate (micro-batches add up), else
// dW = dY^T X and db = column sums (the first micro-batch: no zeroing pass needed).
template <typename T>
void linear_backward(T* dX, T* dW, T* db, const T* dY, const T* X, const T* W, int64_t n,
                     int64_t in, int64_t out, bool accumulate = true);

// Ghost dot products (DESIGN §6): for the weight gradient dW = Σ_t G_t A_tᵀ of a linear layer, adds
// to rdot[t] the contribution of row t to ⟨Ĝ, dW⟩ (+ ⟨ĝ_b, db⟩ when ghat_b is given), i.e.
// ⟨G_t, Ĝ A_t + ĝ_b⟩, without forming per-row gradients: one extra GEMM P = A Ĝᵀ into work [n, out]
// and a row-wise dot. A: [n, in], G: [n, out], Ghat: [out, in]. work: [n, min(in, out)] (the GEMM is
// taken with the shorter output rows: A Ĝᵀ or G Ĝ).
template <typename T>
void linear_ghost_dots(const T* A, const T* G, const T* Ghat, const T* ghat_b, int64_t n, int64_t in,
                       int64_t out, T* work, double* rdot);

// linear_backward fused with the ghost dot products of its weight gradient, per segment of rows (a
// packed sequence) instead of per row: for every segment s = rows [seg[s], seg[s+1]),
//   rdot[seg[s]] += ⟨Ĝ, Σ_{t∈s} G_t A_tᵀ⟩ (+ ⟨ĝ_b, Σ_{t∈s} G_t⟩ when ghat_b is given),
// the whole segment's dot on its first row (other rows untouched; empty segments add nothing), so
// summing rdot over each segment gives what linear_backward + linear_ghost_dots give. dX, dW, db as
// linear_backward(dX, dW, db, G, A, W, n, in, out, accumulate); G = dY, A = X.
// Cost: dW and the dots come from weight_grad_ghost (below), a GEMM micro-kernel that dots each
// segment's product with Ĝ while it is in registers: one FMA per element of the register block and
// segment on top of the GEMM, instead of a second [n × in × out] GEMM. When the mean segment is
// shorter than a few rows, it falls back to linear_backward + linear_ghost_dots (the per-row form).
// Segments must be ordered, non-overlapping and within [0, n].
template <typename T>
void linear_backward_ghost(T* dX, T* dW, T* db, const T* dY, const T* X, const T* W, int64_t n, int64_t in,
                           int64_t out, bool accumulate, const T* Ghat, const T* ghat_b, const int64_t* seg,
                           int64_t n_seg, double* rdot);

// The weight gradient of a linear layer fused with the ghost dots of its segments:
// dW (+)= Gᵀ A (overwritten when !accumulate) and seg_dot[s] += ⟨Ĝ, Σ_{t∈s} G_t A_tᵀ⟩ for the rows
// t ∈ [seg[s], seg[s+1]). G: [n, out], A: [n, in], dW and Ĝ: [out, in]. Rows outside every segment
// count in dW only. Every sum is taken in the same order for any thread count.
template <typename T>
void weight_grad_ghost(T* dW, const T* G, const T* A, const T* Ghat, int64_t n, int64_t in, int64_t out, bool accumulate,
                       const int64_t* seg, int64_t n_seg, double* seg_dot);
// The workspace one weight_grad_ghost call holds (Mem::Workspace: its packed chunk of A), whatever the
// shapes; the memory plan counts it.
constexpr int64_t kWeightGradGhostWorkspaceBytes = 160 * 1024;

}  // namespace metapo::cpu
