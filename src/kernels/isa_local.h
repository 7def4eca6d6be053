// Helpers shared by the files compiled with their own ISA flags (*_avx2.cpp, *_avx512.cpp,
// *_amx.cpp). They have internal linkage: an inline function with external linkage compiled in
// such a file could be the copy the linker keeps for baseline code too (an ODR clash that would
// crash an older CPU). Results are those of numerics.h.
#pragma once
#include <cstdint>
#include <cstring>

namespace dsv4::isa_local {

// numerics.h bf16_round: round to nearest even, NaNs kept quiet.
static inline float bf16_round(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    u = (u | 0x400000u) & 0xffff0000u;
  else
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&f, &u, 4);
  return f;
}

// Software prefetch of p's line: T0 or NTA, or T1 (into L2). As volatile asm: GCC 12 dropped
// __builtin_prefetch / _mm_prefetch where their address came from a branch, and every one in
// a small inline helper that did nothing else (it took the helper for a function without side
// effects and deleted the call); no prefetch instruction was left in the callers.
static inline void prefetch_line(const void* p, bool nta) {
  if (nta)
    asm volatile("prefetchnta %0" : : "m"(*static_cast<const char*>(p)));
  else
    asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
}
static inline void prefetch_line_l2(const void* p) { asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p))); }

}  // namespace dsv4::isa_local
