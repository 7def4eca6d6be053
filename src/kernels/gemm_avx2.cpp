// AVX2 back end of the GEMMs (compiled with AVX2/FMA flags, run only when cpu_features says
// so). A 16-lane vector of the canonical order is a pair of ymm (lanes 0-7, 8-15); with 16
// registers, 4 lane vectors are reduced at once.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/gemm.h"

namespace dsv4::gemm_detail {
namespace {

struct Vec {
  __m256 lo, hi;
};
using Parts = __m128;
constexpr int kGroup = 4;
constexpr int kBigMR = 4, kBigNR = 1;

inline Vec vzero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline Vec vload(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void vstore(float* p, Vec v) {
  _mm256_storeu_ps(p, v.lo);
  _mm256_storeu_ps(p + 8, v.hi);
}
inline Vec vfma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
inline Parts pzero() { return _mm_setzero_ps(); }
inline Parts pload(const float* p) { return _mm_loadu_ps(p); }
inline void pstore(float* p, Parts v) { _mm_storeu_ps(p, v); }
inline Parts pfma(Parts a, Parts b, Parts c) { return _mm_fmadd_ps(a, b, c); }

// Tree of gemm.h for 4 vectors: h = 8 is lo + hi; h = 4 pairs 128-bit halves of two vectors;
// h = 2 and h = 1 shuffle within 128-bit lanes. Ends as [A, C, A, C | B, D, B, D].
inline Parts reduce(const Vec* v) {
  const __m256 a = _mm256_add_ps(v[0].lo, v[0].hi), b = _mm256_add_ps(v[1].lo, v[1].hi);
  const __m256 c = _mm256_add_ps(v[2].lo, v[2].hi), d = _mm256_add_ps(v[3].lo, v[3].hi);
  const __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
  const __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
  const __m256 w = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, 0x44), _mm256_shuffle_ps(ab, cd, 0xEE));
  const __m256 x = _mm256_add_ps(_mm256_shuffle_ps(w, w, 0x88), _mm256_shuffle_ps(w, w, 0xDD));
  return _mm_unpacklo_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
}

// e4m3 by bit construction (see gemm_avx512.cpp).
inline __m256 e4m3_8(const uint8_t* p) {
  const __m256i c = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m256i bits = _mm256_and_si256(_mm256_slli_epi32(c, 20), _mm256_set1_epi32(static_cast<int>(0x87F00000u)));
  return _mm256_mul_ps(_mm256_castsi256_ps(bits), _mm256_set1_ps(0x1p120f));
}
inline void dec_fp8(const uint8_t* p, Vec& w0, Vec& w1) {
  w0 = {e4m3_8(p), e4m3_8(p + 8)};
  w1 = {e4m3_8(p + 16), e4m3_8(p + 24)};
}
inline __m256 bf16_8(const uint16_t* p) {
  return _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
inline void dec_bf16(const uint16_t* p, Vec& w0, Vec& w1) {
  w0 = {bf16_8(p), bf16_8(p + 8)};
  w1 = {bf16_8(p + 16), bf16_8(p + 24)};
}
// Magnitudes e2m1[0..7] * sw (exact); vpermps reads the low 3 index bits, bit 3 is the sign.
using Fp4Tab = __m256;
inline Fp4Tab fp4_tab(const float* e2m1, float sw) { return _mm256_mul_ps(_mm256_loadu_ps(e2m1), _mm256_set1_ps(sw)); }
inline __m256 e2m1_8(__m128i nib_bytes, const Fp4Tab& tab) {
  const __m256i idx = _mm256_cvtepu8_epi32(nib_bytes);
  const __m256i sign = _mm256_and_si256(_mm256_slli_epi32(idx, 28), _mm256_set1_epi32(static_cast<int>(0x80000000u)));
  return _mm256_xor_ps(_mm256_permutevar8x32_ps(tab, idx), _mm256_castsi256_ps(sign));
}
// Nibbles in k order as in gemm_avx512.cpp (low 4 bits of byte j = nibble j).
inline void dec_fp4(const uint8_t* p, const Fp4Tab& tab, Vec& w0, Vec& w1) {
  const __m256i wd = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i nib = _mm256_or_si256(wd, _mm256_slli_epi16(wd, 4));
  const __m128i lo = _mm256_castsi256_si128(nib), hi = _mm256_extracti128_si256(nib, 1);
  w0 = {e2m1_8(lo, tab), e2m1_8(_mm_srli_si128(lo, 8), tab)};
  w1 = {e2m1_8(hi, tab), e2m1_8(_mm_srli_si128(hi, 8), tab)};
}

#include "kernels/gemm_simd.inc"

}  // namespace

void rows_avx2(const Problem& p, int n0, int n1, float* scratch) { rows_simd(p, n0, n1, scratch); }

}  // namespace dsv4::gemm_detail
