// AVX2 indexer scores: as index_score_avx512.cpp with 8 keys per group and, without VNNI,
// VPMADDUBSW (pairs of u8 x s8 into int16: at most 2 * 24 * 12, no saturation) followed by
// VPMADDWD with ones for each 4-value dword.
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "kernels/index_score.h"
#include "kernels/numerics.h"

namespace dsv4::index_detail {
namespace {

// Transposes 8 vectors of 8 dwords in place: afterwards v[i] lane r = old v[r] lane i.
inline void transpose8(__m256i* v) {
  __m256i t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm256_unpackhi_epi32(v[i], v[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
    u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
    u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
    u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // u[4a + c], 128-bit lane L: column 4L + c of rows 4a .. 4a+3.
  for (int c = 0; c < 4; ++c) {
    v[c] = _mm256_permute2x128_si256(u[c], u[4 + c], 0x20);
    v[4 + c] = _mm256_permute2x128_si256(u[c], u[4 + c], 0x31);
  }
}

inline __m256 bf16_round8(__m256 x) {  // finite values: round to nearest even at bit 16
  const __m256i u = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd);
  return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

}  // namespace

void scores_avx2(const IndexQuery& q, const uint8_t* keys, int64_t j0, int64_t j1, float* score) {
  const int H = q.heads;
  const PreparedQuery pq = prepare_query(q);
  const std::vector<int32_t>& qd = pq.dword;
  const std::vector<int32_t>& qoff = pq.offset;
  const std::vector<float>& qs = pq.scale;
  const __m256i lut = _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0, 12, 13, 14, 15, 16, 18,
                                       20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
  const __m256i nib = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  for (int64_t g = j0; g < j1; g += 8) {
    const int count = static_cast<int>(j1 - g < 8 ? j1 - g : 8);
    // kv[half][part][r]: key r's dwords 8 part .. 8 part + 7 of that half (then transposed).
    __m256i kv[2][2][8];
    alignas(32) float sk[4][8];
    for (int r = 0; r < 8; ++r) {
      const uint8_t* k = keys + (g + (r < count ? r : count - 1)) * kIndexKeyBytes;
      for (int part = 0; part < 2; ++part) {
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(k + 32 * part));
        kv[0][part][r] = _mm256_shuffle_epi8(lut, _mm256_and_si256(c, nib));
        kv[1][part][r] = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(c, 4), nib));
      }
      for (int b = 0; b < 4; ++b) sk[b][r] = e8m0_to_f32(k[kIndexDim / 2 + b]);
    }
    for (auto& half : kv)
      for (auto& part : half) transpose8(part);
    __m256 skv[4];
    for (int b = 0; b < 4; ++b) skv[b] = _mm256_load_ps(sk[b]);
    // Block by block over up to 128 heads (as the AVX-512 path): a block needs 8 of the 32 key
    // vectors, so they fit the 16 registers; each head's d waits in `dh` between blocks and still
    // adds its blocks in order 0 .. 3, and sum its heads in order.
    constexpr int kHeadsPerPass = 128;
    alignas(32) float dh[kHeadsPerPass * 8];
    __m256 sum = _mm256_setzero_ps();
    for (int hp = 0; hp < H; hp += kHeadsPerPass) {
      const int hn = H - hp < kHeadsPerPass ? H - hp : kHeadsPerPass;
      for (int b = 0; b < 4; ++b) {
        __m256i key[2][4];  // [half][t]: dword 4 b + t of each key
        for (int half = 0; half < 2; ++half)
          for (int t = 0; t < 4; ++t) key[half][t] = kv[half][(4 * b + t) / 8][(4 * b + t) % 8];
        for (int i = 0; i < hn; ++i) {
          const size_t h = static_cast<size_t>(hp + i);
          const int32_t* qh = qd.data() + h * 32;
          __m256i acc = _mm256_setzero_si256();
          for (int t = 0; t < 4; ++t) {
            const int dd = 4 * b + t;
            for (int half = 0; half < 2; ++half) {
              const __m256i pr = _mm256_maddubs_epi16(key[half][t], _mm256_set1_epi32(qh[16 * half + dd]));
              acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pr, ones));
            }
          }
          acc = _mm256_sub_epi32(acc, _mm256_set1_epi32(qoff[h * 4 + static_cast<size_t>(b)]));
          const __m256 s = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(qs[h * 4 + static_cast<size_t>(b)]), skv[b]),
                                         _mm256_set1_ps(0.25f));
          const __m256 x = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), s);
          float* dp = dh + static_cast<size_t>(i) * 8;
          _mm256_store_ps(dp, _mm256_add_ps(b == 0 ? _mm256_setzero_ps() : _mm256_load_ps(dp), x));
        }
      }
      for (int i = 0; i < hn; ++i) {
        const __m256 d = _mm256_max_ps(_mm256_setzero_ps(), bf16_round8(_mm256_load_ps(dh + static_cast<size_t>(i) * 8)));  // d for two zeros, as std::max
        sum = _mm256_add_ps(sum, bf16_round8(_mm256_mul_ps(d, _mm256_set1_ps(q.weights[hp + i]))));
      }
    }
    alignas(32) float out[8];
    _mm256_store_ps(out, bf16_round8(sum));
    std::memcpy(score + (g - j0), out, static_cast<size_t>(count) * sizeof(float));
  }
}

}  // namespace dsv4::index_detail
