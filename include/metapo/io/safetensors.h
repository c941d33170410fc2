// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte little-endian header
// length N, N bytes of JSON header {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {...}}, then the data section; offsets are bytes relative to the data section.
// metapo keeps parameters in fp32, so the reader converts F32/BF16/F16/F64 to float and the writer
// converts float to F32/BF16/F16.
#pragma once
#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace metapo {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;           // as in the file: F32, BF16, F16, F64, I64, ...
  std::vector<int64_t> shape;  // row-major
  uint64_t begin = 0, end = 0;  // byte range in the data section
  size_t numel = 0;
};

// Opens and validates a file: the header fits in the file, every tensor's byte range lies inside the
// data section and has exactly numel * dtype size bytes. Every error names the file (and the tensor).
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& tensors() const& { return tensors_; }  // sorted by name
  // `for (auto& e : SafetensorsReader(p).tensors())` would iterate a destroyed vector: refuse it.
  void tensors() const&& = delete;
  const SafetensorsEntry* find(const std::string& name) const;  // nullptr if absent
  const nlohmann::json& metadata() const { return metadata_; }  // "__metadata__", or {}

  // Reads tensor `name` converted to fp32 into out[0, numel). Errors on unsupported dtypes.
  void read(const std::string& name, float* out);
  std::vector<float> read(const std::string& name);

 private:
  std::string path_;
  std::ifstream file_;
  uint64_t data_start_ = 0;  // byte offset of the data section in the file
  std::vector<SafetensorsEntry> tensors_;
  std::map<std::string, size_t> index_;
  nlohmann::json metadata_ = nlohmann::json::object();
};

// One tensor to write: `data` holds prod(shape) floats and must outlive the write call.
struct SafetensorsTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;
};

// Writes `tensors` in the given order, all as `dtype` (F32, BF16 or F16, rounding to nearest even),
// with "__metadata__": {"format": "pt"} (transformers refuses files without it). Writes
// `path + ".partial"` and renames it, so a crash never leaves a half-written file under `path`.
// "[64, 128]": how shapes appear in error messages.
std::string shape_str(const std::vector<int64_t>& shape);

void write_safetensors(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                       const std::string& dtype = "F32");

}  // namespace metapo
