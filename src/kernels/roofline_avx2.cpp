#include <immintrin.h>

#include <cstdint>

#include "kernels/roofline.h"

namespace dsv4::roofline_detail {

double fma_loop_avx2(long iters, const float* seeds, float* out) {
  __m256 a[kFmaChains];
  for (int j = 0; j < kFmaChains; ++j) a[j] = _mm256_set1_ps(seeds[j]);
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < kFmaChains; ++j) a[j] = _mm256_fmadd_ps(a[j], m, c);
  }
  for (int j = 0; j < kFmaChains; ++j) out[j] = _mm256_cvtss_f32(a[j]);
  return 2.0 * 8 * kFmaChains * static_cast<double>(iters);
}

uint64_t read_xor_avx2(const uint8_t* p, size_t len) {
  __m256i x[8];
  for (auto& v : x) v = _mm256_setzero_si256();
  for (size_t i = 0; i < len; i += 256)
    for (int j = 0; j < 8; ++j) x[j] = _mm256_xor_si256(x[j], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32 * j)));
  for (int j = 1; j < 8; ++j) x[0] = _mm256_xor_si256(x[0], x[j]);
  return static_cast<uint64_t>(_mm256_extract_epi64(x[0], 0) ^ _mm256_extract_epi64(x[0], 1) ^
                               _mm256_extract_epi64(x[0], 2) ^ _mm256_extract_epi64(x[0], 3));
}

}  // namespace dsv4::roofline_detail
