// AVX-512 back end of the GEMMs (compiled with AVX-512 flags, run only when cpu_features
// says so). A 16-lane vector of the canonical order is one zmm; 16 lane vectors are reduced at
// once by a transposing tree, so one reduction serves 16 outputs.
// GCC 12 flags its own _mm512_undefined_* helpers (used inside many intrinsics) as
// uninitialised; the pragma must precede the header to cover those locations.
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__  // (a GCC-only warning group; clang reports it unknown)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/gemm.h"
#include "kernels/isa_local.h"

namespace dsv4::gemm_detail {
namespace {

using Vec = __m512;
using Parts = __m512;
constexpr int kGroup = 16;
constexpr int kBigMR = 4, kBigNR = 4;
// Rows streamed at once by the small-M BF16 and folded FP8 paths (measured: 8 streams beat 16
// by 15-50 % from DRAM; 4 was close to 8).
constexpr int kDirectRows = 8;

inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline void pstore(float* p, Parts v) { _mm512_storeu_ps(p, v); }

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
// 32 bf16 weights as (odd, even) lane vectors (gemm.h BF16 order): dword d holds elements 2d
// (low half) and 2d+1 (high half).
inline void dec_bf16(const uint16_t* p, Vec& w0, Vec& w1) {
  const __m512i d = _mm512_loadu_si512(p);
  w0 = _mm512_castsi512_ps(_mm512_and_si512(d, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  w1 = _mm512_castsi512_ps(_mm512_slli_epi32(d, 16));
}
// The same 32 weights and activations as VDPBF16PS operands: it adds the odd product, then the
// even one (probed), i.e. exactly the order above.
constexpr bool kBf16Pairs = true;
inline Vec vmul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
inline Vec vset1(float f) { return _mm512_set1_ps(f); }
inline Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
// Two accumulators' folds into one vector of packed lanes (x's lanes 0..7, then y's): half the
// shuffles' work and half the lanes' memory of two vfold_adds, the same sums.
inline Vec vfold_pair_add(Vec packed, Vec x, Vec y) {
  return _mm512_add_ps(packed, _mm512_add_ps(_mm512_shuffle_f32x4(x, y, 0x44), _mm512_shuffle_f32x4(x, y, 0xEE)));
}
// Packed lanes back to two lane vectors, lanes 8..15 at +0.
inline void vunpack_pair(Vec packed, Vec& x, Vec& y) {
  x = _mm512_maskz_shuffle_f32x4(0x00FF, packed, packed, 0x44);
  y = _mm512_maskz_shuffle_f32x4(0x00FF, packed, packed, 0xEE);
}
inline Vec vfold_add(Vec lanes, Vec slots) {
  return _mm512_mask_add_ps(lanes, 0x00FF, lanes, _mm512_add_ps(slots, _mm512_shuffle_f32x4(slots, slots, 0x4E)));
}
#include "kernels/gemm_fp4_pairs.inc"

// FP4 block (gemm.h): the 64 code bytes as 16 dwords; dword d holds elements 8d .. 8d+7 as
// nibbles, so lane vector t is nibble t of every dword (vpermps reads the low 4 index bits).
struct Fp4Blk {
  __m512i dw;
  Vec scale;
};
inline int imin16(int n) { return n < 16 ? n : 16; }
// e8m0_to_f32 of 16 scale bytes (n < 16: the rest read as 0 and are never used).
inline Vec fp4_scales16(const uint8_t* scales, int n) {
  // (A masked load, not a copy through a stack buffer: the 16-byte reload of a few bytes just
  // stored cannot be forwarded and stalled every FP4 block decode, 22 % of an M = 12 product.)
  const __m128i b = n >= 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales))
                            : _mm_maskz_loadu_epi8(static_cast<__mmask16>((1u << n) - 1), scales);
  const __m512i e = _mm512_cvtepu8_epi32(b);
  __m512i bits = _mm512_slli_epi32(e, 23);  // 2^(e-127) for e in 1..254; e8m0_to_f32 for 0 and 255:
  bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(e, _mm512_setzero_si512()), _mm512_set1_epi32(0x00400000));
  bits = _mm512_mask_mov_epi32(bits, _mm512_cmpeq_epi32_mask(e, _mm512_set1_epi32(255)), _mm512_set1_epi32(0x7FC00000));
  return _mm512_castsi512_ps(bits);
}
// n scale bytes to fp32; out has room for n rounded up to 16.
inline void fp4_scales_to_f32(const uint8_t* scales, int n, float* out) {
  for (int i = 0; i < n; i += 16) _mm512_storeu_ps(out + i, fp4_scales16(scales + i, imin16(n - i)));
}
// True when all n scale bytes are in 1..254, the bytes whose 2^(e-127) is just e << 23 (so
// fp4_rows_int may read them in place); 0 and 255 need e8m0_to_f32's special values.
// (The smallest and largest byte in two vectors: a mask OR-ed over the loop was kept on the stack,
// a store-to-load chain through every step of a scan that runs once per 16 rows in decode.)
inline bool fp4_scales_plain(const uint8_t* scales, int n) {
  const __m512i one = _mm512_set1_epi8(1);
  __m512i lo = _mm512_set1_epi8(static_cast<char>(255)), hi = _mm512_setzero_si512();
  for (int i = 0; i < n; i += 64) {
    const __mmask64 live = n - i >= 64 ? ~__mmask64{0} : (__mmask64{1} << (n - i)) - 1;
    const __m512i e = _mm512_mask_loadu_epi8(one, live, scales + i);  // (past n: 1, a plain byte)
    lo = _mm512_min_epu8(lo, e);
    hi = _mm512_max_epu8(hi, e);
  }
  return _mm512_cmpeq_epi8_mask(lo, _mm512_setzero_si512()) == 0 &&
         _mm512_cmpeq_epi8_mask(hi, _mm512_set1_epi8(static_cast<char>(255))) == 0;
}
// Lane scales of block j (0..3) of a 16-group run: lane d takes group 4j + d/4.
inline Vec fp4_spread(Vec s16, int j) {
  const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(4 * j),
                                       _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
  return _mm512_permutexvar_ps(idx, s16);
}
// len < 128 only for the last block of a row: never read past the row.
template <bool kFull>
inline void fp4_blk_load_codes(const uint8_t* codes, int len, Fp4Blk& b) {
  if constexpr (kFull)
    b.dw = _mm512_loadu_si512(codes);
  else
    b.dw = _mm512_maskz_loadu_epi8((uint64_t{1} << (len / 2)) - 1, codes);
}
template <bool kFull>
inline void fp4_blk_load(const uint8_t* codes, const uint8_t* scales, int len, Fp4Blk& b) {
  fp4_blk_load_codes<kFull>(codes, len, b);
  b.scale = fp4_spread(fp4_scales16(scales, len / 32), 0);
}
inline Vec fp4_blk_vec(const Fp4Blk& b, int t) {
  const __m512 tab = _mm512_setr_ps(0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f, -0.0f, -0.5f, -1.0f, -1.5f, -2.0f,
                                    -3.0f, -4.0f, -6.0f);
  return _mm512_permutexvar_ps(_mm512_srli_epi32(b.dw, static_cast<unsigned>(4 * kFp4Order[t])), tab);
}
inline Vec fp4_blk_scale(const Fp4Blk& b) { return b.scale; }

// FP4 through VDPBF16PS (gemm.h order): the activation block as bf16 pairs, dword d of
// vector u = (element 8d+u, element 8d+4+u); word w of the codes holds elements 4w .. 4w+3, so
// vpermw on (codes >> 4u) yields element 4w+u in word w, i.e. exactly that pairing.
constexpr bool kFp4Bf16Pairs = true;
inline __m512i fp4_bf16_table() {
  return _mm512_setr_epi32(0x3F000000, 0x3FC03F80, 0x40404000, 0x40C04080, static_cast<int>(0xBF008000u),
                           static_cast<int>(0xBFC0BF80u), static_cast<int>(0xC040C000u), static_cast<int>(0xC0C0C080u),
                           0x3F000000, 0x3FC03F80, 0x40404000, 0x40C04080, static_cast<int>(0xBF008000u),
                           static_cast<int>(0xBFC0BF80u), static_cast<int>(0xC040C000u), static_cast<int>(0xC0C0C080u));
}
// Small-M FP4 through VPDPWSSD (gemm.h, fp4_int_activations): the codes as doubled e2m1
// integers in the a_pairs layout (vpermw on codes >> 4u, as for the bf16 pairs), so that 4
// instructions sum a block's lanes exactly; blocks without an integer form take fp32 FMAs.
inline __m512i fp4_int_table() {  // words 0, 1, 2, 3, 4, 6, 8, 12, 0, -1, ... -12, twice
  return _mm512_setr_epi32(0x00010000, 0x00030002, 0x00060004, 0x000C0008, static_cast<int>(0xFFFF0000u),
                           static_cast<int>(0xFFFDFFFEu), static_cast<int>(0xFFFAFFFCu), static_cast<int>(0xFFF4FFF8u),
                           0x00010000, 0x00030002, 0x00060004, 0x000C0008, static_cast<int>(0xFFFF0000u),
                           static_cast<int>(0xFFFDFFFEu), static_cast<int>(0xFFFAFFFCu), static_cast<int>(0xFFF4FFF8u));
}
constexpr bool kFp4IntPairs = true;
constexpr int kFp4IntRows = 8;  // (VPDPWSSD's latency: 4 rows leave the ports idle)
constexpr bool kFp4PagedPasses = true;  // (rows_direct_fp4)
// Lane scales of block b of a row (lane d takes group 4b + d/4) straight from memory, without a
// register held over blocks (the R-row loop below needs all 32): plain scale bytes (2^(e-127) is
// e << 23: the byte moved to the top of its dword, then shifted down one) or fp32 scales.
inline Vec fp4_lane_scales_raw(const uint8_t* scales, int b) {
  int32_t four;
  std::memcpy(&four, scales + 4 * b, 4);
  const __m512i idx = _mm512_set_epi32(0x03808080, 0x03808080, 0x03808080, 0x03808080, 0x02808080, 0x02808080, 0x02808080,
                                       0x02808080, 0x01808080, 0x01808080, 0x01808080, 0x01808080, 0x00808080, 0x00808080,
                                       0x00808080, 0x00808080);  // dword d: byte d/4 at the top
  return _mm512_castsi512_ps(_mm512_srli_epi32(_mm512_shuffle_epi8(_mm512_set1_epi32(four), idx), 1));
}
inline Vec fp4_lane_scales_f32(const float* scales, int b) {
  return _mm512_permutevar_ps(_mm512_broadcast_f32x4(_mm_loadu_ps(scales + 4 * b)),
                              _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0));
}
// Per block of fp4_rows_int and fp4_rows_bytes: the codes asked for ahead (see there), a
// block's fp32 partials (blocks without an integer form), and the partials times the lane scales
// into the lane vectors.
// With `ahead` (fp4_prefetch_ahead_active) each row's line kFp4AheadBytes / R further on, past
// its end the next pass's rows' first lines; else the next pass's rows at this block, and the
// rows kFp4FarRows further on into L2.
template <int R>
inline void fp4_rows_prefetch(const uint8_t* const* codes, const uint8_t* const* next, const uint8_t* const* far, int full,
                              int b, bool ahead) {
  if (ahead) {
    constexpr int kAhead = kFp4AheadBytes / (64 * R);
    const int t = b + (kAhead < full ? kAhead : full);
    const uint8_t* const* rows = t < full ? codes : next;
    const int at = 64 * (t < full ? t : t - full);
    for (int j = 0; j < R; ++j) isa_local::prefetch_line(rows[j] + at, false);
    return;
  }
  for (int j = 0; j < R; ++j) isa_local::prefetch_line(next[j] + 64 * b, false);
  for (int j = 0; j < R; ++j) isa_local::prefetch_line_l2(far[j] + 64 * b);
}
template <int R>
inline void fp4_rows_fp32_parts(const Fp4Blk* c, const float* ab, Vec* part) {
  for (int j = 0; j < R; ++j) part[j] = vzero();
  for (int t = 0; t < 8; ++t) {
    const Vec av = vload(ab + 16 * t);
    for (int j = 0; j < R; ++j) part[j] = vfma(av, fp4_blk_vec(c[j], t), part[j]);
  }
}
template <int R, bool kRawScales, bool kOdd>
inline void fp4_rows_scaled(const Vec* part, const float* const* scales_f32, const uint8_t* const* scales_raw, int b,
                            Vec* evens, Vec* lanes) {
  for (int j = 0; j < R; ++j) {
    const Vec ls = kRawScales ? fp4_lane_scales_raw(scales_raw[j], b) : fp4_lane_scales_f32(scales_f32[j], b);
    fp4_pair_add<kOdd>(part[j], ls, evens[j], lanes[j]);
  }
}
// The byte form of the weights (fp4_byte_activations_avx512): w' = 2 e2m1 + 12 per code, the
// 16 values four times over (VPERMB reads 6 index bits, of which the top two are the next
// nibble's).
inline __m512i fp4_byte_table() {
  return _mm512_set4_epi32(0x00040608, 0x090A0B0C, 0x18141210, 0x0F0E0D0C);  // codes 15 .. 0
}

// One row's sum n w' of a block in the byte form (fp4_rows_bytes): its weight bytes (lo: of the
// low nibbles, hi: of the high ones, returned for the top planes) against the hi planes, shifted
// by 8, then the lo planes.
[[gnu::always_inline]] __attribute__((target("avx512vbmi"))) inline __m512i fp4_byte_sum(
    __m512i c, __m512i tab, __m512i hi_nibbles, __m512i even_hi, __m512i odd_hi, __m512i even_lo, __m512i odd_lo,
    __m512i& lo, __m512i& hi) {
  lo = _mm512_permutexvar_epi8(c, tab);                                         // weights 8d + 2i at byte 4d + i
  hi = _mm512_permutexvar_epi8(_mm512_multishift_epi64_epi8(hi_nibbles, c), tab);  // 8d + 2i + 1
  const __m512i x = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, even_hi), hi, odd_hi);
  return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_slli_epi32(x, 8), lo, even_lo), hi, odd_lo);
}
[[gnu::always_inline]] __attribute__((target("avx512vbmi"))) inline __m512i fp4_byte_sum(
    __m512i c, __m512i tab, __m512i hi_nibbles, const __m512i* planes, __m512i& lo, __m512i& hi) {
  return fp4_byte_sum(c, tab, hi_nibbles, _mm512_loadu_si512(planes), _mm512_loadu_si512(planes + 1),
                      _mm512_loadu_si512(planes + 2), _mm512_loadu_si512(planes + 3), lo, hi);
}

// The byte form: per block and row two VPERMB (the low nibbles, then the high ones shifted down)
// instead of four VPERMW and three shifts, and four VPDPBUSD (the hi planes, a shift by 8, the lo
// planes). Compiled for VBMI on top of this file's flags, so called only where the CPU has it
// (prepare sets corr only then); not inlined into the callers, hence the lanes in locals.
template <int R, bool kRawScales>
__attribute__((target("avx512vbmi"))) void fp4_rows_bytes(const uint8_t* const* codes, int full,
                                                         const uint32_t* planes, const uint32_t* high, const float* unit,
                                                         const float* corr, const uint8_t* ok, const float* a,
                                                         const float* const* scales_f32,
                                                         const uint8_t* const* scales_raw, Vec* evens_io,
                                                         Vec* lanes_io, const uint8_t* const* next,
                                                         const uint8_t* const* far, bool ahead) {
  const __m512i tab = fp4_byte_table();
  // VPMULTISHIFTQB brings each byte's high nibble down (bits 8i+4 .. of its qword; the bits
  // above the nibble are don't-cares for VPERMB, as the table repeats): a port-5 byte move in
  // place of a port-0 shift, next to the four VPDPBUSD. Stand-alone over L2-resident rows, min
  // of 40: 2.80 -> 2.65 ns per block and row (moving the << 8 to VPSHUFB as well gained nothing).
  const __m512i hi_nibbles = _mm512_set1_epi64(0x3C342C241C140C04);
  Vec lanes[R], evens[R];
  for (int j = 0; j < R; ++j) {
    lanes[j] = lanes_io[j];
    evens[j] = evens_io[j];
  }
  // A three-plane block's partials (gemm.h): the two planes' sums as a one-plane block's, the
  // top planes (from memory: the one-plane blocks keep their registers) times 65536 units added
  // to the correction first.
  auto three_planes = [&](int b, Vec* part) __attribute__((target("avx512vbmi"))) {
    const __m512i* pl = reinterpret_cast<const __m512i*>(planes + 64 * b);
    const __m512i* tp = reinterpret_cast<const __m512i*>(high + 64 * b);
    const Vec un = _mm512_loadu_ps(unit + 16 * b), cr = _mm512_loadu_ps(corr + 16 * b);
    const Vec top_unit = _mm512_mul_ps(un, _mm512_set1_ps(65536.0f));
    for (int j = 0; j < R; ++j) {
      __m512i lo, hi;
      const __m512i x = fp4_byte_sum(_mm512_loadu_si512(codes[j] + 64 * b), tab, hi_nibbles, pl, lo, hi);
      const __m512i top = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(tp)), hi,
                                              _mm512_loadu_si512(tp + 1));
      part[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(x), un, _mm512_fmadd_ps(_mm512_cvtepi32_ps(top), top_unit, cr));
    }
  };
  // A block's body for each parity (fp4_pair_add without a test per block). (The one-plane body
  // stays written out here: moved into a lambda shared with the three planes, GCC scheduled it
  // worse for R = 8, w1 at M = 1 one thread in cache ~14 % slower.)
  auto block = [&]<bool kOdd>(int b) __attribute__((target("avx512vbmi"))) {
    fp4_rows_prefetch<R>(codes, next, far, full, b, ahead);
    Vec part[R];
    if (ok[b] == 1) {
      // Row by row, so that only one row's weight bytes are live (all rows' at once spill).
      const __m512i* pl = reinterpret_cast<const __m512i*>(planes + 64 * b);
      const __m512i even_hi = _mm512_loadu_si512(pl), odd_hi = _mm512_loadu_si512(pl + 1);
      const __m512i even_lo = _mm512_loadu_si512(pl + 2), odd_lo = _mm512_loadu_si512(pl + 3);
      const Vec un = _mm512_loadu_ps(unit + 16 * b), cr = _mm512_loadu_ps(corr + 16 * b);
      for (int j = 0; j < R; ++j) {
        __m512i lo, hi;
        const __m512i x = fp4_byte_sum(_mm512_loadu_si512(codes[j] + 64 * b), tab, hi_nibbles, even_hi, odd_hi, even_lo, odd_lo, lo, hi);
        part[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(x), un, cr);
      }
    } else if (ok[b] == 2) {
      three_planes(b, part);
    } else {
      Fp4Blk c[R];
      for (int j = 0; j < R; ++j) c[j].dw = _mm512_loadu_si512(codes[j] + 64 * b);
      fp4_rows_fp32_parts<R>(c, a + 128 * b, part);
    }
    fp4_rows_scaled<R, kRawScales, kOdd>(part, scales_f32, scales_raw, b, evens, lanes);
  };
  for (int b = 0; b < full; b += 2) {
    block.template operator()<false>(b);
    if (b + 1 < full) block.template operator()<true>(b + 1);
  }
  for (int j = 0; j < R; ++j) {
    lanes_io[j] = lanes[j];
    evens_io[j] = evens[j];
  }
}

// Blocks 0 .. full-1 of R rows at once (R independent chains, R concurrent weight streams, one
// load of each activation vector for all R rows): per block, the partial times the lane scales
// into lanes[j] in block pairs (fp4_pair_add; evens[j] carries an unpaired last one out). The
// partial is the integer sum times the lane units where ok[b] (exact: the canonical partial), else the fp32 chain of fp4_row_block over `a`. The group scales are
// row j's converted fp32 ones, scales_f32[j], or with kRawScales its scale bytes scales_raw[j]
// (all plain: fp4_scales_plain). next: the codes of the R rows that follow, asked for in the order
// they will be read, one row group ahead (a linear prefetch of those rows reached the last of them
// too late: one core, cold, 9.3-10.5 -> 10.5-11.9 GB/s); far: rows kFp4FarRows past those, asked
// into L2 only (see kFp4FarRows); with `ahead` the rows' own lines instead (fp4_rows_prefetch). With corr set, `words` is the byte form and fp4_rows_bytes runs,
// `high` its top planes (blocks flagged 2). The word form has no two-plane blocks (kTwo and the
// per-row high sums are AVX2's).
constexpr bool kFp4TwoPlanes = false;
template <int R, bool kRawScales, bool kTwo>
inline void fp4_rows_int(const uint8_t* const* codes, int full, const uint32_t* words, const uint32_t* high,
                         const uint8_t* /*two*/, int /*n_two*/, Vec* /*hparts*/, const float* unit,
                         const float* corr, const uint8_t* ok, const float* a, const float* const* scales_f32,
                         const uint8_t* const* scales_raw, Vec* evens, Vec* lanes, const uint8_t* const* next,
                         const uint8_t* const* far, bool ahead) {
  static_assert(!kTwo);
  if (corr) {
    fp4_rows_bytes<R, kRawScales>(codes, full, words, high, unit, corr, ok, a, scales_f32, scales_raw, evens, lanes, next, far, ahead);
    return;
  }
  const __m512i tab = fp4_int_table();
  auto block = [&]<bool kOdd>(int b) {  // (as fp4_rows_bytes)
    fp4_rows_prefetch<R>(codes, next, far, full, b, ahead);
    Fp4Blk c[R];
    Vec part[R];
    for (int j = 0; j < R; ++j) c[j].dw = _mm512_loadu_si512(codes[j] + 64 * b);
    if (ok[b]) {
      __m512i x[R];
      for (int j = 0; j < R; ++j) x[j] = _mm512_setzero_si512();
      for (int u = 0; u < 4; ++u) {
        const __m512i av = _mm512_loadu_si512(words + 64 * b + 16 * u);
        for (int j = 0; j < R; ++j) {
          const __m512i w = _mm512_permutexvar_epi16(u == 0 ? c[j].dw : _mm512_srli_epi16(c[j].dw, static_cast<unsigned>(4 * u)), tab);
          x[j] = _mm512_dpwssd_epi32(x[j], w, av);
        }
      }
      const Vec un = _mm512_loadu_ps(unit + 16 * b);
      for (int j = 0; j < R; ++j) part[j] = _mm512_mul_ps(_mm512_cvtepi32_ps(x[j]), un);
    } else {
      fp4_rows_fp32_parts<R>(c, a + 128 * b, part);
    }
    fp4_rows_scaled<R, kRawScales, kOdd>(part, scales_f32, scales_raw, b, evens, lanes);
  };
  for (int b = 0; b < full; b += 2) {
    block.template operator()<false>(b);
    if (b + 1 < full) block.template operator()<true>(b + 1);
  }
}

// The weight pairs of one block (len < 128: zero past the row), in the layout of the pairs above:
// bf16 values, or with kInt the doubled e2m1 integers (fp4_int_table).
template <bool kFull, bool kInt = false>
inline void fp4_blk_pairs(const uint8_t* codes, int len, uint32_t* out) {
  const __m512i tab = kInt ? fp4_int_table() : fp4_bf16_table();
  Fp4Blk blk;
  fp4_blk_load_codes<kFull>(codes, len, blk);
  for (int u = 0; u < 4; ++u)
    _mm512_storeu_si512(out + 16 * u, _mm512_permutexvar_epi16(
                                          u == 0 ? blk.dw : _mm512_srli_epi16(blk.dw, static_cast<unsigned>(4 * u)), tab));
}
// The same bf16 pairs with the block's group scales taken into the weights (rows_tiled_pairs_fp4,
// kFold): e2m1 * 2^(e-127), the scale's exponent added to every nonzero word (lane d: group d/4).
// Exact while the exponents stay normal, which the caller's bounds on the bytes ensure
// (kFp4FoldMinByte .. kFp4FoldMaxByte).
template <bool kFull>
inline void fp4_blk_pairs_scaled(const uint8_t* codes, const uint8_t* scales, int len, uint32_t* out) {
  const __m512i tab = fp4_bf16_table();
  Fp4Blk blk;
  fp4_blk_load_codes<kFull>(codes, len, blk);
  uint32_t four = 0;  // (a plain load: the masked one was 4 % of the tiles' samples)
  std::memcpy(&four, scales, kFull ? 4 : static_cast<size_t>((len + 31) / 32));
  // Word w of the output belongs to group w / 8, i.e. to the 128-bit quarter it sits in: each
  // quarter picks its scale byte out of the broadcast into the low byte of its words.
  const __m512i pick = _mm512_set_epi64(0x8003800380038003, 0x8003800380038003, 0x8002800280028002, 0x8002800280028002,
                                        0x8001800180018001, 0x8001800180018001, 0x8000800080008000, 0x8000800080008000);
  const __m512i e = _mm512_shuffle_epi8(_mm512_set1_epi32(static_cast<int>(four)), pick);
  const __m512i delta = _mm512_slli_epi16(_mm512_sub_epi16(e, _mm512_set1_epi16(127)), 7);  // (e - 127) << 7
  const __m512i magnitude = _mm512_set1_epi16(0x7FFF);
  for (int u = 0; u < 4; ++u) {
    const __m512i w = _mm512_permutexvar_epi16(u == 0 ? blk.dw : _mm512_srli_epi16(blk.dw, static_cast<unsigned>(4 * u)), tab);
    _mm512_storeu_si512(out + 16 * u, _mm512_mask_add_epi16(w, _mm512_test_epi16_mask(w, magnitude), w, delta));
  }
}
// 32 e4m3 weights of one chunk, dequantised (times 2^exp_delta), as the bf16 pairs of gemm.h
// (dword d: element d in the high word, element 16+d in the low one), converted exactly: normal codes by shifting into place and
// rebiasing the exponent (+120), the subnormal ones (exponent field 0) from a table, then the
// scale's exponent added to every nonzero word (the callers keep the results normal bf16s).
// len = bytes left in the row (zeros past it).
inline void fp8_chunk_pairs(const uint8_t* codes, int len, uint32_t* out, int exp_delta) {
  __m128i lo, hi;
  if (len >= 32) {
    lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
    hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16));
  } else {
    auto mask = [](int n) { return n <= 0 ? __mmask16{0} : n >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << n) - 1); };
    lo = _mm_maskz_loadu_epi8(mask(len), codes);
    hi = _mm_maskz_loadu_epi8(mask(len - 16), codes + 16);
  }
  const __m512i w = _mm512_cvtepu8_epi16(_mm256_set_m128i(_mm_unpackhi_epi8(hi, lo), _mm_unpacklo_epi8(hi, lo)));
  const __m512i sub_tab = _mm512_setr_epi32(0x3B000000, 0x3BC03B80, 0x3C203C00, 0x3C603C40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                            0, 0);
  __m512i bits = _mm512_add_epi16(_mm512_and_si512(_mm512_slli_epi16(w, 4), _mm512_set1_epi16(0x07F0)),
                                  _mm512_set1_epi16(0x3C00));
  bits = _mm512_mask_permutexvar_epi16(bits, _mm512_testn_epi16_mask(w, _mm512_set1_epi16(0x78)), w, sub_tab);
  bits = _mm512_mask_add_epi16(bits, _mm512_test_epi16_mask(bits, _mm512_set1_epi16(0x7FFF)), bits,
                               _mm512_set1_epi16(static_cast<short>(exp_delta * 128)));
  bits = _mm512_or_si512(bits, _mm512_and_si512(_mm512_slli_epi16(w, 8), _mm512_set1_epi16(static_cast<short>(0x8000))));
  _mm512_storeu_si512(out, bits);
}
// FP4 M >= 4 in integers (rows_tiled_pairs_fp4<true>): the tiles' int32 partials, their value
// (times the activation units), and a block's fp32 partial from the integer weights where the
// activations have no integer form (the canonical order: t = 2u is the high word, element
// 8d+4+u, then t = 2u+1, the low one; halving the doubled weights is exact).
constexpr bool kFp4IntTiles = true;
constexpr bool kBcastTiles = false;  // (an AVX2 form: AVX-512 tiles take 16 lanes per zmm)
using IVec = __m512i;
inline IVec ivzero() { return _mm512_setzero_si512(); }
inline IVec dp_ints(IVec acc, const uint32_t* a, const uint32_t* w) {
  return _mm512_dpwssd_epi32(acc, _mm512_loadu_si512(w), _mm512_loadu_si512(a));
}
inline Vec int_part(IVec x, Vec unit) { return _mm512_mul_ps(_mm512_cvtepi32_ps(x), unit); }
inline Vec fp4_part_from_ints(const uint32_t* w, const float* a) {
  const Vec half = _mm512_set1_ps(0.5f);
  Vec part = vzero();
  for (int u = 0; u < 4; ++u) {
    const __m512i d = _mm512_loadu_si512(w + 16 * u);
    part = vfma(vload(a + 16 * (2 * u)), _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(d, 16)), half), part);
    part = vfma(vload(a + 16 * (2 * u + 1)), _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(d, 16), 16)), half), part);
  }
  return part;
}
inline Vec dp_pairs(Vec acc, const uint32_t* a, const uint32_t* w) {
  return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(a), (__m512bh)_mm512_loadu_si512(w));
}
// The same on operands already in registers (tiles that hold a row's pairs over several products).
using PairVec = __m512i;
inline PairVec pairs_load(const uint32_t* p) { return _mm512_loadu_si512(p); }
// A load the compiler must keep in its register: under register pressure GCC 12 otherwise
// reloads it from memory at every use (an empty asm that may change it rules that out).
inline PairVec pairs_load_held(const uint32_t* p) {
  PairVec v = _mm512_loadu_si512(p);
  asm("" : "+v"(v));
  return v;
}
inline Vec dp_pairs_reg(Vec acc, PairVec a, PairVec w) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)w); }

// VDPBF16PS must add the odd product, then the even one, each rounded like an FMA (the order
// gemm.h defines); checked on awkward values once, before the AVX-512 path is chosen.
bool probe_dpbf16_is_two_fmas() {
  alignas(64) uint16_t a[32], b[32];
  alignas(64) float acc[16], out[16];
  uint32_t x = 12345;
  auto next = [&] { return x = x * 1664525u + 1013904223u; };
  for (int round = 0; round < 64; ++round) {
    for (int i = 0; i < 32; ++i) {
      a[i] = static_cast<uint16_t>((0x3F80 + (next() >> 25) + (((next() >> 28) & 7) << 7)) ^ ((next() & 1) << 15));
      b[i] = static_cast<uint16_t>((0x3F80 + (next() >> 25) + (((next() >> 28) & 7) << 7)) ^ ((next() & 1) << 15));
    }
    for (int j = 0; j < 16; ++j) {
      const uint32_t bits = 0x3F800000u + (next() >> 9) + (((next() >> 29) & 7) << 23);
      std::memcpy(&acc[j], &bits, 4);
    }
    _mm512_storeu_ps(out, _mm512_dpbf16_ps(_mm512_loadu_ps(acc), (__m512bh)_mm512_loadu_si512(a),
                                           (__m512bh)_mm512_loadu_si512(b)));
    for (int j = 0; j < 16; ++j) {
      auto f = [](uint16_t h) {
        const uint32_t u = static_cast<uint32_t>(h) << 16;
        float v;
        std::memcpy(&v, &u, 4);
        return v;
      };
      const float want = __builtin_fmaf(f(a[2 * j]), f(b[2 * j]), __builtin_fmaf(f(a[2 * j + 1]), f(b[2 * j + 1]), acc[j]));
      if (std::memcmp(&want, &out[j], 4) != 0) return false;
    }
  }
  return true;
}

// Small-M FP8 through GFNI + VBMI (gemm.h, fp8_gfni_active): defined below the back end, whose
// prefetch it shares.
struct RowPrefetch;
constexpr bool kFp8Gfni = true;
template <int R, int MR = 1>
__attribute__((target("avx512vbmi,gfni"))) void fp8_rows_gfni(const uint8_t* const* w, int full, const float* const* a,
                                                            const uint8_t* scales, const float* e8m0, Vec* v,
                                                            Vec* lanes, const RowPrefetch& ahead);

// Small-M FP8 as bf16 pairs through VDPBF16PS (Problem::fp8_small_pairs): defined below.
template <int R, int MR = 1>
__attribute__((target("avx512vbmi,gfni,avx512bf16"))) void fp8_rows_pairs(const uint8_t* const* w, int full,
                                                                         const uint32_t* const* ap,
                                                                         const uint8_t* scales, Vec* v, Vec* lanes,
                                                                         const RowPrefetch& ahead);

#include "kernels/gemm_simd.inc"

// The folded FP8 rows of fold_rows, blocks 0 .. full-1, R rows at a time, with e4m3_16_raw's
// fp32 weights (sign at bit 31, the other seven code bits at bits 20..26: e4m3 * 2^-120) built
// byte-wise instead of by sign extension, shift and mask per 16 codes. A 32-chunk's codes are
// loaded into both halves of a vector; one GF2P8AFFINEQB (its bit matrix is per qword) turns
// the low half into the fp32s' byte 2 (code bits 0..3 at bits 4..7) and the high half into
// their byte 3 (bits 4..6 at 0..2, the sign at 7); two VPERMB put those bytes into place,
// zeroing bytes 0 and 1. Per 64 weights 2 + 4 + 4 FMAs = 10 vector instructions instead of 16
// (VPERMI2B, with the two bytes in two vectors, issues at half VPERMB's rate here: measured
// slower). Every FMA is the one tile_lanes does, in its order.
// MR > 1 activation rows (a decode step of several sequences): each chunk's weights are decoded
// once for all of them, chunk by chunk over the R rows (activation row i's accumulators and lanes
// at v[i * R ..], lanes[i * R ..]); per accumulator the same FMAs in the same order.
template <int R, int MR>
__attribute__((target("avx512vbmi,gfni"))) void fp8_rows_gfni(const uint8_t* const* w, int full, const float* const* a,
                                                            const uint8_t* scales, const float* e8m0, Vec* v,
                                                            Vec* lanes, const RowPrefetch& ahead) {
  // GF2P8AFFINEQB: result bit i is the parity of (matrix byte 7 - i) & code.
  const __m512i to_bytes = _mm512_set_epi64(0x1020400000000080, 0x1020400000000080, 0x1020400000000080,
                                            0x1020400000000080,  // (high half) bits 0..2 <- 4..6, 7 <- 7
                                            0x0000000001020408, 0x0000000001020408, 0x0000000001020408,
                                            0x0000000001020408);  // (low half) bits 4..7 <- 0..3
  // Dword d: byte 2 from byte e, byte 3 from byte 32 + e, for e = d (the chunk's low 16
  // elements) or 16 + d (its high 16).
  struct Indices {
    alignas(64) uint8_t bytes[2][64] = {};
    constexpr Indices() {
      for (int q = 0; q < 2; ++q)
        for (int d = 0; d < 16; ++d) {
          bytes[q][4 * d + 2] = static_cast<uint8_t>(16 * q + d);
          bytes[q][4 * d + 3] = static_cast<uint8_t>(32 + 16 * q + d);
        }
    }
  };
  static constexpr Indices kIdx;
  const __m512i idx_lo = _mm512_load_si512(kIdx.bytes[0]), idx_hi = _mm512_load_si512(kIdx.bytes[1]);
  const __mmask64 top_bytes = 0xCCCCCCCCCCCCCCCCull;  // bytes 2 and 3 of every dword
  auto decode = [&](const uint8_t* codes, Vec& wl, Vec& wh) __attribute__((target("avx512vbmi,gfni"))) {
    const __m512i c = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes)));
    const __m512i t = _mm512_gf2p8affine_epi64_epi8(c, to_bytes, 0);
    wl = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi8(top_bytes, idx_lo, t));
    wh = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi8(top_bytes, idx_hi, t));
  };
  if constexpr (MR > 1) {
    Vec acc[MR * R];
    for (int i = 0; i < MR * R; ++i) acc[i] = v[i];
    for (int b = 0; b < full; ++b) {
      const int k0 = 128 * b;
      const Vec sc = _mm512_set1_ps(e8m0[scales[b]] * 0x1p120f);
      if (ahead.next)
        for (int j = 0; j < R; ++j) {
          ahead.ask(w[j], j, k0);
          ahead.ask(w[j], j, k0 + 64);
        }
      for (int u = 0; u < 4; ++u) {  // chunk u in natural order into the slots (gemm.h FP8 order)
        Vec lo[MR], hi[MR];  // the chunk's activations times 2^120 sw
        for (int i = 0; i < MR; ++i) {
          lo[i] = _mm512_mul_ps(_mm512_loadu_ps(a[i] + k0 + 32 * u), sc);
          hi[i] = _mm512_mul_ps(_mm512_loadu_ps(a[i] + k0 + 32 * u + 16), sc);
        }
        for (int j = 0; j < R; ++j) {
          Vec wl, wh;
          decode(w[j] + k0 + 32 * u, wl, wh);
          for (int i = 0; i < MR; ++i) {
            acc[i * R + j] = _mm512_fmadd_ps(lo[i], wl, acc[i * R + j]);
            acc[i * R + j] = _mm512_fmadd_ps(hi[i], wh, acc[i * R + j]);
          }
        }
      }
      if (block_ends_step(b)) fold_step(lanes, acc, MR * R);
    }
    for (int i = 0; i < MR * R; ++i) v[i] = acc[i];
    return;
  }
  Vec acc[R];
  for (int j = 0; j < R; ++j) acc[j] = v[j];
  for (int b = 0; b < full; ++b) {
    const int k0 = 128 * b;
    const Vec sc = _mm512_set1_ps(e8m0[scales[b]] * 0x1p120f);
    Vec act[8];  // the block's activations times 2^120 sw: chunk u's low half, then its high one
    for (int t = 0; t < 8; ++t) act[t] = _mm512_mul_ps(_mm512_loadu_ps(a[0] + k0 + 16 * t), sc);
    if (ahead.next)
      for (int j = 0; j < R; ++j) {
        ahead.ask(w[j], j, k0);
        ahead.ask(w[j], j, k0 + 64);
      }
    for (int j = 0; j < R; ++j)
      for (int u = 0; u < 4; ++u) {  // chunk u in natural order into the slots (gemm.h FP8 order)
        const __m512i c = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[j] + k0 + 32 * u)));
        const __m512i t = _mm512_gf2p8affine_epi64_epi8(c, to_bytes, 0);
        const Vec wl = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi8(top_bytes, idx_lo, t));
        const Vec wh = _mm512_castsi512_ps(_mm512_maskz_permutexvar_epi8(top_bytes, idx_hi, t));
        acc[j] = _mm512_fmadd_ps(act[2 * u], wl, acc[j]);
        acc[j] = _mm512_fmadd_ps(act[2 * u + 1], wh, acc[j]);
      }
    if (block_ends_step(b)) fold_step(lanes, acc, R);
  }
  for (int j = 0; j < R; ++j) v[j] = acc[j];
}

// The folded FP8 rows of fold_rows through VDPBF16PS (32 products per instruction against an
// FMA's 16), blocks 0 .. full-1, R rows at a time, MR activation rows sharing each decode. ap[i]
// holds activation row i as bf16 pairs (Problem::a_pairs: dword d of 32-chunk c = element c+d
// high, c+16+d low, the slot order of gemm.h); each 128-block's pairs take the weight scale
// 2^(byte - 127) into their exponents (exact: Problem::fp8_small_pairs), once per block for all
// R rows. The weights stay unscaled e4m3 values, exact in bf16, built from 64 codes at a time:
// one VPERMB puts the codes where VPUNPCK{L,H}BW will pair them, two GF2P8AFFINEQB give each
// code's bf16 high byte (sign, then the exponent e + 120 = e3 ? 1000 0eee : 0111 1eee, an
// affine map of the code bits) and low byte (exponent bit 0, mantissa), and the unpacks pair
// them: 6 instructions and two VDPBF16PS per 64 weights, against 10 and four FMAs for the fp32
// form. Codes with exponent field 0 (zero and the subnormals, which the affine map reads as
// 2^-7 (1 + m/8)) are fixed up by two table lookups where a 64-code run has any (rare in real
// weights). Each slot takes its elements in increasing k, as the FMA form.
template <int R, int MR>
__attribute__((target("avx512vbmi,gfni,avx512bf16"))) void fp8_rows_pairs(const uint8_t* const* w, int full,
                                                                         const uint32_t* const* ap,
                                                                         const uint8_t* scales, Vec* v, Vec* lanes,
                                                                         const RowPrefetch& ahead) {
  // GF2P8AFFINEQB: result bit i is the parity of (matrix byte 7 - i) & code, xor imm bit i.
  const __m512i to_high = _mm512_set1_epi64(0x1020404040404080);  // s, e3, ~e3 x4 (imm 0x3C), e2, e1
  const __m512i to_low = _mm512_set1_epi64(0x0000000001020408);   // e0, m2, m1, m0, 0000
  // Byte 16l + t of the permuted codes: word t of 128-bit lane l of the low (t < 8) or high
  // (t >= 8) unpack, i.e. dword 4l + t/2 of chunk 0 (or 1): element 16 + 4l + t/2 (even t, the
  // low word) or 4l + t/2 (odd t, the high word).
  struct Indices {
    alignas(64) uint8_t bytes[64] = {};
    constexpr Indices() {
      for (int l = 0; l < 4; ++l)
        for (int t = 0; t < 8; ++t) {
          bytes[16 * l + t] = static_cast<uint8_t>((t % 2 == 0 ? 16 : 0) + 4 * l + t / 2);
          bytes[16 * l + 8 + t] = static_cast<uint8_t>(32 + bytes[16 * l + t]);
        }
    }
  };
  static constexpr Indices kIdx;
  const __m512i idx = _mm512_load_si512(kIdx.bytes);
  // Exponent field 0, by mantissa m: the xor that turns the affine bytes into m * 2^-9 (0 for m = 0).
  const __m512i fix_high = _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, 0x000000000707073C);
  const __m512i fix_low = _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, 0x10207040F0A01000);
  const __m512i exp_mask = _mm512_set1_epi8(0x78);
  auto decode = [&](const uint8_t* codes, __m512i& p0, __m512i& p1) __attribute__((target("avx512vbmi,gfni"))) {
    const __m512i x = _mm512_permutexvar_epi8(idx, _mm512_loadu_si512(codes));
    __m512i hi = _mm512_gf2p8affine_epi64_epi8(x, to_high, 0x3C), lo = _mm512_gf2p8affine_epi64_epi8(x, to_low, 0);
    const __mmask64 tiny = _mm512_testn_epi8_mask(x, exp_mask);
    if (__builtin_expect(tiny != 0, 0)) {
      hi = _mm512_xor_si512(hi, _mm512_maskz_permutexvar_epi8(tiny, x, fix_high));
      lo = _mm512_xor_si512(lo, _mm512_maskz_permutexvar_epi8(tiny, x, fix_low));
    }
    p0 = _mm512_unpacklo_epi8(lo, hi);
    p1 = _mm512_unpackhi_epi8(lo, hi);
  };
  Vec acc[MR * R];
  for (int i = 0; i < MR * R; ++i) acc[i] = v[i];
  for (int b = 0; b < full; ++b) {
    const int k0 = 128 * b;
    // The block's weight scale into the activations' exponents (zero words stay zero).
    const __m512i step = _mm512_set1_epi16(static_cast<short>((scales[b] - 127) * 128));
    auto scaled = [&](const uint32_t* src) __attribute__((target("avx512bw"))) {
      const __m512i x = _mm512_loadu_si512(src);
      return _mm512_mask_add_epi16(x, _mm512_test_epi16_mask(x, _mm512_set1_epi16(0x7FFF)), x, step);
    };
    if (ahead.next)
      for (int j = 0; j < R; ++j) {
        ahead.ask(w[j], j, k0);
        ahead.ask(w[j], j, k0 + 64);
      }
    for (int h = 0; h < 2; ++h) {  // chunks 2h and 2h + 1, in natural order into the slots
      __m512i a0[MR], a1[MR];
      for (int i = 0; i < MR; ++i) {
        a0[i] = scaled(ap[i] + k0 / 2 + 32 * h);
        a1[i] = scaled(ap[i] + k0 / 2 + 32 * h + 16);
      }
      for (int j = 0; j < R; ++j) {
        __m512i p0, p1;
        decode(w[j] + k0 + 64 * h, p0, p1);
        for (int i = 0; i < MR; ++i) {
          acc[i * R + j] = _mm512_dpbf16_ps(acc[i * R + j], (__m512bh)a0[i], (__m512bh)p0);
          acc[i * R + j] = _mm512_dpbf16_ps(acc[i * R + j], (__m512bh)a1[i], (__m512bh)p1);
        }
      }
    }
    if (block_ends_step(b)) fold_step(lanes, acc, MR * R);
  }
  for (int i = 0; i < MR * R; ++i) v[i] = acc[i];
}

}  // namespace

void rows_avx512(const Problem& p, int n0, int n1, float* scratch) { rows_simd(p, n0, n1, scratch); }
bool avx512_dpbf16_is_two_fmas() { return probe_dpbf16_is_two_fmas(); }

// A block is a 16 x 8 matrix (lane d, element e) stored by lanes; the layout wants it by
// elements, in kFp4Order. Three rounds of two-source permutes, each halving the lanes a vector
// holds and doubling the elements: pairs of input vectors (4 lanes, 8 elements) become 4 lanes x
// 4 elements, then 8 lanes x 2 elements, then 16 lanes x 1 element (vector t).
void fp4_permute_blocks_avx512(float* a, int nb) {
  constexpr auto idx = [](int round, int which, int s) {  // index into the 32 values of a pair
    switch (round) {
      case 0: return (s % 4) * 8 + kFp4Order[4 * which + s / 4];  // which = element half h
      case 1: return (s % 8) / 4 * 16 + (2 * which + s / 8) * 4 + s % 4;  // which = quarter g
      default: return s / 8 * 16 + which * 8 + s % 8;  // which = element f
    }
  };
  __m512i ix[3][2];
  for (int round = 0; round < 3; ++round)
    for (int w = 0; w < 2; ++w) {
      alignas(64) int32_t v[16];
      for (int s = 0; s < 16; ++s) v[s] = idx(round, w, s);
      ix[round][w] = _mm512_load_si512(v);
    }
  for (int b = 0; b < nb; ++b) {
    float* blk = a + b * 128;
    __m512 v[8], p[8], q[8];
    for (int i = 0; i < 8; ++i) v[i] = _mm512_loadu_ps(blk + 16 * i);
    for (int k = 0; k < 4; ++k)  // p[2k + h]: lanes 4k .. 4k+3, elements kFp4Order[4h .. 4h+3]
      for (int h = 0; h < 2; ++h) p[2 * k + h] = _mm512_permutex2var_ps(v[2 * k], ix[0][h], v[2 * k + 1]);
    for (int k = 0; k < 2; ++k)  // q[4k + 2h + g]: lanes 8k .. 8k+7, elements kFp4Order[4h + 2g ..]
      for (int h = 0; h < 2; ++h)
        for (int g = 0; g < 2; ++g) q[4 * k + 2 * h + g] = _mm512_permutex2var_ps(p[4 * k + h], ix[1][g], p[4 * k + 2 + h]);
    for (int hg = 0; hg < 4; ++hg)  // vector t = 2 hg + f: all 16 lanes of element kFp4Order[t]
      for (int f = 0; f < 2; ++f) _mm512_storeu_ps(blk + 16 * (2 * hg + f), _mm512_permutex2var_ps(q[hg], ix[2][f], q[4 + hg]));
  }
}

// fp4_int_activations (gemm.cpp) a block per pass: lane d's 8 values are lane d of the block's
// 8 vectors, so the per-lane maximum is vertical. Writes the lane units; returns the integers
// (lane d of n[t]: lane d's t-th element) and the lanes that have the form. With `fine` (the
// two-plane form, gemm.h), those lanes take u = 2^(e - 144) within kFp4IntMinExp + 3 ..
// kFp4TwoPlaneMaxExp instead, and hold only where 12 sum |n| < 2^24.
static __mmask16 fp4_int_block(const float* ab, __m512i* n, float* unit, __mmask16 fine = 0) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  __m512 v[8];
  __m512i top = _mm512_setzero_si512();  // the largest |value|'s bits (NaN above every number)
  for (int t = 0; t < 8; ++t) {
    v[t] = _mm512_loadu_ps(ab + 16 * t);
    top = _mm512_max_epu32(top, _mm512_and_si512(_mm512_castps_si512(v[t]), abs_mask));
  }
  const __m512i e = _mm512_srli_epi32(top, 23);
  const __mmask16 zero = _mm512_cmpeq_epi32_mask(top, _mm512_setzero_si512());
  const __mmask16 coarse_range = _mm512_cmpge_epi32_mask(e, _mm512_set1_epi32(kFp4IntMinExp)) &
                                 _mm512_cmple_epi32_mask(e, _mm512_set1_epi32(kFp4IntMaxExp));
  const __mmask16 fine_range = _mm512_cmpge_epi32_mask(e, _mm512_set1_epi32(kFp4IntMinExp + 3)) &
                               _mm512_cmple_epi32_mask(e, _mm512_set1_epi32(kFp4TwoPlaneMaxExp));
  __mmask16 good = zero | (coarse_range & ~fine) | (fine_range & fine);
  const __mmask16 live = good & ~zero;  // lanes with a unit (the others take 1)
  const __m512i shift = _mm512_maskz_mov_epi32(fine, _mm512_set1_epi32(3));  // fine lanes: u / 8
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 inv_u = _mm512_mask_mov_ps(
      one, live, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_sub_epi32(_mm512_add_epi32(_mm512_set1_epi32(268), shift), e), 23)));
  _mm512_storeu_ps(unit, _mm512_mask_mov_ps(one, live, _mm512_castsi512_ps(_mm512_slli_epi32(
                                                           _mm512_sub_epi32(_mm512_sub_epi32(e, _mm512_set1_epi32(15)), shift), 23))));
  __m512i sum = _mm512_setzero_si512();
  for (int t = 0; t < 8; ++t) {
    const __m512 x = _mm512_mul_ps(v[t], inv_u);  // exact (a power of two, normal range)
    n[t] = _mm512_cvtps_epi32(x);                 // round to nearest: |x| < 2^15 (fine: 2^18)
    good &= _mm512_cmpeq_ps_mask(_mm512_cvtepi32_ps(n[t]), x);
    sum = _mm512_add_epi32(sum, _mm512_abs_epi32(n[t]));
  }
  if (fine) good &= ~fine | _mm512_cmplt_epi32_mask(sum, _mm512_set1_epi32(((1 << 24) + 11) / 12));  // 12 sum < 2^24
  return good;
}

void fp4_int_activations_avx512(const float* a, int nb, uint32_t* words, float* unit, uint8_t* ok) {
  for (int b = 0; b < nb; ++b) {
    __m512i n[8];
    ok[b] = fp4_int_block(a + b * 128, n, unit + b * 16) == 0xFFFF;
    for (int u = 0; u < 4; ++u)  // dword d of vector u: (element 8d+u, element 8d+4+u), as a_pairs
      _mm512_storeu_si512(words + b * 64 + 16 * u, _mm512_or_si512(_mm512_and_si512(n[2 * u + 1], _mm512_set1_epi32(0xFFFF)),
                                                                   _mm512_slli_epi32(n[2 * u], 16)));
  }
}

void fp4_byte_activations_avx512(const float* a, int nb, uint32_t* planes, float* unit, float* corr, uint8_t* ok,
                                 uint32_t* high) {
  // Byte i of dword d meets element 8d + 2i (even) or 8d + 2i + 1 (odd); vector t holds element
  // 8d + kFp4Order[t], so these are the vectors of elements 0, 2, 4, 6 and 1, 3, 5, 7.
  constexpr int kEven[4] = {1, 5, 0, 4}, kOdd[4] = {3, 7, 2, 6};
  static_assert(kFp4Order[1] == 0 && kFp4Order[5] == 2 && kFp4Order[0] == 4 && kFp4Order[4] == 6 &&
                kFp4Order[3] == 1 && kFp4Order[7] == 3 && kFp4Order[2] == 5 && kFp4Order[6] == 7, "the FP4 lane order");
  const __m512i byte = _mm512_set1_epi32(0xFF);
  auto pack = [&](const __m512i* v, const int* order) {  // the low bytes of four vectors, in order
    __m512i r = _mm512_setzero_si512();
    for (int i = 0; i < 4; ++i) r = _mm512_or_si512(r, _mm512_slli_epi32(_mm512_and_si512(v[order[i]], byte), 8 * i));
    return r;
  };
  // n - (n mod 256, as a signed byte), over 256: the next byte plane up.
  auto up = [](__m512i v) { return _mm512_srai_epi32(_mm512_add_epi32(v, _mm512_set1_epi32(128)), 8); };
  for (int b = 0; b < nb; ++b) {
    __m512i n[8], hi[8];
    const __mmask16 lanes = fp4_int_block(a + b * 128, n, unit + b * 16);
    bool one = lanes == 0xFFFF, two = false;
    for (int t = 0; t < 8; ++t) one = one && _mm512_cmpgt_epi32_mask(n[t], _mm512_set1_epi32(32639)) == 0;  // hi must fit a signed byte
    if (!one && high) {
      // Two planes: the lanes without the one-plane form at u = 2^(e - 144) (their n are up
      // to 2^18), each n = 65536 top + 256 hi + lo with three signed byte planes.
      two = lanes == 0xFFFF || fp4_int_block(a + b * 128, n, unit + b * 16, static_cast<__mmask16>(~lanes)) == 0xFFFF;
    }
    ok[b] = one ? 1 : two ? 2 : 0;
    __m512i sum = _mm512_setzero_si512();
    for (int t = 0; t < 8; ++t) {
      hi[t] = up(n[t]);
      sum = _mm512_add_epi32(sum, n[t]);
    }
    uint32_t* out = planes + b * 64;
    _mm512_storeu_si512(out, pack(hi, kEven));
    _mm512_storeu_si512(out + 16, pack(hi, kOdd));
    _mm512_storeu_si512(out + 32, pack(n, kEven));
    _mm512_storeu_si512(out + 48, pack(n, kOdd));
    if (two) {
      __m512i top[8];
      for (int t = 0; t < 8; ++t) top[t] = up(hi[t]);
      _mm512_storeu_si512(high + b * 64, pack(top, kEven));
      _mm512_storeu_si512(high + b * 64 + 16, pack(top, kOdd));
    }
    // -12 sum n is below 2^24 (exact in fp32), times the unit (a power of two, normal) exactly.
    _mm512_storeu_ps(corr + b * 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_mullo_epi32(sum, _mm512_set1_epi32(-12))),
                                                  _mm512_loadu_ps(unit + b * 16)));
  }
}

}  // namespace dsv4::gemm_detail
