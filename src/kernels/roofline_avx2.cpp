#include <immintrin.h>

#include <cstdint>

#include "kernels/roofline.h"

namespace dsv4::roofline_detail {

// 10 independent FMA chains hide the FMA latency on two FMA ports.
double fma_loop_avx2(long iters, float* sink) {
  __m256 a0 = _mm256_set1_ps(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (long i = 0; i < iters; ++i) {
    a0 = _mm256_fmadd_ps(a0, m, c); a1 = _mm256_fmadd_ps(a1, m, c); a2 = _mm256_fmadd_ps(a2, m, c);
    a3 = _mm256_fmadd_ps(a3, m, c); a4 = _mm256_fmadd_ps(a4, m, c); a5 = _mm256_fmadd_ps(a5, m, c);
    a6 = _mm256_fmadd_ps(a6, m, c); a7 = _mm256_fmadd_ps(a7, m, c); a8 = _mm256_fmadd_ps(a8, m, c);
    a9 = _mm256_fmadd_ps(a9, m, c);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(_mm256_add_ps(a6, a7), _mm256_add_ps(a8, a9))));
  alignas(32) float out[8];
  _mm256_store_ps(out, s);
  *sink = out[0];
  return 2.0 * 8 * 10 * static_cast<double>(iters);
}

// As read_xor_avx512 with 32-byte loads.
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
