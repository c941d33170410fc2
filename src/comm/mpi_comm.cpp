#include "metapo/comm/mpi_comm.h"

#include <algorithm>
#include <cstring>

#include "metapo/comm/collectives.h"
#include "metapo/core/error.h"

namespace metapo {

static_assert(sizeof(size_t) == sizeof(uint64_t), "counts travel as MPI_UINT64_T");

namespace {

// Max or min with the same fixed combination order as collectives.cpp's sum: each chunk is reduced by
// its owner (reduce-scatter), then all-gathered, so every rank ends with the owner's bytes. (Max and
// min are exact, but a per-rank order could still differ on -0 vs +0 and on NaN payloads.)
void allreduce_identical(double* data, size_t n, MPI_Op op, MPI_Comm comm, int rank, int size) {
  if (size == 1 || n == 0) return;
  const size_t p = static_cast<size_t>(size);
  std::vector<int> counts(p), displs(p);
  for (int r = 0; r < size; ++r) {
    const size_t b = n * size_t(r) / size_t(size), e = n * size_t(r + 1) / size_t(size);
    counts[size_t(r)] = int(e - b), displs[size_t(r)] = int(b);
  }
  std::vector<double> mine(size_t(counts[size_t(rank)]));
  MPI_Reduce_scatter(data, mine.data(), counts.data(), MPI_DOUBLE, op, comm);
  MPI_Allgatherv(mine.data(), counts[size_t(rank)], MPI_DOUBLE, data, counts.data(), displs.data(),
                 MPI_DOUBLE, comm);
}

// Runs f(offset, count) over [0, n) in pieces of at most `piece` elements. Reductions are element-wise,
// so splitting changes no result.
template <typename F>
void in_pieces(size_t n, size_t piece, F&& f) {
  for (size_t off = 0; off < n; off += piece) f(off, std::min(piece, n - off));
}

}  // namespace

MpiComm::MpiComm(MPI_Comm comm, size_t max_message_bytes) : comm_(comm), max_bytes_(max_message_bytes) {
  MP_CHECK(comm != MPI_COMM_NULL, "MpiComm: the communicator is MPI_COMM_NULL");
  MP_CHECK(max_message_bytes >= sizeof(double) && max_message_bytes <= size_t(INT_MAX),
           "MpiComm: max_message_bytes must be in [8, INT_MAX], got ", max_message_bytes);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

void MpiComm::allreduce_sum(double* data, size_t n) {
  count(CommOp::AllReduce, n * sizeof(double));
  in_pieces(n, max_bytes_ / sizeof(double),
            [&](size_t off, size_t cnt) { metapo::allreduce_sum(data + off, cnt, comm_); });
}

void MpiComm::allreduce_sum(float* data, size_t n) {
  count(CommOp::AllReduce, n * sizeof(float));
  in_pieces(n, max_bytes_ / sizeof(float),
            [&](size_t off, size_t cnt) { metapo::allreduce_sum(data + off, cnt, comm_); });
}

void MpiComm::allreduce_max(double* data, size_t n) {
  count(CommOp::AllReduce, n * sizeof(double));
  in_pieces(n, max_bytes_ / sizeof(double), [&](size_t off, size_t cnt) {
    allreduce_identical(data + off, cnt, MPI_MAX, comm_, rank_, size_);
  });
}

void MpiComm::allreduce_min(double* data, size_t n) {
  count(CommOp::AllReduce, n * sizeof(double));
  in_pieces(n, max_bytes_ / sizeof(double), [&](size_t off, size_t cnt) {
    allreduce_identical(data + off, cnt, MPI_MIN, comm_, rank_, size_);
  });
}

void MpiComm::alltoallv(const void* send, const std::vector<size_t>& send_counts,
                        const std::vector<size_t>& send_displs, void* recv,
                        const std::vector<size_t>& recv_counts, const std::vector<size_t>& recv_displs) {
  const size_t p = size_t(size_);
  MP_CHECK(send_counts.size() == p && send_displs.size() == p && recv_counts.size() == p &&
               recv_displs.size() == p,
           "MpiComm::alltoallv: count and displacement vectors must have one entry per rank (", p, ")");
  const auto* sbuf = static_cast<const uint8_t*>(send);
  auto* rbuf = static_cast<uint8_t*>(recv);
  size_t sent = 0;
  for (size_t q = 0; q < p; ++q) sent += send_counts[q];
  count(CommOp::AllToAll, sent);

  // Whether every count and displacement fits one MPI_Alltoallv (int, at most max_bytes_). The ranks
  // must agree on the path or they would wait in different calls, hence the all-reduce.
  size_t largest = 0;
  for (size_t q = 0; q < p; ++q)
    largest = std::max({largest, send_counts[q], send_displs[q], recv_counts[q], recv_displs[q]});
  int split = largest > max_bytes_ ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &split, 1, MPI_INT, MPI_MAX, comm_);

  if (!split) {
    std::vector<int> sc(p), sd(p), rc(p), rd(p);
    for (size_t q = 0; q < p; ++q)
      sc[q] = int(send_counts[q]), sd[q] = int(send_displs[q]), rc[q] = int(recv_counts[q]),
      rd[q] = int(recv_displs[q]);
    MPI_Alltoallv(send, sc.data(), sd.data(), MPI_BYTE, recv, rc.data(), rd.data(), MPI_BYTE, comm_);
    return;
  }

  // Point-to-point in pieces of at most max_bytes_. Messages between one pair of ranks with one tag
  // arrive in the order they were sent (MPI's non-overtaking rule), so the pieces reassemble in order.
  MP_CHECK(send_counts[size_t(rank_)] == recv_counts[size_t(rank_)], "MpiComm::alltoallv: rank ",
           rank_, " sends ", send_counts[size_t(rank_)], " bytes to itself but expects ",
           recv_counts[size_t(rank_)]);
  std::vector<MPI_Request> reqs;
  for (size_t q = 0; q < p; ++q) {
    if (int(q) == rank_) continue;
    in_pieces(recv_counts[q], max_bytes_, [&](size_t off, size_t cnt) {
      reqs.emplace_back();
      MPI_Irecv(rbuf + recv_displs[q] + off, int(cnt), MPI_BYTE, int(q), 0, comm_, &reqs.back());
    });
  }
  for (size_t q = 0; q < p; ++q) {
    if (int(q) == rank_) continue;
    in_pieces(send_counts[q], max_bytes_, [&](size_t off, size_t cnt) {
      reqs.emplace_back();
      MPI_Isend(sbuf + send_displs[q] + off, int(cnt), MPI_BYTE, int(q), 0, comm_, &reqs.back());
    });
  }
  if (send_counts[size_t(rank_)] > 0)
    std::memmove(rbuf + recv_displs[size_t(rank_)], sbuf + send_displs[size_t(rank_)],
                 send_counts[size_t(rank_)]);
  MPI_Waitall(int(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE);
}

void MpiComm::alltoall_counts(const std::vector<size_t>& send, std::vector<size_t>& recv) {
  MP_CHECK(send.size() == size_t(size_), "MpiComm::alltoall_counts: expected one count per rank (",
           size_, "), got ", send.size());
  recv.assign(size_t(size_), 0);
  MPI_Alltoall(send.data(), 1, MPI_UINT64_T, recv.data(), 1, MPI_UINT64_T, comm_);
}

void MpiComm::allgatherv(const void* send, size_t bytes, std::vector<uint8_t>& recv,
                         std::vector<size_t>& counts) {
  const size_t p = size_t(size_);
  counts.assign(p, 0);
  const uint64_t mine = bytes;
  MPI_Allgather(&mine, 1, MPI_UINT64_T, counts.data(), 1, MPI_UINT64_T, comm_);
  std::vector<size_t> displs(p, 0);
  size_t total = 0;
  for (size_t q = 0; q < p; ++q) displs[q] = total, total += counts[q];
  recv.resize(total);
  count(CommOp::AllGather, total);
  // Every rank now knows every count, so all take the same path without agreeing first.
  if (total <= max_bytes_) {
    std::vector<int> c(p), d(p);
    for (size_t q = 0; q < p; ++q) c[q] = int(counts[q]), d[q] = int(displs[q]);
    MPI_Allgatherv(send, int(bytes), MPI_BYTE, recv.data(), c.data(), d.data(), MPI_BYTE, comm_);
    return;
  }
  if (bytes > 0) std::memcpy(recv.data() + displs[size_t(rank_)], send, bytes);
  for (size_t q = 0; q < p; ++q) broadcast_uncounted(recv.data() + displs[q], counts[q], int(q));
}

void MpiComm::broadcast_uncounted(void* data, size_t bytes, int root) {
  MP_CHECK(root >= 0 && root < size_, "MpiComm::broadcast: root ", root, " is not a rank of a ",
           size_, "-rank communicator");
  auto* p = static_cast<uint8_t*>(data);
  in_pieces(bytes, max_bytes_,
            [&](size_t off, size_t cnt) { MPI_Bcast(p + off, int(cnt), MPI_BYTE, root, comm_); });
}

void MpiComm::broadcast(void* data, size_t bytes, int root) {
  count(CommOp::Broadcast, bytes);
  broadcast_uncounted(data, bytes, root);
}

void MpiComm::reduce_scatter_sum(const float* send, float* recv, size_t block) {
  const size_t p = size_t(size_);
  count(CommOp::ReduceScatter, p * block * sizeof(float));
  if (block == 0) return;
  MP_CHECK(send + p * block <= recv || recv + block <= send, "MpiComm::reduce_scatter_sum: recv overlaps send");
  const size_t piece = max_bytes_ / sizeof(float);
  if (block <= piece) {
    MPI_Reduce_scatter_block(send, recv, int(block), MPI_FLOAT, MPI_SUM, comm_);
    return;
  }
  // Piece [off, off + cnt) of every block, gathered into a contiguous [p, cnt] buffer: the same
  // element-wise sums, in calls whose counts fit an int.
  in_pieces(block, piece, [&](size_t off, size_t cnt) {
    stage_.resize(p * cnt);
    for (size_t q = 0; q < p; ++q) std::memcpy(&stage_[q * cnt], send + q * block + off, cnt * sizeof(float));
    MPI_Reduce_scatter_block(stage_.data(), recv + off, int(cnt), MPI_FLOAT, MPI_SUM, comm_);
  });
}

void MpiComm::allgather(float* data, size_t block) {
  const size_t p = size_t(size_);
  count(CommOp::AllGather, p * block * sizeof(float));
  if (block == 0) return;
  const size_t piece = max_bytes_ / sizeof(float);
  if (block <= piece) {
    MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, int(block), MPI_FLOAT, comm_);
    return;
  }
  in_pieces(block, piece, [&](size_t off, size_t cnt) {
    stage_.resize(p * cnt);
    std::memcpy(&stage_[size_t(rank_) * cnt], data + size_t(rank_) * block + off, cnt * sizeof(float));
    MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, stage_.data(), int(cnt), MPI_FLOAT, comm_);
    for (size_t q = 0; q < p; ++q) std::memcpy(data + q * block + off, &stage_[q * cnt], cnt * sizeof(float));
  });
}

void MpiComm::barrier() { MPI_Barrier(comm_); }

void MpiComm::send(const float* data, size_t n, int peer) {
  MP_CHECK(peer >= 0 && peer < size_ && peer != rank_, "MpiComm::send: peer ", peer, " of ", size_);
  count(CommOp::PointToPoint, n * sizeof(float));
  // The previous message to this peer first: its copy is then free to take this one. Waiting cannot
  // deadlock the pipeline schedules (train/pipeline.cpp): the peer receives messages in the order
  // they were sent, and a stage posts each receive without waiting for anything it has yet to send.
  if (pending_.size() < size_t(size_)) pending_.resize(size_t(size_));
  PendingSend& p = pending_[size_t(peer)];
  if (!p.req.empty()) MPI_Waitall(int(p.req.size()), p.req.data(), MPI_STATUSES_IGNORE);
  p.req.clear();
  resize_for_overwrite(p.data, n);
  std::memcpy(p.data.data(), data, n * sizeof(float));
  const size_t piece = max_bytes_ / sizeof(float);
  in_pieces(n, piece, [&](size_t off, size_t cnt) {
    p.req.emplace_back();
    MPI_Isend(p.data.data() + off, int(cnt), MPI_FLOAT, peer, 0, comm_, &p.req.back());
  });
}

void MpiComm::recv(float* data, size_t n, int peer) {
  MP_CHECK(peer >= 0 && peer < size_ && peer != rank_, "MpiComm::recv: peer ", peer, " of ", size_);
  in_pieces(n, max_bytes_ / sizeof(float), [&](size_t off, size_t cnt) {
    MPI_Status st;
    MPI_Recv(data + off, int(cnt), MPI_FLOAT, peer, 0, comm_, &st);
    int got = 0;
    MPI_Get_count(&st, MPI_FLOAT, &got);
    MP_CHECK(size_t(got) == cnt, "MpiComm::recv: expected ", cnt, " floats from rank ", peer, ", got ", got);
  });
}

void MpiComm::wait_sends() {
  for (PendingSend& p : pending_)
    if (!p.req.empty()) MPI_Waitall(int(p.req.size()), p.req.data(), MPI_STATUSES_IGNORE);
  pending_.clear();
}

MpiComm::~MpiComm() {
  // An unfinished send would read freed memory: complete them (a correct program has none left).
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) wait_sends();
}

}  // namespace metapo
