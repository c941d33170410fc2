// The communication seam (DESIGN §2): the model, kernels and meta code talk to their peers only through
// this interface, so they build and test without MPI. MpiComm (mpi_comm.h) implements it on host
// buffers over an MPI communicator; SelfComm below is the one-process case; an NCCL backend implements
// it on device buffers.
//
// Every call is collective over the communicator: all ranks call it, in the same order.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "metapo/core/error.h"

namespace metapo {

// Kinds of collective, for the per-step communication report (Comm::volume()).
enum class CommOp { AllReduce, ReduceScatter, AllGather, AllToAll, Broadcast, PointToPoint };
inline constexpr int kNumCommOps = 6;
inline constexpr const char* kCommOpNames[kNumCommOps] = {"allreduce", "reduce_scatter", "allgather",
                                                          "alltoall", "broadcast", "p2p"};

// Bytes this rank handed to each kind of collective since the last reset: the payload of the call as
// the caller sees it (all-reduce: the buffer; reduce-scatter: the full input; all-gather: the full
// output; all-to-all-v: the bytes sent; broadcast: the buffer; point-to-point: the bytes sent), not
// what an algorithm puts on the wire. Bookkeeping calls (count exchanges, path agreement) are left out.
struct CommVolume {
  uint64_t bytes[kNumCommOps] = {};
  uint64_t calls[kNumCommOps] = {};
  uint64_t operator[](CommOp op) const { return bytes[int(op)]; }
  void add(CommOp op, uint64_t b) { bytes[int(op)] += b, calls[int(op)] += 1; }
};

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In-place element-wise reductions of data[0, n). The result is bit-identical on every rank: the
  // implementation combines the ranks' values in one fixed order (a reduce-scatter + all-gather, or a
  // reduce + broadcast), never in an order that differs per rank, so data-parallel replicas that
  // start equal stay equal.
  virtual void allreduce_sum(double* data, size_t n) = 0;
  virtual void allreduce_sum(float* data, size_t n) = 0;
  virtual void allreduce_max(double* data, size_t n) = 0;
  virtual void allreduce_min(double* data, size_t n) = 0;

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

  // data[0, bytes) of rank `root` copied to every rank; bytes must be equal on all ranks.
  virtual void broadcast(void* data, size_t bytes, int root) = 0;

  // ZeRO-1 (DESIGN §4). send holds size() blocks of `block` floats; on return recv[0, block) on rank r
  // is the sum over ranks of their block r (recv must not overlap send).
  virtual void reduce_scatter_sum(const float* send, float* recv, size_t block) = 0;
  // data holds size() blocks of `block` floats; this rank's block r = rank() is the input. On return
  // every rank holds every rank's block (in place).
  virtual void allgather(float* data, size_t block) = 0;

  // Point-to-point (pipeline parallelism), the only calls that are not collective. send returns once
  // the previous send to the same peer has completed (so one message per peer is in flight): the data
  // is copied or already on its way, so the caller may reuse its buffer; it completes by wait_sends()
  // at the latest. recv blocks until `n` floats from `peer` have arrived; the sender must have sent
  // exactly n. Messages between two ranks arrive in the order they were sent.
  virtual void send(const float* data, size_t n, int peer) = 0;
  virtual void recv(float* data, size_t n, int peer) = 0;
  virtual void wait_sends() = 0;

  virtual void barrier() = 0;

  const CommVolume& volume() const { return volume_; }
  void reset_volume() { volume_ = CommVolume{}; }

 protected:
  void count(CommOp op, size_t bytes) { volume_.add(op, bytes); }

 private:
  CommVolume volume_;
};

// One process: every collective is the identity (a copy where input and output differ). For unit
// tests and for single-rank code paths that must not need MPI.
class SelfComm final : public Comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }

  void allreduce_sum(double*, size_t) override {}
  void allreduce_sum(float*, size_t) override {}
  void allreduce_max(double*, size_t) override {}
  void allreduce_min(double*, size_t) override {}

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

  void broadcast(void*, size_t, int root) override {
    MP_CHECK(root == 0, "SelfComm::broadcast: root ", root, " does not exist (one rank)");
  }

  void reduce_scatter_sum(const float* send, float* recv, size_t block) override {
    if (block > 0) std::memcpy(recv, send, block * sizeof(float));
  }
  void allgather(float*, size_t) override {}

  void send(const float*, size_t, int peer) override {
    MP_CHECK(false, "SelfComm::send to rank ", peer, ": a one-rank group has no peers");
  }
  void recv(float*, size_t, int peer) override {
    MP_CHECK(false, "SelfComm::recv from rank ", peer, ": a one-rank group has no peers");
  }
  void wait_sends() override {}

  void barrier() override {}
};

}  // namespace metapo
