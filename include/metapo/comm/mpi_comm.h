// Comm on host buffers over an MPI communicator.
#pragma once
#include <mpi.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "metapo/core/buffer.h"
#include "metapo/comm/comm.h"

namespace metapo {

class MpiComm final : public Comm {
 public:
  // comm is borrowed (its owner frees it) and must outlive this object.
  // MPI counts and displacements are ints, so no single MPI call moves more than max_message_bytes
  // (at most INT_MAX) per peer: larger transfers are split into pieces of that size. Tests lower it to
  // run the split paths on small buffers. Communicators made by split() and dup() inherit it.
  explicit MpiComm(MPI_Comm comm, size_t max_message_bytes = size_t(INT_MAX));
  // The same, owning comm: MPI_Comm_free when destroyed (unless MPI is finalized by then, or an
  // exception is unwinding: the job is being aborted and a free could wait on peers).
  static std::unique_ptr<MpiComm> adopt(MPI_Comm comm, size_t max_message_bytes = size_t(INT_MAX));

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MPI_Comm handle() const { return comm_; }

  // The most bytes one floating-point reduction call takes in (all ranks' blocks together). Open MPI
  // may reduce a whole message into temporary buffers on one rank (reduce, then scatter): measured
  // with one call per reduction, a 48 MiB reduce-scatter grew one rank's peak by 48 MiB and a 48 MiB
  // all-reduce some rank's by 95 MiB; a 2-rank bench-28m run held 105 MiB more on rank 0 than the
  // memory accountant and `metapo plan` count. Pieces of this size keep it at about 3 pieces
  // (tests/test_comm_mpi.cpp), and still move at full bandwidth.
  static constexpr size_t kMaxReductionBytes = size_t(8) << 20;

  // Complete on return (the request is a complete one). Floating point (fp32, fp64, and bf16 staged
  // in fp32): MPI_Reduce_scatter then MPI_Allgatherv, each chunk reduced by its owner, in pieces of
  // min(max_message_bytes, kMaxReductionBytes). Integers: MPI_Allreduce (exact, so any order gives the
  // same result).
  CommRequest allreduce_async(void* data, size_t n, DType type, ReduceOp op, Stream stream = {}) override;
  // Complete on return. One MPI_Reduce_scatter_block / in-place MPI_Allgather when the blocks fit in
  // kMaxReductionBytes (a block in max_message_bytes for the gather), else the same collective on
  // pieces of every block, staged through a contiguous buffer; bf16 reduce-scatters are staged in fp32.
  CommRequest reduce_scatter_async(const void* send, void* recv, size_t block, DType type, ReduceOp op,
                                   Stream stream = {}) override;
  CommRequest allgather_async(void* data, size_t block, DType type, Stream stream = {}) override;

  // One MPI_Alltoallv when every count and displacement fits in max_message_bytes; otherwise (the
  // ranks agree on this with one small all-reduce) point-to-point messages in pieces.
  void alltoallv(const void* send, const std::vector<size_t>& send_counts,
                 const std::vector<size_t>& send_displs, void* recv,
                 const std::vector<size_t>& recv_counts,
                 const std::vector<size_t>& recv_displs) override;
  void alltoall_counts(const std::vector<size_t>& send, std::vector<size_t>& recv) override;
  // One MPI_Allgatherv when the total fits in max_message_bytes, else one broadcast per rank in pieces.
  void allgatherv(const void* send, size_t bytes, std::vector<uint8_t>& recv,
                  std::vector<size_t>& counts) override;
  // The counts all-gathered first (so every rank takes the same path), then one MPI_Gatherv when the
  // total fits in max_message_bytes, else point-to-point messages to the root in pieces.
  void gather(const void* send, size_t bytes, std::vector<uint8_t>& recv, std::vector<size_t>& counts,
              int root) override;
  void broadcast(void* data, size_t bytes, int root) override;
  // send: MPI_Isend from a copy this object keeps until the send completes: the next send to the same
  // peer waits for it and reuses the copy, wait_sends frees them all. So the copies held are at most
  // one per peer, whatever MPI's timing (the memory accountant counts them as comm); pieces of
  // max_message_bytes.
  void send(const float* data, size_t n, int peer) override;
  void recv(float* data, size_t n, int peer) override;
  void wait_sends() override;
  void barrier() override;
  // MPI_Ibarrier; the request's test() is MPI_Test, its wait() MPI_Wait.
  CommRequest ibarrier() override;
  // MPI_Comm_split (kNoColor: MPI_UNDEFINED) and MPI_Comm_dup; the new MpiComm owns its communicator.
  std::unique_ptr<Comm> split(int color, int key) override;
  std::unique_ptr<Comm> dup() override;
  ~MpiComm() override;

 private:
  struct PendingSend {
    Buffer<float> data = tagged_buffer<float>(Mem::Comm);  // the message's copy, counted as comm
    std::vector<MPI_Request> req;
  };
  std::vector<PendingSend> pending_;  // by peer

  void broadcast_uncounted(void* data, size_t bytes, int root);
  // The fixed-order reduction of `n` elements of MPI type `type` (element size `esize`) in pieces.
  void allreduce_identical(void* data, size_t n, size_t esize, MPI_Datatype type, MPI_Op op);
  // The reduce-scatter of blocks of `block` elements of size esize, uncounted.
  void reduce_scatter_raw(const uint8_t* send, uint8_t* recv, size_t block, size_t esize, MPI_Datatype type,
                          MPI_Op op);

  MPI_Comm comm_;
  bool owned_ = false;
  int rank_ = 0, size_ = 1;
  size_t max_bytes_;
  Buffer<uint8_t> stage_ = tagged_buffer<uint8_t>(Mem::Comm);  // pieces of blocks that do not fit one call
  Buffer<float> stage_f32_ = tagged_buffer<float>(Mem::Comm);  // bf16 reductions, staged in fp32
};

}  // namespace metapo
