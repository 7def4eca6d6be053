// AVX-512 back end of the GEMMs (compiled with AVX-512 flags, run only when cpu_features
// says so). A 16-lane vector of the canonical order is one zmm; 16 lane vectors are reduced at
// once by a transposing tree, so one reduction serves 16 outputs.
// GCC 12 flags its own _mm512_undefined_* helpers (used inside many intrinsics) as
// uninitialised; the pragma must precede the header to cover those locations.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/gemm.h"

namespace dsv4::gemm_detail {
namespace {

using Vec = __m512;
using Parts = __m512;
constexpr int kGroup = 16;
constexpr int kBigMR = 4, kBigNR = 4;

inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Parts pzero() { return _mm512_setzero_ps(); }
inline Parts pload(const float* p) { return _mm512_loadu_ps(p); }
inline void pstore(float* p, Parts v) { _mm512_storeu_ps(p, v); }
inline Parts pfma(Parts a, Parts b, Parts c) { return _mm512_fmadd_ps(a, b, c); }

// Tree of gemm.h for 16 vectors at once. Step h = 8 pairs 256-bit halves, h = 4 128-bit
// quarters, h = 2 and h = 1 elements within quarters; each add combines two vectors' data, so
// 15 adds serve all 16. The result has v[4r + j] in lane 4j + r; the last permute undoes that.
inline Parts reduce(const Vec* v) {
  __m512 t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i)
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0xEE));
  const __m512 r = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(idx, r);
}

// e4m3 by bit construction: the sign-extended code shifted left by 20 puts sign at bit 31 and
// exponent/mantissa at bits 26..20, i.e. an fp32 equal to the e4m3 value * 2^-120 (the
// subnormal codes land on fp32 subnormals, which is still exact); * 2^120 is exact.
inline Vec e4m3_16(__m128i codes) {
  const __m512i bits = _mm512_and_si512(_mm512_slli_epi32(_mm512_cvtepi8_epi32(codes), 20),
                                        _mm512_set1_epi32(static_cast<int>(0x87F00000u)));
  return _mm512_mul_ps(_mm512_castsi512_ps(bits), _mm512_set1_ps(0x1p120f));
}
inline void dec_fp8(const uint8_t* p, Vec& w0, Vec& w1) {
  w0 = e4m3_16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  w1 = e4m3_16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
}
inline void dec_bf16(const uint16_t* p, Vec& w0, Vec& w1) {
  w0 = _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  w1 = _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16))), 16));
}
// e2m1 values * sw (exact: sw is a power of two); vpermps reads only the low 4 index bits.
using Fp4Tab = __m512;
inline Fp4Tab fp4_tab(const float* e2m1, float sw) {
  return _mm512_mul_ps(_mm512_loadu_ps(e2m1), _mm512_set1_ps(sw));
}
// 16 bytes -> 32 nibbles in k order: widen bytes to words and OR in the word shifted by 4, so
// byte 2i has the low nibble of byte i in its low 4 bits and byte 2i+1 the high nibble.
inline void dec_fp4(const uint8_t* p, const Fp4Tab& tab, Vec& w0, Vec& w1) {
  const __m256i wd = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i nib = _mm256_or_si256(wd, _mm256_slli_epi16(wd, 4));
  w0 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(nib)), tab);
  w1 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(nib, 1)), tab);
}

#include "kernels/gemm_simd.inc"

}  // namespace

void rows_avx512(const Problem& p, int n0, int n1, float* scratch) { rows_simd(p, n0, n1, scratch); }

}  // namespace dsv4::gemm_detail
