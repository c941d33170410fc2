// Buffer<T>: a std::vector whose large allocations are 2 MiB aligned and marked for transparent huge
// pages (madvise), so the GEMMs over activations and gradients take far fewer TLB misses. Small
// allocations behave as usual. Every allocation counts under the allocator's memory category
// (core/memory.h); the allocator travels with the memory on move, swap and assignment, so what is
// freed is taken off the category it was counted in.
#pragma once
#include <sys/mman.h>

#include <cstdlib>
#include <new>
#include <type_traits>
#include <vector>

#include "metapo/core/memory.h"

namespace metapo {

template <typename T>
struct HugePageAllocator {
  using value_type = T;
  using propagate_on_container_move_assignment = std::true_type;
  using propagate_on_container_copy_assignment = std::true_type;
  using propagate_on_container_swap = std::true_type;
  using is_always_equal = std::false_type;
  static constexpr size_t kHuge = size_t(2) << 20;
  HugePageAllocator() = default;
  explicit HugePageAllocator(Mem category) : cat(category) {}
  template <typename U>
  HugePageAllocator(const HugePageAllocator<U>& o) : cat(o.cat) {}

  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    mem_add(cat, int64_t(bytes));
    if (bytes < kHuge) {
      if (void* p = std::malloc(bytes ? bytes : 1)) return static_cast<T*>(p);
      mem_add(cat, -int64_t(bytes));
      throw std::bad_alloc();
    }
    const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = std::aligned_alloc(kHuge, rounded);
    if (!p) {
      mem_add(cat, -int64_t(bytes));
      throw std::bad_alloc();
    }
    madvise(p, rounded, MADV_HUGEPAGE);  // advisory: failure only costs speed
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t n) {
    mem_add(cat, -int64_t(n * sizeof(T)));
    std::free(p);
  }
  // Equal when they count alike: then either may free the other's memory.
  template <typename U>
  bool operator==(const HugePageAllocator<U>& o) const { return cat == o.cat; }
  template <typename U>
  bool operator!=(const HugePageAllocator<U>& o) const { return cat != o.cat; }

  Mem cat = Mem::Other;
};

template <typename T>
using Buffer = std::vector<T, HugePageAllocator<T>>;

// An empty buffer whose allocations count under `category`.
template <typename T>
Buffer<T> tagged_buffer(Mem category, size_t n = 0) {
  return Buffer<T>(n, HugePageAllocator<T>(category));
}

// Grows v to n elements for a caller that overwrites them all: when it must grow, the old buffer is
// freed first (so old and new are never held together: the accountant's high-water mark is the new
// size, not both) and exactly n are allocated. Keeps the capacity across calls.
template <typename V>
void resize_for_overwrite(V& v, size_t n) {
  if (n > v.capacity()) v = V(v.get_allocator());
  if (n > v.capacity()) v.reserve(n);
  v.resize(n);
}

// Grows v to n elements allocating exactly n when it must grow (std::vector's resize may double the
// capacity, which the accountant would then count), keeping the capacity across calls.
template <typename V>
void resize_exact(V& v, size_t n) {
  if (n > v.capacity()) v.reserve(n);
  v.resize(n);
}

}  // namespace metapo
