#include "metapo/io/dataset_h5.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <type_traits>

#include "metapo/core/error.h"
#include "metapo/io/checkpoint.h"
#include "metapo/io/h5util.h"

// HDF5 C API, serial access with default property lists. HDF5's own error-stack printing is switched
// off so the user reads only our one line; where HDF5 knows why a call failed (errno, truncation), the
// innermost message of its error stack is appended in parentheses.

namespace metapo {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFormatName = "metapo-dataset";

// "int32", "uint16", "float64", "string": how the messages name a stored type.
std::string type_name(hid_t t) {
  const size_t bits = H5Tget_size(t) * 8;
  switch (H5Tget_class(t)) {
    case H5T_INTEGER: return str_cat(H5Tget_sign(t) == H5T_SGN_NONE ? "uint" : "int", bits);
    case H5T_FLOAT: return str_cat("float", bits);
    case H5T_STRING: return "string";
    default: return "a non-numeric type";
  }
}

bool has_link(hid_t loc, const std::string& name) { return H5Lexists(loc, name.c_str(), H5P_DEFAULT) > 0; }

// Opens loc/name if it is a group; an invalid H5Id when it is absent or something else.
H5Id open_group(hid_t loc, const std::string& name) {
  if (!has_link(loc, name)) return {};
  H5Id obj(H5Oopen(loc, name.c_str(), H5P_DEFAULT), H5Oclose);
  if (!obj.valid() || H5Iget_type(obj) != H5I_GROUP) return {};
  return H5Id(H5Gopen2(loc, name.c_str(), H5P_DEFAULT), H5Gclose);
}

// Names of the links in a group, in name order.
std::vector<std::string> link_names(hid_t g, const std::string& where) {
  H5G_info_t info;
  MP_CHECK(H5Gget_info(g, &info) >= 0, where, "cannot list the group", h5_reason());
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    MP_CHECK(len >= 0, where, "cannot list the group", h5_reason());
    std::string name(size_t(len) + 1, '\0');
    H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT);
    name.resize(size_t(len));
    names.push_back(name);
  }
  return names;
}

// The groups at the root: the splits. "sft" sorts among them by name.
std::vector<std::string> split_names(hid_t f, const std::string& file) {
  std::vector<std::string> out;
  for (const std::string& n : link_names(f, file + ": /: "))
    if (open_group(f, n).valid()) out.push_back(n);
  return out;
}

std::string list_or_none(const std::vector<std::string>& v) {
  if (v.empty()) return "none";
  std::string s;
  for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

// ---- reading ----

// What a stored 1-D field must hold, as docs/formats.md fixes it.
struct FieldType {
  H5T_class_t cls;
  size_t size;
  const char* name;  // as the messages say it
};
const FieldType kInt32{H5T_INTEGER, 4, "int32"};
const FieldType kInt64{H5T_INTEGER, 8, "int64"};
const FieldType kFloat32{H5T_FLOAT, 4, "float32"};
const FieldType kFloat64{H5T_FLOAT, 8, "float64"};

template <typename T>
hid_t mem_type() {
  if constexpr (std::is_same_v<T, int32_t>) return H5T_NATIVE_INT32;
  if constexpr (std::is_same_v<T, int64_t>) return H5T_NATIVE_INT64;
  if constexpr (std::is_same_v<T, float>) return H5T_NATIVE_FLOAT;
  if constexpr (std::is_same_v<T, double>) return H5T_NATIVE_DOUBLE;
}

// Reads the 1-D dataset loc/name of exactly the documented type (either byte order: HDF5 swaps).
// `where` is "data.h5: /train/" so messages read "data.h5: /train/chosen_tokens: missing".
template <typename T>
std::vector<T> read_1d(hid_t loc, const std::string& name, const std::string& where, const FieldType& want) {
  const std::string at = where + name + ": ";
  MP_CHECK(has_link(loc, name), at, "missing");
  H5Id obj(H5Oopen(loc, name.c_str(), H5P_DEFAULT), H5Oclose);
  MP_CHECK(obj.valid() && H5Iget_type(obj) == H5I_DATASET, at, "not a dataset", h5_reason());
  obj.reset();
  H5Id ds(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose);
  MP_CHECK(ds.valid(), at, "cannot open", h5_reason());
  H5Id type(H5Dget_type(ds), H5Tclose);
  MP_CHECK(type.valid(), at, "cannot read the type", h5_reason());
  const bool sign_ok = want.cls != H5T_INTEGER || H5Tget_sign(type) == H5T_SGN_2;
  MP_CHECK(H5Tget_class(type) == want.cls && H5Tget_size(type) == want.size && sign_ok, at, "stored as ",
           type_name(type), ", expected ", want.name);
  H5Id space(H5Dget_space(ds), H5Sclose);
  MP_CHECK(space.valid(), at, "cannot read the shape", h5_reason());
  const int rank = H5Sget_simple_extent_ndims(space);
  MP_CHECK(H5Sget_simple_extent_type(space) == H5S_SIMPLE && rank == 1, at, "expected a 1-D array, found ",
           rank == 0 ? std::string("a scalar") : str_cat(rank, " dimensions"));
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space, &n, nullptr);
  std::vector<T> v(static_cast<size_t>(n));
  if (n > 0)
    MP_CHECK(H5Dread(ds, mem_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0, at, "read failed",
             h5_reason());
  return v;
}

// Opens an attribute that must hold exactly one value.
H5Id open_attr(hid_t obj, const std::string& name, const std::string& at) {
  MP_CHECK(H5Aexists(obj, name.c_str()) > 0, at, "missing");
  H5Id a(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
  MP_CHECK(a.valid(), at, "cannot open", h5_reason());
  H5Id space(H5Aget_space(a), H5Sclose);
  MP_CHECK(space.valid() && H5Sget_simple_extent_npoints(space) == 1, at, "expected a single value");
  return a;
}

// A string attribute, fixed-length or variable-length (h5py writes the latter), any character set.
std::string read_string_attr(hid_t obj, const std::string& name, const std::string& at) {
  H5Id a = open_attr(obj, name, at);
  H5Id ftype(H5Aget_type(a), H5Tclose);
  MP_CHECK(ftype.valid() && H5Tget_class(ftype) == H5T_STRING, at, "stored as ", type_name(ftype),
           ", expected a string");
  if (H5Tis_variable_str(ftype) > 0) {
    H5Id mtype(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mtype, H5T_VARIABLE);
    H5Tset_cset(mtype, H5Tget_cset(ftype));  // HDF5 does not convert between character sets
    char* p = nullptr;
    MP_CHECK(H5Aread(a, mtype, &p) >= 0, at, "read failed", h5_reason());
    std::string s = p ? p : "";
    H5free_memory(p);
    return s;
  }
  // Fixed length: read the bytes as stored and cut at the first NUL (null-terminated or null-padded).
  const size_t size = H5Tget_size(ftype);
  std::string buf(size, '\0');
  MP_CHECK(H5Aread(a, ftype, buf.data()) >= 0, at, "read failed", h5_reason());
  buf.resize(std::min(buf.find('\0'), buf.size()));
  if (H5Tget_strpad(ftype) == H5T_STR_SPACEPAD) buf.erase(buf.find_last_not_of(' ') + 1);
  return buf;
}

// An integer attribute of any width (h5py's default is int64), read as int64.
int64_t read_int_attr(hid_t obj, const std::string& name, const std::string& at) {
  H5Id a = open_attr(obj, name, at);
  H5Id ftype(H5Aget_type(a), H5Tclose);
  MP_CHECK(ftype.valid() && H5Tget_class(ftype) == H5T_INTEGER, at, "stored as ", type_name(ftype),
           ", expected int64");
  int64_t v = 0;
  MP_CHECK(H5Aread(a, H5T_NATIVE_INT64, &v) >= 0, at, "read failed", h5_reason());
  return v;
}

H5Id open_file(const std::string& path, unsigned flags) {
  quiet_hdf5();
  std::error_code ec;
  MP_CHECK(fs::exists(path, ec), path, ": no such file");
  MP_CHECK(fs::is_regular_file(path, ec), path, ": not a regular file");
  MP_CHECK(H5Fis_hdf5(path.c_str()) > 0, path, ": not an HDF5 file", h5_reason());
  H5Id f(H5Fopen(path.c_str(), flags, H5P_DEFAULT), H5Fclose);
  MP_CHECK(f.valid(), path, ": cannot open", h5_reason());
  return f;
}

DatasetInfo read_info(hid_t f, const std::string& file) {
  auto at = [&](const char* name) { return str_cat(file, ": root attribute ", name, ": "); };
  const std::string format = read_string_attr(f, "format", at("format"));
  MP_CHECK(format == kFormatName, at("format"), "'", format, "', expected '", kFormatName,
           "' (not a metapo dataset file)");
  DatasetInfo info;
  info.format_version = read_int_attr(f, "format_version", at("format_version"));
  // Check the version before anything else: a newer file may lay out the rest differently.
  MP_CHECK(info.format_version == kDatasetFormatVersion, file, ": format_version ", info.format_version,
           " is not supported (this metapo reads version ", kDatasetFormatVersion, ")");
  info.tokenizer = read_string_attr(f, "tokenizer", at("tokenizer"));
  info.vocab_size = read_int_attr(f, "vocab_size", at("vocab_size"));
  info.bos_token_id = read_int_attr(f, "bos_token_id", at("bos_token_id"));
  info.eos_token_id = read_int_attr(f, "eos_token_id", at("eos_token_id"));
  info.pad_token_id = read_int_attr(f, "pad_token_id", at("pad_token_id"));
  info.task = read_string_attr(f, "task", at("task"));
  info.source = read_string_attr(f, "source", at("source"));
  check_dataset_info(info, file);
  return info;
}

void read_ragged(hid_t g, const std::string& where, const std::string& name, Ragged* r) {
  r->tokens = read_1d<int32_t>(g, name + "_tokens", where, kInt32);
  r->offsets = read_1d<int64_t>(g, name + "_offsets", where, kInt64);
  // An empty offsets array has no "N + 1"; say so before Ragged::size() would go negative.
  MP_CHECK(!r->offsets.empty(), where, name, "_offsets: empty, expected N + 1 entries starting with 0");
}

PairSplit read_pair_group(hid_t g, const std::string& file, const std::string& split, int64_t vocab_size) {
  const std::string where = str_cat(file, ": /", split, "/");
  PairSplit s;
  read_ragged(g, where, "prompt", &s.prompt);
  read_ragged(g, where, "chosen", &s.chosen);
  read_ragged(g, where, "rejected", &s.rejected);
  s.sample_id = read_1d<int64_t>(g, "sample_id", where, kInt64);
  if (has_link(g, "quality")) s.quality = read_1d<float>(g, "quality", where, kFloat32);
  if (has_link(g, "columns")) {
    H5Id cols = open_group(g, "columns");
    MP_CHECK(cols.valid(), where, "columns: expected a group of float32 [N] datasets");
    for (const std::string& name : link_names(cols, where + "columns: "))
      s.columns[name] = read_1d<float>(cols, name, where + "columns/", kFloat32);
  }
  if (has_link(g, "ref_logp_chosen")) s.ref_logp_chosen = read_1d<double>(g, "ref_logp_chosen", where, kFloat64);
  if (has_link(g, "ref_logp_rejected"))
    s.ref_logp_rejected = read_1d<double>(g, "ref_logp_rejected", where, kFloat64);
  if (H5Aexists(g, "ref_model") > 0) s.ref_model = read_string_attr(g, "ref_model", where + "ref_model: ");
  if (H5Aexists(g, "ref_max_length") > 0)
    s.ref_max_length = read_int_attr(g, "ref_max_length", where + "ref_max_length: ");
  if (H5Aexists(g, "ref_model_fingerprint") > 0)
    s.ref_model_fingerprint = read_string_attr(g, "ref_model_fingerprint", where + "ref_model_fingerprint: ");
  check_pair_split(s, file, split, vocab_size);
  return s;
}

SftSplit read_sft_group(hid_t g, const std::string& file, int64_t vocab_size) {
  const std::string where = file + ": /sft/";
  SftSplit s;
  read_ragged(g, where, "prompt", &s.prompt);
  read_ragged(g, where, "answer", &s.answer);
  s.sample_id = read_1d<int64_t>(g, "sample_id", where, kInt64);
  check_sft_split(s, file, vocab_size);
  return s;
}

// ---- writing ----

// Little-endian on disk whatever the host, as the format says.
template <typename T>
hid_t file_type() {
  if constexpr (std::is_same_v<T, int32_t>) return H5T_STD_I32LE;
  if constexpr (std::is_same_v<T, int64_t>) return H5T_STD_I64LE;
  if constexpr (std::is_same_v<T, float>) return H5T_IEEE_F32LE;
  if constexpr (std::is_same_v<T, double>) return H5T_IEEE_F64LE;
}

// Creation properties without modification times, which HDF5 stores by default: the same dataset
// then gives a byte-identical file (`metapo synth` twice, `cmp`).
H5Id untimed(hid_t cls) {
  H5Id p(H5Pcreate(cls), H5Pclose);
  H5Pset_obj_track_times(p, 0);
  return p;
}

template <typename T>
void write_1d(hid_t loc, const std::string& name, const std::vector<T>& v, const std::string& where) {
  const hsize_t n = v.size();
  H5Id space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  H5Id dcpl = untimed(H5P_DATASET_CREATE);
  H5Id ds(H5Dcreate2(loc, name.c_str(), file_type<T>(), space, H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose);
  MP_CHECK(space.valid() && ds.valid(), where, name, ": cannot create", h5_reason());
  if (n > 0)
    MP_CHECK(H5Dwrite(ds, mem_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0, where, name,
             ": write failed", h5_reason());
}

// Replaces an attribute of the same name. Strings are variable-length UTF-8, as h5py writes them, so
// Python reads them back as str.
void write_string_attr(hid_t obj, const std::string& name, const std::string& value, const std::string& where) {
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  H5Id type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Id a(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  const char* p = value.c_str();
  MP_CHECK(a.valid() && H5Awrite(a, type, &p) >= 0, where, "attribute ", name, ": write failed", h5_reason());
}

void write_int_attr(hid_t obj, const std::string& name, int64_t value, const std::string& where) {
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Id a(H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  MP_CHECK(a.valid() && H5Awrite(a, H5T_NATIVE_INT64, &value) >= 0, where, "attribute ", name, ": write failed",
           h5_reason());
}

H5Id create_group(hid_t loc, const std::string& name, const std::string& where) {
  H5Id gcpl = untimed(H5P_GROUP_CREATE);
  H5Id g(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, gcpl, H5P_DEFAULT), H5Gclose);
  MP_CHECK(g.valid(), where, name, ": cannot create group", h5_reason());
  return g;
}

void write_ragged(hid_t g, const std::string& name, const Ragged& r, const std::string& where) {
  write_1d(g, name + "_tokens", r.tokens, where);
  write_1d(g, name + "_offsets", r.offsets, where);
}

void write_info(hid_t f, const DatasetInfo& info, const std::string& where) {
  write_string_attr(f, "format", kFormatName, where);
  write_int_attr(f, "format_version", kDatasetFormatVersion, where);
  write_string_attr(f, "tokenizer", info.tokenizer, where);
  write_int_attr(f, "vocab_size", info.vocab_size, where);
  write_int_attr(f, "bos_token_id", info.bos_token_id, where);
  write_int_attr(f, "eos_token_id", info.eos_token_id, where);
  write_int_attr(f, "pad_token_id", info.pad_token_id, where);
  write_string_attr(f, "task", info.task, where);
  write_string_attr(f, "source", info.source, where);
}

void write_pair_group(hid_t f, const std::string& file, const std::string& split, const PairSplit& s) {
  const std::string where = str_cat(file, ": /", split, "/");
  H5Id g = create_group(f, split, file + ": /");
  write_ragged(g, "prompt", s.prompt, where);
  write_ragged(g, "chosen", s.chosen, where);
  write_ragged(g, "rejected", s.rejected, where);
  write_1d(g, "sample_id", s.sample_id, where);
  if (!s.quality.empty()) write_1d(g, "quality", s.quality, where);
  if (!s.columns.empty()) {
    H5Id cols = create_group(g, "columns", where);
    for (const auto& [name, v] : s.columns) write_1d(cols, name, v, where + "columns/");
  }
  if (s.has_ref()) {
    write_1d(g, "ref_logp_chosen", s.ref_logp_chosen, where);
    write_1d(g, "ref_logp_rejected", s.ref_logp_rejected, where);
    write_string_attr(g, "ref_model", s.ref_model, where);
    write_int_attr(g, "ref_max_length", s.ref_max_length, where);
    if (!s.ref_model_fingerprint.empty()) write_string_attr(g, "ref_model_fingerprint", s.ref_model_fingerprint, where);
  }
}

void write_sft_group(hid_t f, const std::string& file, const SftSplit& s) {
  const std::string where = file + ": /sft/";
  H5Id g = create_group(f, "sft", file + ": /");
  write_ragged(g, "prompt", s.prompt, where);
  write_ragged(g, "answer", s.answer, where);
  write_1d(g, "sample_id", s.sample_id, where);
}

// Writes or overwrites the float64 [N] dataset loc/name. A dataset of the right type and shape is
// overwritten in place: re-running precompute-ref then does not grow the file (HDF5 never reclaims
// the space of a deleted dataset).
void replace_f64(hid_t loc, const std::string& name, const std::vector<double>& v, const std::string& where) {
  if (has_link(loc, name)) {
    bool same = false;
    {
      H5Id ds(H5Dopen2(loc, name.c_str(), H5P_DEFAULT), H5Dclose);
      if (ds.valid()) {
        H5Id type(H5Dget_type(ds), H5Tclose), space(H5Dget_space(ds), H5Sclose);
        hsize_t n = 0;
        same = H5Tget_class(type) == H5T_FLOAT && H5Tget_size(type) == 8 &&
               H5Sget_simple_extent_ndims(space) == 1 && H5Sget_simple_extent_dims(space, &n, nullptr) == 1 &&
               n == v.size();
        if (same && n > 0)
          MP_CHECK(H5Dwrite(ds, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0, where, name,
                   ": write failed", h5_reason());
      }
    }
    if (same) return;
    MP_CHECK(H5Ldelete(loc, name.c_str(), H5P_DEFAULT) >= 0, where, name, ": cannot replace", h5_reason());
  }
  write_1d(loc, name, v, where);
}

void rename_into_place(const std::string& tmp, const std::string& path) {
  fsync_file(tmp);  // on the disk before the rename: after a power cut, the old file or the whole new one
  std::error_code ec;
  fs::rename(tmp, path, ec);
  MP_CHECK(!ec, path, ": cannot rename ", tmp, " (", ec.message(), ")");
}

// Copies the file src to dst (replaced), naming the cause of a failure (std::filesystem::copy_file
// says "Input/output error" for a full disk). dst is left writable by its owner, to be written next;
// returns src's mode, for the finished file.
mode_t copy_whole(const std::string& src, const std::string& dst) {
  const int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  MP_CHECK(in >= 0, src, ": cannot open (", std::strerror(errno), ")");
  struct stat st {};
  const mode_t mode = ::fstat(in, &st) == 0 ? (st.st_mode & 07777) : 0666;
  const int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (out < 0) {
    const int err = errno;
    ::close(in);
    fail(src, ": cannot create ", dst, " (", std::strerror(err), ")");
  }
  int err = ::fchmod(out, mode | S_IWUSR) == 0 ? 0 : errno;
  std::vector<char> buf(size_t(1) << 20);
  while (err == 0) {
    const ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = errno;
      break;
    }
    if (n == 0) break;
    err = write_fully(out, buf.data(), size_t(n));
  }
  ::close(in);
  if (::close(out) != 0 && err == 0) err = errno;
  MP_CHECK(err == 0, src, ": cannot copy to ", dst, " (", std::strerror(err), ")");
  return mode;
}

// Whether the file at path can be an HDF5 file a killed writer left: empty, or beginning with HDF5's
// signature (H5Fcreate writes it at once).
bool stale_h5_partial(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f.is_open()) return false;  // unreadable: not this process's to judge, nor to replace
  char head[8] = {};
  f.read(head, sizeof head);
  const std::streamsize n = f.gcount();
  if (n == 0) return true;
  static const char kSignature[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
  return n == 8 && std::memcmp(head, kSignature, 8) == 0;
}

// Runs `body` on path + ".partial" and renames it to path; on any error the partial file is removed
// and the error goes on up. A path that is a symbolic link is written through: the file it names is
// replaced (beside it), and the link stays a link.
template <typename F>
void build_then_rename(const std::string& path, F body) {
  std::error_code ec;
  std::string real = path;
  if (fs::is_symlink(fs::symlink_status(path, ec))) {
    real = fs::weakly_canonical(path, ec).string();
    MP_CHECK(!ec, path, ": cannot resolve the symbolic link (", ec.message(), ")");
  }
  const std::string tmp = real + ".partial";
  // A stale .partial file of a killed run is replaced (empty, or an HDF5 file's start); anything
  // else there is not metapo's.
  const fs::file_status st = fs::symlink_status(tmp, ec);
  MP_CHECK(!fs::exists(st) || (fs::is_regular_file(st) && stale_h5_partial(tmp)), path, ": ", tmp,
           " exists and was not left by metapo (it writes ", path, " there first); move it away");
  try {
    body(tmp);
    rename_into_place(tmp, real);
  } catch (...) {
    fs::remove(tmp, ec);
    throw;
  }
}

}  // namespace

bool is_dataset_file(const std::string& path) {
  try {
    quiet_hdf5();
    if (H5Fis_hdf5(path.c_str()) <= 0) return false;
    H5Id f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    return f.valid() && H5Aexists(f, "format") > 0 && read_string_attr(f, "format", path + ": ") == kFormatName;
  } catch (const Error&) {
    return false;
  }
}

DatasetInfo read_dataset_info(const std::string& path) {
  H5Id f = open_file(path, H5F_ACC_RDONLY);
  return read_info(f, path);
}

Dataset read_dataset(const std::string& path) {
  H5Id f = open_file(path, H5F_ACC_RDONLY);
  Dataset d;
  d.info = read_info(f, path);
  for (const std::string& name : split_names(f, path)) {
    H5Id g = open_group(f, name);
    if (name == "sft")
      d.sft = read_sft_group(g, path, d.info.vocab_size);
    else
      d.pairs[name] = read_pair_group(g, path, name, d.info.vocab_size);
  }
  check_dataset(d, path);  // adds the check across splits (unique sample ids)
  return d;
}

PairSplit read_pair_split(const std::string& path, const std::string& split) {
  H5Id f = open_file(path, H5F_ACC_RDONLY);
  const DatasetInfo info = read_info(f, path);
  MP_CHECK(split != "sft", path, ": /sft is the SFT split, not a pair split");
  H5Id g = open_group(f, split);
  MP_CHECK(g.valid(), path, ": no split '", split, "' (splits present: ", list_or_none(split_names(f, path)), ")");
  return read_pair_group(g, path, split, info.vocab_size);
}

SftSplit read_sft_split(const std::string& path) {
  H5Id f = open_file(path, H5F_ACC_RDONLY);
  const DatasetInfo info = read_info(f, path);
  H5Id g = open_group(f, "sft");
  MP_CHECK(g.valid(), path, ": no split 'sft' (splits present: ", list_or_none(split_names(f, path)), ")");
  return read_sft_group(g, path, info.vocab_size);
}

void write_dataset(const std::string& path, const Dataset& d) {
  check_dataset(d, path);
  quiet_hdf5();
  std::error_code ec;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  MP_CHECK(!ec, path, ": cannot create directory ", parent.string(), " (", ec.message(), ")");
  build_then_rename(path, [&](const std::string& tmp) {
    H5Id fcpl = untimed(H5P_FILE_CREATE);  // the root group too
    H5WriteFile f(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, fcpl, H5P_DEFAULT), tmp);
    MP_CHECK(f.valid(), path, ": cannot create ", tmp, h5_reason());
    write_info(f, d.info, path + ": ");
    if (d.sft) write_sft_group(f, path, *d.sft);
    for (const auto& [name, s] : d.pairs) write_pair_group(f, path, name, s);
    MP_CHECK(f.close(), path, ": cannot finish writing ", tmp, f.reason());
  });
}

void write_ref_logps(const std::string& path,
                     const std::map<std::string, std::pair<std::vector<double>, std::vector<double>>>& ref,
                     const std::string& ref_model, int64_t ref_max_length,
                     const std::string& ref_model_fingerprint) {
  MP_CHECK(ref_max_length >= 0, path, ": ref_max_length ", ref_max_length, " is negative");
  {
    // Check the file before copying it: a missing split should not cost a copy of a large file.
    H5Id f = open_file(path, H5F_ACC_RDONLY);
    read_info(f, path);
    for (const auto& [split, cr] : ref) {
      MP_CHECK(split != "sft", path, ": /sft is the SFT split, it takes no reference log-probs");
      MP_CHECK(open_group(f, split).valid(), path, ": no split '", split, "' (splits present: ",
               list_or_none(split_names(f, path)), ")");
    }
  }
  build_then_rename(path, [&](const std::string& tmp) {
    const mode_t mode = copy_whole(path, tmp);
    H5WriteFile f(H5Fopen(tmp.c_str(), H5F_ACC_RDWR, H5P_DEFAULT), tmp);
    MP_CHECK(f.valid(), path, ": cannot open ", tmp, " for writing", h5_reason());
    for (const auto& [split, cr] : ref) {
      const auto& [chosen, rejected] = cr;
      const std::string where = str_cat(path, ": /", split, "/");
      H5Id g = open_group(f, split);
      // N from sample_id, as the readers take it.
      const int64_t n = int64_t(read_1d<int64_t>(g, "sample_id", where, kInt64).size());
      MP_CHECK(int64_t(chosen.size()) == n, where, "ref_logp_chosen: ", chosen.size(), " values, expected N = ", n,
               " (one per pair)");
      MP_CHECK(int64_t(rejected.size()) == n, where, "ref_logp_rejected: ", rejected.size(),
               " values, expected N = ", n, " (one per pair)");
      for (size_t i = 0; i < size_t(n); ++i)
        MP_CHECK(std::isfinite(chosen[i]) && std::isfinite(rejected[i]), where, "ref_logp_",
                 std::isfinite(chosen[i]) ? "rejected" : "chosen", ": value at index ", i, " is not finite");
      replace_f64(g, "ref_logp_chosen", chosen, where);
      replace_f64(g, "ref_logp_rejected", rejected, where);
      write_string_attr(g, "ref_model", ref_model, where);
      write_int_attr(g, "ref_max_length", ref_max_length, where);
      if (H5Aexists(g, "ref_model_fingerprint") > 0) H5Adelete(g, "ref_model_fingerprint");
      if (!ref_model_fingerprint.empty()) write_string_attr(g, "ref_model_fingerprint", ref_model_fingerprint, where);
    }
    MP_CHECK(f.close(), path, ": cannot finish writing ", tmp, f.reason());
    MP_CHECK(::chmod(tmp.c_str(), mode) == 0, path, ": cannot set the mode of ", tmp, " (", std::strerror(errno),
             ")");  // the original's, as copy_file kept it
  });
}

}  // namespace metapo
