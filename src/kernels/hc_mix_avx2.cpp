// AVX2 hc_mix_tokens (see hc_mix.h): 8 tokens per vector, 8 rows per pass (16 registers).
#include <immintrin.h>

#include "kernels/hc_mix.h"

namespace dsv4::hc_mix_detail {

namespace {
using V = __m256;
using Idx = __m256i;
constexpr int kW = 8, kMaxRows = 8;
inline V vzero() { return _mm256_setzero_ps(); }
inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V vset1(float f) { return _mm256_set1_ps(f); }
inline V vgather(const float* base, Idx idx) { return _mm256_i32gather_ps(base, idx, 4); }
inline void vstore(float* p, V v) { _mm256_store_ps(p, v); }
inline Idx idx_of(const int* offs) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(offs)); }
}  // namespace

#include "kernels/hc_mix_simd.inc"

void tokens_avx2(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix) {
  tokens_simd(fn, rows, HD, x, tokens, ss, mix);
}

}  // namespace dsv4::hc_mix_detail
