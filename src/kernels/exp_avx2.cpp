// exp_f32 on AVX2: 8 floats as two vectors of 4 doubles (exp.h).
#include <immintrin.h>

#include <cmath>

#include "kernels/exp.h"

namespace dsv4::exp_detail {
namespace {

inline __m128 exp4(__m128 x) {
  const __m256d z = _mm256_mul_pd(_mm256_cvtps_pd(x), _mm256_set1_pd(kInvLn2N));
  __m256d kd = _mm256_add_pd(z, _mm256_set1_pd(kShift));
  const __m256i ki = _mm256_castpd_si256(kd);
  kd = _mm256_sub_pd(kd, _mm256_set1_pd(kShift));
  const __m256d r = _mm256_sub_pd(z, kd);
  const __m256i t = _mm256_i64gather_epi64(reinterpret_cast<const long long*>(kTable),
                                           _mm256_and_si256(ki, _mm256_set1_epi64x(31)), 8);
  const __m256d s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64(ki, 47)));
  const __m256d c = _mm256_fmadd_pd(_mm256_set1_pd(kC0), r, _mm256_set1_pd(kC1));
  __m256d y = _mm256_fmadd_pd(_mm256_set1_pd(kC2), r, _mm256_set1_pd(1.0));
  y = _mm256_fmadd_pd(c, _mm256_mul_pd(r, r), y);
  return _mm256_cvtpd_ps(_mm256_mul_pd(y, s));
}

}  // namespace

void exp_avx2(const float* x, float* y, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(y + i, _mm256_set_m128(exp4(_mm256_extractf128_ps(v, 1)), exp4(_mm256_castps256_ps128(v))));
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
