// Small helpers over the HDF5 C API shared by the dataset file and the checkpoint file.
#pragma once
#include <fcntl.h>
#include <hdf5.h>
#include <unistd.h>

#include <string>

namespace metapo {

// Owns one HDF5 identifier and closes it with the matching H5?close, on every path out.
class H5Id {
 public:
  H5Id() = default;
  H5Id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  H5Id(H5Id&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = H5I_INVALID_HID; }
  H5Id& operator=(H5Id&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      close_ = o.close_;
      o.id_ = H5I_INVALID_HID;
    }
    return *this;
  }
  ~H5Id() { reset(); }
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = H5I_INVALID_HID;
  }
  // Closes now and reports whether the close succeeded: closing a file flushes it, and a failed
  // flush (disk full) must not be renamed into place.
  bool close() {
    const herr_t rc = id_ >= 0 && close_ ? close_(id_) : 0;
    id_ = H5I_INVALID_HID;
    return rc >= 0;
  }
  // Forgets the id without closing it: for a file of a job that is about to abort, whose closing
  // would be a collective the other ranks never join.
  void release() { id_ = H5I_INVALID_HID; }
  bool valid() const { return id_ >= 0; }
  operator hid_t() const { return id_; }

 private:
  hid_t id_ = H5I_INVALID_HID;
  herr_t (*close_)(hid_t) = nullptr;
};

// Cuts the file at path to zero length, giving its space back (a file given up; nothing to do when
// that fails).
inline void cut_to_zero(const std::string& path) {
  if (::truncate(path.c_str(), 0) != 0) return;
}

inline void quiet_hdf5() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

// " (HDF5: <innermost message>)" for the call that just failed, or "" when the stack is empty.
inline std::string h5_reason() {
  std::string msg;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned, const H5E_error2_t* e, void* out) -> herr_t {
        if (e->desc && *e->desc) *static_cast<std::string*>(out) = e->desc;
        return 0;
      },
      &msg);
  H5Eclear2(H5E_DEFAULT);
  // A failed system call's message (the file drivers write "..., errno = 28, error message = 'No
  // space left on device', ...") is what the user needs, alone.
  if (const size_t at = msg.find("error message = '"); at != std::string::npos) {
    const size_t from = at + 17, to = msg.find('\'', from);
    if (to != std::string::npos) return " (" + msg.substr(from, to - from) + ")";
  }
  // One line: some of HDF5's descriptions end in a newline.
  for (char& c : msg)
    if (c == '\n' || c == '\r') c = ' ';
  while (!msg.empty() && msg.back() == ' ') msg.pop_back();
  return msg.empty() ? "" : " (HDF5: " + msg + ")";
}

// Holds `bytes` of the disk in the file `reserve` (made anew), for HDF5's metadata to be
// given back just before it is written (give_back_room); on a disk without that much room nothing
// is held, and the writes that follow say so.
inline void hold_room(const std::string& reserve, off_t bytes) {
  ::unlink(reserve.c_str());  // a stale one of a killed run (never written through, were it a link)
  const int fd = ::open(reserve.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
  if (fd < 0) return;
  if (::posix_fallocate(fd, 0, bytes) != 0) {
    // no room to hold
  }
  ::close(fd);
}
inline void give_back_room(const std::string& reserve) { ::unlink(reserve.c_str()); }

// Set when HDF5 failed to close a file: the library then holds a half-closed file, and ending it
// (when MPI ends, or at exit) crashes. main ends such a process without ending the library.
inline bool& hdf5_left_unclean() {
  static bool unclean = false;
  return unclean;
}

// A file written by one process under a temporary name. It holds kMetadataRoom bytes of the disk in
// path + ".reserve" until close(), which gives them back, closes the file and says whether that
// worked: a disk that fills while the data are written fails a data write, and the metadata still
// finds room. A file destroyed while still open (an error on the way) is abandoned: cut to zero
// length, then closed, so that HDF5's closing flush finds room. (A close that fails leaves HDF5 a
// half-closed file: hdf5_left_unclean.)
class H5WriteFile {
 public:
  static constexpr off_t kMetadataRoom = 1 << 20;
  H5WriteFile(hid_t id, std::string path) : file_(id, H5Fclose), path_(std::move(path)) {
    if (file_.valid()) hold_room(path_ + ".reserve", kMetadataRoom);
  }
  H5WriteFile(const H5WriteFile&) = delete;
  H5WriteFile& operator=(const H5WriteFile&) = delete;
  ~H5WriteFile() { abandon(); }
  bool valid() const { return file_.valid(); }
  operator hid_t() const { return file_; }
  bool close() {
    if (!file_.valid()) return false;
    drop_reserve();
    if (!closed(file_.close())) reason_ = h5_reason();
    return reason_.empty();
  }
  // Why close() failed: " (HDF5's reason)", or "".
  const std::string& reason() const { return reason_; }
  void abandon() {
    if (!file_.valid()) return;
    drop_reserve();
    cut_to_zero(path_);
    closed(file_.close());
  }

 private:
  void drop_reserve() { give_back_room(path_ + ".reserve"); }
  static bool closed(bool ok) {
    if (!ok) hdf5_left_unclean() = true;
    return ok;
  }
  H5Id file_;
  std::string path_, reason_;
};

}  // namespace metapo
