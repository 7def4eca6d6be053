// std::vector whose storage starts on a cache line. The GEMM and attention kernels load 64-byte
// vectors from their buffers; from a plain std::vector (16-byte alignment) every such load of a
// large buffer straddles two cache lines, which costs a second L1 access on each load.
#pragma once
#include <cstddef>
#include <new>
#include <vector>

namespace dsv4 {

template <class T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheLineAllocator() = default;
  template <class U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlign); }  // (unsized: clang declares no sized form by default)
  template <class U>
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
};

template <class T>
using AlignedVector = std::vector<T, CacheLineAllocator<T>>;

}  // namespace dsv4
