// The checkpoint file (DESIGN §7, docs/formats.md "Checkpoints"): one HDF5 file written and read
// collectively through MPI-IO by every rank of a job. Datasets hold full logical arrays; each rank
// passes the parts it holds as runs of the array's row-major element index, so a file written under
// one parallel layout reads back under any other. Every rank must make the same calls in the same
// order (the dataset names and shapes are the same on every rank; the runs differ).
//
// Integrity: every array carries a 64-bit checksum of its logical contents (a sum over elements of a
// hash of the element's index and bits, so it can be accumulated in any order and over any partition
// of the elements). A writer and a reader each sum the hashes of the runs they mark `primary` (a set of
// ranks that covers every element exactly once); the sums over the world are taken once per file, at
// close(), where a reader fails on a mismatch.
//
// Raw data moves by independent MPI-IO (each rank its own runs, no rank waiting for another between
// arrays); file, group and dataset creation and the attributes are collective.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "metapo/comm/comm.h"

namespace metapo {

// Elements [offset, offset + count) of an array's row-major index, at element `at` of the rank's buffer.
// counted: whether the run enters this rank's checksum sum (false for a copy another rank counts,
// e.g. a norm weight every TP rank reads).
struct FlatRun {
  size_t offset = 0, count = 0, at = 0;
  bool counted = true;
};

class CheckpointFile {
 public:
  // Collective over comm (an MpiComm, or a SelfComm for one process: comm/mpio.h), which must outlive
  // the file. create: a new file at path (truncated if it exists); open: read-only. open throws
  // metapo::Error naming the path when the file is missing, truncated or not a checkpoint.
  // A writing file holds kMetadataRoom bytes of the disk in path + ".reserve" (rank 0) until its
  // metadata is flushed at close(): a disk that another writer fills meanwhile fails a transfer,
  // which every rank learns of, rather than the flush, where HDF5 can leave the ranks waiting on each
  // other.
  static constexpr uint64_t kMetadataRoom = 4u << 20;
  static CheckpointFile create(const std::string& path, Comm& comm);
  static CheckpointFile open(const std::string& path, Comm& comm);
  CheckpointFile(CheckpointFile&&) noexcept;
  CheckpointFile& operator=(CheckpointFile&&) noexcept;
  ~CheckpointFile();

  // Collective (it creates the dataset): the array `name` ("/group/sub/name"; groups are made as
  // needed) of shape dims, of float (T = float) or double (T = double) elements; this rank writes the
  // runs `runs` from buf. primary: whether this rank's runs count in the checksum (see above). Runs of
  // different ranks must not overlap, except that non-primary ranks may write the same values as a
  // primary one. A failed transfer is reported by close(), on every rank.
  template <typename T>
  void write(const std::string& name, const std::vector<uint64_t>& dims, const std::vector<FlatRun>& runs,
             const T* buf, bool primary);
  // Every rank calls it: reads the runs of `name` into buf (any runs; ranks may overlap). The stored
  // shape must be dims and the stored element type T's (else it throws, on every rank alike: that is
  // metadata). The data are only known good after close(), which checks the checksum over the
  // counted runs of the primary ranks and any failed read, and throws the same on every rank.
  template <typename T>
  void read(const std::string& name, const std::vector<uint64_t>& dims, const std::vector<FlatRun>& runs, T* buf,
            bool primary);

  // Collective. Small values every rank passes the same of: a string (JSON text, names) or an int64,
  // as scalar datasets (h5py: f["/state/step"][()]).
  void write_string(const std::string& name, const std::string& value);
  void write_int(const std::string& name, int64_t value);
  std::string read_string(const std::string& name);
  int64_t read_int(const std::string& name);
  bool exists(const std::string& name);
  std::vector<uint64_t> shape(const std::string& name);  // throws when absent

  // Collective. Writing: sums the checksums, writes them, flushes and closes the file, then fsyncs
  // it; throws when a transfer, the flush or the close failed (a full disk), so the caller does not
  // rename a broken file into place. A file that failed is left without its data (cut to zero
  // length before HDF5 closes it); the caller removes it. Reading: throws when a read failed or an array's checksum does not match
  // (the same message on every rank), so nothing read is used before this returns.
  void close();
  const std::string& path() const { return path_; }

 private:
  CheckpointFile(const std::string& path, Comm& comm, bool writing);
  void abandon();
  void drop_reserve();
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
  Comm* comm_ = nullptr;
  bool writing_ = false;
};

// The 64-bit element hash the checksums sum (exposed for tests).
uint64_t checksum_term(uint64_t index, uint64_t bits);

// Writes `text` to dir/name through name.tmp, fsync and rename, then fsyncs dir (for `latest`).
void write_file_atomic(const std::string& dir, const std::string& name, const std::string& text);
// Writes n bytes to fd with as many write() calls as it takes; 0, or the errno of the one that
// failed (ENOSPC for a write that took nothing).
int write_fully(int fd, const void* data, size_t n);
// Appends text to the file open as fd (O_APPEND; path names it in errors), with as many writes as it
// takes. A write that fails cuts the file back to its former size, so a reader never meets a torn
// line, and throws naming path and the cause (a full disk).
void append_whole(int fd, const std::string& path, const std::string& text);
// The same for the file at path, opened and closed around the append (created when absent).
void append_whole(const std::string& path, const std::string& text);

// The bytes an unprivileged writer may still put on the file system holding dir (UINT64_MAX when
// it cannot be told).
uint64_t free_bytes(const std::string& dir);
// "; the file system of DIR had N MiB free" for the directory holding path, said with a failed write
// (MPI-IO gives no errno), or "" when it cannot be told.
std::string room_note(const std::string& path);
// fsync of a directory, so a rename in it survives a crash.
void fsync_dir(const std::string& dir);
// fsync of a file by its path (written and closed, or appended by a stream): its data on the disk
// before a rename makes it visible or a checkpoint records its size. A file that cannot be opened
// is left alone.
void fsync_file(const std::string& path);

}  // namespace metapo
