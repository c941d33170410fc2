#include "metapo/comm/mpi_comm.h"

#include <algorithm>
#include <cstring>
#include <exception>

#include "metapo/core/error.h"
#include "metapo/core/half.h"

namespace metapo {

static_assert(sizeof(size_t) == sizeof(uint64_t), "counts travel as MPI_UINT64_T");

namespace {

// Point-to-point pieces of a gather too large for one MPI_Gatherv; tag 0 is the pipeline's and the
// all-to-all's.
constexpr int kGatherTag = 1;

MPI_Datatype mpi_type(DType t) {
  switch (t) {
    case DType::BF16: return MPI_UINT16_T;  // moved as raw bits; reductions are staged in fp32
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT32_T;
    case DType::I64: return MPI_INT64_T;
    case DType::U64: return MPI_UINT64_T;
    case DType::U8: return MPI_UINT8_T;
  }
  fail("MpiComm: unknown dtype ", int(t));
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  fail("MpiComm: unknown reduction ", int(op));
}

bool is_float(DType t) { return t == DType::F32 || t == DType::F64; }

// Runs f(offset, count) over [0, n) in pieces of at most `piece` elements. Reductions are element-wise,
// so splitting changes no result.
template <typename F>
void in_pieces(size_t n, size_t piece, F&& f) {
  for (size_t off = 0; off < n; off += piece) f(off, std::min(piece, n - off));
}

void to_f32(const uint16_t* in, float* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(in[i]);
}
void to_bf16(const float* in, uint16_t* out, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = f32_to_bf16(in[i]);
}

// A request behind an MPI_Request (MPI_Ibarrier's).
class MpiPending final : public CommRequest::Pending {
 public:
  explicit MpiPending(MPI_Request req) : req_(req) {}
  bool test() override {
    int done = 0;
    MPI_Test(&req_, &done, MPI_STATUS_IGNORE);
    return done != 0;
  }
  void wait() override { MPI_Wait(&req_, MPI_STATUS_IGNORE); }

 private:
  MPI_Request req_;
};

}  // namespace

MpiComm::MpiComm(MPI_Comm comm, size_t max_message_bytes) : comm_(comm), max_bytes_(max_message_bytes) {
  MP_CHECK(comm != MPI_COMM_NULL, "MpiComm: the communicator is MPI_COMM_NULL");
  MP_CHECK(max_message_bytes >= sizeof(double) && max_message_bytes <= size_t(INT_MAX),
           "MpiComm: max_message_bytes must be in [8, INT_MAX], got ", max_message_bytes);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

std::unique_ptr<MpiComm> MpiComm::adopt(MPI_Comm comm, size_t max_message_bytes) {
  auto c = std::make_unique<MpiComm>(comm, max_message_bytes);
  c->owned_ = true;
  return c;
}

// The fixed combination order: each chunk of [0, n) is reduced by its owner (reduce-scatter), then
// all-gathered, so every rank ends with the owner's bytes. A plain MPI_Allreduce may combine in a
// different order on different ranks, which would let data-parallel replicas drift apart (and even
// max and min could then differ in -0 vs +0 and in NaN payloads).
void MpiComm::allreduce_identical(void* data, size_t n, size_t esize, MPI_Datatype type, MPI_Op op) {
  in_pieces(n, std::min(max_bytes_, kMaxReductionBytes) / esize, [&](size_t off, size_t cnt) {
    if (size_ == 1 || cnt == 0) return;
    const size_t p = size_t(size_);
    std::vector<int> counts(p), displs(p);
    for (size_t r = 0; r < p; ++r) {
      const size_t b = cnt * r / p, e = cnt * (r + 1) / p;
      counts[r] = int(e - b), displs[r] = int(b);
    }
    uint8_t* piece = static_cast<uint8_t*>(data) + off * esize;
    std::vector<uint8_t> mine(size_t(counts[size_t(rank_)]) * esize);
    MPI_Reduce_scatter(piece, mine.data(), counts.data(), type, op, comm_);
    MPI_Allgatherv(mine.data(), counts[size_t(rank_)], type, piece, counts.data(), displs.data(), type, comm_);
  });
}

CommRequest MpiComm::allreduce_async(void* data, size_t n, DType type, ReduceOp op, Stream) {
  const size_t es = dtype_size(type);
  count(CommOp::AllReduce, n * es);
  if (is_float(type)) {
    allreduce_identical(data, n, es, mpi_type(type), mpi_op(op));
  } else if (type == DType::BF16) {
    if (size_ == 1) return {};
    auto* p = static_cast<uint16_t*>(data);
    in_pieces(n, max_bytes_ / sizeof(float), [&](size_t off, size_t cnt) {
      resize_for_overwrite(stage_f32_, cnt);
      to_f32(p + off, stage_f32_.data(), cnt);
      allreduce_identical(stage_f32_.data(), cnt, sizeof(float), MPI_FLOAT, mpi_op(op));
      to_bf16(stage_f32_.data(), p + off, cnt);
    });
  } else {  // integers: exact in any order
    if (size_ == 1) return {};
    auto* p = static_cast<uint8_t*>(data);
    in_pieces(n, max_bytes_ / es, [&](size_t off, size_t cnt) {
      MPI_Allreduce(MPI_IN_PLACE, p + off * es, int(cnt), mpi_type(type), mpi_op(op), comm_);
    });
  }
  return {};
}

CommRequest MpiComm::reduce_scatter_async(const void* send_v, void* recv_v, size_t block, DType type, ReduceOp op,
                                          Stream) {
  const size_t p = size_t(size_), es = dtype_size(type);
  count(CommOp::ReduceScatter, p * block * es);
  if (block == 0) return {};
  const auto* send = static_cast<const uint8_t*>(send_v);
  auto* recv = static_cast<uint8_t*>(recv_v);
  MP_CHECK(send + p * block * es <= recv || recv + block * es <= send,
           "MpiComm::reduce_scatter: recv overlaps send");
  if (type != DType::BF16) {
    reduce_scatter_raw(send, recv, block, es, mpi_type(type), mpi_op(op));
    return {};
  }
  // Reduced in fp32 (staged as [p blocks | the result]), rounded to bf16 once.
  resize_for_overwrite(stage_f32_, (p + 1) * block);
  float* in = stage_f32_.data();
  float* out = in + p * block;
  to_f32(reinterpret_cast<const uint16_t*>(send), in, p * block);
  reduce_scatter_raw(reinterpret_cast<const uint8_t*>(in), reinterpret_cast<uint8_t*>(out), block, sizeof(float),
                     MPI_FLOAT, mpi_op(op));
  to_bf16(out, reinterpret_cast<uint16_t*>(recv), block);
  return {};
}

void MpiComm::reduce_scatter_raw(const uint8_t* send, uint8_t* recv, size_t block, size_t es, MPI_Datatype type,
                                 MPI_Op op) {
  const size_t p = size_t(size_), piece = std::max<size_t>(1, std::min(max_bytes_, kMaxReductionBytes / p) / es);
  if (block <= piece) {
    MPI_Reduce_scatter_block(send, recv, int(block), type, op, comm_);
    return;
  }
  // Piece [off, off + cnt) of every block, gathered into a contiguous [p, cnt] buffer: the same
  // element-wise reductions, in calls whose counts fit an int.
  in_pieces(block, piece, [&](size_t off, size_t cnt) {
    resize_for_overwrite(stage_, p * cnt * es);
    for (size_t q = 0; q < p; ++q) std::memcpy(&stage_[q * cnt * es], send + (q * block + off) * es, cnt * es);
    MPI_Reduce_scatter_block(stage_.data(), recv + off * es, int(cnt), type, op, comm_);
  });
}

CommRequest MpiComm::allgather_async(void* data_v, size_t block, DType type, Stream) {
  const size_t p = size_t(size_), es = dtype_size(type);
  count(CommOp::AllGather, p * block * es);
  if (block == 0) return {};
  auto* data = static_cast<uint8_t*>(data_v);
  const MPI_Datatype t = mpi_type(type);
  const size_t piece = max_bytes_ / es;
  if (block <= piece) {
    MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, int(block), t, comm_);
    return {};
  }
  const size_t me = size_t(rank_);
  in_pieces(block, piece, [&](size_t off, size_t cnt) {
    resize_for_overwrite(stage_, p * cnt * es);
    std::memcpy(&stage_[me * cnt * es], data + (me * block + off) * es, cnt * es);
    MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, stage_.data(), int(cnt), t, comm_);
    for (size_t q = 0; q < p; ++q) std::memcpy(data + (q * block + off) * es, &stage_[q * cnt * es], cnt * es);
  });
  return {};
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

void MpiComm::gather(const void* send, size_t bytes, std::vector<uint8_t>& recv, std::vector<size_t>& counts,
                     int root) {
  MP_CHECK(root >= 0 && root < size_, "MpiComm::gather: root ", root, " is not a rank of a ", size_,
           "-rank communicator");
  const size_t p = size_t(size_);
  std::vector<size_t> all(p, 0);
  const uint64_t mine = bytes;
  MPI_Allgather(&mine, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, comm_);
  std::vector<size_t> displs(p, 0);
  size_t total = 0;
  for (size_t q = 0; q < p; ++q) displs[q] = total, total += all[q];
  const bool at_root = rank_ == root;
  count(CommOp::AllGather, at_root ? total : bytes);
  recv.clear(), counts.clear();
  if (at_root) recv.resize(total), counts = all;
  if (total <= max_bytes_) {
    std::vector<int> c(p), d(p);
    for (size_t q = 0; q < p; ++q) c[q] = int(all[q]), d[q] = int(displs[q]);
    MPI_Gatherv(send, int(bytes), MPI_BYTE, recv.data(), c.data(), d.data(), MPI_BYTE, root, comm_);
    return;
  }
  const auto* s = static_cast<const uint8_t*>(send);
  if (!at_root) {
    in_pieces(bytes, max_bytes_,
              [&](size_t off, size_t cnt) { MPI_Send(s + off, int(cnt), MPI_BYTE, root, kGatherTag, comm_); });
    return;
  }
  if (bytes > 0) std::memcpy(recv.data() + displs[size_t(rank_)], send, bytes);
  for (size_t q = 0; q < p; ++q) {
    if (int(q) == root) continue;
    in_pieces(all[q], max_bytes_, [&](size_t off, size_t cnt) {
      MPI_Recv(recv.data() + displs[q] + off, int(cnt), MPI_BYTE, int(q), kGatherTag, comm_, MPI_STATUS_IGNORE);
    });
  }
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

void MpiComm::barrier() { MPI_Barrier(comm_); }

CommRequest MpiComm::ibarrier() {
  MPI_Request req;
  MPI_Ibarrier(comm_, &req);
  return CommRequest(std::make_unique<MpiPending>(req));
}

std::unique_ptr<Comm> MpiComm::split(int color, int key) {
  MP_CHECK(color >= 0 || color == kNoColor, "MpiComm::split: colour ", color, " (must be >= 0 or kNoColor)");
  MPI_Comm out = MPI_COMM_NULL;
  MPI_Comm_split(comm_, color == kNoColor ? MPI_UNDEFINED : color, key, &out);
  if (out == MPI_COMM_NULL) return nullptr;
  return adopt(out, max_bytes_);
}

std::unique_ptr<Comm> MpiComm::dup() {
  MPI_Comm out = MPI_COMM_NULL;
  MPI_Comm_dup(comm_, &out);
  return adopt(out, max_bytes_);
}

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
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  // An unfinished send would read freed memory: complete them (a correct program has none left).
  wait_sends();
  if (owned_ && std::uncaught_exceptions() == 0) MPI_Comm_free(&comm_);
}

}  // namespace metapo
