#include "kernels/index_score.h"

#include <algorithm>

#include "kernels/cpu_features.h"
#include "kernels/numerics.h"

namespace dsv4 {

namespace index_detail {

// Twice the e2m1 value of each code: an integer.
constexpr int kE2M1x2[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

void scores_scalar(const IndexQuery& q, const uint8_t* keys, int64_t j0, int64_t j1, float* score) {
  for (int64_t j = j0; j < j1; ++j) {
    const uint8_t* k = keys + j * kIndexKeyBytes;
    float sum = 0.0f;
    for (int h = 0; h < q.heads; ++h) {
      const uint8_t* qc = q.codes + static_cast<size_t>(h) * (kIndexDim / 2);
      float d = 0.0f;
      for (int b = 0; b < 4; ++b) {
        int dot = 0;
        for (int p = 16 * b; p < 16 * b + 16; ++p)  // code byte p: elements 2p (low), 2p+1 (high)
          dot += kE2M1x2[qc[p] & 15] * kE2M1x2[k[p] & 15] + kE2M1x2[qc[p] >> 4] * kE2M1x2[k[p] >> 4];
        const float s = e8m0_to_f32(q.scales[h * 4 + b]) * e8m0_to_f32(k[kIndexDim / 2 + b]) * 0.25f;
        d += static_cast<float>(dot) * s;
      }
      d = std::max(bf16_round(d), 0.0f);
      sum += bf16_round(d * q.weights[h]);
    }
    score[j - j0] = bf16_round(sum);
  }
}

PreparedQuery prepare_query(const IndexQuery& q) {
  const size_t H = static_cast<size_t>(q.heads);
  PreparedQuery pq{std::vector<int32_t>(H * 32), std::vector<int32_t>(H * 4), std::vector<float>(H * 4)};
  for (size_t h = 0; h < H; ++h) {
    const uint8_t* c = q.codes + h * (kIndexDim / 2);
    for (int half = 0; half < 2; ++half)
      for (int dd = 0; dd < 16; ++dd) {
        uint32_t w = 0;
        for (int i = 0; i < 4; ++i) {
          const uint8_t byte = c[4 * dd + i];
          const int v = kE2M1x2[half ? byte >> 4 : byte & 15];
          w |= static_cast<uint32_t>(static_cast<uint8_t>(static_cast<int8_t>(v))) << (8 * i);
        }
        pq.dword[h * 32 + static_cast<size_t>(half * 16 + dd)] = static_cast<int32_t>(w);
      }
    for (int b = 0; b < 4; ++b) {
      int sum = 0;
      for (int p = 16 * b; p < 16 * b + 16; ++p) sum += kE2M1x2[c[p] & 15] + kE2M1x2[c[p] >> 4];
      pq.offset[h * 4 + static_cast<size_t>(b)] = kKeyOffset * sum;
      pq.scale[h * 4 + static_cast<size_t>(b)] = e8m0_to_f32(q.scales[h * 4 + static_cast<size_t>(b)]);
    }
  }
  return pq;
}

}  // namespace index_detail

void index_scores(const IndexQuery& q, const uint8_t* keys, int64_t j0, int64_t j1, float* score) {
  if (j1 <= j0) return;
  switch (active_isa()) {
    case Isa::Avx512: index_detail::scores_avx512(q, keys, j0, j1, score); break;
    case Isa::Avx2: index_detail::scores_avx2(q, keys, j0, j1, score); break;
    default: index_detail::scores_scalar(q, keys, j0, j1, score); break;
  }
}

}  // namespace dsv4
