// The reference ways of computing the alignments s_k = ⟨ĝ, ∇θ ℓ_k⟩ (DESIGN §6), against which the ghost
// products of the training backward are tested: "exact" takes each pair's own gradient, "fd" the central
// finite difference of its loss along ĝ. The model is reached through callbacks, so this is plain
// arithmetic over flat buffers (the trainer binds them to LlamaModel; train/objective.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace metapo {

// s_k = Σ_i grad_k[i] ĝ[i] for k in [0, n_pairs): pair_grad(k, grads) fills grads[0, n_params) with
// ∇θ ℓ_k (grads is scratch). Sums in double, in index order.
template <typename T>
std::vector<double> exact_alignments(int64_t n_pairs, const std::function<void(int64_t, T*)>& pair_grad, T* grads,
                                     size_t n_params, const T* ghat);

// s_k = (ℓ_k(θ + hĝ) − ℓ_k(θ − hĝ)) / 2h with h = rel_step · min(1 / max|ĝ|, max(‖θ‖, 1) / ‖ĝ‖): pair_losses(θ') returns every
// pair's loss at θ' (n_pairs of them). scratch holds n_params elements. All zero when ĝ = 0.
template <typename T>
std::vector<double> fd_alignments(int64_t n_pairs, const std::function<std::vector<double>(const T*)>& pair_losses,
                                  const T* params, T* scratch, size_t n_params, const T* ghat, double rel_step);

}  // namespace metapo
