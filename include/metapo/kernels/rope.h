// Rotary position embedding in the Hugging Face "rotate half" convention: within each head of
// dimension D, element i pairs with element i + D/2 and turns by angle pos * inv_freq[i].
#pragma once
#include <cstdint>
#include <memory>
#include <vector>


namespace metapo {

// cos/sin tables [max_pos, D/2] for positions 0..max_pos-1: data the rope op reads, built on the host
// (a device backend keeps its own copy).
template <typename T>
struct RopeTable {
  int64_t half = 0, max_pos = 0;
  std::vector<T> cos, sin;
  // A device backend's copy of [cos | sin], made on first use there and dropped by build().
  mutable std::shared_ptr<void> device_copy;
  void build(const std::vector<double>& inv_freq, int64_t max_pos);
};

}  // namespace metapo

namespace metapo::cpu {

using metapo::RopeTable;

// In place on x rows of [n_heads, D] (row stride ld elements), token t at position pos[t].
// inverse = true rotates by -angle: that is the backward (the rotation is orthogonal).
template <typename T>
void rope_apply(T* x, int64_t n, int64_t n_heads, int64_t D, int64_t ld, const int32_t* pos,
                const RopeTable<T>& tab, bool inverse);

}  // namespace metapo::cpu
