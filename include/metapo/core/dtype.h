// Element types and devices: what a buffer holds and where it lives, for the ops (ops/ops.h) and the
// collectives (comm/comm.h). bf16 is stored as its 16 raw bits (core/half.h converts).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace metapo {

enum class DType : uint8_t { BF16, F32, F64, I32, I64, U64, U8 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::BF16: return 2;
    case DType::F32: case DType::I32: return 4;
    case DType::F64: case DType::I64: case DType::U64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

constexpr const char* dtype_name(DType t) {
  switch (t) {
    case DType::BF16: return "bf16";
    case DType::F32: return "fp32";
    case DType::F64: return "fp64";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
    case DType::U64: return "uint64";
    case DType::U8: return "uint8";
  }
  return "?";
}

// The DType of a C++ element type (bf16 has no C++ type here: its buffers are uint16_t).
template <typename T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::F32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::F64; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::I32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::I64; };
template <> struct DTypeOf<uint64_t> { static constexpr DType value = DType::U64; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::U8; };
template <typename T> inline constexpr DType dtype_of = DTypeOf<T>::value;

// A model's storage precision: parameters and activations in fp32 or bf16, gradients and master
// weights in fp32; everything fp64 for the finite-difference tests. Arithmetic is fp32 (fp64) in
// every case: bf16 is a storage format, rounded to nearest even where a value is stored.
struct Precision {
  DType params = DType::F32, activations = DType::F32, grads = DType::F32;
  static Precision fp32() { return {}; }
  static Precision bf16() { return {DType::BF16, DType::BF16, DType::F32}; }
  static Precision fp64() { return {DType::F64, DType::F64, DType::F64}; }
  bool operator==(const Precision& o) const {
    return params == o.params && activations == o.activations && grads == o.grads;
  }
  bool operator!=(const Precision& o) const { return !(*this == o); }
};
// "fp32", "bf16", "fp64", or "params/activations/grads" for another combination.
std::string precision_name(const Precision& p);
// fp32 | bf16 (the training precisions); throws naming `option` otherwise.
Precision parse_precision(const std::string& name, const char* option = "--precision");

// Where a buffer lives and an op runs. CPU is the reference backend (kernels/cpu); CUDA runs on the
// current device of the calling rank.
enum class Device : uint8_t { CPU, CUDA };
constexpr const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }
// cpu | cuda; throws naming `option` otherwise.
Device parse_device(const std::string& name, const char* option = "--device");

}  // namespace metapo
