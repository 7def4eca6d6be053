// AVX-512 hc_mix_tokens (see hc_mix.h): 16 tokens per vector, up to 24 rows per pass (the
// 24 mix rows of hc = 4 in one pass over the streams).
// GCC 12 flags its own _mm512_undefined_* inside the gather intrinsic (see gemm_avx512.cpp).
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__  // (a GCC-only warning group; clang reports it unknown)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "kernels/hc_mix.h"

namespace dsv4::hc_mix_detail {
namespace {
constexpr int kW = 16, kMaxRows = 24;
using Idx = __m512i;
inline Idx idx_of(const int* offs) { return _mm512_load_si512(offs); }
inline __m512 gather(const float* base, Idx idx) { return _mm512_i32gather_ps(idx, base, 4); }
#include "kernels/hc_mix_simd.inc"
}  // namespace

void post_avx512(const float* f, const float* post, const float* comb, float* h, int hc, int D, int d0, int d1) {
  if (hc == 4)
    post_simd<4>(f, post, comb, h, hc, D, d0, d1);
  else
    post_simd<0>(f, post, comb, h, hc, D, d0, d1);
}

void tokens_avx512(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix) {
  tokens_simd(fn, rows, HD, x, tokens, ss, mix);
}

}  // namespace dsv4::hc_mix_detail
