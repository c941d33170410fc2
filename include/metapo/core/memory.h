// The memory accountant: every sizeable buffer of a training run counts its bytes under one category,
// and the accountant keeps, per process, the bytes held now and the high-water mark of each category
// and of their sum. run.json and the first step's progress line report the marks; `metapo plan`
// predicts them per category (train/memory_plan.h), and tests/cli/memory_plan.sh holds the two within
// 10% of each other.
//
// Buffers (core/buffer.h) count themselves: their allocator carries a category and adds what it
// allocates and subtracts what it frees, so a buffer's count is its capacity, exactly, at every
// moment. Fixed-size std::vectors (the parameters, the Adam moments, the dataset) are registered with
// a MemoryHandle by their owner.
#pragma once
#include <array>
#include <cstdint>
#include <string>

namespace metapo {

enum class Mem : int {
  Other,        // a Buffer nobody tagged (should stay near zero in a training run)
  Params,       // this rank's parameter shard (with ZeRO-1 padding), the reference model's while it lives
  Grads,        // the gradient buffer in the parameter layout
  Optimizer,    // AdamW moments of this rank's ZeRO-1 shard, its weight-decay mask, the reduced gradient
  Activations,  // what forwards keep for their backwards (every pipeline slot), the recompute scratch
  Workspace,    // the backward's gradient buffers and the ghost-product scratch
  MetaPO,       // the validation gradient, the pair-statistics rows this rank owns
  Comm,         // pipeline send/receive buffers of the residual stream and its gradient
  Data,         // the dataset splits held in memory (token arrays, offsets, reference log-probs)
  kCount
};
constexpr int kNumMem = int(Mem::kCount);
const char* mem_name(Mem m);  // "params", "grads", ... (the keys of run.json's memory_peak_bytes)

// Bytes per category, or their high-water marks.
using MemBytes = std::array<int64_t, kNumMem>;

// Process-wide counters (thread-safe).
void mem_add(Mem m, int64_t bytes);  // negative: released
MemBytes mem_current();
MemBytes mem_peak();   // the high-water mark of each category since the start (or the last reset)
int64_t mem_peak_total();  // the high-water mark of the sum of all categories
void mem_reset_peaks();    // peaks := current

// Refuses, naming `what`, a host allocation of `bytes` larger than this machine's physical memory
// (sizes from options or data that would otherwise end in std::bad_alloc or the kernel's OOM killer).
void check_fits_memory(double bytes, const std::string& what);

// A registration of `bytes` under one category, released when the handle goes (or set again).
class MemoryHandle {
 public:
  explicit MemoryHandle(Mem m) : m_(m) {}
  MemoryHandle(const MemoryHandle&) = delete;
  MemoryHandle& operator=(const MemoryHandle&) = delete;
  MemoryHandle(MemoryHandle&& o) noexcept : m_(o.m_), bytes_(o.bytes_) { o.bytes_ = 0; }
  MemoryHandle& operator=(MemoryHandle&& o) noexcept {
    if (this != &o) set(0), m_ = o.m_, bytes_ = o.bytes_, o.bytes_ = 0;
    return *this;
  }
  ~MemoryHandle() { set(0); }
  void set(int64_t bytes) {
    if (bytes != bytes_) mem_add(m_, bytes - bytes_), bytes_ = bytes;
  }
  // The capacity of a container in bytes.
  template <typename V>
  void track(const V& v) {
    set(int64_t(v.capacity() * sizeof(typename V::value_type)));
  }

 private:
  Mem m_;
  int64_t bytes_ = 0;
};

}  // namespace metapo
