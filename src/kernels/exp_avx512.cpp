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

using VF = __m256;
using VD = __m512d;
// Unsigned: the table step's integer add wraps by design (a signed vector add would be UB).
typedef unsigned long long VI __attribute__((vector_size(64)));
struct Tab {
  __m512i part[4];  // the table, 8 entries each
};
inline VD to_d(VF x) { return _mm512_cvtps_pd(x); }
inline VF to_f(VD x) { return _mm512_cvtpd_ps(x); }
inline VD fma_d(VD a, VD b, VD c) { return _mm512_fmadd_pd(a, b, c); }
// Entry k mod 32: two 16-entry permutes, then bit 4 picks between them.
inline VI table_at(VI ki, const Tab& tab) {
  const __m512i k = (__m512i)ki;
  const __m512i lo = _mm512_permutex2var_epi64(tab.part[0], k, tab.part[1]);
  const __m512i hi = _mm512_permutex2var_epi64(tab.part[2], k, tab.part[3]);
  return (VI)_mm512_mask_blend_epi64(_mm512_test_epi64_mask(k, _mm512_set1_epi64(16)), lo, hi);
}
#include "kernels/exp_simd.inc"

}  // namespace

void exp_avx512(const float* x, float* y, int n) {
  const Tab tab{{_mm512_load_si512(kTable), _mm512_load_si512(kTable + 8), _mm512_load_si512(kTable + 16),
                 _mm512_load_si512(kTable + 24)}};
  for (int i = 0; i < n; i += 16) {
    const __mmask16 live = n - i >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(live, x + i);
    const __m512 e = _mm512_insertf32x8(_mm512_castps256_ps512(exp_lanes(_mm512_castps512_ps256(v), tab)),
                                        exp_lanes(_mm512_extractf32x8_ps(v, 1), tab), 1);
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
