// AVX2 hc_mix_tokens (see hc_mix.h): 8 tokens per vector, 8 rows per pass (16 registers).
#include <immintrin.h>

#include "kernels/hc_mix.h"
#include "kernels/isa_local.h"

namespace dsv4::hc_mix_detail {
namespace {
constexpr int kW = 8, kMaxRows = 8;
using Idx = __m256i;
inline Idx idx_of(const int* offs) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(offs)); }
inline __m256 gather(const float* base, Idx idx) { return _mm256_i32gather_ps(base, idx, 4); }
typedef float V __attribute__((vector_size(32)));
// col[k] lane r = rows[r][i + k], k, r < 8: unpacks and in-lane shuffles leave column 4L + m of
// rows 4q .. 4q + 3 in 128-bit lane L of u[4q + m]; one 128-bit lane exchange pairs them.
inline void transpose_block(const float* const* rows, int i, V* col) {
  __m256 t[8], u[8];
  for (int q = 0; q < 4; ++q) {
    const __m256 a = _mm256_loadu_ps(rows[2 * q] + i), b = _mm256_loadu_ps(rows[2 * q + 1] + i);
    t[2 * q] = _mm256_unpacklo_ps(a, b);
    t[2 * q + 1] = _mm256_unpackhi_ps(a, b);
  }
  for (int q = 0; q < 2; ++q) {
    u[4 * q] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
    u[4 * q + 1] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0xEE);
    u[4 * q + 2] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    u[4 * q + 3] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xEE);
  }
  for (int m = 0; m < 4; ++m) {
    col[m] = (V)_mm256_permute2f128_ps(u[m], u[4 + m], 0x20);
    col[4 + m] = (V)_mm256_permute2f128_ps(u[m], u[4 + m], 0x31);
  }
}
#include "kernels/hc_mix_simd.inc"
}  // namespace

void post_avx2(const float* f, const float* post, const float* comb, float* h, int hc, int D, int d0, int d1) {
  if (hc == 4)
    post_simd<4>(f, post, comb, h, hc, D, d0, d1);
  else
    post_simd<0>(f, post, comb, h, hc, D, d0, d1);
}

void chains_avx2(const float* const* src, int n, int HD, const float* x, float* out) {
  chains_simd(src, n, HD, x, out);
}

void tokens_avx2(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix) {
  tokens_simd(fn, rows, HD, x, tokens, ss, mix);
}

}  // namespace dsv4::hc_mix_detail
