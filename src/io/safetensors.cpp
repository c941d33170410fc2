#include "metapo/io/safetensors.h"

#include <fcntl.h>
#include <unistd.h>  // fsync, pread

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include "metapo/core/error.h"
#include "metapo/core/progress.h"
#include "metapo/core/half.h"

// Raw float bytes are copied to and from the file as they are: safetensors is little-endian, and so
// is every host metapo runs on (x86-64, aarch64).

namespace metapo {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Element sizes of every safetensors dtype, so that files holding e.g. an I64 buffer still validate;
// only the float ones can be read.
size_t dtype_size(const std::string& d) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2},
      {"U16", 2},  {"F16", 2}, {"BF16", 2}, {"I32", 4},    {"U32", 4},     {"F32", 4},
      {"I64", 8},  {"U64", 8}, {"F64", 8}};
  auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

// Multiplies with an overflow check: a crafted header must not wrap around the bounds checks.
bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) {
  if (b != 0 && a > std::numeric_limits<uint64_t>::max() / b) return false;
  *out = a * b;
  return true;
}

constexpr size_t kChunk = size_t(1) << 20;  // elements converted per chunk: bounded extra memory

}  // namespace

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  std::error_code ec;
  MP_CHECK(fs::is_regular_file(path, ec), path, ": no such file");
  const uint64_t file_size = fs::file_size(path, ec);
  MP_CHECK(!ec, path, ": cannot stat (", ec.message(), ")");
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MP_CHECK(fd_ >= 0, path, ": cannot open (", std::strerror(errno), ")");
  MP_CHECK(file_size >= 8, path, ": file has ", file_size,
           " bytes, too short for the 8-byte header length (truncated?)");

  unsigned char b[8];
  MP_CHECK(::pread(fd_, b, 8, 0) == 8, path, ": cannot read the header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | b[i];
  MP_CHECK(n <= file_size - 8, path, ": header length ", n,
           " runs past the end of the file (size ", file_size, "; truncated or not safetensors?)");
  std::string header(n, '\0');
  MP_CHECK(n == 0 || ::pread(fd_, &header[0], n, 8) == ssize_t(n), path, ": cannot read the ", n, "-byte header");
  data_start_ = 8 + n;
  const uint64_t data_size = file_size - data_start_;

  json h;
  try {
    h = json::parse(header);
  } catch (const json::parse_error& e) {
    fail(path, ": bad JSON header: ", e.what());
  }
  MP_CHECK(h.is_object(), path, ": header is a JSON ", h.type_name(), ", not an object");

  for (const auto& item : h.items()) {
    const std::string& name = item.key();
    const json& t = item.value();
    if (name == "__metadata__") {
      MP_CHECK(t.is_object(), path, ": __metadata__ is not an object");
      metadata_ = t;
      continue;
    }
    const std::string where = str_cat(path, ": tensor ", name);
    MP_CHECK(t.is_object() && t.contains("dtype") && t.contains("shape") &&
                 t.contains("data_offsets"),
             where, ": needs dtype, shape and data_offsets");
    SafetensorsEntry e;
    e.name = name;
    MP_CHECK(t["dtype"].is_string(), where, ": dtype is not a string");
    e.dtype = t["dtype"].get<std::string>();
    const size_t esize = dtype_size(e.dtype);
    MP_CHECK(esize, where, ": unknown dtype ", e.dtype);

    const json& sh = t["shape"];
    MP_CHECK(sh.is_array(), where, ": shape is not a list");
    uint64_t numel = 1;
    for (const json& d : sh) {
      MP_CHECK(d.is_number_unsigned(), where, ": shape ", sh.dump(), " has a bad dimension");
      e.shape.push_back(d.get<int64_t>());
      MP_CHECK(mul_ok(numel, d.get<uint64_t>(), &numel), where, ": shape ", sh.dump(),
               " overflows");
    }
    uint64_t bytes;
    MP_CHECK(mul_ok(numel, esize, &bytes), where, ": shape ", sh.dump(), " overflows");
    e.numel = size_t(numel);

    const json& off = t["data_offsets"];
    MP_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() &&
                 off[1].is_number_unsigned(),
             where, ": data_offsets ", off.dump(), " is not a pair of non-negative integers");
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    MP_CHECK(e.begin <= e.end, where, ": data_offsets [", e.begin, ", ", e.end, "] are reversed");
    MP_CHECK(e.end <= data_size, where, ": data_offsets [", e.begin, ", ", e.end,
             "] run past the end of the file (size ", file_size, ", data section ", data_size,
             " bytes; truncated?)");
    MP_CHECK(e.end - e.begin == bytes, where, ": data_offsets [", e.begin, ", ", e.end, "] hold ",
             e.end - e.begin, " bytes, but ", e.dtype, " ", shape_str(e.shape), " needs ", bytes);
    tensors_.push_back(std::move(e));
  }
  // The format's rule: the tensors' byte ranges do not overlap (two tensors sharing bytes would
  // alias, and a write through one would change the other).
  std::vector<const SafetensorsEntry*> by_offset;
  for (const SafetensorsEntry& e : tensors_)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    return a->begin < b->begin;
  });
  for (size_t i = 1; i < by_offset.size(); ++i)
    MP_CHECK(by_offset[i]->begin >= by_offset[i - 1]->end, path, ": tensors ", by_offset[i - 1]->name, " [",
             by_offset[i - 1]->begin, ", ", by_offset[i - 1]->end, ") and ", by_offset[i]->name, " [", by_offset[i]->begin,
             ", ", by_offset[i]->end, ") overlap");
  // nlohmann's object is a std::map, so tensors_ is already sorted by name.
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

SafetensorsReader::SafetensorsReader(SafetensorsReader&& o) noexcept
    : path_(std::move(o.path_)),
      fd_(o.fd_),
      data_start_(o.data_start_),
      tensors_(std::move(o.tensors_)),
      index_(std::move(o.index_)),
      metadata_(std::move(o.metadata_)) {
  o.fd_ = -1;
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) ::close(fd_);
}

const SafetensorsEntry* SafetensorsReader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsReader::read(const std::string& name, float* out) const {
  const SafetensorsEntry* e = find(name);
  MP_CHECK(e, path_, ": no tensor ", name);
  read_elements(*e, 0, e->numel, out);
}

void SafetensorsReader::read_elements(const SafetensorsEntry& e, size_t first, size_t count, float* out) const {
  const std::string& dt = e.dtype;
  MP_CHECK(dt == "F32" || dt == "BF16" || dt == "F16" || dt == "F64", path_, ": tensor ", e.name,
           ": unsupported dtype ", dt, " (metapo reads F32, BF16, F16, F64)");
  MP_CHECK(first <= e.numel && count <= e.numel - first, path_, ": tensor ", e.name, ": elements [", first, ", ",
           first + count, ") are outside its ", e.numel);
  const size_t esize = dtype_size(dt);
  // Reads all n bytes at `at` into dst (pread may return less than asked).
  auto pread_all = [&](char* dst, size_t n, uint64_t at) {
    while (n > 0) {
      const ssize_t got = ::pread(fd_, dst, n, off_t(at));
      if (got < 0 && errno == EINTR) continue;
      MP_CHECK(got > 0, path_, ": tensor ", e.name, ": read failed (",
               got < 0 ? std::strerror(errno) : "unexpected end of file: truncated while open?", ")");
      dst += got, n -= size_t(got), at += uint64_t(got);
    }
  };
  std::vector<char> buf;
  for (size_t i = 0; i < count; i += kChunk) {
    const size_t n = std::min(kChunk, count - i);
    const uint64_t at = data_start_ + e.begin + uint64_t(first + i) * esize;
    if (dt == "F32") {  // no conversion: straight into out
      pread_all(reinterpret_cast<char*>(out + i), n * 4, at);
      continue;
    }
    buf.resize(n * esize);
    pread_all(buf.data(), n * esize, at);
    for (size_t k = 0; k < n; ++k) {
      const char* p = buf.data() + k * esize;
      if (dt == "F64") {
        double d;
        std::memcpy(&d, p, 8);
        out[i + k] = float(d);
      } else {
        uint16_t h;
        std::memcpy(&h, p, 2);
        out[i + k] = dt == "BF16" ? bf16_to_f32(h) : f16_to_f32(h);
      }
    }
  }
}

std::vector<float> SafetensorsReader::read(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  MP_CHECK(e, path_, ": no tensor ", name);
  std::vector<float> v(e->numel);
  read(name, v.data());
  return v;
}

SafetensorsLayout safetensors_layout(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                                     const std::string& dtype) {
  SafetensorsLayout L;
  L.element_size = dtype == "F32" ? 4 : (dtype == "BF16" || dtype == "F16") ? 2 : 0;
  MP_CHECK(L.element_size, path, ": cannot write dtype ", dtype, " (F32, BF16 or F16)");
  json h = json::object();
  h["__metadata__"] = {{"format", "pt"}};
  uint64_t off = 0;
  std::vector<uint64_t> data_offsets;
  for (const auto& t : tensors) {
    MP_CHECK(!h.contains(t.name), path, ": tensor ", t.name, " is given twice");
    size_t numel = 1;
    for (int64_t d : t.shape) {
      MP_CHECK(d >= 0, path, ": tensor ", t.name, ": negative dimension in ", shape_str(t.shape));
      numel *= size_t(d);
    }
    h[t.name] = {{"dtype", dtype}, {"shape", t.shape}, {"data_offsets", {off, off + numel * L.element_size}}};
    data_offsets.push_back(off);
    off += numel * L.element_size;
  }
  // Padding the header to a multiple of 8 aligns the data section, as the reference writer does.
  std::string header = h.dump();
  header.resize((header.size() + 7) / 8 * 8, ' ');
  L.head.resize(8);
  for (int i = 0; i < 8; ++i) L.head[size_t(i)] = char(uint8_t(uint64_t(header.size()) >> (8 * i)));
  L.head += header;
  for (uint64_t d : data_offsets) L.offsets.push_back(L.head.size() + d);
  L.file_size = L.head.size() + off;
  return L;
}

void encode_floats(const float* x, size_t n, const std::string& dtype, void* out) {
  if (dtype == "F32") {
    std::memcpy(out, x, n * 4);
    return;
  }
  uint16_t* o = static_cast<uint16_t*>(out);
  if (dtype == "BF16") {
    for (size_t k = 0; k < n; ++k) o[k] = f32_to_bf16(x[k]);
  } else {
    MP_CHECK(dtype == "F16", "cannot encode dtype ", dtype);
    for (size_t k = 0; k < n; ++k) o[k] = f32_to_f16(x[k]);
  }
}

void write_safetensors(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                       const std::string& dtype) {
  const SafetensorsLayout L = safetensors_layout(path, tensors, dtype);
  for (size_t ti = 0; ti < tensors.size(); ++ti)
    MP_CHECK(tensors[ti].data || (ti + 1 < tensors.size() ? L.offsets[ti + 1] : L.file_size) == L.offsets[ti], path,
             ": tensor ", tensors[ti].name, ": no data");

  const std::string tmp = path + ".partial";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  MP_CHECK(f, tmp, ": cannot create (", std::strerror(errno), ")");
  bool ok = true;
  auto put = [&](const void* p, size_t n) { ok = ok && std::fwrite(p, 1, n, f) == n; };
  put(L.head.data(), L.head.size());
  std::vector<char> buf;
  for (size_t ti = 0; ti < tensors.size() && ok; ++ti) {
    const size_t numel = ((ti + 1 < tensors.size() ? L.offsets[ti + 1] : L.file_size) - L.offsets[ti]) / L.element_size;
    for (size_t i = 0; i < numel; i += kChunk) {
      const size_t n = std::min(kChunk, numel - i);
      buf.resize(n * L.element_size);
      encode_floats(tensors[ti].data + i, n, dtype, buf.data());
      put(buf.data(), buf.size());
      report_progress();  // the hang watchdog: writing a large model is progress
    }
  }
  // fsync before the rename: otherwise a power loss can leave an empty file under the final name.
  ok = ok && std::fflush(f) == 0 && fsync(fileno(f)) == 0;
  const int err = errno;
  ok = (std::fclose(f) == 0) && ok;
  std::error_code ec;
  if (!ok) {
    fs::remove(tmp, ec);
    fail(tmp, ": write failed (", std::strerror(err), ")");
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    fs::remove(tmp, ec);
    fail(path, ": cannot rename ", tmp, " to it (", why, ")");
  }
}

}  // namespace metapo
