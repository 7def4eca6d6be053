// AVX-512 hc_mix_tokens (see hc_mix.h): 16 tokens per vector, up to 24 rows per pass (the
// 24 mix rows of hc = 4 in one pass over the streams).
// GCC 12 flags its own _mm512_undefined_* inside the gather intrinsic (see gemm_avx512.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__  // (a GCC-only warning group; clang reports it unknown)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "kernels/hc_mix.h"
#include "kernels/isa_local.h"

namespace dsv4::hc_mix_detail {
namespace {
constexpr int kW = 16, kMaxRows = 24;
using Idx = __m512i;
inline Idx idx_of(const int* offs) { return _mm512_load_si512(offs); }
inline __m512 gather(const float* base, Idx idx) { return _mm512_i32gather_ps(idx, base, 4); }
typedef float V __attribute__((vector_size(64)));
// col[k] lane r = rows[r][i + k], k, r < 16: unpacks and in-lane shuffles leave column 4L + m of
// rows 4q .. 4q + 3 in 128-bit lane L of u[4q + m]; two rounds of 128-bit lane shuffles gather them.
inline void transpose_block(const float* const* rows, int i, V* col) {
  __m512 t[16], u[16];
  for (int q = 0; q < 8; ++q) {
    const __m512 a = _mm512_loadu_ps(rows[2 * q] + i), b = _mm512_loadu_ps(rows[2 * q + 1] + i);
    t[2 * q] = _mm512_unpacklo_ps(a, b);  // (a0 b0 a1 b1 per lane)
    t[2 * q + 1] = _mm512_unpackhi_ps(a, b);
  }
  for (int q = 0; q < 4; ++q) {
    u[4 * q] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
    u[4 * q + 1] = _mm512_shuffle_ps(t[4 * q], t[4 * q + 2], 0xEE);
    u[4 * q + 2] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    u[4 * q + 3] = _mm512_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {
    const __m512 v1 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88), v2 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xDD);
    const __m512 w1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88), w2 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xDD);
    col[m] = (V)_mm512_shuffle_f32x4(v1, w1, 0x88);
    col[8 + m] = (V)_mm512_shuffle_f32x4(v1, w1, 0xDD);
    col[4 + m] = (V)_mm512_shuffle_f32x4(v2, w2, 0x88);
    col[12 + m] = (V)_mm512_shuffle_f32x4(v2, w2, 0xDD);
  }
}
#include "kernels/hc_mix_simd.inc"
}  // namespace

void post_avx512(const float* f, const float* post, const float* comb, float* h, int hc, int D, int d0, int d1) {
  if (hc == 4)
    post_simd<4>(f, post, comb, h, hc, D, d0, d1);
  else
    post_simd<0>(f, post, comb, h, hc, D, d0, d1);
}

void chains_avx512(const float* const* src, int n, int HD, const float* x, float* out) {
  chains_simd(src, n, HD, x, out);
}

void tokens_avx512(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix) {
  tokens_simd(fn, rows, HD, x, tokens, ss, mix);
}

}  // namespace dsv4::hc_mix_detail
