// Comm on host buffers over an MPI communicator.
#pragma once
#include <mpi.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <vector>


#include "metapo/core/buffer.h"
#include "metapo/comm/comm.h"

namespace metapo {

class MpiComm final : public Comm {
 public:
  // comm is borrowed (the Topology owns and frees it) and must outlive this object.
  // MPI counts and displacements are ints, so no single MPI call moves more than max_message_bytes
  // (at most INT_MAX) per peer: larger transfers are split into pieces of that size. Tests lower it to
  // run the split paths on small buffers.
  explicit MpiComm(MPI_Comm comm, size_t max_message_bytes = size_t(INT_MAX));

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  MPI_Comm handle() const { return comm_; }

  void allreduce_sum(double* data, size_t n) override;
  void allreduce_sum(float* data, size_t n) override;
  void allreduce_max(double* data, size_t n) override;
  void allreduce_min(double* data, size_t n) override;

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
  void broadcast(void* data, size_t bytes, int root) override;
  // One MPI_Reduce_scatter_block / in-place MPI_Allgather when a block fits in max_message_bytes, else
  // the same collective on pieces of every block, staged through a contiguous buffer.
  void reduce_scatter_sum(const float* send, float* recv, size_t block) override;
  void allgather(float* data, size_t block) override;
  // send: MPI_Isend from a copy this object keeps until the send completes: the next send to the same
  // peer waits for it and reuses the copy, wait_sends frees them all. So the copies held are at most
  // one per peer, whatever MPI's timing (the memory accountant counts them as comm); pieces of
  // max_message_bytes.
  void send(const float* data, size_t n, int peer) override;
  void recv(float* data, size_t n, int peer) override;
  void wait_sends() override;
  void barrier() override;
  ~MpiComm() override;

 private:
  struct PendingSend {
    Buffer<float> data = tagged_buffer<float>(Mem::Comm);  // the message's copy, counted as comm
    std::vector<MPI_Request> req;
  };
  std::vector<PendingSend> pending_;  // by peer

  void broadcast_uncounted(void* data, size_t bytes, int root);

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  size_t max_bytes_;
  Buffer<float> stage_ = tagged_buffer<float>(Mem::Comm);  // pieces of blocks that do not fit one call
};

}  // namespace metapo
