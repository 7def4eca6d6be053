// AVX-512 hc_mix_tokens (see hc_mix.h): 16 tokens per vector, up to 24 rows per pass (the
// 24 mix rows of hc = 4 in one pass over the streams).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/hc_mix.h"

namespace dsv4::hc_mix_detail {

namespace {
using V = __m512;
using Idx = __m512i;
constexpr int kW = 16, kMaxRows = 24;
inline V vzero() { return _mm512_setzero_ps(); }
inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V vset1(float f) { return _mm512_set1_ps(f); }
inline V vgather(const float* base, Idx idx) { return _mm512_i32gather_ps(idx, base, 4); }
inline void vstore(float* p, V v) { _mm512_store_ps(p, v); }
inline Idx idx_of(const int* offs) { return _mm512_load_si512(offs); }
}  // namespace

#include "kernels/hc_mix_simd.inc"

void tokens_avx512(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix) {
  tokens_simd(fn, rows, HD, x, tokens, ss, mix);
}

}  // namespace dsv4::hc_mix_detail
