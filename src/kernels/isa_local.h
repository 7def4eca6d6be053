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

}  // namespace dsv4::isa_local
