// AVX-512 act_quant of whole rows (see act_quant.h): one 128-block is 8 zmm. The operations are
// act_quant_block's (numerics.cpp), lane by lane: the same integer amax, scale, multiply,
// clamp and e4m3 rounding by bit construction, so the values are identical.
// GCC 12 flags its own _mm512_undefined_* helpers (used inside many intrinsics) as
// uninitialised; the pragma must precede the header to cover those locations.
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__  // (a GCC-only warning group; clang reports it unknown)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>

#include "kernels/act_quant.h"
#include "kernels/numerics.h"

namespace dsv4::act_quant_detail {

// Bit casts are __builtin_bit_cast, not numerics.h's inline helpers: an out-of-line copy of
// those compiled here with AVX-512 flags could be picked by the linker for baseline code.
namespace {
// round_to_e4m3_clamped (numerics.cpp) of 16 lanes.
inline __m512 round_e4m3(__m512 x) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i sign = _mm512_and_si512(u, _mm512_set1_epi32(static_cast<int>(0x80000000u)));
  const __m512i a = _mm512_xor_si512(u, sign);
  // >= 2^-6: keep 3 mantissa bits, half to even, at most 448.
  __m512i normal = _mm512_add_epi32(_mm512_add_epi32(a, _mm512_set1_epi32(0x7FFFF)),
                                    _mm512_and_si512(_mm512_srli_epi32(a, 20), _mm512_set1_epi32(1)));
  normal = _mm512_and_si512(normal, _mm512_set1_epi32(static_cast<int>(0xFFF00000u)));
  normal = _mm512_min_epu32(normal, _mm512_set1_epi32(0x43E00000));
  // Below: the subnormal grid 2^-9 by adding and removing 1.5 * 2^14.
  const __m512 big = _mm512_set1_ps(0x1.8p14f);
  const __m512i sub = _mm512_castps_si512(_mm512_sub_ps(_mm512_add_ps(_mm512_castsi512_ps(a), big), big));
  const __mmask16 is_normal = _mm512_cmpge_epu32_mask(a, _mm512_set1_epi32(0x3C800000));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_mask_blend_epi32(is_normal, sub, normal), sign));
}
}  // namespace

void quantize_row_dequantized_avx512(const float* x, int K, float* out) {
  for (int k0 = 0; k0 < K; k0 += 128) {
    const int len = K - k0 < 128 ? K - k0 : 128;
    __m512 v[8];
    __mmask16 live[8];
    __m512i amax = _mm512_set1_epi32(static_cast<int>(__builtin_bit_cast(uint32_t, kActQuantAmaxFloor)));
    for (int j = 0; j < 8; ++j) {
      const int n = len - 16 * j;
      live[j] = n >= 16 ? __mmask16{0xFFFF} : n <= 0 ? __mmask16{0} : static_cast<__mmask16>((1u << n) - 1);
      v[j] = _mm512_maskz_loadu_ps(live[j], x + k0 + 16 * j);  // zeros never raise the amax
      amax = _mm512_max_epu32(amax, _mm512_and_si512(_mm512_castps_si512(v[j]), _mm512_set1_epi32(0x7FFFFFFF)));
    }
    // s = pow2ceil(amax / 448); 1/s a normal power of two, i.e. exponent <= 126, is the usual
    // case; anything else (an inf or NaN in the block) takes the scalar code.
    const uint32_t p = __builtin_bit_cast(uint32_t, __builtin_bit_cast(float, _mm512_reduce_max_epu32(amax)) * (1.0f / kFp8Max));
    const int e = static_cast<int>((p >> 23) & 0xFF) - 127 + ((p & 0x7FFFFFu) != 0 ? 1 : 0);
    if (e > 126) {
      quantize_row_dequantized_scalar(x + k0, len, out + k0);
      continue;
    }
    const __m512 s = _mm512_set1_ps(__builtin_bit_cast(float, static_cast<uint32_t>(e + 127) << 23));
    const __m512 inv = _mm512_set1_ps(__builtin_bit_cast(float, static_cast<uint32_t>(127 - e) << 23));
    for (int j = 0; j < 8 && live[j]; ++j) {
      // std::clamp(x * inv, -448, 448), a NaN passing through (min/max return their second
      // operand when one is NaN).
      __m512 t = _mm512_mul_ps(v[j], inv);
      t = _mm512_max_ps(_mm512_set1_ps(-kFp8Max), _mm512_min_ps(_mm512_set1_ps(kFp8Max), t));
      _mm512_mask_storeu_ps(out + k0 + 16 * j, live[j], _mm512_mul_ps(round_e4m3(t), s));
    }
  }
}

}  // namespace dsv4::act_quant_detail
