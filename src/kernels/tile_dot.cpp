#include "kernels/tile_dot.h"

#include <cmath>
#include <cstring>

namespace dsv4 {

namespace {
float flush(float x) { return std::fabs(x) < 0x1p-126f ? std::copysign(0.0f, x) : x; }
float bf16_daz(uint16_t h) {
  const uint32_t u = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return flush(f);
}
}  // namespace

void tile_dot_bf16_model(const uint16_t* a, const uint16_t* b, float* c) {
  for (int m = 0; m < kTileRows; ++m)
    for (int n = 0; n < kTileRows; ++n) {
      float first = 0.0f, second = 0.0f;
      for (int k = 0; k < kTilePairs; ++k) {
        const uint16_t* ap = a + m * 2 * kTilePairs + 2 * k;
        const uint16_t* bp = b + k * 2 * kTileRows + 2 * n;
        first = flush(std::fma(bf16_daz(ap[0]), bf16_daz(bp[0]), first));
        second = flush(std::fma(bf16_daz(ap[1]), bf16_daz(bp[1]), second));
      }
      float& out = c[m * kTileRows + n];
      out = flush(flush(out) + flush(first + second));
    }
}

}  // namespace dsv4
