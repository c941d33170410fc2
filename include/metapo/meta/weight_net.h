// MetaPO's weight net W_φ (DESIGN §6): a tiny MLP from a pair's standardized features to its raw
// weight a_i. All in double on the host: the net has ~1.3k parameters, is replicated on every rank
// that needs it, and must give bit-identical results everywhere, so every sum runs in a fixed order
// and nothing is threaded.
//
//   h1 = tanh(W1 x + b1)      x  [F], W1 [H, F], b1 [H]
//   h2 = tanh(W2 h1 + b2)     h1 [H], W2 [H, H], b2 [H]
//   z  = W3 · h2 + b3         W3 [H], b3 scalar
//   a  = a_min + (1 − a_min)·σ(z)
//
// The floor a_min keeps a_i > 0, so the a_i/B factor the training backward is scaled by can always be
// divided out again when the alignments s_i are formed.
#pragma once
#include <cstdint>
#include <vector>

namespace metapo {

struct WeightNetConfig {
  int64_t n_features = 7;  // F: the standardized pair features (see the features header)
  int64_t hidden = 32;     // H: width of both hidden layers
  double a_min = 1e-3;     // floor of a, in [0, 1)
  uint64_t seed = 0;       // Philox seed of the hidden layers' initialization
  double init_logit = 0;   // b3 at initialization: every a starts at a_min + (1 − a_min) σ(init_logit)
};

// Offsets into the one flat parameter vector φ (and into its gradient, which has the same layout).
// Matrices are row-major [out, in], so row o of W1 is the input weights of hidden unit o.
//   φ = [ W1 (H·F) | b1 (H) | W2 (H·H) | b2 (H) | W3 (H) | b3 (1) ]
struct WeightNetLayout {
  int64_t w1, b1, w2, b2, w3, b3, total;
};
WeightNetLayout weight_net_layout(int64_t n_features, int64_t hidden);

// Initialization: W1 and W2 are Glorot/Xavier-uniform, U(−r, r) with r = √(6 / (fan_in + fan_out)),
// drawn in layout order from make_rng(seed, 0, 0, RngPurpose::MetaInit); b1 = b2 = 0. The last layer
// (W3, b3) is zero, so z = 0 and a = a_min + (1 − a_min)/2 for every input: training starts as the
// base loss (all weights equal after normalization), and the first meta steps move only the last
// layer until it is non-zero (dz/dh2 = W3).
class WeightNet {
 public:
  explicit WeightNet(const WeightNetConfig& cfg);

  // X: [B, F] standardized features, row-major → a[B] (and z[B] when z is given). Keeps the
  // activations of this batch for backward(), so the net is not const here.
  void forward(const std::vector<double>& X, int64_t B, std::vector<double>& a,
               std::vector<double>* z = nullptr);
  // dA: [B] dL/da for the batch of the last forward(). Accumulates (+=) dL/dφ into grad, which must
  // already have n_params() entries: the caller zeroes it once per meta step, so the gradients of
  // several micro-batches sum without a copy. Rows are summed in order 0..B−1.
  void backward(const std::vector<double>& dA, std::vector<double>& grad) const;

  // z and dz/dx [F] for one input row x [F], without touching the cached batch (for attribution).
  double z_of(const double* x) const;
  std::vector<double> dz_dx(const double* x) const;

  std::vector<double>& params() { return params_; }
  const std::vector<double>& params() const { return params_; }
  int64_t n_params() const { return layout_.total; }
  const WeightNetLayout& layout() const { return layout_; }
  const WeightNetConfig& config() const { return cfg_; }

 private:
  // One row through both hidden layers: h1, h2 [H] each. Returns z.
  double row_forward(const double* x, double* h1, double* h2) const;

  WeightNetConfig cfg_;
  WeightNetLayout layout_;
  std::vector<double> params_;  // φ, see WeightNetLayout

  // Cache of the last forward(): B rows of x [B, F], h1 [B, H], h2 [B, H], σ(z) [B].
  int64_t batch_ = -1;
  std::vector<double> x_, h1_, h2_, sig_;
};

// Adam (with bias correction) on a flat parameter vector, for φ's meta step. m and v start empty and
// are sized to the parameters on the first call; t counts the steps taken.
struct AdamState {
  std::vector<double> m, v;
  int64_t t = 0;
};
void adam_update(std::vector<double>& params, const std::vector<double>& grad, AdamState& st, double lr,
                 double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8);

}  // namespace metapo
