#include "metapo/io/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <type_traits>

#include "metapo/comm/mpio.h"
#include "metapo/core/error.h"
#include "metapo/core/progress.h"
#include "metapo/core/simd.h"
#include "metapo/io/h5util.h"

namespace metapo {

namespace fs = std::filesystem;

// Checksums are summed over the ranks once, at close(): a per-array all-reduce would make every
// array a synchronization point, and with ZeRO-1 windows most arrays are written by one or two ranks
// while the others would wait for them instead of writing their own.
struct CheckpointFile::Impl {
  H5Id file;
  struct Pending {
    H5Id ds;               // writing: the open dataset its checksum attribute goes on
    std::string name;
    uint64_t sum = 0;      // this rank's part of the checksum
    uint64_t stored = 0;   // reading: the checksum attribute
  };
  std::vector<Pending> pending;
  std::string error;  // this rank's first failed transfer (reported by every rank at close)
};

namespace {

template <typename T>
uint64_t bits_of(T v) {
  if constexpr (sizeof(T) == 4) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    return b;
  } else {
    uint64_t b;
    std::memcpy(&b, &v, 8);
    return b;
  }
}

// One element's term (docs/formats.md): the bits xored with a multiple of the index, times an odd
// constant, then an xorshift. For a given index each step is a bijection, so a change to any one
// element always changes the sum; the index makes moved or swapped elements change it too. One
// 64-bit multiply per element beside the index's: the sum runs over the whole state at every
// checkpoint and every resume, and splitmix64's three multiplies made it cost as much as the write.
inline uint64_t term(uint64_t index, uint64_t bits) {
  const uint64_t x = (bits ^ ((index + 1) * 0x9e3779b97f4a7c15ull)) * 0xbf58476d1ce4e5b9ull;
  return x ^ (x >> 29);
}

// Σ term(offset + i, bits of x[i]) over i < n (mod 2^64), vectorized and on the rank's threads.
template <typename T>
METAPO_WIDE_LOOPS uint64_t checksum_range(const T* x, uint64_t offset, size_t n) {
  uint64_t sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static) if (n > (1u << 16))
  for (size_t i = 0; i < n; ++i) sum += term(offset + i, bits_of(x[i]));
  return sum;
}

template <typename T>
hid_t mem_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "float or double arrays");
  return std::is_same_v<T, float> ? H5T_NATIVE_FLOAT : H5T_NATIVE_DOUBLE;
}

// Runs sorted by offset: the order HDF5 walks a file selection in, so the packed buffer matches it.
std::vector<FlatRun> sorted_runs(std::vector<FlatRun> runs, uint64_t total, const std::string& name) {
  runs.erase(std::remove_if(runs.begin(), runs.end(), [](const FlatRun& r) { return r.count == 0; }), runs.end());
  std::sort(runs.begin(), runs.end(), [](const FlatRun& a, const FlatRun& b) { return a.offset < b.offset; });
  for (size_t k = 0; k < runs.size(); ++k) {
    MP_CHECK(runs[k].offset + runs[k].count <= total, "checkpoint ", name, ": run past the end of the array");
    MP_CHECK(k == 0 || runs[k - 1].offset + runs[k - 1].count <= runs[k].offset, "checkpoint ", name,
             ": overlapping runs");
  }
  return runs;
}

// The file selection of the runs on a dataspace of rank 1 or 2: each run as at most three rectangles
// (a partial first row, whole rows, a partial last row), with rectangles that continue each other
// (the same columns, the next rows) merged, so a row- or column-block shard is one hyperslab.
void select_runs(hid_t space, const std::vector<uint64_t>& dims, const std::vector<FlatRun>& runs) {
  H5Sselect_none(space);
  if (runs.empty()) return;
  const uint64_t cols = dims.size() == 2 ? dims[1] : 0;
  struct Rect {
    uint64_t r, c, nr, nc;
  };
  std::vector<Rect> rects;
  auto add = [&](Rect x) {
    if (x.nr == 0 || x.nc == 0) return;
    if (!rects.empty()) {
      Rect& p = rects.back();
      if (p.c == x.c && p.nc == x.nc && p.r + p.nr == x.r) {
        p.nr += x.nr;
        return;
      }
      if (p.nr == 1 && x.nr == 1 && p.r == x.r && p.c + p.nc == x.c) {  // adjacent in one row
        p.nc += x.nc;
        return;
      }
    }
    rects.push_back(x);
  };
  for (const FlatRun& run : runs) {
    if (cols == 0) {
      add({0, run.offset, 1, run.count});
      continue;
    }
    uint64_t a = run.offset, e = run.offset + run.count;
    if (a % cols != 0) {  // partial first row
      const uint64_t stop = std::min(e, (a / cols + 1) * cols);
      add({a / cols, a % cols, 1, stop - a});
      a = stop;
    }
    if (e - a >= cols) {  // whole rows
      const uint64_t rows = (e - a) / cols;
      add({a / cols, 0, rows, cols});
      a += rows * cols;
    }
    if (a < e) add({a / cols, 0, 1, e - a});
  }
  for (const Rect& x : rects) {
    if (cols == 0) {
      const hsize_t start[1] = {x.c}, count[1] = {x.nc};
      MP_CHECK(H5Sselect_hyperslab(space, H5S_SELECT_OR, start, nullptr, count, nullptr) >= 0, "HDF5 selection failed");
    } else {
      const hsize_t start[2] = {x.r, x.c}, count[2] = {x.nr, x.nc};
      MP_CHECK(H5Sselect_hyperslab(space, H5S_SELECT_OR, start, nullptr, count, nullptr) >= 0, "HDF5 selection failed");
    }
  }
}

uint64_t numel(const std::vector<uint64_t>& dims) {
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  return n;
}

std::string dims_str(const std::vector<uint64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// Makes the groups of "/a/b/name" that do not exist yet (collective in parallel HDF5).
void make_parents(hid_t file, const std::string& name) {
  for (size_t p = name.find('/', 1); p != std::string::npos; p = name.find('/', p + 1)) {
    const std::string g = name.substr(0, p);
    if (H5Lexists(file, g.c_str(), H5P_DEFAULT) > 0) continue;
    H5Id id(H5Gcreate2(file, g.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
    MP_CHECK(id.valid(), "cannot create group ", g, h5_reason());
  }
}

// Raw data moves by independent MPI-IO: each rank writes (reads) its own runs without waiting for
// the others, as its runs are large and contiguous, or strided rows of a TP shard. The metadata (file,
// group, dataset and attribute headers) stays collective (see the file access list below).
H5Id independent_dxpl() {
  H5Id dxpl(H5Pcreate(H5P_DATASET_XFER), H5Pclose);
  H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_INDEPENDENT);
  return dxpl;
}

H5Id string_type(size_t n) {
  H5Id t(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(t, std::max<size_t>(n, 1));
  H5Tset_strpad(t, H5T_STR_NULLPAD);
  return t;
}

// Waits until every rank of comm has arrived, polling a non-blocking barrier with short sleeps: a rank
// done with its part of a file must not spin in a blocking collective while the others still write
// or read theirs (with more ranks than cores, as in tests, it would take their CPU).
void idle_barrier(Comm& comm) {
  CommRequest req = comm.ibarrier();
  while (!req.test()) ::usleep(200);
}

// Every rank learns whether all ranks succeeded; all throw the same message when one did not.
void agree(bool ok, Comm& comm, const std::string& what) {
  int32_t all = ok ? 1 : 0;
  comm.allreduce(&all, 1, ReduceOp::Min);
  MP_CHECK(all, what);
}

std::string parent_dir(const std::string& path) {
  const std::string p = fs::path(path).parent_path().string();
  return p.empty() ? "." : p;
}

std::string mib(uint64_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", double(bytes) / (1024.0 * 1024.0));
  return b;
}

}  // namespace

std::string room_note(const std::string& path) {
  const uint64_t room = free_bytes(parent_dir(path));
  return room == UINT64_MAX ? "" : "; the file system of " + parent_dir(path) + " had " + mib(room) + " free";
}

uint64_t free_bytes(const std::string& dir) {
  struct statvfs s;
  // Some FUSE and network file systems report no blocks at all: nothing to be told there.
  if (::statvfs(dir.c_str(), &s) != 0 || s.f_blocks == 0) return UINT64_MAX;
  return uint64_t(s.f_bavail) * uint64_t(s.f_frsize);
}

uint64_t checksum_term(uint64_t index, uint64_t bits) { return term(index, bits); }

namespace {

// The checksum of a scalar dataset: of a string's bytes, or of an integer's bits (index 0).
uint64_t string_checksum(const std::string& v) {
  uint64_t sum = 0;
  for (size_t i = 0; i < v.size(); ++i) sum += term(i, static_cast<unsigned char>(v[i]));
  return sum;
}
uint64_t int_checksum(int64_t v) { return term(0, static_cast<uint64_t>(v)); }

// Written with the dataset (collective metadata: every rank passes the same value).
bool attach_checksum(hid_t ds, uint64_t sum) {
  H5Id ascalar(H5Screate(H5S_SCALAR), H5Sclose);
  H5Id attr(H5Acreate2(ds, "checksum", H5T_NATIVE_UINT64, ascalar, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  return attr.valid() && H5Awrite(attr, H5T_NATIVE_UINT64, &sum) >= 0;
}

// A scalar's stored checksum against the value read; checkpoints written before scalars had one
// carry none and are taken as they are.
void check_scalar(hid_t ds, uint64_t sum, const std::string& path, const std::string& name) {
  if (H5Aexists(ds, "checksum") <= 0) return;
  H5Id attr(H5Aopen(ds, "checksum", H5P_DEFAULT), H5Aclose);
  uint64_t stored = 0;
  MP_CHECK(attr.valid() && H5Aread(attr, H5T_NATIVE_UINT64, &stored) >= 0, path, ": ", name, ": its checksum cannot be read");
  MP_CHECK(stored == sum, path, ": ", name, " is corrupt (checksum mismatch)");
}

}  // namespace

CheckpointFile::CheckpointFile(const std::string& path, Comm& comm, bool writing)
    : impl_(std::make_unique<Impl>()), path_(path), comm_(&comm), writing_(writing) {
  quiet_hdf5();
  H5Id fapl(H5Pcreate(H5P_FILE_ACCESS), H5Pclose);
  set_fapl_mpio(fapl, comm);
  if (writing) {
    // Metadata (group, dataset and attribute headers) written collectively: one writer at the flush,
    // no storm of small writes. Reading keeps metadata reads independent, so that a rank reads as
    // many parts of an array as it needs without the others making the same calls.
    H5Pset_all_coll_metadata_ops(fapl, true);
    H5Pset_coll_metadata_write(fapl, true);
    if (comm.rank() == 0) hold_room(path + ".reserve", off_t(kMetadataRoom));  // the metadata's room
    idle_barrier(comm);  // held before any rank writes data
    impl_->file = H5Id(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl), H5Fclose);
    if (!impl_->file.valid()) {
      const std::string why = h5_reason();
      if (comm.rank() == 0) give_back_room(path + ".reserve");
      fail(path, ": cannot create the checkpoint file", why);
    }
  } else {
    MP_CHECK(fs::exists(path), path, ": no such checkpoint file");
    impl_->file = H5Id(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl), H5Fclose);
    agree(impl_->file.valid(), comm, path + ": not a readable HDF5 file (truncated or corrupt?)");
  }
}

CheckpointFile CheckpointFile::create(const std::string& path, Comm& comm) { return CheckpointFile(path, comm, true); }
CheckpointFile CheckpointFile::open(const std::string& path, Comm& comm) { return CheckpointFile(path, comm, false); }
CheckpointFile::CheckpointFile(CheckpointFile&&) noexcept = default;
CheckpointFile& CheckpointFile::operator=(CheckpointFile&&) noexcept = default;

// Still open: an error came on the way. A file being read is closed (every rank throws alike on
// metadata). A file being written is abandoned: with one process, cut to zero length and closed (see
// abandon()); with several it is left open, as its closing is a collective that the other ranks,
// which may not have failed, never join: the error aborts the job (main), and nothing of it is used.
CheckpointFile::~CheckpointFile() {
  if (!impl_ || !impl_->file.valid()) return;
  if (writing_ && comm_->size() > 1) {
    drop_reserve();
    for (Impl::Pending& p : impl_->pending) p.ds.release();
    impl_->file.release();
  } else if (writing_) {
    abandon();  // one rank: its barrier waits for no one
  } else {
    impl_->pending.clear();
    if (!impl_->file.close()) hdf5_left_unclean() = true;
  }
}

void CheckpointFile::drop_reserve() {
  if (writing_ && comm_->rank() == 0) give_back_room(path_ + ".reserve");
}

// Collective: the file's contents are given up after a failed transfer. Rank 0 cuts it to zero length
// first, which on a full disk gives back the room HDF5's closing flush needs: a close that fails
// leaves the ranks in different collectives inside HDF5 (a hang) or, with one process, a half-closed
// file that crashes HDF5 when it ends.
void CheckpointFile::abandon() {
  drop_reserve();
  impl_->pending.clear();
  if (writing_ && comm_->rank() == 0) cut_to_zero(path_);
  idle_barrier(*comm_);
  if (!impl_->file.close()) hdf5_left_unclean() = true;
}

template <typename T>
void CheckpointFile::write(const std::string& name, const std::vector<uint64_t>& dims,
                           const std::vector<FlatRun>& runs_in, const T* buf, bool primary) {
  MP_CHECK(dims.size() == 1 || dims.size() == 2, "checkpoint ", name, ": arrays of rank 1 or 2 only");
  const std::vector<FlatRun> runs = sorted_runs(runs_in, numel(dims), name);
  make_parents(impl_->file, name);
  std::vector<hsize_t> hd(dims.begin(), dims.end());
  H5Id space(H5Screate_simple(int(hd.size()), hd.data(), nullptr), H5Sclose);
  H5Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);  // every element is written: no fill pass
  H5Id ds(H5Dcreate2(impl_->file, name.c_str(), mem_type<T>(), space, H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose);
  MP_CHECK(ds.valid(), path_, ": cannot create ", name, h5_reason());
  // Hash the runs, and pack them in file order unless there is just one (then it goes from buf).
  size_t n = 0;
  for (const FlatRun& r : runs) n += r.count;
  uint64_t sum = 0;
  for (const FlatRun& r : runs)
    if (primary && r.counted) sum += checksum_range(buf + r.at, r.offset, r.count);
  std::vector<T> packed;
  const T* src = runs.size() == 1 ? buf + runs[0].at : nullptr;
  if (!src) {
    packed.resize(std::max<size_t>(n, 1));
    size_t at = 0;
    for (const FlatRun& r : runs) std::copy_n(buf + r.at, r.count, packed.data() + at), at += r.count;
    src = packed.data();
  }
  select_runs(space, dims, runs);
  const hsize_t mn = std::max<size_t>(n, 1);
  H5Id mem(H5Screate_simple(1, &mn, nullptr), H5Sclose);
  if (n == 0) H5Sselect_none(mem);
  if (impl_->error.empty() && H5Dwrite(ds, mem_type<T>(), mem, space, independent_dxpl(), src) < 0)
    impl_->error = path_ + ": writing " + name + " failed" + h5_reason();
  report_progress();  // the hang watchdog: writing a large training state is progress
  impl_->pending.push_back({std::move(ds), name, sum, 0});
}

template <typename T>
void CheckpointFile::read(const std::string& name, const std::vector<uint64_t>& dims,
                          const std::vector<FlatRun>& runs_in, T* buf, bool primary) {
  // The shape, type and checksum attribute are metadata, the same on every rank: a failure here
  // throws on all of them alike.
  const std::vector<uint64_t> have = shape(name);
  MP_CHECK(have == dims, path_, ": ", name, " has shape ", dims_str(have), ", expected ", dims_str(dims),
           " (a checkpoint of another model shape?)");
  H5Id ds(H5Dopen2(impl_->file, name.c_str(), H5P_DEFAULT), H5Dclose);
  MP_CHECK(ds.valid(), path_, ": cannot open ", name, h5_reason());
  {
    H5Id t(H5Dget_type(ds), H5Tclose);
    MP_CHECK(H5Tget_class(t) == H5T_FLOAT && H5Tget_size(t) == sizeof(T), path_, ": ", name, " is not of type float",
             sizeof(T) * 8);
  }
  uint64_t stored = 0;
  {
    H5Id attr(H5Aopen(ds, "checksum", H5P_DEFAULT), H5Aclose);
    MP_CHECK(attr.valid() && H5Aread(attr, H5T_NATIVE_UINT64, &stored) >= 0, path_, ": ", name, " has no checksum");
  }
  // Overlapping runs (replicated tensors read by every TP rank) are fine for reading; sort only.
  std::vector<FlatRun> runs = runs_in;
  runs.erase(std::remove_if(runs.begin(), runs.end(), [](const FlatRun& r) { return r.count == 0; }), runs.end());
  std::sort(runs.begin(), runs.end(), [](const FlatRun& a, const FlatRun& b) { return a.offset < b.offset; });
  // Reads go one non-overlapping group at a time: split the sorted runs into layers without overlap.
  std::vector<std::vector<FlatRun>> layers;
  for (const FlatRun& r : runs) {
    MP_CHECK(r.offset + r.count <= numel(dims), "checkpoint ", name, ": run past the end of the array");
    bool placed = false;
    for (auto& l : layers)
      if (l.back().offset + l.back().count <= r.offset) {
        l.push_back(r), placed = true;
        break;
      }
    if (!placed) layers.push_back({r});
  }
  for (const std::vector<FlatRun>& l : layers) {
    if (!impl_->error.empty()) break;
    size_t n = 0;
    for (const FlatRun& r : l) n += r.count;
    // One run reads straight into buf; several through a packed buffer.
    const bool direct = l.size() == 1;
    std::vector<T> packed(direct ? 0 : n);
    T* dst = direct ? buf + l[0].at : packed.data();
    std::vector<hsize_t> hd(dims.begin(), dims.end());
    H5Id space(H5Screate_simple(int(hd.size()), hd.data(), nullptr), H5Sclose);
    select_runs(space, dims, l);
    const hsize_t mn = n;
    H5Id mem(H5Screate_simple(1, &mn, nullptr), H5Sclose);
    if (H5Dread(ds, mem_type<T>(), mem, space, independent_dxpl(), dst) < 0) {
      impl_->error = path_ + ": reading " + name + " failed (truncated or corrupt?)";
      break;
    }
    report_progress();  // the hang watchdog: reading a large training state is progress
    if (!direct) {
      size_t at = 0;
      for (const FlatRun& r : l) std::copy_n(packed.data() + at, r.count, buf + r.at), at += r.count;
    }
  }
  uint64_t sum = 0;
  if (primary)
    for (const FlatRun& r : runs)
      if (r.counted) sum += checksum_range(buf + r.at, r.offset, r.count);
  impl_->pending.push_back({H5Id(), name, sum, stored});
}

std::vector<uint64_t> CheckpointFile::shape(const std::string& name) {
  MP_CHECK(exists(name), path_, ": ", name, " is missing (not a metapo checkpoint, or of another kind of run?)");
  H5Id ds(H5Dopen2(impl_->file, name.c_str(), H5P_DEFAULT), H5Dclose);
  MP_CHECK(ds.valid(), path_, ": cannot open ", name, h5_reason());
  H5Id space(H5Dget_space(ds), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space);
  MP_CHECK(rank >= 0 && rank <= 2, path_, ": ", name, " has rank ", rank);
  hsize_t d[2] = {0, 0};
  H5Sget_simple_extent_dims(space, d, nullptr);
  return std::vector<uint64_t>(d, d + rank);
}

bool CheckpointFile::exists(const std::string& name) {
  // Every parent must exist for H5Lexists on a path.
  for (size_t p = name.find('/', 1); p != std::string::npos; p = name.find('/', p + 1))
    if (H5Lexists(impl_->file, name.substr(0, p).c_str(), H5P_DEFAULT) <= 0) return false;
  return H5Lexists(impl_->file, name.c_str(), H5P_DEFAULT) > 0;
}

void CheckpointFile::write_string(const std::string& name, const std::string& value) {
  make_parents(impl_->file, name);
  H5Id t = string_type(value.size());
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Id ds(H5Dcreate2(impl_->file, name.c_str(), t, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  MP_CHECK(ds.valid(), path_, ": cannot create ", name, h5_reason());
  const int rank = comm_->rank();
  const std::string v = value.empty() ? std::string(1, '\0') : value;
  if (rank == 0 && impl_->error.empty() && H5Dwrite(ds, t, H5S_ALL, H5S_ALL, independent_dxpl(), v.data()) < 0)
    impl_->error = path_ + ": writing " + name + " failed" + h5_reason();
  if (!attach_checksum(ds, string_checksum(value)) && impl_->error.empty())
    impl_->error = path_ + ": writing the checksum of " + name + " failed" + h5_reason();
}

void CheckpointFile::write_int(const std::string& name, int64_t value) {
  make_parents(impl_->file, name);
  H5Id space(H5Screate(H5S_SCALAR), H5Sclose);
  H5Id ds(H5Dcreate2(impl_->file, name.c_str(), H5T_NATIVE_INT64, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
          H5Dclose);
  MP_CHECK(ds.valid(), path_, ": cannot create ", name, h5_reason());
  const int rank = comm_->rank();
  if (rank == 0 && impl_->error.empty() && H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, independent_dxpl(), &value) < 0)
    impl_->error = path_ + ": writing " + name + " failed" + h5_reason();
  if (!attach_checksum(ds, int_checksum(value)) && impl_->error.empty())
    impl_->error = path_ + ": writing the checksum of " + name + " failed" + h5_reason();
}

std::string CheckpointFile::read_string(const std::string& name) {
  MP_CHECK(exists(name), path_, ": ", name, " is missing (not a metapo checkpoint?)");
  H5Id ds(H5Dopen2(impl_->file, name.c_str(), H5P_DEFAULT), H5Dclose);
  H5Id t(H5Dget_type(ds), H5Tclose);
  MP_CHECK(H5Tget_class(t) == H5T_STRING && !H5Tis_variable_str(t), path_, ": ", name, " is not a string");
  std::string v(H5Tget_size(t), '\0');
  MP_CHECK(H5Dread(ds, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()) >= 0, path_, ": reading ", name, " failed",
           h5_reason());
  v.resize(std::strlen(v.c_str()));
  check_scalar(ds, string_checksum(v), path_, name);
  return v;
}

int64_t CheckpointFile::read_int(const std::string& name) {
  MP_CHECK(exists(name), path_, ": ", name, " is missing (not a metapo checkpoint?)");
  H5Id ds(H5Dopen2(impl_->file, name.c_str(), H5P_DEFAULT), H5Dclose);
  int64_t v = 0;
  MP_CHECK(H5Dread(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &v) >= 0, path_, ": reading ", name,
           " failed", h5_reason());
  check_scalar(ds, int_checksum(v), path_, name);
  return v;
}

void CheckpointFile::close() {
  if (!impl_ || !impl_->file.valid()) return;
  // Every rank learns whether every transfer went through, and the checksums are summed: one
  // all-reduce for the whole file (every rank made the same calls, so the lists line up).
  idle_barrier(*comm_);
  std::vector<uint64_t> sums(impl_->pending.size() + 1);
  for (size_t k = 0; k < impl_->pending.size(); ++k) sums[k] = impl_->pending[k].sum;
  sums.back() = impl_->error.empty() ? 0 : 1;
  comm_->allreduce(sums.data(), sums.size(), ReduceOp::Sum);
  if (sums.back() != 0) {
    // The failing rank's own line on every rank (the free room read before abandon() frees it).
    const std::string mine = impl_->error.empty() ? "" : impl_->error + (writing_ ? room_note(path_) : "");
    const std::string error = first_error(*comm_, mine);
    abandon();
    throw Error(error);
  }
  if (!writing_) {
    std::vector<Impl::Pending> pending = std::move(impl_->pending);
    impl_->file.reset();
    for (size_t k = 0; k < pending.size(); ++k)
      MP_CHECK(sums[k] == pending[k].stored, path_, ": ", pending[k].name, " is corrupt (checksum mismatch)");
    return;
  }
  // The room held for the metadata is given back before any of it goes out: the checksum attributes
  // below can already bring HDF5's metadata cache to a write.
  drop_reserve();
  idle_barrier(*comm_);
  bool ok = true;
  H5Id ascalar(H5Screate(H5S_SCALAR), H5Sclose);
  for (size_t k = 0; k < impl_->pending.size(); ++k) {  // every call on every rank (collective metadata)
    H5Id attr(H5Acreate2(impl_->pending[k].ds, "checksum", H5T_NATIVE_UINT64, ascalar, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    const bool written = attr.valid() && H5Awrite(attr, H5T_NATIVE_UINT64, &sums[k]) >= 0;
    ok = ok && written;
  }
  impl_->pending.clear();
  // A close that fails cannot be undone: HDF5 keeps a half-closed file (hdf5_left_unclean).
  const bool closed = impl_->file.close();
  if (!closed) hdf5_left_unclean() = true;
  int32_t all_ok = ok && closed ? 1 : 0;
  comm_->allreduce(&all_ok, 1, ReduceOp::Min);
  MP_CHECK(all_ok, path_, ": writing the checkpoint's metadata failed", room_note(path_));
  int32_t synced = 1;  // one rank fsyncs; every rank learns whether it worked
  if (comm_->rank() == 0) {
    const int fd = ::open(path_.c_str(), O_RDONLY);
    synced = fd >= 0 && ::fsync(fd) == 0;
    if (fd >= 0) ::close(fd);
  }
  idle_barrier(*comm_);
  comm_->allreduce(&synced, 1, ReduceOp::Min);
  MP_CHECK(synced, path_, ": fsync failed", room_note(path_));
}

#define INSTANTIATE(T)                                                                                      \
  template void CheckpointFile::write<T>(const std::string&, const std::vector<uint64_t>&,                  \
                                         const std::vector<FlatRun>&, const T*, bool);                      \
  template void CheckpointFile::read<T>(const std::string&, const std::vector<uint64_t>&,                   \
                                        const std::vector<FlatRun>&, T*, bool);
INSTANTIATE(float)
INSTANTIATE(double)
#undef INSTANTIATE

void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void fsync_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

int write_fully(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  for (size_t done = 0; done < n;) {
    const ssize_t w = ::write(fd, p + done, n - done);
    if (w > 0)
      done += size_t(w);
    else if (w == 0)
      return ENOSPC;  // nothing written and no error: the device took no more
    else if (errno != EINTR)
      return errno;
  }
  return 0;
}

void append_whole(int fd, const std::string& path, const std::string& text) {
  const off_t before = ::lseek(fd, 0, SEEK_END);
  const int err = write_fully(fd, text.data(), text.size());
  if (err == 0) return;
  if (before >= 0 && ::ftruncate(fd, before) != 0) {
    // The torn line stays; a resume cuts the file back to the checkpoint's size in any case.
  }
  throw Error(str_cat(path, ": cannot append (", std::strerror(err), ")"));
}

void append_whole(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0666);  // the umask decides
  MP_CHECK(fd >= 0, path, ": cannot open for appending (", std::strerror(errno), ")");
  try {
    append_whole(fd, path, text);
  } catch (...) {
    ::close(fd);
    throw;
  }
  ::close(fd);
}

void write_file_atomic(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string tmp = dir + "/" + name + ".tmp", dst = dir + "/" + name;
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);  // the umask decides
  MP_CHECK(fd >= 0, tmp, ": cannot be created (", std::strerror(errno), ")");
  int err = write_fully(fd, text.data(), text.size());
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());  // nothing half-written left, and the old file untouched
    throw Error(str_cat(tmp, ": cannot be written (", std::strerror(err), ")"));
  }
  std::error_code ec;
  fs::rename(tmp, dst, ec);
  if (ec) {
    ::unlink(tmp.c_str());
    throw Error(str_cat(dst, ": cannot rename ", tmp, " into place (", ec.message(), ")"));
  }
  fsync_dir(dir);
}

}  // namespace metapo
