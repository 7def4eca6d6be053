// AVX2 back end of the GEMMs (compiled with AVX2/FMA flags, run only when cpu_features says
// so). A 16-lane vector of the canonical order is a pair of ymm (lanes 0-7, 8-15); with 16
// registers, 4 lane vectors are reduced at once.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/gemm.h"

namespace dsv4::gemm_detail {
namespace {

struct Vec {
  __m256 lo, hi;
};
using Parts = __m128;
constexpr int kGroup = 4;
constexpr int kBigMR = 4, kBigNR = 1;
constexpr int kDirectRows = 4;  // rows streamed at once by the small-M folded FP8 path (= kGroup)

inline Vec vzero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline Vec vload(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline void vstore(float* p, Vec v) {
  _mm256_storeu_ps(p, v.lo);
  _mm256_storeu_ps(p + 8, v.hi);
}
inline Vec vfma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
inline Parts pzero() { return _mm_setzero_ps(); }
inline Parts pload(const float* p) { return _mm_loadu_ps(p); }
inline void pstore(float* p, Parts v) { _mm_storeu_ps(p, v); }
inline Parts pfma(Parts a, Parts b, Parts c) { return _mm_fmadd_ps(a, b, c); }

// Tree of gemm.h for 4 vectors: h = 8 is lo + hi; h = 4 pairs 128-bit halves of two vectors;
// h = 2 and h = 1 shuffle within 128-bit lanes. Ends as [A, C, A, C | B, D, B, D].
inline Parts reduce(const Vec* v) {
  const __m256 a = _mm256_add_ps(v[0].lo, v[0].hi), b = _mm256_add_ps(v[1].lo, v[1].hi);
  const __m256 c = _mm256_add_ps(v[2].lo, v[2].hi), d = _mm256_add_ps(v[3].lo, v[3].hi);
  const __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
  const __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
  const __m256 w = _mm256_add_ps(_mm256_shuffle_ps(ab, cd, 0x44), _mm256_shuffle_ps(ab, cd, 0xEE));
  const __m256 x = _mm256_add_ps(_mm256_shuffle_ps(w, w, 0x88), _mm256_shuffle_ps(w, w, 0xDD));
  return _mm_unpacklo_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
}

// e4m3 by bit construction (see gemm_avx512.cpp).
inline __m256 e4m3_8_raw(const uint8_t* p) {  // e4m3 value * 2^-120
  const __m256i c = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(c, 20), _mm256_set1_epi32(static_cast<int>(0x87F00000u))));
}
inline void dec_fp8_raw(const uint8_t* p, Vec& w0, Vec& w1) {
  w0 = {e4m3_8_raw(p), e4m3_8_raw(p + 8)};
  w1 = {e4m3_8_raw(p + 16), e4m3_8_raw(p + 24)};
}
// 32 bf16 weights as (odd, even) lane vectors: dword d holds elements 2d (low) and 2d+1 (high).
inline void dec_bf16(const uint16_t* p, Vec& w0, Vec& w1) {
  const __m256i hi_mask = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m256i d0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i d1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16));
  w0 = {_mm256_castsi256_ps(_mm256_and_si256(d0, hi_mask)), _mm256_castsi256_ps(_mm256_and_si256(d1, hi_mask))};
  w1 = {_mm256_castsi256_ps(_mm256_slli_epi32(d0, 16)), _mm256_castsi256_ps(_mm256_slli_epi32(d1, 16))};
}
inline Vec vmul(Vec a, Vec b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
inline Vec vset1(float f) { return {_mm256_set1_ps(f), _mm256_set1_ps(f)}; }

// FP4 block as in gemm_avx512.cpp, the 16 dwords split over two ymm (lanes 0-7, 8-15).
struct Fp4Blk {
  __m256i lo, hi;
  Vec scale;
};
inline __m256 e8m0_8(__m128i bytes8) {  // e8m0_to_f32 of 8 bytes
  const __m256i e = _mm256_cvtepu8_epi32(bytes8);
  __m256i bits = _mm256_slli_epi32(e, 23);
  bits = _mm256_blendv_epi8(bits, _mm256_set1_epi32(0x00400000), _mm256_cmpeq_epi32(e, _mm256_setzero_si256()));
  bits = _mm256_blendv_epi8(bits, _mm256_set1_epi32(0x7FC00000), _mm256_cmpeq_epi32(e, _mm256_set1_epi32(255)));
  return _mm256_castsi256_ps(bits);
}
// e8m0_to_f32 of 16 scale bytes as a Vec (n < 16: the rest read as 0 and are never used).
// (Not through a stack buffer: a 16-byte reload of a few bytes just stored cannot be forwarded,
// and one block's four scales are loaded for every FP4 block decoded.)
inline Vec fp4_scales16(const uint8_t* scales, int n) {
  __m128i b;
  if (n >= 16) {
    b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales));
  } else if (n == 4) {
    uint32_t u;
    std::memcpy(&u, scales, 4);
    b = _mm_cvtsi32_si128(static_cast<int>(u));
  } else {
    uint64_t half[2] = {0, 0};
    for (int i = 0; i < n; ++i) half[i / 8] |= static_cast<uint64_t>(scales[i]) << (8 * (i % 8));
    b = _mm_set_epi64x(static_cast<long long>(half[1]), static_cast<long long>(half[0]));
  }
  return {e8m0_8(b), e8m0_8(_mm_srli_si128(b, 8))};
}
// Lane scales of block j (0..3) of a 16-group run: lane d takes group 4j + d/4.
inline Vec fp4_spread(Vec s16, int j) {
  const __m256 src = j < 2 ? s16.lo : s16.hi;
  const int g = 4 * (j % 2);
  return {_mm256_permutevar8x32_ps(src, _mm256_setr_epi32(g, g, g, g, g + 1, g + 1, g + 1, g + 1)),
          _mm256_permutevar8x32_ps(src, _mm256_setr_epi32(g + 2, g + 2, g + 2, g + 2, g + 3, g + 3, g + 3, g + 3))};
}
// len < 128 only for the last block of a row: never read past the row.
template <bool kFull>
inline void fp4_blk_load_codes(const uint8_t* codes, int len, Fp4Blk& b) {
  if constexpr (kFull) {
    b.lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes));
    b.hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 32));
  } else {
    alignas(32) uint8_t buf[64] = {};
    std::memcpy(buf, codes, static_cast<size_t>(len / 2));
    b.lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(buf));
    b.hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(buf + 32));
  }
}
template <bool kFull>
inline void fp4_blk_load(const uint8_t* codes, const uint8_t* scales, int len, Fp4Blk& b) {
  fp4_blk_load_codes<kFull>(codes, len, b);
  b.scale = fp4_spread(fp4_scales16(scales, len / 32), 0);
}
// Magnitudes from the low 3 index bits (vpermps), bit 3 is the sign.
inline __m256 e2m1_8(__m256i idx) {
  const __m256 mag = _mm256_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f);
  const __m256i sign = _mm256_and_si256(_mm256_slli_epi32(idx, 28), _mm256_set1_epi32(static_cast<int>(0x80000000u)));
  return _mm256_xor_ps(_mm256_permutevar8x32_ps(mag, idx), _mm256_castsi256_ps(sign));
}
inline Vec fp4_blk_vec(const Fp4Blk& b, int t) {
  const __m128i sh = _mm_cvtsi32_si128(4 * kFp4Order[t]);
  return {e2m1_8(_mm256_srl_epi32(b.lo, sh)), e2m1_8(_mm256_srl_epi32(b.hi, sh))};
}
inline Vec fp4_blk_scale(const Fp4Blk& b) { return b.scale; }
constexpr bool kFp4Bf16Pairs = false;  // no bf16 dot product: fp32 FMAs in the same order
inline void fp4_scales_to_f32(const uint8_t*, int, float*) {}
template <bool kFull>
inline void fp4_blk_pairs(const uint8_t*, int, uint32_t*) {}
inline Vec dp_pairs(Vec acc, const uint32_t*, const uint32_t*) { return acc; }
inline void fp8_chunk_pairs(const uint8_t*, int, uint32_t*, int) {}
constexpr bool kBf16Pairs = false;
inline bool fp4_scales_plain(const uint8_t*, int) { return false; }
constexpr bool kFp4IntPairs = false;  // (no VPDPWSSD)
template <int R, bool kRawScales>
inline void fp4_rows_int(const uint8_t* const*, int, const uint32_t*, const float*, const uint8_t*, const float*,
                         const float* const*, const uint8_t* const*, Vec*, const uint8_t* const*) {}

#include "kernels/gemm_simd.inc"

}  // namespace

void rows_avx2(const Problem& p, int n0, int n1, float* scratch) { rows_simd(p, n0, n1, scratch); }

}  // namespace dsv4::gemm_detail
