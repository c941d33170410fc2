// FNV-1a, 64 bits: the fingerprints that tell one dataset or model from another (a different file
// behind the same name, a stale copy), recorded in checkpoints and datasets. Not cryptographic.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace metapo {

class Fnv1a {
 public:
  static constexpr uint64_t kOffsetBasis = 14695981039346656037ull;
  static constexpr uint64_t kPrime = 1099511628211ull;
  explicit Fnv1a(uint64_t seed = kOffsetBasis) : h_(seed) {}

  void add_bytes(const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h_ = (h_ ^ b[i]) * kPrime;
  }
  // An integer's 8 bytes, least significant first (the same on every machine).
  void add_u64(uint64_t v) {
    for (int k = 0; k < 8; ++k) h_ = (h_ ^ ((v >> (8 * k)) & 0xff)) * kPrime;
  }
  // A vector's size in bytes, then its bytes: [a][bc] and [ab][c] differ.
  template <typename T>
  void add_sized(const std::vector<T>& v) {
    add_u64(uint64_t(v.size() * sizeof(T)));
    add_bytes(v.data(), v.size() * sizeof(T));
  }
  void add_sized(const std::string& s) {
    add_u64(uint64_t(s.size()));
    add_bytes(s.data(), s.size());
  }

  uint64_t value() const { return h_; }
  std::string hex() const {
    char b[17];
    std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h_));
    return b;
  }

 private:
  uint64_t h_;
};

}  // namespace metapo
