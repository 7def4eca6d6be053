// AMX back end of the FP8 GEMMs (compiled with AMX and AVX-512 flags; run only where
// cpu_has_amx_bf16() and the AVX-512 path is active). The canonical step order of gemm.h is what
// TDPBF16PS computes when lane d of a step is one tile product whose pairs are elements
// (256 s + 16 j + d, 256 s + 16 j + 8 + d), j = 0..15: its two chains from +0 are slots d and
// d + 8, and their sum goes to C, which holds lane d over the steps (kernels/tile_dot.h).
// Only plain C++ and intrinsics here (see gemm_simd.inc: no std:: templates with these flags).
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/amx_tiles.h"
#include "kernels/gemm.h"

namespace dsv4::gemm_detail {
namespace {

constexpr int kLanes = 8;                     // lanes of the step order that carry sums
constexpr int kTileDw = 256;                  // dwords of one 16 x 64-byte tile


// ---- weights: one row's step (256 e4m3 codes) -> 8 tile rows of 32 bf16 (one per lane) ----
// The codes of lanes 2q and 2q+1 are gathered into one vector whose bytes VPUNPCKLBW/HBW then
// spread into the two rows' words in order: byte P of vector q belongs to lane 2q when P mod 16 <
// 8 (unpacklo), else to lane 2q+1, as its word i = 8 (P / 16) + P mod 8; word i of lane d is
// element 16 (i / 2) + 8 (i mod 2) + d. The step's 256 codes come as four vectors: elements of
// pairs j < 8 from the first two (one VPERMT2B), j >= 8 from the last two.
struct CodeIndex {
  alignas(64) uint8_t idx[4][64] = {};
  uint64_t from_high = 0;  // bytes taken from the last two vectors (j >= 8)
  constexpr CodeIndex() {
    for (int q = 0; q < 4; ++q)
      for (int P = 0; P < 64; ++P) {
        const int lane = 2 * q + (P % 16 >= 8 ? 1 : 0), i = 8 * (P / 16) + P % 8;
        const int j = i / 2, element = 16 * j + 8 * (i % 2) + lane;
        idx[q][P] = static_cast<uint8_t>(element % 128);
        if (q == 0 && j >= 8) from_high |= uint64_t{1} << P;
      }
  }
};
constexpr CodeIndex kCodeIndex;

// bf16 bits of the e4m3 magnitudes 0..127 (code 0x7F, NaN, is never decoded: gemm.h), as two
// 64-entry byte tables each for the high and the low byte. Subnormal codes are normal bf16s.
struct Bf16Bytes {
  alignas(64) uint8_t hi[128] = {}, lo[128] = {};
  constexpr Bf16Bytes() {
    for (int m = 0; m < 128; ++m) {
      const int e = m >> 3, f = m & 7;
      uint32_t bits = 0;
      if (e > 0) {
        bits = static_cast<uint32_t>(e - 7 + 127) << 7 | static_cast<uint32_t>(f) << 4;
      } else if (f > 0) {  // f / 8 * 2^-6: the leading bit of f sets the exponent
        const int top = f >= 4 ? 2 : f >= 2 ? 1 : 0;
        bits = static_cast<uint32_t>(top - 9 + 127) << 7 | static_cast<uint32_t>((f << (7 - top)) & 0x7F);
      }
      hi[m] = static_cast<uint8_t>(bits >> 8);
      lo[m] = static_cast<uint8_t>(bits & 0xFF);
    }
  }
};
constexpr Bf16Bytes kBf16Bytes;

// Row `codes` (K codes; scales: the row's block scale bytes) into its tile rows: for step s,
// lane d, the 64 bytes at out + (s * 8 + d) * tile_dw, exact bf16 of e4m3 * sw.
inline void convert_row(const uint8_t* codes, const uint8_t* scales, int steps, uint32_t* out, int tile_dw) {
  const __m512i hi0 = _mm512_load_si512(kBf16Bytes.hi), hi1 = _mm512_load_si512(kBf16Bytes.hi + 64);
  const __m512i lo0 = _mm512_load_si512(kBf16Bytes.lo), lo1 = _mm512_load_si512(kBf16Bytes.lo + 64);
  const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i magnitude = _mm512_set1_epi16(0x7FFF);
  for (int s = 0; s < steps; ++s) {
    const uint8_t* c = codes + s * kFp8StepK;
    const __m512i in0 = _mm512_loadu_si512(c), in1 = _mm512_loadu_si512(c + 64);
    const __m512i in2 = _mm512_loadu_si512(c + 128), in3 = _mm512_loadu_si512(c + 192);
    // Words 0..15 of a lane row are block 2s, 16..31 block 2s + 1: their scales' exponents.
    const __m512i delta = _mm512_inserti64x4(_mm512_set1_epi16(static_cast<short>((scales[2 * s] - 127) * 128)),
                                             _mm256_set1_epi16(static_cast<short>((scales[2 * s + 1] - 127) * 128)), 1);
    for (int q = 0; q < 4; ++q) {
      const __m512i idx = _mm512_load_si512(kCodeIndex.idx[q]);
      const __m512i z = _mm512_mask_blend_epi8(kCodeIndex.from_high, _mm512_permutex2var_epi8(in0, idx, in1),
                                               _mm512_permutex2var_epi8(in2, idx, in3));
      const __m512i h = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(hi0, z, hi1), z, sign, 0xF8);  // | sign
      const __m512i l = _mm512_permutex2var_epi8(lo0, z, lo1);
      __m512i w0 = _mm512_unpacklo_epi8(l, h), w1 = _mm512_unpackhi_epi8(l, h);
      w0 = _mm512_mask_add_epi16(w0, _mm512_test_epi16_mask(w0, magnitude), w0, delta);
      w1 = _mm512_mask_add_epi16(w1, _mm512_test_epi16_mask(w1, magnitude), w1, delta);
      _mm512_store_si512(out + static_cast<size_t>(s * kLanes + 2 * q) * tile_dw, w0);
      _mm512_store_si512(out + static_cast<size_t>(s * kLanes + 2 * q + 1) * tile_dw, w1);
    }
  }
}

// One chain over all steps of up to 2 x 2 tile products: C tiles 0..3 (A i times B k at 2 i + k,
// stored to c[2 i + k]), A (weights) in tiles 4, 5, B (activations) in 6, 7. NR, NT: how many
// of the two A / B tiles are real.
template <int NR, int NT, int kARowBytes = 64>
inline void lane_chain(const uint32_t* a0, const uint32_t* a1, const uint32_t* b0, const uint32_t* b1, int steps,
                       int a_step_dw, int b_step_dw, float* const* c) {
  _tile_zero(0);
  if constexpr (NT > 1) _tile_zero(1);
  if constexpr (NR > 1) _tile_zero(2);
  if constexpr (NR > 1 && NT > 1) _tile_zero(3);
  for (int s = 0; s < steps; ++s) {
    DSV4_TILE_LOAD(4, a0 + static_cast<size_t>(s) * a_step_dw, kARowBytes);
    DSV4_TILE_LOAD(6, b0 + static_cast<size_t>(s) * b_step_dw, 64);
    if constexpr (NT > 1) DSV4_TILE_LOAD(7, b1 + static_cast<size_t>(s) * b_step_dw, 64);
    if constexpr (NR > 1) DSV4_TILE_LOAD(5, a1 + static_cast<size_t>(s) * a_step_dw, kARowBytes);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NT > 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (NR > 1) _tile_dpbf16ps(2, 5, 6);
    if constexpr (NR > 1 && NT > 1) _tile_dpbf16ps(3, 5, 7);
  }
  DSV4_TILE_STORE(0, c[0], 64);
  if constexpr (NT > 1) DSV4_TILE_STORE(1, c[1], 64);
  if constexpr (NR > 1) DSV4_TILE_STORE(2, c[2], 64);
  if constexpr (NR > 1 && NT > 1) DSV4_TILE_STORE(3, c[3], 64);
}

// 16 x 16 fp32 transpose in registers: v[r] lane c becomes v[c] lane r.
inline void transpose_16x16(__m512* v) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    v[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
    v[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
    v[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
    v[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(v[8 * i + j], v[8 * i + 4 + j], 0x88);
      t[8 * i + 4 + j] = _mm512_shuffle_f32x4(v[8 * i + j], v[8 * i + 4 + j], 0xDD);
    }
  for (int j = 0; j < 8; ++j) {
    v[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    v[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
  }
}

// isa_local::bf16_round on 16 values.
inline __m512 bf16_round16(__m512 x) {
  const __m512i u = _mm512_castps_si512(x), top = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32(0x7F800000));
  const __m512i even = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rne = _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), even), top);
  const __m512i quiet = _mm512_and_si512(_mm512_or_si512(u, _mm512_set1_epi32(0x400000)), top);
  return _mm512_castsi512_ps(_mm512_mask_mov_epi32(rne, nan, quiet));
}

// The outputs of up to 2 x 2 blocks of 16 rows (from row n_first, below n_end) x 16 tokens
// (from token block tb) out of their lane tiles (cbuf: lane d, block 2 i + k at (4 d + 2 i + k)
// tiles): the tree of gemm.h over 16 lanes, 16 tokens per vector (lanes past `lanes` are +0),
// then a transpose so that each token's 16 outputs are one store.
inline void store_lanes(const Problem& p, const float* cbuf, int lanes, int n_first, int n_end, int tb, int nr, int nt) {
  for (int i = 0; i < nr; ++i) {
    const int n0 = n_first + i * 16;
    if (n0 >= n_end) break;
    const __mmask16 rows = n_end - n0 >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << (n_end - n0)) - 1);
    for (int k = 0; k < nt; ++k) {
      __m512 o[16];
      for (int r = 0; r < 16; ++r) {
        __m512 l[16];
        for (int d = 0; d < 16; ++d)
          l[d] = d < lanes ? _mm512_loadu_ps(cbuf + (d * 4 + 2 * i + k) * kTileDw + r * 16) : _mm512_setzero_ps();
        for (int h = 8; h >= 1; h /= 2)
          for (int d = 0; d < h; ++d) l[d] = _mm512_add_ps(l[d], l[d + h]);
        o[r] = l[0];
      }
      transpose_16x16(o);  // o[t]: token t's outputs for rows n0 .. n0 + 15
      for (int t = 0; t < 16; ++t) {
        const int m = (tb + k) * 16 + t;
        if (m >= p.M) break;
        _mm512_mask_storeu_ps(p.y + static_cast<size_t>(m) * p.y_stride + (n0 - p.row0), rows,
                              p.round_bf16 ? bf16_round16(o[t]) : o[t]);
      }
    }
  }
}

// The products' scratch, 64-byte aligned for the tiles: the weight tile rows of a group, then
// the C tiles (gemm.h amx_scratch_floats).
inline uint32_t* tile_scratch(float* scratch) {
  return reinterpret_cast<uint32_t*>((reinterpret_cast<uintptr_t>(scratch) + 63) & ~uintptr_t{63});
}

// The weight tile rows of rows [g0, g1), whole 16-row blocks: row r at wt + (r / 16) * block_dw +
// (r % 16) * row_dw through convert(n, out), the row after next (row_bytes of codes) asked for
// while one converts; zero(out) for the rows past g1.
template <class Convert, class Zero>
inline void convert_group(const Problem& p, int g0, int g1, size_t row_bytes, uint32_t* wt, size_t block_dw, int row_dw,
                          Convert convert, Zero zero) {
  const int rows = (g1 - g0 + 15) / 16 * 16;
  for (int r = 0; r < rows; ++r) {
    uint32_t* out = wt + static_cast<size_t>(r / 16) * block_dw + static_cast<size_t>(r % 16) * row_dw;
    const int n = g0 + r;
    if (n < g1) {
      if (n + 2 < p.row_end)
        for (size_t off = 0; off < row_bytes; off += 64)
          _mm_prefetch(reinterpret_cast<const char*>(p.w) + static_cast<size_t>(n + 2) * row_bytes + off, _MM_HINT_T0);
      convert(n, out);
    } else {
      zero(out);
    }
  }
}

// The lane chains of one converted group of rows (tiles [row block][step][lane], `lanes` tiles
// apart per step; the activations' token blocks alike, block_dw each) against every token
// block: per pair of token blocks and pair of row blocks, each lane's four C tiles run a chain
// over the steps into cbuf (lane d, block 2 i + k at 4 d + 2 i + k), then the tree.
template <int kARowBytes>
inline void group_chains(const Problem& p, const uint32_t* wt, size_t block_dw, int tile_dw, int steps, int lanes, int g0,
                         int g1, float* cbuf) {
  const int token_blocks = (p.M + 15) / 16, row_blocks = (g1 - g0 + 15) / 16;
  const int step_dw = lanes * tile_dw;
  for (int tb = 0; tb < token_blocks; tb += 2) {
    const int nt = token_blocks - tb >= 2 ? 2 : 1;
    const uint32_t* b0 = p.a_amx + static_cast<size_t>(tb) * block_dw;
    const uint32_t* b1 = b0 + block_dw;
    for (int rb = 0; rb < row_blocks; rb += 2) {
      const int nr = row_blocks - rb >= 2 ? 2 : 1;
      const uint32_t* a0 = wt + static_cast<size_t>(rb) * block_dw;
      const uint32_t* a1 = a0 + block_dw;
      for (int d = 0; d < lanes; ++d) {
        float* const c[4] = {cbuf + d * 4 * kTileDw, cbuf + (d * 4 + 1) * kTileDw, cbuf + (d * 4 + 2) * kTileDw,
                             cbuf + (d * 4 + 3) * kTileDw};
        const int off = d * tile_dw;
        if (nr == 2 && nt == 2)
          lane_chain<2, 2, kARowBytes>(a0 + off, a1 + off, b0 + off, b1 + off, steps, step_dw, step_dw, c);
        else if (nr == 2)
          lane_chain<2, 1, kARowBytes>(a0 + off, a1 + off, b0 + off, b1 + off, steps, step_dw, step_dw, c);
        else if (nt == 2)
          lane_chain<1, 2, kARowBytes>(a0 + off, a1 + off, b0 + off, b1 + off, steps, step_dw, step_dw, c);
        else
          lane_chain<1, 1, kARowBytes>(a0 + off, a1 + off, b0 + off, b1 + off, steps, step_dw, step_dw, c);
      }
      store_lanes(p, cbuf, lanes, g0 + rb * 16, g1, tb, nr, nt);
    }
  }
}

}  // namespace

bool amx_fp8_activation_block(const float* x, int rows, int K, int x_stride, uint32_t* out, uint32_t* work) {
  const int steps = K / kFp8StepK;
  __mmask16 bad = 0;
  const __m512i low = _mm512_set1_epi32(0xFFFF), high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  const __m512i exp_field = _mm512_set1_epi32(0x7F800000), min_exp = _mm512_set1_epi32(71 << 23);
  for (int s = 0; s < steps; ++s) {
    // work[t][j][d]: token t's pair (j, d) of this step, from its chunk j's two 8-element halves.
    for (int t = 0; t < 16; ++t)
      for (int j = 0; j < 16; ++j) {
        __m512i v = _mm512_setzero_si512();
        if (t < rows) v = _mm512_loadu_si512(x + static_cast<size_t>(t) * x_stride + s * kFp8StepK + 16 * j);
        // Not a bf16 (low bits set), or a nonzero below 2^-56 / a denormal (bf16_dp_exact).
        const __m512i e = _mm512_and_si512(v, exp_field);
        bad |= _mm512_test_epi32_mask(v, low) | _mm512_cmpeq_epi32_mask(e, exp_field) |
               (_mm512_cmplt_epu32_mask(e, min_exp) & _mm512_test_epi32_mask(v, _mm512_set1_epi32(0x7FFFFFFF)));
        const __m512i d = _mm512_or_si512(_mm512_srli_epi32(v, 16), _mm512_and_si512(_mm512_shuffle_i32x4(v, v, 0x4E), high));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(work + t * 128 + j * 8), _mm512_castsi512_si256(d));
      }
    // Tile rows: for lane d, pair j, the 16 tokens' dwords.
    const __m512i token = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                             _mm512_set1_epi32(128));
    for (int d = 0; d < kLanes; ++d)
      for (int j = 0; j < 16; ++j)
        _mm512_storeu_si512(out + (static_cast<size_t>(s) * kLanes + d) * kTileDw + j * 16,
                            _mm512_i32gather_epi32(_mm512_add_epi32(token, _mm512_set1_epi32(j * 8 + d)), work, 4));
  }
  return bad == 0;
}

void rows_amx_fp8(const Problem& p, int n0, int n1, float* scratch) {
  amx::configure_full_tiles();
  const int steps = p.K / kFp8StepK;
  const int group = amx_group_rows(p.K, kAmxFp8TileBytesPerK);
  // Tile rows of a group: [row block][step][lane] tiles, so that a lane's tiles of consecutive
  // steps are kLanes tiles apart; then the C tiles of one (lane) x 2 x 2 block per lane.
  uint32_t* wt = tile_scratch(scratch);
  float* cbuf = reinterpret_cast<float*>(wt + static_cast<size_t>(group) * p.K / 2);
  const size_t block_dw = static_cast<size_t>(steps) * kLanes * kTileDw;  // one row block's tiles
  for (int g0 = n0; g0 < n1; g0 += group) {
    const int g1 = g0 + group < n1 ? g0 + group : n1;
    convert_group(
        p, g0, g1, static_cast<size_t>(p.K), wt, block_dw, 16,
        [&](int n, uint32_t* out) {
          convert_row(p.w + static_cast<size_t>(n) * p.K, p.ws + static_cast<size_t>(n / 128) * p.nb, steps, out, kTileDw);
        },
        [&](uint32_t* out) {
          for (int t = 0; t < steps * kLanes; ++t) _mm512_store_si512(out + static_cast<size_t>(t) * kTileDw, _mm512_setzero_si512());
        });
    group_chains<64>(p, wt, block_dw, kTileDw, steps, kLanes, g0, g1, cbuf);
  }
  _tile_release();
}

// ---- FP4 ----
namespace {

// Row `codes` (K / 2 bytes; scales: its K / 32 group scale bytes, all foldable) into tile rows,
// one per lane and block pair: for pair h (blocks 2h, 2h+1) and lane d, 8 dwords at out + (h * 16
// + d) * tile_dw, dword u = (element 8d + kFp4Order[u] of block 2h in the low word, the same of
// block 2h+1 in the high word), each the bf16 of e2m1 * sw. Two lanes per vector: word i of
// vector v is lane 2v + i / 16, slot u = (i % 16) / 2, block 2h + i % 2. Lanes 2v, 2v+1 read code
// bytes 8v .. 8v+7 of each block: those two qwords, broadcast into every 128-bit lane, let one
// in-lane byte shuffle bring every word its code byte; a variable shift and a mask give its nibble,
// and a word-table permute its value already scaled: the table holds e2m1 times the group scale of
// block 2h in its first 16 words and of block 2h+1 in the other 16 (the scale's exponent added
// to every nonzero word, once per group instead of once per vector).
struct NibbleIndex {
  alignas(64) uint8_t byte[64] = {};    // word i's code byte within its 128-bit lane (qword 0: block 2h)
  alignas(64) uint16_t shift[32] = {};  // its nibble
  alignas(64) uint16_t half[32] = {};   // 16 for block 2h+1's words: the second half of the table
  constexpr NibbleIndex() {
    for (int i = 0; i < 32; ++i) {
      const int lane = i / 16, e = kFp4Order[(i % 16) / 2], odd = i % 2;
      byte[2 * i] = static_cast<uint8_t>(8 * odd + 4 * lane + e / 2);
      byte[2 * i + 1] = 0x80;  // (zero)
      shift[i] = static_cast<uint16_t>(4 * (e % 2));
      half[i] = static_cast<uint16_t>(16 * odd);
    }
  }
};
constexpr NibbleIndex kNibbleIndex;

// The scaled tables of pair h for groups g = 0..3 (lanes 4g .. 4g+3): e2m1_words (the 16 values
// twice) plus (scale byte - 127) << 7, block 2h's byte in words 0..15 and block 2h+1's in 16..31,
// where the value is nonzero.
inline void fp4_scaled_tables(const uint8_t* scales, int h, const __m512i& e2m1_words, __mmask32 nonzero, __m512i* table) {
  const __m128i s = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales + 8 * h)));
  const __m512i d = _mm512_castsi128_si512(_mm_slli_epi16(_mm_sub_epi16(s, _mm_set1_epi16(127)), 7));
  for (int g = 0; g < 4; ++g) {
    const __m512i pick = _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16(static_cast<short>(g)),
                                                 _mm512_set1_epi16(static_cast<short>(4 + g)));
    table[g] = _mm512_mask_add_epi16(e2m1_words, nonzero, e2m1_words, _mm512_permutexvar_epi16(pick, d));
  }
}

// Rows `codes` and `codes + row_bytes` (consecutive rows r, r + 1 of a block, r even) at once: their
// tile rows of a lane are the two halves of one cache line (tile_dw dwords apart per lane), so each
// is written by one 64-byte store instead of two 32-byte ones. Without kSecond, row r + 1 is zeros
// (the last row of a group of odd length).
template <bool kSecond>
inline void convert_row_pair_fp4(const uint8_t* codes, size_t row_bytes, const uint8_t* scales, size_t scale_bytes, int nb,
                                 const __m512i& e2m1_words, uint32_t* out, int tile_dw) {
  constexpr int kRows = kSecond ? 2 : 1;
  const __m512i low_nibble = _mm512_set1_epi16(0xF);
  const __m512i byte = _mm512_load_si512(kNibbleIndex.byte), shift = _mm512_load_si512(kNibbleIndex.shift);
  const __m512i half = _mm512_load_si512(kNibbleIndex.half);
  const __mmask32 nonzero = _mm512_test_epi16_mask(e2m1_words, _mm512_set1_epi16(0x7FFF));
  for (int h = 0; h < nb / 2; ++h) {
    __m512i table[2][4];
    for (int r = 0; r < kRows; ++r) fp4_scaled_tables(scales + r * scale_bytes, h, e2m1_words, nonzero, table[r]);
    for (int v = 0; v < 8; ++v) {
      __m512i x[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
      for (int r = 0; r < kRows; ++r) {
        const uint8_t* c = codes + r * row_bytes + 128 * h + 8 * v;
        __m512i q = _mm512_broadcastq_epi64(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
        q = _mm512_mask_broadcastq_epi64(q, 0xAA, _mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + 64)));
        // (shuffled byte >> nibble shift) & 0xF | half: 0xEA is A & B | C.
        const __m512i n = _mm512_ternarylogic_epi32(_mm512_srlv_epi16(_mm512_shuffle_epi8(q, byte), shift), low_nibble, half, 0xEA);
        x[r] = _mm512_permutexvar_epi16(n, table[r][v / 2]);
      }
      _mm512_store_si512(out + static_cast<size_t>(h * 16 + 2 * v) * tile_dw, _mm512_shuffle_i64x2(x[0], x[1], 0x44));
      _mm512_store_si512(out + static_cast<size_t>(h * 16 + 2 * v + 1) * tile_dw, _mm512_shuffle_i64x2(x[0], x[1], 0xEE));
    }
  }
}

// LDTILECFG for the FP4 tiles: C (0-3) 16 x 64 bytes, A (4, 5) 16 rows of 8 pairs, B (6, 7)
// 8 rows (pairs) of 16 tokens.
struct alignas(64) Fp4TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {64, 64, 64, 64, 32, 32, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 8, 8};
};

}  // namespace

void amx_fp4_activation_block(const float* a, int rows, int nb, int a_stride, uint32_t* out) {
  // Token t's value of lane d, slot u in block b sits at 128 b + 16 u + d of its permuted row;
  // block 2h takes the low word of a pair, block 2h+1 the high one (the weights' block pairs).
  const __mmask16 real = rows >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << rows) - 1);
  const __m512i token = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(a_stride));
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int h = 0; h < nb / 2; ++h)
    for (int d = 0; d < 16; ++d)
      for (int u = 0; u < 8; ++u) {
        const __m512i at = _mm512_add_epi32(token, _mm512_set1_epi32(256 * h + 16 * u + d));
        const __m512i g0 = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), real, at, a, 4);
        const __m512i g1 = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), real, _mm512_add_epi32(at, _mm512_set1_epi32(128)), a, 4);
        _mm512_storeu_si512(out + (static_cast<size_t>(h) * 16 + d) * 128 + u * 16,
                            _mm512_or_si512(_mm512_srli_epi32(g0, 16), _mm512_and_si512(g1, high)));
      }
}

void rows_amx_fp4(const Problem& p, int n0, int n1, float* scratch) {
  const Fp4TileConfig cfg;
  asm volatile("ldtilecfg %0" : : "m"(cfg));
  constexpr int kTile4Dw = 128;  // an A or B tile of this form: 16 x 8 or 8 x 16 dwords
  constexpr int kFp4Lanes = 16;
  const int pairs = p.K / 256;
  const int group = amx_group_rows(p.K, kAmxFp4TileBytesPerK);
  alignas(64) uint16_t table[32];
  for (int i = 0; i < 32; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &p.e2m1[i % 16], 4);
    table[i] = static_cast<uint16_t>(bits >> 16);  // (e2m1 values are bf16s)
  }
  const __m512i e2m1 = _mm512_load_si512(table);
  // Tiles of a row block, and of a token block: [pair][lane], so that a lane's tiles of
  // consecutive pairs are kFp4Lanes tiles apart; then the C tiles of one (lane) x 2 x 2 block
  // per lane.
  uint32_t* wt = tile_scratch(scratch);
  float* cbuf = reinterpret_cast<float*>(wt + static_cast<size_t>(group) * p.K / 2);
  const size_t block_dw = static_cast<size_t>(pairs) * kFp4Lanes * kTile4Dw;
  for (int g0 = n0; g0 < n1; g0 += group) {
    const int g1 = g0 + group < n1 ? g0 + group : n1;
    const size_t row_bytes = static_cast<size_t>(p.K) / 2, scale_bytes = static_cast<size_t>(p.K) / 32;
    const int rows = (g1 - g0 + 15) / 16 * 16;
    for (int r = 0; r < rows; r += 2) {
      uint32_t* out = wt + static_cast<size_t>(r / 16) * block_dw + static_cast<size_t>(r % 16) * 8;
      const int n = g0 + r;
      const uint8_t* codes = p.w + static_cast<size_t>(n) * row_bytes;
      const uint8_t* scales = p.ws + static_cast<size_t>(n) * scale_bytes;
      if (n + 3 < p.row_end)  // the next pair, asked for while this one converts
        for (size_t off = 0; off < 2 * row_bytes; off += 64)
          _mm_prefetch(reinterpret_cast<const char*>(codes) + 2 * row_bytes + off, _MM_HINT_T0);
      if (n + 1 < g1)
        convert_row_pair_fp4<true>(codes, row_bytes, scales, scale_bytes, p.nb, e2m1, out, kTile4Dw);
      else if (n < g1)
        convert_row_pair_fp4<false>(codes, row_bytes, scales, scale_bytes, p.nb, e2m1, out, kTile4Dw);
      else  // rows past g1
        for (int t = 0; t < pairs * kFp4Lanes; ++t) _mm512_store_si512(out + static_cast<size_t>(t) * kTile4Dw, _mm512_setzero_si512());
    }
    group_chains<32>(p, wt, block_dw, kTile4Dw, pairs, kFp4Lanes, g0, g1, cbuf);
  }
  _tile_release();
}

}  // namespace dsv4::gemm_detail
