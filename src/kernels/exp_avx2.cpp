// exp_f32 on AVX2: 8 floats as two vectors of 4 doubles (exp.h).
#include <immintrin.h>

#include <cmath>

#include "kernels/exp.h"

namespace dsv4::exp_detail {
namespace {

using VF = __m128;
using VD = __m256d;
// Unsigned: the table step's integer add wraps by design (a signed vector add would be UB).
typedef unsigned long long VI __attribute__((vector_size(32)));
struct Tab {};  // (gathered from kTable)
inline VD to_d(VF x) { return _mm256_cvtps_pd(x); }
inline VF to_f(VD x) { return _mm256_cvtpd_ps(x); }
inline VD fma_d(VD a, VD b, VD c) { return _mm256_fmadd_pd(a, b, c); }
inline VI table_at(VI ki, const Tab&) {
  return (VI)_mm256_i64gather_epi64(reinterpret_cast<const long long*>(kTable), _mm256_and_si256((__m256i)ki, _mm256_set1_epi64x(31)), 8);
}
#include "kernels/exp_simd.inc"

}  // namespace

void exp_avx2(const float* x, float* y, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(y + i, _mm256_set_m128(exp_lanes(_mm256_extractf128_ps(v, 1), Tab{}), exp_lanes(_mm256_castps256_ps128(v), Tab{})));
    const __m256i abs_bits = _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7FFFFFFF));
    // (the absolute bits are below 2^31: a signed compare orders them)
    int special = _mm256_movemask_ps(_mm256_castsi256_ps(
        _mm256_cmpgt_epi32(abs_bits, _mm256_set1_epi32(static_cast<int>(kSpecialAbsBits) - 1))));
    for (; special; special &= special - 1) {
      const int j = i + __builtin_ctz(static_cast<unsigned>(special));
      y[j] = std::exp(x[j]);
    }
  }
  for (; i < n; ++i) y[i] = std::exp(x[i]);  // (the last few: as the scalar path)
}

}  // namespace dsv4::exp_detail
