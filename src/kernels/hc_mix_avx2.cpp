// AVX2 hc_mix_tokens (see hc_mix.h): 8 tokens per vector, 8 rows per pass (16 registers).
#include <immintrin.h>

#include "kernels/hc_mix.h"

namespace dsv4::hc_mix_detail {
namespace {
constexpr int kW = 8, kMaxRows = 8;
using Idx = __m256i;
inline Idx idx_of(const int* offs) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(offs)); }
inline __m256 gather(const float* base, Idx idx) { return _mm256_i32gather_ps(base, idx, 4); }
#include "kernels/hc_mix_simd.inc"
}  // namespace

void post_avx2(const float* f, const float* post, const float* comb, float* h, int hc, int D, int d0, int d1) {
  if (hc == 4)
    post_simd<4>(f, post, comb, h, hc, D, d0, d1);
  else
    post_simd<0>(f, post, comb, h, hc, D, d0, d1);
}

void tokens_avx2(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix) {
  tokens_simd(fn, rows, HD, x, tokens, ss, mix);
}

}  // namespace dsv4::hc_mix_detail
