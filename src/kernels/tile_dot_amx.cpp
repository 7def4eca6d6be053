// Compiled with -mamx-tile -mamx-bf16; runs only where cpu_has_amx_bf16().
#include <immintrin.h>

#include <cstdint>

#include "kernels/amx_tiles.h"
#include "kernels/roofline.h"
#include "kernels/tile_dot.h"

namespace dsv4 {


namespace tile_detail {
void tile_dot_bf16_amx(const uint16_t* a, const uint16_t* b, float* c) {
  amx::configure_full_tiles();
  DSV4_TILE_LOAD(0, c, 64);
  DSV4_TILE_LOAD(1, a, 64);
  DSV4_TILE_LOAD(2, b, 64);
  _tile_dpbf16ps(0, 1, 2);
  DSV4_TILE_STORE(0, c, 64);
  _tile_release();
}
}  // namespace tile_detail

namespace roofline_detail {
double tdpbf16_loop_amx(long iters, float* out) {
  amx::configure_full_tiles();
  alignas(64) uint16_t ab[2][kTileRows * 2 * kTilePairs];
  for (auto& t : ab)
    for (uint16_t& h : t) h = 0x3380;  // 2^-24: the sums stay far from overflow
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  DSV4_TILE_LOAD(4, ab[0], 64);
  DSV4_TILE_LOAD(5, ab[1], 64);
  DSV4_TILE_LOAD(6, ab[0], 64);
  DSV4_TILE_LOAD(7, ab[1], 64);
  // Four accumulators, each product independent of the one before on the other three.
  for (long i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float c[kTileRows * kTileRows];
  DSV4_TILE_STORE(0, c, 64);
  _tile_release();
  out[0] = c[0];
  return 2.0 * 4 * kTileRows * kTileRows * 2 * kTilePairs * static_cast<double>(iters);
}
}  // namespace roofline_detail

}  // namespace dsv4
