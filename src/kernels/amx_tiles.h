// AMX tile helpers for the *_amx.cpp files (compiled with AMX flags, run only where
// cpu_has_amx_bf16()). GCC 12's <immintrin.h> forms are not safe to use as they are: its
// _tile_loadconfig tells the compiler that LDTILECFG reads 8 bytes of the 64-byte configuration
// (the stores that fill it were dropped: TILEZERO then faulted), and its _tile_loadd that
// TILELOADD reads no memory at all (stores into a tile's rows could sink below the load). These
// state what the instructions read.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace dsv4::amx {

// LDTILECFG's operand: palette 1, tiles 0-7 all 16 rows of 64 bytes (the only shape used here).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

inline void configure_full_tiles() {
  const TileConfig cfg;
  asm volatile("ldtilecfg %0" : : "m"(cfg));
}

}  // namespace dsv4::amx

// Tile register t from / to rows `stride` bytes apart at base (a memory barrier to the compiler).
#define DSV4_TILE_LOAD(t, base, stride) \
  asm volatile("tileloadd (%0,%1,1), %%tmm" #t : : "r"(base), "r"(static_cast<long>(stride)) : "memory")
#define DSV4_TILE_STORE(t, base, stride) \
  asm volatile("tilestored %%tmm" #t ", (%0,%1,1)" : : "r"(base), "r"(static_cast<long>(stride)) : "memory")
