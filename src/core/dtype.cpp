#include "metapo/core/dtype.h"

#include "metapo/core/error.h"

namespace metapo {

std::string precision_name(const Precision& p) {
  if (p == Precision::fp32()) return "fp32";
  if (p == Precision::bf16()) return "bf16";
  if (p == Precision::fp64()) return "fp64";
  return str_cat(dtype_name(p.params), "/", dtype_name(p.activations), "/", dtype_name(p.grads));
}

Precision parse_precision(const std::string& name, const char* option) {
  if (name == "fp32") return Precision::fp32();
  MP_CHECK(name == "bf16", option, " ", name, ": unknown (valid: fp32, bf16)");
  return Precision::bf16();
}

Device parse_device(const std::string& name, const char* option) {
  if (name == "cpu") return Device::CPU;
  MP_CHECK(name == "cuda", option, " ", name, ": unknown (valid: cpu, cuda)");
  return Device::CUDA;
}

}  // namespace metapo
