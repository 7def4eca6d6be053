// Lightning-indexer scores from FP4 codes: every path bit-identical to the scalar one, and the
// scalar one equal to the §6.4 formula evaluated on the decoded values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/index_score.h"
#include "kernels/numerics.h"

namespace dsv4 {
namespace {

struct Data {
  int heads;
  std::vector<uint8_t> qcodes, qscales, keys;
  std::vector<float> w;
  IndexQuery q() const { return {heads, qcodes.data(), qscales.data(), w.data()}; }
};

Data make(std::mt19937& rng, int heads, int nkeys) {
  Data d;
  d.heads = heads;
  d.qcodes.resize(static_cast<size_t>(heads) * 64);
  d.qscales.resize(static_cast<size_t>(heads) * 4);
  d.keys.resize(static_cast<size_t>(nkeys) * kIndexKeyBytes);
  d.w.resize(static_cast<size_t>(heads));
  for (auto& c : d.qcodes) c = static_cast<uint8_t>(rng());
  for (auto& s : d.qscales) s = static_cast<uint8_t>(118 + rng() % 10);
  for (int j = 0; j < nkeys; ++j) {
    uint8_t* k = d.keys.data() + static_cast<size_t>(j) * kIndexKeyBytes;
    for (int p = 0; p < 64; ++p) k[p] = static_cast<uint8_t>(rng());
    for (int b = 0; b < 4; ++b) k[64 + b] = static_cast<uint8_t>(118 + rng() % 10);
  }
  std::normal_distribution<float> nd(0.0f, 0.05f);
  for (auto& v : d.w) v = bf16_round(nd(rng));
  return d;
}

std::vector<float> scores(const Data& d, int64_t j0, int64_t j1) {
  std::vector<float> s(static_cast<size_t>(j1 - j0), -7.0f);
  index_scores(d.q(), d.keys.data(), j0, j1, s.data());
  return s;
}

TEST(IndexScore, AllPathsBitIdentical) {
  std::mt19937 rng(21);
  // (130 heads: the AVX-512 path takes heads 128 at a time)
  for (const auto& [heads, nkeys] : {std::pair{64, 1}, {64, 15}, {64, 16}, {64, 17}, {64, 100}, {64, 333}, {130, 40}, {3, 17}}) {
    const Data d = make(rng, heads, nkeys);
    const Isa saved = active_isa();
    force_isa(Isa::Scalar);
    const auto ref = scores(d, 0, nkeys);
    const auto ref_part = scores(d, nkeys / 3, nkeys);
    for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
      if (!isa_supported(isa)) continue;
      force_isa(isa);
      const auto got = scores(d, 0, nkeys);
      const auto got_part = scores(d, nkeys / 3, nkeys);
      for (int j = 0; j < nkeys; ++j) ASSERT_EQ(f32_bits(ref[j]), f32_bits(got[j])) << isa_name(isa) << " key " << j;
      for (size_t j = 0; j < got_part.size(); ++j) ASSERT_EQ(f32_bits(ref_part[j]), f32_bits(got_part[j])) << "range";
      for (size_t j = 0; j < got_part.size(); ++j) ASSERT_EQ(f32_bits(ref_part[j]), f32_bits(ref[nkeys / 3 + j]));
    }
    force_isa(saved);
  }
}

// The §6.4 formula on decoded fp32 values: per 32-block exact dot products (every product and
// partial sum of e2m1 x 2^e values is exact here), blocks added in order, then the roundings.
TEST(IndexScore, MatchesTheFormulaOnDecodedValues) {
  std::mt19937 rng(22);
  const int H = 8, nkeys = 50;
  const Data d = make(rng, H, nkeys);
  auto value = [](const uint8_t* codes, const uint8_t* scales, int e) {
    const uint8_t byte = codes[e / 2];
    return e2m1_to_f32(e % 2 ? byte >> 4 : byte & 15) * e8m0_to_f32(scales[e / 32]);
  };
  const auto got = scores(d, 0, nkeys);
  for (int j = 0; j < nkeys; ++j) {
    const uint8_t* k = d.keys.data() + static_cast<size_t>(j) * kIndexKeyBytes;
    float sum = 0.0f;
    for (int h = 0; h < H; ++h) {
      float dot = 0.0f;
      for (int b = 0; b < 4; ++b) {
        double blk = 0.0;
        for (int e = 32 * b; e < 32 * b + 32; ++e)
          blk += static_cast<double>(value(&d.qcodes[h * 64], &d.qscales[h * 4], e)) * value(k, k + 64, e);
        dot += static_cast<float>(blk);
      }
      sum += bf16_round(std::max(bf16_round(dot), 0.0f) * d.w[h]);
    }
    EXPECT_EQ(f32_bits(bf16_round(sum)), f32_bits(got[j])) << "key " << j;
  }
}

}  // namespace
}  // namespace dsv4
