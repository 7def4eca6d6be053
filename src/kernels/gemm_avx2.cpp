// AVX2 back end of the GEMMs (compiled with AVX2/FMA flags, run only when cpu_features says
// so). A 16-lane vector of the canonical order is a pair of ymm (lanes 0-7, 8-15); with 16
// registers, 4 lane vectors are reduced at once.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/gemm.h"
#include "kernels/isa_local.h"
#include "kernels/numerics.h"

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
inline void pstore(float* p, Parts v) { _mm_storeu_ps(p, v); }

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

// e4m3 by bit construction (see gemm_avx512.cpp), value * 2^-120, 16 weights at once: byte d goes to the high byte of dword d, byte 8 + d to the high byte of
// its low word; one arithmetic 16-bit shift puts both in e4m3-in-fp32 position (sign at the
// top, the other bits at 26..20 of their dword once the low word moves up).
inline Vec e4m3_16_raw(const uint8_t* p) {
  const __m256i place = _mm256_setr_epi8(-128, 8, -128, 0, -128, 9, -128, 1, -128, 10, -128, 2, -128, 11, -128, 3, -128,
                                         12, -128, 4, -128, 13, -128, 5, -128, 14, -128, 6, -128, 15, -128, 7);
  const __m256i mask = _mm256_set1_epi32(static_cast<int>(0x87F00000u));
  const __m256i bytes = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i y = _mm256_srai_epi16(_mm256_shuffle_epi8(bytes, place), 4);
  return {_mm256_castsi256_ps(_mm256_and_si256(y, mask)), _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(y, 16), mask))};
}
inline void dec_fp8_raw(const uint8_t* p, Vec& w0, Vec& w1) {
  w0 = e4m3_16_raw(p);
  w1 = e4m3_16_raw(p + 16);
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
inline Vec vadd(Vec a, Vec b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
inline Vec vfold_add(Vec lanes, Vec slots) { return {_mm256_add_ps(lanes.lo, _mm256_add_ps(slots.lo, slots.hi)), lanes.hi}; }
inline Vec vfold_pair_add(Vec packed, Vec x, Vec y) {
  return {_mm256_add_ps(packed.lo, _mm256_add_ps(x.lo, x.hi)), _mm256_add_ps(packed.hi, _mm256_add_ps(y.lo, y.hi))};
}
inline void vunpack_pair(Vec packed, Vec& x, Vec& y) {
  x = {packed.lo, _mm256_setzero_ps()};
  y = {packed.hi, _mm256_setzero_ps()};
}
#include "kernels/gemm_fp4_pairs.inc"

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
// A group's scales in fp32 (e8m0_to_f32 of every byte, 0 and 255 included), for fp4_rows_int
// when some byte is not plain (fp4_scales_plain).
inline void fp4_scales_to_f32(const uint8_t* scales, int n, float* out) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t eight;
    std::memcpy(&eight, scales + i, 8);
    _mm256_storeu_ps(out + i, e8m0_8(_mm_cvtsi64_si128(static_cast<long long>(eight))));
  }
  for (; i < n; ++i) out[i] = e8m0_to_f32(scales[i]);
}
template <bool kFull, bool kInt = false>
inline void fp4_blk_pairs(const uint8_t*, int, uint32_t*) {}
template <bool kFull>
inline void fp4_blk_pairs_scaled(const uint8_t*, const uint8_t*, int, uint32_t*) {}
inline Vec dp_pairs(Vec acc, const uint32_t*, const uint32_t*) { return acc; }
using PairVec = int;
inline PairVec pairs_load(const uint32_t*) { return 0; }
inline PairVec pairs_load_held(const uint32_t*) { return 0; }
inline Vec dp_pairs_reg(Vec acc, PairVec, PairVec) { return acc; }
constexpr bool kFp4IntTiles = false;  // (M >= 4 in integers: AVX-512 only)
using IVec = Vec;
inline IVec ivzero() { return vzero(); }
inline IVec dp_ints(IVec acc, const uint32_t*, const uint32_t*) { return acc; }
inline Vec int_part(IVec x, Vec) { return x; }
inline Vec fp4_part_from_ints(const uint32_t*, const float*) { return vzero(); }
inline void fp8_chunk_pairs(const uint8_t*, int, uint32_t*, int) {}
constexpr bool kBf16Pairs = false;
struct RowPrefetch;
constexpr bool kFp8Gfni = false;  // (an AVX-512 form; declared only, never instantiated here)
template <int R, int MR = 1>
void fp8_rows_gfni(const uint8_t* const* w, int full, const float* const* a, const uint8_t* scales, const float* e8m0,
                   Vec* v, Vec* lanes, const RowPrefetch& ahead);
template <int R, int MR = 1>
void fp8_rows_pairs(const uint8_t* const* w, int full, const uint32_t* const* ap, const uint8_t* scales, Vec* v,
                    Vec* lanes, const RowPrefetch& ahead);
// True when every scale byte is in 1..254, whose e8m0 values are the normal floats e << 23
// (fp4_lane_scales builds them from the bytes in two instructions per 8 lanes).
inline bool fp4_scales_plain(const uint8_t* scales, int n) {
  __m256i lo = _mm256_set1_epi8(static_cast<char>(255)), hi = _mm256_setzero_si256();
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i e = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + i));
    lo = _mm256_min_epu8(lo, e);
    hi = _mm256_max_epu8(hi, e);
  }
  bool plain = _mm256_movemask_epi8(_mm256_cmpeq_epi8(lo, _mm256_setzero_si256())) == 0 &&
               _mm256_movemask_epi8(_mm256_cmpeq_epi8(hi, _mm256_set1_epi8(static_cast<char>(255)))) == 0;
  for (; i < n; ++i) plain = plain && scales[i] != 0 && scales[i] != 255;
  return plain;
}
// Lane scales of a row's block b (lane d: group 4b + d/4). Plain bytes: the block's four bytes in
// every dword, one byte shuffle puts group byte g into byte 2 of its lanes' dwords (the rest 0)
// and a 16-bit shift by 7 makes each dword e << 23, e8m0_to_f32's value. Otherwise from the
// scales converted to fp32 first (fp4_scales_to_f32).
template <bool kRawScales>
inline Vec fp4_lane_scales(const uint8_t* raw, const float* f32, int b) {
  if constexpr (kRawScales) {
    uint32_t four;
    std::memcpy(&four, raw + 4 * b, 4);
    const __m256i s = _mm256_set1_epi32(static_cast<int>(four));
    constexpr char z = -128;
    const __m256i lo = _mm256_setr_epi8(z, z, 0, z, z, z, 0, z, z, z, 0, z, z, z, 0, z, z, z, 1, z, z, z, 1, z, z, z, 1, z, z, z, 1, z);
    const __m256i hi = _mm256_setr_epi8(z, z, 2, z, z, z, 2, z, z, z, 2, z, z, z, 2, z, z, z, 3, z, z, z, 3, z, z, z, 3, z, z, z, 3, z);
    return {_mm256_castsi256_ps(_mm256_slli_epi16(_mm256_shuffle_epi8(s, lo), 7)),
            _mm256_castsi256_ps(_mm256_slli_epi16(_mm256_shuffle_epi8(s, hi), 7))};
  } else {
    const __m256 s = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(f32 + 4 * b));
    return {_mm256_permutevar8x32_ps(s, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)),
            _mm256_permutevar8x32_ps(s, _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3))};
  }
}
// Small-M FP4 in integers (gemm.h, fp4_int_activations) through VPMADDWD: per 32 code bytes the
// doubled e2m1 values as int8 from a byte table, each moved into the high byte of its int16 word
// (so the weights enter times 256, and the units times 2^-8), in the a_pairs layout: dword d of
// vector u holds (element 8d+u, element 8d+4+u), i.e. bytes 4d + u/2 and 4d + 2 + u/2 of the low
// (u even) or high (u odd) nibbles.
constexpr bool kFp4IntPairs = true;
constexpr int kFp4IntRows = 1;  // (Zen 3, one thread, weights in L3: 12.4 GB/s against 11.2 with 2 rows)
constexpr bool kFp4PagedPasses = false;  // (rows_direct_fp4: measured no faster here, 4-row groups)
inline void fp4_int_words(__m256i codes, __m256i* w) {
  const __m256i tab = _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12, 0, 1, 2, 3, 4, 6, 8, 12, 0,
                                       -1, -2, -3, -4, -6, -8, -12);
  const __m256i nib = _mm256_set1_epi8(0x0F);
  const __m256i lo = _mm256_shuffle_epi8(tab, _mm256_and_si256(codes, nib));
  const __m256i hi = _mm256_shuffle_epi8(tab, _mm256_and_si256(_mm256_srli_epi16(codes, 4), nib));
  // Bytes 4d, 4d+2 into the high bytes of words 2d, 2d+1 (a shift), and bytes 4d+1, 4d+3 (a
  // mask): plain integer ops, which run on more ports than byte shuffles.
  const __m256i high = _mm256_set1_epi16(static_cast<short>(0xFF00));
  w[0] = _mm256_slli_epi16(lo, 8);
  w[1] = _mm256_slli_epi16(hi, 8);
  w[2] = _mm256_and_si256(lo, high);
  w[3] = _mm256_and_si256(hi, high);
}
// Block b of R rows, kOdd its parity (the loop runs by block pairs: the evens stay in registers).
// kTwo: the activation row has two-plane blocks (gemm.h), whose high planes' sums `hparts` holds
// (fp4_rows_int): their low planes sum here like a one-plane block, the high sum joins by FMA.
template <int R, bool kRawScales, bool kTwo, bool kOdd>
[[gnu::always_inline]] inline void fp4_int_block(const uint8_t* const* codes, int b, const uint32_t* words, const Vec* hparts,
                                                 const float* unit, const uint8_t* ok, const float* a,
                                                 const float* const* scales_f32, const uint8_t* const* scales_raw,
                                                 Vec* evens, Vec* lanes, const uint8_t* const* next, const uint8_t* const* far) {
  for (int j = 0; j < R; ++j) _mm_prefetch(reinterpret_cast<const char*>(next[j] + 64 * b), _MM_HINT_T0);
  for (int j = 0; j < R; ++j) _mm_prefetch(reinterpret_cast<const char*>(far[j] + 64 * b), _MM_HINT_T1);
  if (ok[b]) {
    const Vec un = kTwo ? vload(unit + 16 * b) : vmul(vload(unit + 16 * b), vset1(0x1p-8f));  // (normal: u >= 2^-117)
    for (int j = 0; j < R; ++j) {
      __m256i w0[4], w1[4];
      fp4_int_words(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes[j] + 64 * b)), w0);
      fp4_int_words(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes[j] + 64 * b + 32)), w1);
      const __m256i* av = reinterpret_cast<const __m256i*>(words + 64 * b);
      __m256i x0 = _mm256_madd_epi16(w0[0], _mm256_loadu_si256(av)), x1 = _mm256_madd_epi16(w1[0], _mm256_loadu_si256(av + 1));
      for (int u = 1; u < 4; ++u) {
        x0 = _mm256_add_epi32(x0, _mm256_madd_epi16(w0[u], _mm256_loadu_si256(av + 2 * u)));
        x1 = _mm256_add_epi32(x1, _mm256_madd_epi16(w1[u], _mm256_loadu_si256(av + 2 * u + 1)));
      }
      Vec part;
      if constexpr (kTwo) {
        // The integer sum n w = x_l / 256 + 2^15 sum h w (exact: below 2^24; the high sum is 0 in
        // one-plane blocks), then times u / 2 as a one-plane sum. (Each half times u / 2 first
        // could overflow where the whole does not.) No branch on the block's form: as fast as a
        // one-plane block's multiply by u / 512.
        static_assert(R == 1, "one row of high sums");
        const Vec h = hparts[b];
        const __m256 eighth = _mm256_set1_ps(0x1p-8f);
        part = {_mm256_mul_ps(_mm256_fmadd_ps(_mm256_cvtepi32_ps(x0), eighth, h.lo), un.lo),
                _mm256_mul_ps(_mm256_fmadd_ps(_mm256_cvtepi32_ps(x1), eighth, h.hi), un.hi)};
      } else {
        part = {_mm256_mul_ps(_mm256_cvtepi32_ps(x0), un.lo), _mm256_mul_ps(_mm256_cvtepi32_ps(x1), un.hi)};
      }
      fp4_pair_add<kOdd>(part, fp4_lane_scales<kRawScales>(scales_raw[j], scales_f32[j], b), evens[j], lanes[j]);
    }
  } else {
    for (int j = 0; j < R; ++j) {
      Fp4Blk c;
      fp4_blk_load_codes<true>(codes[j] + 64 * b, 128, c);
      Vec part = vzero();
      for (int t = 0; t < 8; ++t) part = vfma(vload(a + 128 * b + 16 * t), fp4_blk_vec(c, t), part);
      fp4_pair_add<kOdd>(part, fp4_lane_scales<kRawScales>(scales_raw[j], scales_f32[j], b), evens[j], lanes[j]);
    }
  }
}
// As in gemm_avx512.cpp (R rows, blocks without an integer form through the fp32 chain): the
// full blocks of R rows, by pairs. (The byte form is AVX-512's only: the GEMMs never give this
// path its corrections.) kTwo: the activation row has two-plane blocks, `two` lists them (gemm.h).
// Their high planes go first, in a loop of their own, into 2^15 sum h w (exact); the block loop
// adds each to its low planes' sum. (Inline in the block loop, the two-plane
// code's registers cost the one-plane blocks 8-10 %: GCC reloaded the loop's constants.)
constexpr bool kFp4TwoPlanes = true;
template <int R, bool kRawScales, bool kTwo>
inline void fp4_rows_int(const uint8_t* const* codes, int full, const uint32_t* words, const uint32_t* high,
                         const uint8_t* two, int n_two, Vec* hparts, const float* unit, const float* /*corr*/, const uint8_t* ok,
                         const float* a, const float* const* scales_f32, const uint8_t* const* scales_raw, Vec* evens_io,
                         Vec* lanes_io, const uint8_t* const* next, const uint8_t* const* far,
                         bool /*ahead: AVX-512's in-row prefetch (its rows are one per pass here)*/) {
  if constexpr (kTwo) {
    const __m256 h_scale = _mm256_set1_ps(0x1p7f);  // x_h = 256 sum h w
    for (int i = 0; i < n_two; ++i) {
      const int b = two[i];
      const __m256i* hv = reinterpret_cast<const __m256i*>(high + 64 * b);
      __m256i w0[4], w1[4];
      fp4_int_words(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes[0] + 64 * b)), w0);
      fp4_int_words(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes[0] + 64 * b + 32)), w1);
      __m256i x0 = _mm256_madd_epi16(w0[0], _mm256_loadu_si256(hv)), x1 = _mm256_madd_epi16(w1[0], _mm256_loadu_si256(hv + 1));
      for (int u = 1; u < 4; ++u) {
        x0 = _mm256_add_epi32(x0, _mm256_madd_epi16(w0[u], _mm256_loadu_si256(hv + 2 * u)));
        x1 = _mm256_add_epi32(x1, _mm256_madd_epi16(w1[u], _mm256_loadu_si256(hv + 2 * u + 1)));
      }
      hparts[b] = {_mm256_mul_ps(_mm256_cvtepi32_ps(x0), h_scale), _mm256_mul_ps(_mm256_cvtepi32_ps(x1), h_scale)};
    }
  }
  // Local copies: stores through the callers' pointers could alias the code bytes, which would
  // keep the partials in memory.
  Vec evens[R], lanes[R];
  for (int j = 0; j < R; ++j) {
    evens[j] = evens_io[j];
    lanes[j] = lanes_io[j];
  }
  int b = 0;
  for (; b + 2 <= full; b += 2) {
    fp4_int_block<R, kRawScales, kTwo, false>(codes, b, words, hparts, unit, ok, a, scales_f32, scales_raw, evens, lanes, next, far);
    fp4_int_block<R, kRawScales, kTwo, true>(codes, b + 1, words, hparts, unit, ok, a, scales_f32, scales_raw, evens, lanes, next, far);
  }
  if (b < full)
    fp4_int_block<R, kRawScales, kTwo, false>(codes, b, words, hparts, unit, ok, a, scales_f32, scales_raw, evens, lanes, next, far);
  for (int j = 0; j < R; ++j) {
    evens_io[j] = evens[j];
    lanes_io[j] = lanes[j];
  }
}

constexpr bool kBcastTiles = true;  // (gemm_simd.inc: fp8_bcast_tiles, fp4_bcast_tiles)
#include "kernels/gemm_simd.inc"

}  // namespace

void rows_avx2(const Problem& p, int n0, int n1, float* scratch) { rows_simd(p, n0, n1, scratch); }

// fp4_int_activations (gemm.cpp), 8 lanes per pass (see the AVX-512 version). A lane's bits:
// the largest |value| (top), its exponent field e, whether all are zero.
namespace {
struct Fp4Lanes {
  __m256 v[8];
  __m256i e, zero;
};
inline Fp4Lanes fp4_load_lanes(const float* ab) {
  Fp4Lanes l;
  __m256i top = _mm256_setzero_si256();
  for (int t = 0; t < 8; ++t) {
    l.v[t] = _mm256_loadu_ps(ab + 16 * t);
    top = _mm256_max_epu32(top, _mm256_and_si256(_mm256_castps_si256(l.v[t]), _mm256_set1_epi32(0x7FFFFFFF)));
  }
  l.e = _mm256_srli_epi32(top, 23);
  l.zero = _mm256_cmpeq_epi32(top, _mm256_setzero_si256());
  return l;
}
inline __m256i in_range(__m256i e, int lo, int hi) {  // lo <= e <= hi, per dword
  return _mm256_and_si256(_mm256_cmpgt_epi32(e, _mm256_set1_epi32(lo - 1)), _mm256_cmpgt_epi32(_mm256_set1_epi32(hi + 1), e));
}
// n = v / u for 1 / u = 2^(inv_exp - 127) per lane; good keeps the lanes whose n are all exact.
inline void fp4_lane_ints(const Fp4Lanes& l, __m256i inv_exp, __m256i* n, __m256i& good) {
  const __m256 inv_u = _mm256_castsi256_ps(_mm256_slli_epi32(inv_exp, 23));
  for (int t = 0; t < 8; ++t) {
    const __m256 x = _mm256_mul_ps(l.v[t], inv_u);
    n[t] = _mm256_cvtps_epi32(x);
    good = _mm256_and_si256(good, _mm256_castps_si256(_mm256_cmp_ps(_mm256_cvtepi32_ps(n[t]), x, _CMP_EQ_OQ)));
  }
}
inline void fp4_store_pairs(const __m256i* n, uint32_t* out) {  // dword d of vector u: (8d+u, 8d+4+u)
  for (int u = 0; u < 4; ++u)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 16 * u),
                        _mm256_or_si256(_mm256_and_si256(n[2 * u + 1], _mm256_set1_epi32(0xFFFF)), _mm256_slli_epi32(n[2 * u], 16)));
}
}  // namespace

void fp4_int_activations_avx2(const float* a, int nb, uint32_t* words, float* unit, uint8_t* ok, uint32_t* high) {
  const __m256i one_exp = _mm256_set1_epi32(127);  // the exponent field of 1.0f (all-zero lanes)
  for (int b = 0; b < nb; ++b) {
    bool all = true;
    __m256i lane_ok[2];
    for (int h = 0; h < 2; ++h) {
      const Fp4Lanes l = fp4_load_lanes(a + b * 128 + 8 * h);
      __m256i good = _mm256_or_si256(l.zero, in_range(l.e, kFp4IntMinExp, kFp4IntMaxExp));
      const __m256i live = _mm256_andnot_si256(l.zero, good);  // (else u = 1)
      const __m256i inv_exp = _mm256_blendv_epi8(one_exp, _mm256_sub_epi32(_mm256_set1_epi32(268), l.e), live);
      const __m256i unit_exp = _mm256_blendv_epi8(one_exp, _mm256_sub_epi32(l.e, _mm256_set1_epi32(15)), live);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(unit + b * 16 + 8 * h), _mm256_slli_epi32(unit_exp, 23));
      __m256i n[8];
      fp4_lane_ints(l, inv_exp, n, good);
      lane_ok[h] = good;
      all = all && _mm256_movemask_ps(_mm256_castsi256_ps(good)) == 0xFF;
      fp4_store_pairs(n, words + b * 64 + 8 * h);
    }
    ok[b] = all;
    if (all || !high) continue;
    // Two planes (gemm.h): the lanes without the one-plane form (fine) at u = 2^(e - 144).
    bool all2 = true;
    for (int h = 0; h < 2; ++h) {
      const Fp4Lanes l = fp4_load_lanes(a + b * 128 + 8 * h);
      const __m256i coarse = lane_ok[h];
      const __m256i fine_live = _mm256_andnot_si256(coarse, in_range(l.e, kFp4IntMinExp + 3, kFp4TwoPlaneMaxExp));
      __m256i good = _mm256_or_si256(coarse, fine_live);
      const __m256i live = _mm256_andnot_si256(l.zero, good);
      const __m256i three = _mm256_and_si256(fine_live, _mm256_set1_epi32(3));
      const __m256i inv_exp =
          _mm256_blendv_epi8(one_exp, _mm256_sub_epi32(_mm256_add_epi32(_mm256_set1_epi32(268), three), l.e), live);
      const __m256i unit_exp =
          _mm256_blendv_epi8(one_exp, _mm256_sub_epi32(_mm256_sub_epi32(l.e, _mm256_set1_epi32(15)), three), live);
      __m256i n[8];
      fp4_lane_ints(l, inv_exp, n, good);
      __m256i sum = _mm256_setzero_si256();  // (|n| < 2^18: no overflow in live lanes)
      for (int t = 0; t < 8; ++t) sum = _mm256_add_epi32(sum, _mm256_abs_epi32(n[t]));
      good = _mm256_and_si256(good, _mm256_cmpgt_epi32(_mm256_set1_epi32(((1 << 24) + 11) / 12), sum));  // 12 sum < 2^24
      all2 = all2 && _mm256_movemask_ps(_mm256_castsi256_ps(good)) == 0xFF;
      if (!all2) break;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(unit + b * 16 + 8 * h), _mm256_slli_epi32(unit_exp, 23));
      __m256i lo[8], hi[8];
      for (int t = 0; t < 8; ++t) {
        lo[t] = _mm256_and_si256(n[t], _mm256_set1_epi32(0x7FFF));
        hi[t] = _mm256_srai_epi32(n[t], 15);
      }
      fp4_store_pairs(lo, words + b * 64 + 8 * h);
      fp4_store_pairs(hi, high + b * 64 + 8 * h);
    }
    if (all2) ok[b] = 2;
  }
}

}  // namespace dsv4::gemm_detail
