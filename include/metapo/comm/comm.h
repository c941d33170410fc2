// The communication seam (DESIGN §2): the model, kernels and meta code talk to their peers only
// through this interface, so they build and test without MPI; the trainer, the CLI and the I/O layer
// use it too (over the Topology's communicators), so that only comm/ calls MPI. MpiComm (mpi_comm.h)
// implements it on host buffers over an MPI communicator; SelfComm below is the one-process case; an
// NCCL backend implements it on device buffers (the typed calls take a dtype and a stream for it).
//
// Every call is collective over the communicator: all ranks call it, in the same order. The
// exceptions say so: the point-to-point calls and a request's wait() and test().
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "metapo/core/dtype.h"
#include "metapo/core/error.h"

namespace metapo {

// Kinds of collective, for the per-step communication report (Comm::volume()).
enum class CommOp { AllReduce, ReduceScatter, AllGather, AllToAll, Broadcast, PointToPoint };
inline constexpr int kNumCommOps = 6;
inline constexpr const char* kCommOpNames[kNumCommOps] = {"allreduce", "reduce_scatter", "allgather",
                                                          "alltoall", "broadcast", "p2p"};

// Bytes this rank handed to each kind of collective since the last reset: the payload of the call as
// the caller sees it (all-reduce: the buffer; reduce-scatter: the full input; all-gather: the full
// output; all-to-all-v: the bytes sent; broadcast: the buffer; point-to-point: the bytes sent; a
// gather to a root counts as all-gather: the bytes gathered on the root, the bytes sent elsewhere),
// not what an algorithm puts on the wire. Bookkeeping calls (count exchanges, path agreement,
// barriers, split and dup) are left out.
struct CommVolume {
  uint64_t bytes[kNumCommOps] = {};
  uint64_t calls[kNumCommOps] = {};
  uint64_t operator[](CommOp op) const { return bytes[int(op)]; }
  void add(CommOp op, uint64_t b) { bytes[int(op)] += b, calls[int(op)] += 1; }
};

// How a reduction combines the ranks' elements.
enum class ReduceOp : uint8_t { Sum, Max, Min };

constexpr const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Max: return "max";
    case ReduceOp::Min: return "min";
  }
  return "?";
}

// The device stream a collective is queued on (a cudaStream_t for a device backend), opaque here.
// Host backends ignore it; null is the backend's default stream.
struct Stream {
  void* handle = nullptr;
};

// The handle of a collective that may still be in flight. Until it completes, the call's buffers
// must stay valid and neither be read nor written. wait() blocks until it has completed; test()
// tells without blocking whether it has; both are local (no other rank takes part) and a completed
// request stays complete. A backend that finishes a call before returning hands back a complete
// request (as a default-constructed one is). Move-only. Destroying (or assigning over) a request
// that has not completed waits for it, except while an exception unwinds: then it is abandoned
// rather than waited on, since the peers it waits for may never arrive (the job is being aborted).
class CommRequest {
 public:
  // What a backend keeps behind a request that has not completed.
  class Pending {
   public:
    virtual ~Pending() = default;
    virtual bool test() = 0;  // whether it has completed; does not block
    virtual void wait() = 0;  // blocks until it has
  };

  CommRequest() = default;
  explicit CommRequest(std::unique_ptr<Pending> pending) : pending_(std::move(pending)) {}
  CommRequest(CommRequest&&) noexcept = default;
  CommRequest& operator=(CommRequest&& o) noexcept {
    if (this != &o) {
      finish();
      pending_ = std::move(o.pending_);
    }
    return *this;
  }
  ~CommRequest() { finish(); }

  void wait() {
    if (!pending_) return;
    pending_->wait();
    pending_.reset();
  }
  bool test() {
    if (pending_ && pending_->test()) pending_.reset();
    return !pending_;
  }
  bool done() const { return !pending_; }

 private:
  void finish() noexcept {
    if (!pending_) return;
    if (std::uncaught_exceptions() == 0) {
      try {
        pending_->wait();
      } catch (...) {
      }
    }
    pending_.reset();
  }
  std::unique_ptr<Pending> pending_;
};

class Comm {
 public:
  // The colour of a rank that joins no group in split().
  static constexpr int kNoColor = -1;

  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // ---- Reductions ----

  // In-place element-wise reduction of data[0, n) (elements of `type`) by op, queued on `stream` on
  // a device backend. The result is bit-identical on every rank: floating-point elements are combined
  // in one fixed order (a reduce-scatter + all-gather, or a reduce + broadcast), never in an order
  // that differs per rank, so data-parallel replicas that start equal stay equal. bf16 is summed in
  // fp32 and rounded to bf16 once at the end (not once per rank). Max and min are exact, and so are
  // integer sums (wrapping on overflow). data must not be touched until the request completes.
  virtual CommRequest allreduce_async(void* data, size_t n, DType type, ReduceOp op, Stream stream = {}) = 0;
  // The same, complete on return.
  void allreduce(void* data, size_t n, DType type, ReduceOp op) { allreduce_async(data, n, type, op).wait(); }
  template <typename T>
  void allreduce(T* data, size_t n, ReduceOp op) {
    allreduce(static_cast<void*>(data), n, dtype_of<T>, op);
  }
  // Shorthands of the typed call for the model's and the trainer's float and double reductions.
  void allreduce_sum(double* data, size_t n) { allreduce(data, n, ReduceOp::Sum); }
  void allreduce_sum(float* data, size_t n) { allreduce(data, n, ReduceOp::Sum); }
  void allreduce_max(double* data, size_t n) { allreduce(data, n, ReduceOp::Max); }
  void allreduce_min(double* data, size_t n) { allreduce(data, n, ReduceOp::Min); }

  // ZeRO-1 (DESIGN §4). send holds size() blocks of `block` elements of `type`; on return recv[0,
  // block) on rank r is the reduction by op over ranks of their block r (recv must not overlap send).
  // Each element is reduced on one rank only, in one order for a given size and layout; bf16 is
  // summed in fp32 and rounded once.
  virtual CommRequest reduce_scatter_async(const void* send, void* recv, size_t block, DType type, ReduceOp op,
                                           Stream stream = {}) = 0;
  void reduce_scatter_sum(const float* send, float* recv, size_t block) {
    reduce_scatter_async(send, recv, block, DType::F32, ReduceOp::Sum).wait();
  }
  // data holds size() blocks of `block` elements of `type`; this rank's block r = rank() is the input.
  // On completion every rank holds every rank's block (in place).
  virtual CommRequest allgather_async(void* data, size_t block, DType type, Stream stream = {}) = 0;
  void allgather(float* data, size_t block) { allgather_async(data, block, DType::F32).wait(); }

  // ---- Bytes ----

  // Variable all-to-all of raw bytes. Every vector has size() entries, indexed by peer rank, in bytes:
  // this rank sends send[send_displs[p], + send_counts[p]) to peer p and receives peer p's message
  // into recv[recv_displs[p], + recv_counts[p]). recv_counts[p] must equal what p sends here
  // (exchange them first with alltoall_counts).
  virtual void alltoallv(const void* send, const std::vector<size_t>& send_counts,
                         const std::vector<size_t>& send_displs, void* recv,
                         const std::vector<size_t>& recv_counts,
                         const std::vector<size_t>& recv_displs) = 0;

  // recv[p] = what peer p passed as its send[rank()]: how each peer learns how much it will receive.
  virtual void alltoall_counts(const std::vector<size_t>& send, std::vector<size_t>& recv) = 0;

  // Every rank contributes `bytes` bytes (any amount, may differ per rank). On return, on every rank,
  // recv holds all contributions concatenated in rank order and counts[p] the bytes from rank p.
  virtual void allgatherv(const void* send, size_t bytes, std::vector<uint8_t>& recv,
                          std::vector<size_t>& counts) = 0;

  // The same to one rank: on `root` recv holds all contributions in rank order and counts[p] the
  // bytes from rank p; on the other ranks both are left empty.
  virtual void gather(const void* send, size_t bytes, std::vector<uint8_t>& recv, std::vector<size_t>& counts,
                      int root) = 0;

  // data[0, bytes) of rank `root` copied to every rank; bytes must be equal on all ranks.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;

  // ---- Point-to-point ----

  // Point-to-point (pipeline parallelism), the only calls that are not collective. send returns once
  // the previous send to the same peer has completed (so one message per peer is in flight): the data
  // is copied or already on its way, so the caller may reuse its buffer; it completes by wait_sends()
  // at the latest. recv blocks until `n` floats from `peer` have arrived; the sender must have sent
  // exactly n. Messages between two ranks arrive in the order they were sent.
  virtual void send(const float* data, size_t n, int peer) = 0;
  virtual void recv(float* data, size_t n, int peer) = 0;
  virtual void wait_sends() = 0;

  // ---- Synchronization and communicators ----

  virtual void barrier() = 0;
  // A barrier that does not block: the request completes once every rank has called ibarrier. A rank
  // done with its share of a collective job can poll test() with short sleeps instead of spinning in
  // a blocking barrier (with more ranks than cores that spinning takes the others' CPU).
  virtual CommRequest ibarrier() = 0;

  // The ranks that pass the same colour (>= 0) form a new communicator, ranked by key (ties by their
  // rank here); a rank that passes kNoColor gets null. The caller owns the result; it counts its own
  // traffic. Collective over this communicator, whatever the colour.
  virtual std::unique_ptr<Comm> split(int color, int key) = 0;
  // A new communicator over the same ranks in the same order, with its own traffic count and its own
  // message space (its messages never match this one's). Collective. The trainer gives the model and
  // the optimizer their own, so its step report counts their traffic and nothing else.
  virtual std::unique_ptr<Comm> dup() = 0;

  const CommVolume& volume() const { return volume_; }
  void reset_volume() { volume_ = CommVolume{}; }

 protected:
  void count(CommOp op, size_t bytes) { volume_.add(op, bytes); }

 private:
  CommVolume volume_;
};

// Collective: root's string to every rank (returned; s is ignored elsewhere). Two broadcasts: the
// length, then the bytes.
inline std::string broadcast_string(Comm& comm, std::string s, int root) {
  uint64_t n = s.size();
  comm.broadcast(&n, sizeof n, root);
  s.resize(size_t(n));
  comm.broadcast(s.data(), s.size(), root);
  return s;
}

// Collective: "" when no rank passes an error, else the error of the lowest rank that has one, on
// every rank (so that the line a job prints, from whichever rank aborts it first, names the cause).
inline std::string first_error(Comm& comm, const std::string& error) {
  int32_t first = error.empty() ? std::numeric_limits<int32_t>::max() : comm.rank();
  comm.allreduce(&first, 1, ReduceOp::Min);
  if (first == std::numeric_limits<int32_t>::max()) return "";
  return broadcast_string(comm, error, first);
}

// One process: every collective is the identity (a copy where input and output differ), complete on
// return, and counts no traffic. For unit tests and for single-rank code paths that must not need MPI.
class SelfComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }

  CommRequest allreduce_async(void*, size_t, DType, ReduceOp, Stream = {}) override { return {}; }

  CommRequest reduce_scatter_async(const void* send, void* recv, size_t block, DType type, ReduceOp,
                                   Stream = {}) override {
    if (block > 0) std::memmove(recv, send, block * dtype_size(type));
    return {};
  }
  CommRequest allgather_async(void*, size_t, DType, Stream = {}) override { return {}; }

  void alltoallv(const void* send, const std::vector<size_t>& send_counts,
                 const std::vector<size_t>& send_displs, void* recv,
                 const std::vector<size_t>& recv_counts,
                 const std::vector<size_t>& recv_displs) override {
    MP_CHECK(send_counts.size() == 1 && send_displs.size() == 1 && recv_counts.size() == 1 &&
                 recv_displs.size() == 1,
             "SelfComm::alltoallv: count and displacement vectors must have 1 entry (one rank)");
    MP_CHECK(send_counts[0] == recv_counts[0], "SelfComm::alltoallv: sends ", send_counts[0],
             " bytes to itself but expects to receive ", recv_counts[0]);
    // memmove: a caller may exchange in place.
    if (send_counts[0] > 0)
      std::memmove(static_cast<uint8_t*>(recv) + recv_displs[0],
                   static_cast<const uint8_t*>(send) + send_displs[0], send_counts[0]);
  }

  void alltoall_counts(const std::vector<size_t>& send, std::vector<size_t>& recv) override {
    MP_CHECK(send.size() == 1, "SelfComm::alltoall_counts: expected 1 count (one rank), got ",
             send.size());
    recv = send;
  }

  void allgatherv(const void* send, size_t bytes, std::vector<uint8_t>& recv,
                  std::vector<size_t>& counts) override {
    const auto* p = static_cast<const uint8_t*>(send);
    recv.assign(p, p + bytes);
    counts.assign(1, bytes);
  }

  void gather(const void* send, size_t bytes, std::vector<uint8_t>& recv, std::vector<size_t>& counts,
              int root) override {
    MP_CHECK(root == 0, "SelfComm::gather: root ", root, " does not exist (one rank)");
    allgatherv(send, bytes, recv, counts);
  }

  void broadcast(void*, size_t, int root) override {
    MP_CHECK(root == 0, "SelfComm::broadcast: root ", root, " does not exist (one rank)");
  }

  void send(const float*, size_t, int peer) override {
    MP_CHECK(false, "SelfComm::send to rank ", peer, ": a one-rank group has no peers");
  }
  void recv(float*, size_t, int peer) override {
    MP_CHECK(false, "SelfComm::recv from rank ", peer, ": a one-rank group has no peers");
  }
  void wait_sends() override {}

  void barrier() override {}
  CommRequest ibarrier() override { return {}; }

  std::unique_ptr<Comm> split(int color, int) override {
    MP_CHECK(color >= 0 || color == kNoColor, "SelfComm::split: colour ", color, " (must be >= 0 or kNoColor)");
    return color == kNoColor ? nullptr : std::make_unique<SelfComm>();
  }
  std::unique_ptr<Comm> dup() override { return std::make_unique<SelfComm>(); }
};

}  // namespace metapo
