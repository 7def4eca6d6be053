// GCC 12 flags its own _mm512_undefined_* helpers inside intrinsics as uninitialised.
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__  // (a GCC-only warning group; clang reports it unknown)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "kernels/roofline.h"

namespace dsv4::roofline_detail {

double fma_loop_avx512(long iters, const float* seeds, float* out) {
  __m512 a[kFmaChains];
  for (int j = 0; j < kFmaChains; ++j) a[j] = _mm512_set1_ps(seeds[j]);
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kFmaChains; ++j) a[j] = _mm512_fmadd_ps(a[j], m, c);
  }
  for (int j = 0; j < kFmaChains; ++j) out[j] = _mm512_cvtss_f32(a[j]);
  return 2.0 * 16 * kFmaChains * static_cast<double>(iters);
}

double dpbf16_loop_avx512(long iters, const float* seeds, float* out) {
  __m512 a[kDotChains];
  for (int j = 0; j < kDotChains; ++j) a[j] = _mm512_set1_ps(seeds[j]);
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3F803F80), y = (__m512bh)_mm512_set1_epi32(0x33803380);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kDotChains; ++j) a[j] = _mm512_dpbf16_ps(a[j], x, y);
  }
  for (int j = 0; j < kDotChains; ++j) out[j] = _mm512_cvtss_f32(a[j]);
  return 2.0 * 32 * kDotChains * static_cast<double>(iters);
}

uint64_t read_xor_avx512(const uint8_t* p, size_t len) {
  __m512i x[8];
  for (auto& v : x) v = _mm512_setzero_si512();
  for (size_t i = 0; i < len; i += 512)
    for (int j = 0; j < 8; ++j) x[j] = _mm512_xor_si512(x[j], _mm512_loadu_si512(p + i + 64 * j));
  for (int j = 1; j < 8; ++j) x[0] = _mm512_xor_si512(x[0], x[j]);
  alignas(64) uint64_t q[8];
  _mm512_store_si512(q, x[0]);
  return q[0] ^ q[1] ^ q[2] ^ q[3] ^ q[4] ^ q[5] ^ q[6] ^ q[7];
}

}  // namespace dsv4::roofline_detail
