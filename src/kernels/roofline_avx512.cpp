// GCC 12 flags its own _mm512_undefined_* helpers inside intrinsics as uninitialised.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "kernels/roofline.h"

namespace dsv4::roofline_detail {

// 10 independent FMA chains hide the FMA latency on two FMA ports.
double fma_loop_avx512(long iters, float* sink) {
  __m512 a0 = _mm512_set1_ps(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0;
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (long i = 0; i < iters; ++i) {
    a0 = _mm512_fmadd_ps(a0, m, c); a1 = _mm512_fmadd_ps(a1, m, c); a2 = _mm512_fmadd_ps(a2, m, c);
    a3 = _mm512_fmadd_ps(a3, m, c); a4 = _mm512_fmadd_ps(a4, m, c); a5 = _mm512_fmadd_ps(a5, m, c);
    a6 = _mm512_fmadd_ps(a6, m, c); a7 = _mm512_fmadd_ps(a7, m, c); a8 = _mm512_fmadd_ps(a8, m, c);
    a9 = _mm512_fmadd_ps(a9, m, c);
  }
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                           _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(_mm512_add_ps(a6, a7), _mm512_add_ps(a8, a9))));
  *sink = _mm512_reduce_add_ps(s);
  return 2.0 * 16 * 10 * static_cast<double>(iters);
}

// 16 independent VDPBF16PS chains: enough to cover its latency on two pipes.
double dpbf16_loop_avx512(long iters, float* sink) {
  __m512 a[16];
  for (auto& v : a) v = _mm512_setzero_ps();
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3F803F80), y = (__m512bh)_mm512_set1_epi32(0x33803380);
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) a[j] = _mm512_dpbf16_ps(a[j], x, y);
  }
  for (int j = 1; j < 16; ++j) a[0] = _mm512_add_ps(a[0], a[j]);
  *sink = _mm512_reduce_add_ps(a[0]);
  return 2.0 * 32 * 16 * static_cast<double>(iters);
}

// XOR of all 8-byte words of [p, p + len) (len a multiple of 512): eight independent loads in
// flight per iteration, nothing but the loads on the critical path.
uint64_t read_xor_avx512(const uint8_t* p, size_t len) {
  __m512i x[8];
  for (auto& v : x) v = _mm512_setzero_si512();
  for (size_t i = 0; i < len; i += 512)
    for (int j = 0; j < 8; ++j) x[j] = _mm512_xor_si512(x[j], _mm512_loadu_si512(p + i + 64 * j));
  for (int j = 1; j < 8; ++j) x[0] = _mm512_xor_si512(x[0], x[j]);
  alignas(64) uint64_t q[8];
  _mm512_store_si512(q, x[0]);
  return q[0] ^ q[1] ^ q[2] ^ q[3] ^ q[4] ^ q[5] ^ q[6] ^ q[7];
}

}  // namespace dsv4::roofline_detail
