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
// Reads go through pread on one descriptor, so several threads may read at once.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  SafetensorsReader(SafetensorsReader&&) noexcept;
  SafetensorsReader& operator=(SafetensorsReader&&) = delete;
  SafetensorsReader(const SafetensorsReader&) = delete;
  ~SafetensorsReader();

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& tensors() const& { return tensors_; }  // sorted by name
  // `for (auto& e : SafetensorsReader(p).tensors())` would iterate a destroyed vector: refuse it.
  void tensors() const&& = delete;
  const SafetensorsEntry* find(const std::string& name) const;  // nullptr if absent
  const nlohmann::json& metadata() const { return metadata_; }  // "__metadata__", or {}

  // Reads tensor `name` converted to fp32 into out[0, numel). Errors on unsupported dtypes.
  void read(const std::string& name, float* out) const;
  std::vector<float> read(const std::string& name) const;
  // Reads elements [first, first + count) of tensor `e` (row-major) converted to fp32 into out,
  // through a staging buffer of at most 1M elements (none for F32). Thread-safe.
  void read_elements(const SafetensorsEntry& e, size_t first, size_t count, float* out) const;

 private:
  std::string path_;
  int fd_ = -1;
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

// The header write_safetensors writes for these tensors (data pointers unused), all as dtype: the
// 8-byte length and the JSON padded to a multiple of 8 bytes, so a file can be laid out before any
// data exists and filled by several writers. offsets[k] = byte offset of tensor k's data in the file.
struct SafetensorsLayout {
  std::string head;              // length + JSON: the file's first head.size() bytes
  std::vector<uint64_t> offsets;  // per tensor, from the start of the file
  uint64_t file_size = 0;
  size_t element_size = 0;
};
SafetensorsLayout safetensors_layout(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                                     const std::string& dtype);
// Converts n floats to dtype (F32, BF16 or F16; round to nearest even) into out (n * element size bytes).
void encode_floats(const float* x, size_t n, const std::string& dtype, void* out);

}  // namespace metapo
