// The memory accountant: tagged buffers count their capacity under their category through moves,
// swaps and copies; resize_for_overwrite never holds the old and the new buffer together; handles
// register and release; the model's activation and workspace buffers are what it says it keeps.
#include <gtest/gtest.h>

#include "metapo/core/buffer.h"
#include "metapo/core/memory.h"
#include "metapo/model/init.h"
#include "metapo/model/llama.h"
#include "metapo/train/memory_plan.h"

using namespace metapo;

namespace {

int64_t now(Mem m) { return mem_current()[size_t(m)]; }

}  // namespace

TEST(Memory, TaggedBuffersCountTheirCapacity) {
  const int64_t a0 = now(Mem::Activations), g0 = now(Mem::Grads);
  {
    Buffer<float> a = tagged_buffer<float>(Mem::Activations, 1000);
    EXPECT_EQ(now(Mem::Activations) - a0, 4000);
    Buffer<float> g = tagged_buffer<float>(Mem::Grads, 10);
    std::swap(a, g);  // the allocators travel with the memory
    EXPECT_EQ(now(Mem::Activations) - a0, 4000);
    EXPECT_EQ(now(Mem::Grads) - g0, 40);
    Buffer<float> c = a;  // a copy counts where its source counts
    EXPECT_EQ(now(Mem::Grads) - g0, 80);
    g = std::move(c);     // frees g's old memory from activations
    EXPECT_EQ(now(Mem::Activations) - a0, 0);
    EXPECT_EQ(now(Mem::Grads) - g0, 80);
  }
  EXPECT_EQ(now(Mem::Activations), a0);
  EXPECT_EQ(now(Mem::Grads), g0);
}

TEST(Memory, ResizeForOverwriteFreesBeforeItGrows) {
  mem_reset_peaks();
  const int64_t w0 = now(Mem::Workspace);
  Buffer<double> b = tagged_buffer<double>(Mem::Workspace);
  resize_for_overwrite(b, 100);
  resize_for_overwrite(b, 50);   // keeps the capacity
  EXPECT_EQ(b.capacity(), 100u);
  resize_for_overwrite(b, 300);  // exactly 300, and never 100 + 300 at once
  EXPECT_EQ(b.capacity(), 300u);
  EXPECT_EQ(now(Mem::Workspace) - w0, 2400);
  EXPECT_EQ(mem_peak()[size_t(Mem::Workspace)] - w0, 2400);
  // resize_exact keeps the contents, so the two buffers meet: the mark says so.
  Buffer<double> k = tagged_buffer<double>(Mem::Workspace, 10);
  mem_reset_peaks();
  resize_exact(k, 20);
  EXPECT_EQ(mem_peak()[size_t(Mem::Workspace)] - now(Mem::Workspace), 80);
}

TEST(Memory, HandlesRegisterAndRelease) {
  const int64_t d0 = now(Mem::Data);
  {
    MemoryHandle h(Mem::Data);
    h.set(500);
    EXPECT_EQ(now(Mem::Data) - d0, 500);
    MemoryHandle moved = std::move(h);
    moved.set(700);
    EXPECT_EQ(now(Mem::Data) - d0, 700);
  }
  EXPECT_EQ(now(Mem::Data), d0);
}

// A forward and a backward of the tiny model, per recompute mode: what the model's buffers hold
// afterwards is exactly the plan's activation and workspace formulas for that micro-batch.
TEST(Memory, ModelBuffersMatchThePlanFormulas) {
  LlamaConfig c;
  c.vocab_size = 64, c.hidden_size = 32, c.intermediate_size = 88, c.num_hidden_layers = 3;
  c.num_attention_heads = 4, c.num_key_value_heads = 2, c.head_dim = 8, c.max_position_embeddings = 128;
  const std::vector<float> params = init_params(c, 1);
  for (Recompute rc : {Recompute::None, Recompute::Selective, Recompute::Full}) {
    const int64_t a0 = now(Mem::Activations), w0 = now(Mem::Workspace);
    {
      LlamaModel<float> m(c);
      m.set_recompute(rc);
      PackedBatch b;
      b.add({1, 2, 3, 4, 5, 6, 7}), b.add({8, 9, 10, 11, 12});
      std::vector<int32_t> targets = next_token_targets(b, nullptr);
      int64_t rows = 0;
      for (int32_t t : targets) rows += t >= 0;
      std::vector<float> logp(size_t(b.n_tokens())), dlogp(logp.size(), 0.1f), grads(params.size());
      m.forward(params.data(), b, targets.data(), logp.data());
      m.backward(params.data(), dlogp.data(), grads.data(), false);
      PlanInput in;
      in.config = c, in.recompute = rc, in.micro_tokens = b.n_tokens(), in.micro_rows = rows, in.micro_batches = 1;
      const StagePlan p = plan_memory(in).at(0);
      EXPECT_EQ(now(Mem::Activations) - a0, p.bytes[size_t(Mem::Activations)]) << recompute_name(rc);
      EXPECT_EQ(now(Mem::Workspace) - w0, p.bytes[size_t(Mem::Workspace)]) << recompute_name(rc);
    }
    EXPECT_EQ(now(Mem::Activations), a0);
    EXPECT_EQ(now(Mem::Workspace), w0);
  }
}
