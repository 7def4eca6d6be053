// AVX-512 VNNI indexer scores: 16 keys per group, one key per 32-bit lane. The keys' code bytes
// become unsigned bytes (2 e2m1 + 12) and are transposed so that a dword lane holds 4 values of
// its key; VPDPBUSD then multiplies them by 4 signed query values broadcast to all lanes. The
// +12 offset comes back out exactly as 12 * (sum of the query block's values).
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__  // (a GCC-only warning group; clang reports it unknown)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "kernels/index_score.h"
#include "kernels/numerics.h"

namespace dsv4::index_detail {
namespace {

// Transposes 16 vectors of 16 dwords in place: afterwards v[i] lane r = old v[r] lane i.
inline void transpose16(__m512i* v) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Now v[4a + c] holds, in 128-bit lane L, elements 4L + c' of rows 4a .. 4a+3 (c' = c's order).
  for (int a = 0; a < 16; a += 8)
    for (int c = 0; c < 4; ++c) {
      t[a + c] = _mm512_shuffle_i32x4(v[a + c], v[a + 4 + c], 0x88);
      t[a + 4 + c] = _mm512_shuffle_i32x4(v[a + c], v[a + 4 + c], 0xDD);
    }
  for (int c = 0; c < 4; ++c) {
    v[c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0x88);
    v[8 + c] = _mm512_shuffle_i32x4(t[c], t[8 + c], 0xDD);
    v[4 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0x88);
    v[12 + c] = _mm512_shuffle_i32x4(t[4 + c], t[12 + c], 0xDD);
  }
}

inline __m512 bf16_round16(__m512 x) {  // finite values: round to nearest even at bit 16
  const __m512i u = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), odd);
  return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

}  // namespace

void scores_avx512(const IndexQuery& q, const uint8_t* keys, int64_t j0, int64_t j1, float* score) {
  const int H = q.heads;
  // The query: per head, dwords of 4 signed values in the key layout (half 0 = low nibbles of
  // code bytes 4dd .. 4dd+3, half 1 = high nibbles), 12 x block sums, and block scales.
  const PreparedQuery pq = prepare_query(q);
  const std::vector<int32_t>& qd = pq.dword;
  const std::vector<int32_t>& qoff = pq.offset;
  const std::vector<float>& qs = pq.scale;
  const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0));
  const __m512i nib = _mm512_set1_epi8(0x0F);
  for (int64_t g = j0; g < j1; g += 16) {
    const int count = static_cast<int>(j1 - g < 16 ? j1 - g : 16);
    __m512i lo[16], hi[16];
    alignas(64) float sk[4][16];
    for (int r = 0; r < 16; ++r) {
      const uint8_t* k = keys + (g + (r < count ? r : count - 1)) * kIndexKeyBytes;
      const __m512i c = _mm512_loadu_si512(k);
      lo[r] = _mm512_shuffle_epi8(lut, _mm512_and_si512(c, nib));
      hi[r] = _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(c, 4), nib));
      for (int b = 0; b < 4; ++b) sk[b][r] = e8m0_to_f32(k[kIndexDim / 2 + b]);
    }
    transpose16(lo);
    transpose16(hi);
    __m512 skv[4];
    for (int b = 0; b < 4; ++b) skv[b] = _mm512_load_ps(sk[b]);
    // Block by block over up to 128 heads, each head's d waiting in `dh` between blocks: a block
    // needs 8 of the 32 key vectors, so they stay in registers (all 32 at once spilled). Each
    // head's d still adds its blocks in order 0 .. 3, and sum its heads in order.
    constexpr int kHeadsPerPass = 128;
    alignas(64) float dh[kHeadsPerPass * 16];
    __m512 sum = _mm512_setzero_ps();
    for (int hp = 0; hp < H; hp += kHeadsPerPass) {
      const int hn = H - hp < kHeadsPerPass ? H - hp : kHeadsPerPass;
      for (int b = 0; b < 4; ++b) {
        const __m512i l0 = lo[4 * b], l1 = lo[4 * b + 1], l2 = lo[4 * b + 2], l3 = lo[4 * b + 3];
        const __m512i h0 = hi[4 * b], h1 = hi[4 * b + 1], h2 = hi[4 * b + 2], h3 = hi[4 * b + 3];
        for (int i = 0; i < hn; ++i) {
          const size_t h = static_cast<size_t>(hp + i);
          const int32_t* qh = qd.data() + h * 32 + 4 * b;
          __m512i acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), l0, _mm512_set1_epi32(qh[0]));
          acc = _mm512_dpbusd_epi32(acc, h0, _mm512_set1_epi32(qh[16]));
          acc = _mm512_dpbusd_epi32(acc, l1, _mm512_set1_epi32(qh[1]));
          acc = _mm512_dpbusd_epi32(acc, h1, _mm512_set1_epi32(qh[17]));
          acc = _mm512_dpbusd_epi32(acc, l2, _mm512_set1_epi32(qh[2]));
          acc = _mm512_dpbusd_epi32(acc, h2, _mm512_set1_epi32(qh[18]));
          acc = _mm512_dpbusd_epi32(acc, l3, _mm512_set1_epi32(qh[3]));
          acc = _mm512_dpbusd_epi32(acc, h3, _mm512_set1_epi32(qh[19]));
          acc = _mm512_sub_epi32(acc, _mm512_set1_epi32(qoff[h * 4 + static_cast<size_t>(b)]));
          const __m512 s = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(qs[h * 4 + static_cast<size_t>(b)]), skv[b]),
                                         _mm512_set1_ps(0.25f));
          const __m512 x = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), s);
          float* dp = dh + static_cast<size_t>(i) * 16;
          _mm512_store_ps(dp, _mm512_add_ps(b == 0 ? _mm512_setzero_ps() : _mm512_load_ps(dp), x));
        }
      }
      for (int i = 0; i < hn; ++i) {
        // max(zero, x) returns x for two zeros and for NaN, as std::max(x, 0.0f) does.
        const __m512 d = _mm512_max_ps(_mm512_setzero_ps(), bf16_round16(_mm512_load_ps(dh + static_cast<size_t>(i) * 16)));
        sum = _mm512_add_ps(sum, bf16_round16(_mm512_mul_ps(d, _mm512_set1_ps(q.weights[hp + i]))));
      }
    }
    alignas(64) float out[16];
    _mm512_store_ps(out, bf16_round16(sum));
    std::memcpy(score + (g - j0), out, static_cast<size_t>(count) * sizeof(float));
  }
}

}  // namespace dsv4::index_detail
