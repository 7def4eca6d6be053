// Lightning-indexer scores (spec model.md §6.4) computed straight from the FP4 codes.
//
// After the FP4 simulation every indexer query and key value is e2m1 x a power-of-two scale per
// 32 elements, so the dot product of one 32-block is an exact small-integer sum of the doubled
// e2m1 values ({0, 1, 2, 3, 4, 6, 8, 12} with sign). Canonical order (every path bit-identical):
//   d_h   = 0; for blocks b = 0..3: d_h += float(I_hb) * ((sq_hb * sk_b) * 0.25)   (fp32)
//   d_h   = max(bf16(d_h), 0)
//   score = bf16( sum over h = 0..H-1 in order of bf16(d_h * w_h) )                 (fp32 sum)
// with I_hb the integer block dot product and sq, sk the ue8m0 scales as fp32. Inputs are finite.
#pragma once
#include <cstdint>
#include <vector>

namespace dsv4 {

constexpr int kIndexDim = 128;     // indexer head dim
constexpr int kIndexKeyBytes = 68;  // one key row: 64 packed code bytes, then 4 ue8m0 scales

struct IndexQuery {
  int heads = 0;
  const uint8_t* codes = nullptr;   // [heads][64] packed e2m1, low nibble = even element
  const uint8_t* scales = nullptr;  // [heads][4] ue8m0
  const float* weights = nullptr;   // [heads] head weights (bf16 values)
};

// score[j - j0] for the keys j in [j0, j1) of `keys` (rows of kIndexKeyBytes, as IndexKeyStore
// holds them).
void index_scores(const IndexQuery& q, const uint8_t* keys, int64_t j0, int64_t j1, float* score);

namespace index_detail {
// The query in the SIMD paths' layout (built once per call by prepare_query, plain C++):
// dword[h][half * 16 + dd] = 4 signed doubled e2m1 values of code bytes 4dd .. 4dd+3 (half 0:
// low nibbles, half 1: high nibbles); offset[h][b] = 12 x the sum of block b's values (the keys
// enter as unsigned bytes 2 e2m1 + 12); scale[h][b] = the block's ue8m0 scale as fp32.
constexpr int kKeyOffset = 12;
struct PreparedQuery {
  std::vector<int32_t> dword, offset;
  std::vector<float> scale;
};
PreparedQuery prepare_query(const IndexQuery& q);

void scores_scalar(const IndexQuery& q, const uint8_t* keys, int64_t j0, int64_t j1, float* score);
void scores_avx2(const IndexQuery& q, const uint8_t* keys, int64_t j0, int64_t j1, float* score);
void scores_avx512(const IndexQuery& q, const uint8_t* keys, int64_t j0, int64_t j1, float* score);
}  // namespace index_detail

}  // namespace dsv4
