// The one-process Comm (SelfComm) and the request handle: the typed calls are identities, gather,
// split and dup behave as on one MPI rank, requests wait as comm.h says. MpiComm's versions over
// several ranks: tests/test_comm_mpi.cpp.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "metapo/comm/comm.h"
#include "metapo/core/half.h"

using namespace metapo;
using std::vector;

namespace {

TEST(SelfComm, TypedCallsAreIdentities) {
  SelfComm c;
  vector<uint16_t> b = {f32_to_bf16(1.5f), f32_to_bf16(-3.0f)};
  const vector<uint16_t> b0 = b;
  vector<int32_t> i = {7, -8};
  vector<uint64_t> u = {uint64_t(1) << 63};
  vector<float> f = {0.25f, 2.0f};
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
    c.allreduce(b.data(), b.size(), DType::BF16, op);
    c.allreduce(i.data(), i.size(), op);
    c.allreduce(u.data(), u.size(), op);
    EXPECT_TRUE(c.allreduce_async(f.data(), f.size(), DType::F32, op).done());
  }
  EXPECT_EQ(b, b0);
  EXPECT_EQ(i, (vector<int32_t>{7, -8}));
  EXPECT_EQ(u, (vector<uint64_t>{uint64_t(1) << 63}));
  EXPECT_EQ(f, (vector<float>{0.25f, 2.0f}));

  // Reduce-scatter copies the one block; all-gather leaves it.
  const vector<uint16_t> send = {1, 2, 3};
  vector<uint16_t> recv(3, 0);
  EXPECT_TRUE(c.reduce_scatter_async(send.data(), recv.data(), 3, DType::BF16, ReduceOp::Sum).done());
  EXPECT_EQ(recv, send);
  vector<double> g = {4.0};
  EXPECT_TRUE(c.allgather_async(g.data(), 1, DType::F64).done());
  EXPECT_EQ(g[0], 4.0);
  EXPECT_EQ(c.volume()[CommOp::AllReduce], 0u);  // one process moves nothing
}

TEST(SelfComm, GatherSplitDupAndBarriers) {
  SelfComm c;
  const std::string s = "abc";
  vector<uint8_t> recv;
  vector<size_t> counts;
  c.gather(s.data(), s.size(), recv, counts, 0);
  EXPECT_EQ(std::string(recv.begin(), recv.end()), "abc");
  EXPECT_EQ(counts, (vector<size_t>{3}));
  EXPECT_THROW(c.gather(s.data(), s.size(), recv, counts, 1), Error);

  EXPECT_TRUE(c.ibarrier().done());
  c.barrier();

  std::unique_ptr<Comm> part = c.split(3, 0);
  ASSERT_NE(part, nullptr);
  EXPECT_EQ(part->size(), 1);
  EXPECT_EQ(c.split(Comm::kNoColor, 0), nullptr);
  EXPECT_THROW(c.split(-2, 0), Error);
  std::unique_ptr<Comm> d = c.dup();
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->rank(), 0);
  EXPECT_EQ(broadcast_string(c, "root's", 0), "root's");
}

// A pending operation that completes after `left` tests, recording waits.
struct FakePending : CommRequest::Pending {
  int left;
  int* waits;
  FakePending(int l, int* w) : left(l), waits(w) {}
  bool test() override { return --left <= 0; }
  void wait() override { ++*waits, left = 0; }
};

TEST(CommRequest, TestWaitAndDestruction) {
  int waits = 0;
  {
    CommRequest r(std::make_unique<FakePending>(3, &waits));
    EXPECT_FALSE(r.done());
    EXPECT_FALSE(r.test());
    EXPECT_FALSE(r.test());
    EXPECT_TRUE(r.test());  // the third test completes it
    EXPECT_TRUE(r.done());
    r.wait();  // complete: nothing to wait for
  }
  EXPECT_EQ(waits, 0);
  {
    CommRequest r(std::make_unique<FakePending>(5, &waits));
    r.wait();
    EXPECT_TRUE(r.done());
  }
  EXPECT_EQ(waits, 1);
  {
    // Destroyed incomplete: waited for; assigned over: the old one waited for first.
    CommRequest r(std::make_unique<FakePending>(5, &waits));
    r = CommRequest(std::make_unique<FakePending>(5, &waits));
    EXPECT_EQ(waits, 2);
  }
  EXPECT_EQ(waits, 3);
  // While an exception unwinds, an incomplete request is abandoned, not waited for.
  try {
    CommRequest r(std::make_unique<FakePending>(5, &waits));
    throw std::runtime_error("abort");
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(waits, 3);
}

}  // namespace
