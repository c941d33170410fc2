// The weight net's forward, backward and Adam step (shapes and layout in weight_net.h).
#include "metapo/meta/weight_net.h"

#include <cmath>

#include "metapo/core/error.h"
#include "metapo/core/rng.h"

namespace metapo {

namespace {

// σ(z) without overflow: exp only ever sees a non-positive argument.
double sigmoid(double z) {
  if (z >= 0) return 1.0 / (1.0 + std::exp(-z));
  const double e = std::exp(z);
  return e / (1.0 + e);
}

// Glorot/Xavier-uniform fill of a [fan_out, fan_in] matrix. The uniform uses all 32 bits of a draw and
// is centred on each of the 2^32 cells, so it lies strictly inside (−r, r).
void glorot_uniform(Philox& rng, double* w, int64_t fan_out, int64_t fan_in) {
  const double r = std::sqrt(6.0 / double(fan_in + fan_out));
  for (int64_t i = 0; i < fan_out * fan_in; ++i) {
    const double u = (double(rng.next_u32()) + 0.5) * (1.0 / 4294967296.0);  // (0, 1)
    w[i] = r * (2.0 * u - 1.0);
  }
}

}  // namespace

WeightNetLayout weight_net_layout(int64_t n_features, int64_t hidden) {
  const int64_t F = n_features, H = hidden;
  WeightNetLayout l{};
  l.w1 = 0;
  l.b1 = l.w1 + H * F;
  l.w2 = l.b1 + H;
  l.b2 = l.w2 + H * H;
  l.w3 = l.b2 + H;
  l.b3 = l.w3 + H;
  l.total = l.b3 + 1;
  return l;
}

WeightNet::WeightNet(const WeightNetConfig& cfg) : cfg_(cfg) {
  MP_CHECK(cfg.n_features >= 1, "weight net: n_features must be >= 1 (got ", cfg.n_features, ")");
  MP_CHECK(cfg.hidden >= 1, "weight net: hidden must be >= 1 (got ", cfg.hidden, ")");
  MP_CHECK(cfg.a_min >= 0 && cfg.a_min < 1, "weight net: a_min must be in [0, 1) (got ", cfg.a_min, ")");
  const int64_t F = cfg.n_features, H = cfg.hidden;
  layout_ = weight_net_layout(F, H);
  params_.assign(size_t(layout_.total), 0.0);  // biases and the last layer's weights stay 0
  params_[size_t(layout_.b3)] = cfg.init_logit;
  // One stream for both matrices, in layout order, so φ is a pure function of (seed, F, H).
  Philox rng = make_rng(cfg.seed, 0, 0, RngPurpose::MetaInit);
  glorot_uniform(rng, params_.data() + layout_.w1, H, F);
  glorot_uniform(rng, params_.data() + layout_.w2, H, H);
}

double WeightNet::row_forward(const double* x, double* h1, double* h2) const {
  const int64_t F = cfg_.n_features, H = cfg_.hidden;
  const double* W1 = params_.data() + layout_.w1;  // [H, F]
  const double* b1 = params_.data() + layout_.b1;  // [H]
  const double* W2 = params_.data() + layout_.w2;  // [H, H]
  const double* b2 = params_.data() + layout_.b2;  // [H]
  const double* W3 = params_.data() + layout_.w3;  // [H]
  const double b3 = params_[size_t(layout_.b3)];
  for (int64_t o = 0; o < H; ++o) {
    double s = b1[o];
    for (int64_t i = 0; i < F; ++i) s += W1[o * F + i] * x[i];
    h1[o] = std::tanh(s);
  }
  for (int64_t o = 0; o < H; ++o) {
    double s = b2[o];
    for (int64_t i = 0; i < H; ++i) s += W2[o * H + i] * h1[i];
    h2[o] = std::tanh(s);
  }
  double z = b3;
  for (int64_t i = 0; i < H; ++i) z += W3[i] * h2[i];
  return z;
}

void WeightNet::forward(const std::vector<double>& X, int64_t B, std::vector<double>& a,
                        std::vector<double>* z) {
  const int64_t F = cfg_.n_features, H = cfg_.hidden;
  MP_CHECK(B >= 0, "weight net forward: batch size must be >= 0 (got ", B, ")");
  MP_CHECK(int64_t(X.size()) == B * F, "weight net forward: features have ", X.size(),
           " values, expected B*F = ", B, "*", F);
  batch_ = B;
  x_ = X;
  h1_.assign(size_t(B * H), 0.0);
  h2_.assign(size_t(B * H), 0.0);
  sig_.assign(size_t(B), 0.0);
  a.assign(size_t(B), 0.0);
  if (z) z->assign(size_t(B), 0.0);
  for (int64_t b = 0; b < B; ++b) {
    const double zb = row_forward(X.data() + b * F, h1_.data() + b * H, h2_.data() + b * H);
    sig_[b] = sigmoid(zb);
    a[b] = cfg_.a_min + (1.0 - cfg_.a_min) * sig_[b];
    if (z) (*z)[b] = zb;
  }
}

void WeightNet::backward(const std::vector<double>& dA, std::vector<double>& grad) const {
  const int64_t F = cfg_.n_features, H = cfg_.hidden, B = batch_;
  MP_CHECK(B >= 0, "weight net backward: no forward() to differentiate");
  MP_CHECK(int64_t(dA.size()) == B, "weight net backward: dL/da has ", dA.size(),
           " values, the last forward had B = ", B);
  MP_CHECK(int64_t(grad.size()) == layout_.total, "weight net backward: gradient has ", grad.size(),
           " values, expected n_params = ", layout_.total);
  const double* W2 = params_.data() + layout_.w2;  // [H, H]
  const double* W3 = params_.data() + layout_.w3;  // [H]
  double* dW1 = grad.data() + layout_.w1;          // [H, F]
  double* db1 = grad.data() + layout_.b1;          // [H]
  double* dW2 = grad.data() + layout_.w2;          // [H, H]
  double* db2 = grad.data() + layout_.b2;          // [H]
  double* dW3 = grad.data() + layout_.w3;          // [H]
  double& db3 = grad[size_t(layout_.b3)];
  std::vector<double> dpre2(static_cast<size_t>(H)), dpre1(static_cast<size_t>(H));
  for (int64_t b = 0; b < B; ++b) {
    const double* x = x_.data() + b * F;    // [F]
    const double* h1 = h1_.data() + b * H;  // [H]
    const double* h2 = h2_.data() + b * H;  // [H]
    // da/dz = (1 − a_min) σ (1 − σ)
    const double s = sig_[b];
    const double dz = dA[b] * (1.0 - cfg_.a_min) * s * (1.0 - s);
    db3 += dz;
    for (int64_t i = 0; i < H; ++i) {
      dW3[i] += dz * h2[i];
      dpre2[i] = dz * W3[i] * (1.0 - h2[i] * h2[i]);  // tanh' = 1 − tanh²
    }
    for (int64_t o = 0; o < H; ++o) {
      db2[o] += dpre2[o];
      for (int64_t i = 0; i < H; ++i) dW2[o * H + i] += dpre2[o] * h1[i];
    }
    for (int64_t i = 0; i < H; ++i) {
      double s1 = 0;  // (W2ᵀ dpre2)_i, summed over o in order
      for (int64_t o = 0; o < H; ++o) s1 += W2[o * H + i] * dpre2[o];
      dpre1[i] = s1 * (1.0 - h1[i] * h1[i]);
    }
    for (int64_t o = 0; o < H; ++o) {
      db1[o] += dpre1[o];
      for (int64_t i = 0; i < F; ++i) dW1[o * F + i] += dpre1[o] * x[i];
    }
  }
}

double WeightNet::z_of(const double* x) const {
  std::vector<double> h1(size_t(cfg_.hidden)), h2(size_t(cfg_.hidden));
  return row_forward(x, h1.data(), h2.data());
}

std::vector<double> WeightNet::dz_dx(const double* x) const {
  const int64_t F = cfg_.n_features, H = cfg_.hidden;
  const size_t h = static_cast<size_t>(H);
  std::vector<double> h1(h), h2(h), dpre2(h), dpre1(h);
  row_forward(x, h1.data(), h2.data());
  const double* W1 = params_.data() + layout_.w1;  // [H, F]
  const double* W2 = params_.data() + layout_.w2;  // [H, H]
  const double* W3 = params_.data() + layout_.w3;  // [H]
  for (int64_t i = 0; i < H; ++i) dpre2[i] = W3[i] * (1.0 - h2[i] * h2[i]);
  for (int64_t i = 0; i < H; ++i) {
    double s = 0;
    for (int64_t o = 0; o < H; ++o) s += W2[o * H + i] * dpre2[o];
    dpre1[i] = s * (1.0 - h1[i] * h1[i]);
  }
  std::vector<double> dx(size_t(F), 0.0);
  for (int64_t f = 0; f < F; ++f) {
    double s = 0;
    for (int64_t o = 0; o < H; ++o) s += W1[o * F + f] * dpre1[o];
    dx[f] = s;
  }
  return dx;
}

void adam_update(std::vector<double>& params, const std::vector<double>& grad, AdamState& st, double lr,
                 double beta1, double beta2, double eps) {
  MP_CHECK(grad.size() == params.size(), "adam: gradient has ", grad.size(), " values, parameters ",
           params.size());
  MP_CHECK(lr >= 0 && beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1 && eps > 0,
           "adam: need lr >= 0, beta1 and beta2 in [0, 1), eps > 0 (got lr=", lr, " beta1=", beta1,
           " beta2=", beta2, " eps=", eps, ")");
  if (st.m.empty() && st.v.empty()) {
    st.m.assign(params.size(), 0.0);
    st.v.assign(params.size(), 0.0);
  }
  MP_CHECK(st.m.size() == params.size() && st.v.size() == params.size(), "adam: state has ",
           st.m.size(), "/", st.v.size(), " moments for ", params.size(), " parameters");
  st.t += 1;
  const double c1 = 1.0 - std::pow(beta1, double(st.t));  // bias corrections of the zero-started moments
  const double c2 = 1.0 - std::pow(beta2, double(st.t));
  for (size_t i = 0; i < params.size(); ++i) {
    st.m[i] = beta1 * st.m[i] + (1.0 - beta1) * grad[i];
    st.v[i] = beta2 * st.v[i] + (1.0 - beta2) * grad[i] * grad[i];
    const double mhat = st.m[i] / c1, vhat = st.v[i] / c2;
    params[i] -= lr * mhat / (std::sqrt(vhat) + eps);
  }
}

}  // namespace metapo
