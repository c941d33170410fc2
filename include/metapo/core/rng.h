// Counter-based random numbers (Philox4x32-10): every draw is a pure function of
// (seed, step, sample id, purpose), so no generator state is ever checkpointed.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>

namespace metapo {

// Fixed purposes, so two uses of the same (seed, step, id) never collide.
enum class RngPurpose : uint32_t { Init = 1, Shuffle = 2, Dropout = 3, Sample = 4, Synth = 5, Bench = 6,
                                   MetaInit = 7, Permute = 8 };

class Philox {
 public:
  // key = seed; counter = (a, b, c, d). Each call of next4() advances d.
  Philox(uint64_t seed, uint32_t a, uint32_t b, uint32_t c)
      : key_{uint32_t(seed), uint32_t(seed >> 32)}, ctr_{a, b, c, 0} {}

  std::array<uint32_t, 4> next4() {
    std::array<uint32_t, 4> x = ctr_;
    std::array<uint32_t, 2> k = key_;
    for (int r = 0; r < 10; ++r) {
      uint64_t p0 = uint64_t(0xD2511F53u) * x[0];
      uint64_t p1 = uint64_t(0xCD9E8D57u) * x[2];
      x = {uint32_t(p1 >> 32) ^ x[1] ^ k[0], uint32_t(p1), uint32_t(p0 >> 32) ^ x[3] ^ k[1], uint32_t(p0)};
      k[0] += 0x9E3779B9u;
      k[1] += 0xBB67AE85u;
    }
    ctr_[3]++;
    return x;
  }
  uint32_t next_u32() {
    if (pos_ == 4) {
      buf_ = next4();
      pos_ = 0;
    }
    return buf_[pos_++];
  }
  // Uniform in [0, 1) with 24 random bits.
  float uniform() { return float(next_u32() >> 8) * (1.0f / 16777216.0f); }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return uint64_t((double(next_u32()) / 4294967296.0) * double(n)); }
  // Standard normal by Box-Muller.
  double normal() {
    double u1 = (double(next_u32()) + 1.0) / 4294967297.0;
    double u2 = double(next_u32()) / 4294967296.0;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  std::array<uint32_t, 2> key_;
  std::array<uint32_t, 4> ctr_;
  std::array<uint32_t, 4> buf_{};
  int pos_ = 4;
};

inline Philox make_rng(uint64_t seed, uint64_t step, uint32_t sample_id, RngPurpose purpose) {
  return Philox(seed, uint32_t(step), uint32_t(step >> 32) ^ (sample_id * 0x9E3779B9u), uint32_t(purpose));
}

}  // namespace metapo
