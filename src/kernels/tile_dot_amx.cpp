// Compiled with -mamx-tile -mamx-bf16; runs only where cpu_has_amx_bf16().
#include <immintrin.h>

#include <cstdint>

#include "kernels/roofline.h"
#include "kernels/tile_dot.h"

namespace dsv4 {

namespace {
// LDTILECFG's 64-byte operand: palette 1, every tile register 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};
void configure_full_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.bytes_per_row[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}
}  // namespace

namespace tile_detail {
void tile_dot_bf16_amx(const uint16_t* a, const uint16_t* b, float* c) {
  configure_full_tiles();
  _tile_loadd(0, c, 64);
  _tile_loadd(1, a, 64);
  _tile_loadd(2, b, 64);
  _tile_dpbf16ps(0, 1, 2);
  _tile_stored(0, c, 64);
  _tile_release();
}
}  // namespace tile_detail

namespace roofline_detail {
double tdpbf16_loop_amx(long iters, float* out) {
  configure_full_tiles();
  alignas(64) uint16_t ab[2][kTileRows * 2 * kTilePairs];
  for (auto& t : ab)
    for (uint16_t& h : t) h = 0x3380;  // 2^-24: the sums stay far from overflow
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ab[0], 64);
  _tile_loadd(5, ab[1], 64);
  _tile_loadd(6, ab[0], 64);
  _tile_loadd(7, ab[1], 64);
  // Four accumulators, each product independent of the one before on the other three.
  for (long i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float c[kTileRows * kTileRows];
  _tile_stored(0, c, 64);
  _tile_release();
  out[0] = c[0];
  return 2.0 * 4 * kTileRows * kTileRows * 2 * kTilePairs * static_cast<double>(iters);
}
}  // namespace roofline_detail

}  // namespace dsv4
