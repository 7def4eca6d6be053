// exp_f32 on AVX-512: 16 floats as two vectors of 8 doubles (exp.h).
// (GCC 12 warns about the intrinsics' own undefined-vector idiom)
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cmath>

#include "kernels/exp.h"

namespace dsv4::exp_detail {
namespace {

inline __m256 exp8(__m256 x, const __m512i* tab) {
  const __m512d z = _mm512_mul_pd(_mm512_cvtps_pd(x), _mm512_set1_pd(kInvLn2N));
  __m512d kd = _mm512_add_pd(z, _mm512_set1_pd(kShift));  // k in the low bits of kd's mantissa
  const __m512i ki = _mm512_castpd_si512(kd);
  kd = _mm512_sub_pd(kd, _mm512_set1_pd(kShift));
  const __m512d r = _mm512_sub_pd(z, kd);
  // Table entry k mod 32: two 16-entry permutes, then bit 4 picks between them.
  const __m512i lo = _mm512_permutex2var_epi64(tab[0], ki, tab[1]), hi = _mm512_permutex2var_epi64(tab[2], ki, tab[3]);
  const __m512i t = _mm512_mask_blend_epi64(_mm512_test_epi64_mask(ki, _mm512_set1_epi64(16)), lo, hi);
  const __m512d s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64(ki, 47)));
  const __m512d c = _mm512_fmadd_pd(_mm512_set1_pd(kC0), r, _mm512_set1_pd(kC1));
  __m512d y = _mm512_fmadd_pd(_mm512_set1_pd(kC2), r, _mm512_set1_pd(1.0));
  y = _mm512_fmadd_pd(c, _mm512_mul_pd(r, r), y);
  return _mm512_cvtpd_ps(_mm512_mul_pd(y, s));
}

}  // namespace

void exp_avx512(const float* x, float* y, int n) {
  const __m512i tab[4] = {_mm512_load_si512(kTable), _mm512_load_si512(kTable + 8), _mm512_load_si512(kTable + 16),
                          _mm512_load_si512(kTable + 24)};
  for (int i = 0; i < n; i += 16) {
    const __mmask16 live = n - i >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(live, x + i);
    const __m512 e = _mm512_insertf32x8(_mm512_castps256_ps512(exp8(_mm512_castps512_ps256(v), tab)),
                                        exp8(_mm512_extractf32x8_ps(v, 1), tab), 1);
    _mm512_mask_storeu_ps(y + i, live, e);
    const __m512i abs_bits = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7FFFFFFF));
    __mmask16 special = _mm512_mask_cmpge_epu32_mask(live, abs_bits, _mm512_set1_epi32(static_cast<int>(kSpecialAbsBits)));
    for (; special; special &= static_cast<__mmask16>(special - 1)) {
      const int j = i + __builtin_ctz(special);
      y[j] = std::exp(x[j]);
    }
  }
}

}  // namespace dsv4::exp_detail
