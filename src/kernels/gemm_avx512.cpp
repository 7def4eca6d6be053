// AVX-512 back end of the GEMMs (compiled with AVX-512 flags, run only when cpu_features
// says so). A 16-lane vector of the canonical order is one zmm; 16 lane vectors are reduced at
// once by a transposing tree, so one reduction serves 16 outputs.
// GCC 12 flags its own _mm512_undefined_* helpers (used inside many intrinsics) as
// uninitialised; the pragma must precede the header to cover those locations.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/gemm.h"

namespace dsv4::gemm_detail {
namespace {

using Vec = __m512;
using Parts = __m512;
constexpr int kGroup = 16;
constexpr int kBigMR = 4, kBigNR = 4;

inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Parts pzero() { return _mm512_setzero_ps(); }
inline Parts pload(const float* p) { return _mm512_loadu_ps(p); }
inline void pstore(float* p, Parts v) { _mm512_storeu_ps(p, v); }
inline Parts pfma(Parts a, Parts b, Parts c) { return _mm512_fmadd_ps(a, b, c); }

// Tree of gemm.h for 16 vectors at once. Step h = 8 pairs 256-bit halves, h = 4 128-bit
// quarters, h = 2 and h = 1 elements within quarters; each add combines two vectors' data, so
// 15 adds serve all 16. The result has v[4r + j] in lane 4j + r; the last permute undoes that.
inline Parts reduce(const Vec* v) {
  __m512 t[8], u[4], w[2];
  for (int i = 0; i < 8; ++i)
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)
    w[i] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0x44),
                         _mm512_shuffle_ps(u[2 * i], u[2 * i + 1], 0xEE));
  const __m512 r = _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(idx, r);
}

// e4m3 by bit construction: the sign-extended code shifted left by 20 puts sign at bit 31 and
// exponent/mantissa at bits 26..20, i.e. an fp32 equal to the e4m3 value * 2^-120 (the
// subnormal codes land on fp32 subnormals, which is still exact); * 2^120 is exact.
inline Vec e4m3_16_raw(__m128i codes) {  // e4m3 value * 2^-120
  return _mm512_castsi512_ps(_mm512_and_si512(_mm512_slli_epi32(_mm512_cvtepi8_epi32(codes), 20),
                                              _mm512_set1_epi32(static_cast<int>(0x87F00000u))));
}
inline void dec_fp8_raw(const uint8_t* p, Vec& w0, Vec& w1) {
  w0 = e4m3_16_raw(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  w1 = e4m3_16_raw(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
}
inline void dec_fp8(const uint8_t* p, Vec& w0, Vec& w1) {
  dec_fp8_raw(p, w0, w1);
  w0 = _mm512_mul_ps(w0, _mm512_set1_ps(0x1p120f));
  w1 = _mm512_mul_ps(w1, _mm512_set1_ps(0x1p120f));
}
inline void dec_bf16(const uint16_t* p, Vec& w0, Vec& w1) {
  w0 = _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  w1 = _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16))), 16));
}
inline Vec vmul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }

// FP4 block (gemm.h): the 64 code bytes as 16 dwords; dword d holds elements 8d .. 8d+7 as
// nibbles, so lane vector t is nibble t of every dword (vpermps reads the low 4 index bits).
struct Fp4Blk {
  __m512i dw;
  Vec scale;
};
// len < 128 only for the last block of a row: never read past the row.
template <bool kFull>
inline void fp4_blk_load(const uint8_t* codes, const uint8_t* scales, int len, Fp4Blk& b) {
  uint32_t s4 = 0;
  if constexpr (kFull) {
    b.dw = _mm512_loadu_si512(codes);
    std::memcpy(&s4, scales, 4);
  } else {
    b.dw = _mm512_maskz_loadu_epi8((uint64_t{1} << (len / 2)) - 1, codes);
    std::memcpy(&s4, scales, static_cast<size_t>(len / 32));
  }
  const __m128i spread = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i e = _mm512_cvtepu8_epi32(_mm_shuffle_epi8(_mm_cvtsi32_si128(static_cast<int>(s4)), spread));
  __m512i bits = _mm512_slli_epi32(e, 23);  // 2^(e-127) for e in 1..254; e8m0_to_f32 for 0 and 255:
  bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(e, _mm512_setzero_si512()), _mm512_set1_epi32(0x00400000));
  bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(e, _mm512_set1_epi32(255)), _mm512_set1_epi32(0x7FC00000));
  b.scale = _mm512_castsi512_ps(bits);
}
inline Vec fp4_blk_vec(const Fp4Blk& b, int t) {
  const __m512 tab = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f, -1.5f, -2.0f,
                                    -3.0f, -4.0f, -6.0f);
  return _mm512_permutexvar_ps(t == 0 ? b.dw : _mm512_srli_epi32(b.dw, static_cast<unsigned>(4 * t)), tab);
}
inline Vec fp4_blk_scale(const Fp4Blk& b) { return b.scale; }

#include "kernels/gemm_simd.inc"

}  // namespace

void rows_avx512(const Problem& p, int n0, int n1, float* scratch) { rows_simd(p, n0, n1, scratch); }

}  // namespace dsv4::gemm_detail
