// sparse_attention_heads (kernels/attention.h): the formula on one block, and heads independent
// of how they are grouped into calls.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/attention.h"
#include "kernels/dot.h"
#include "kernels/numerics.h"

namespace dsv4 {
namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

struct Case {
  int H, Dh;
  std::vector<float> q, kv, sink;
  std::vector<const float*> rows;
};
Case make(std::mt19937& rng, int H, int Dh, int nrows, int every_null) {
  Case c{H, Dh, {}, {}, {}, {}};
  std::normal_distribution<float> nd;
  c.q.resize(static_cast<size_t>(H) * Dh);
  c.kv.resize(static_cast<size_t>(nrows) * Dh);
  c.sink.resize(static_cast<size_t>(H));
  for (auto& v : c.q) v = bf16_round(nd(rng));
  for (auto& v : c.kv) v = bf16_round(nd(rng));
  for (auto& v : c.sink) v = nd(rng);
  for (int r = 0; r < nrows; ++r)
    c.rows.push_back(every_null > 0 && r % every_null == 1 ? nullptr : &c.kv[static_cast<size_t>(r) * Dh]);
  return c;
}

// One block (up to 64 entries): m = max score, p = exp(score - m) summed into den in order and
// then rounded to bf16, acc = the p-weighted rows by fma in order, out = bf16(acc / (den + e^(sink - m))).
TEST(Attention, OneBlockIsTheFormula) {
  std::mt19937 rng(5);
  const float scale = 1.0f / std::sqrt(512.0f);
  for (int nrows : {1, 17, 64}) {
    Case c = make(rng, 3, 512, nrows, 5);
    std::vector<float> o(c.q.size(), -1.0f);
    sparse_attention_heads(c.q.data(), 0, c.H, c.Dh, c.rows.data(), c.rows.size(), scale, c.sink.data(), o.data());
    for (int h = 0; h < c.H; ++h) {
      const float* qh = &c.q[static_cast<size_t>(h) * c.Dh];
      std::vector<float> s;
      std::vector<const float*> live;
      for (const float* r : c.rows)
        if (r) {
          s.push_back(dot_f32(qh, r, c.Dh) * scale);
          live.push_back(r);
        }
      float m = -INFINITY;
      for (float v : s) m = std::max(m, v);
      float den = 0.0f;
      std::vector<float> acc(static_cast<size_t>(c.Dh), 0.0f);
      for (size_t i = 0; i < s.size(); ++i) {
        const float p = std::exp(s[i] - m);
        den += p;
        const float pb = bf16_round(p);
        for (int k = 0; k < c.Dh; ++k) acc[static_cast<size_t>(k)] = std::fma(pb, live[i][k], acc[static_cast<size_t>(k)]);
      }
      const float d = den + std::exp(c.sink[static_cast<size_t>(h)] - m);
      for (int k = 0; k < c.Dh; ++k)
        ASSERT_EQ(bits(o[static_cast<size_t>(h) * c.Dh + k]), bits(bf16_round(acc[static_cast<size_t>(k)] / d)))
            << "rows " << nrows << " head " << h << " k " << k;
    }
  }
}

// Many blocks (and one with no present row): every head gives the same bits alone, in a group,
// or in any split of the heads over calls.
TEST(Attention, HeadsDoNotDependOnTheirGrouping) {
  std::mt19937 rng(6);
  Case c = make(rng, 9, 512, 700, 3);
  for (int r = 128; r < 192; ++r) c.rows[static_cast<size_t>(r)] = nullptr;  // a block with no rows
  const float scale = 0.04f;
  std::vector<float> all(c.q.size());
  sparse_attention_heads(c.q.data(), 0, c.H, c.Dh, c.rows.data(), c.rows.size(), scale, c.sink.data(), all.data());
  for (int split : {1, 4, 5}) {
    std::vector<float> parts(c.q.size());
    sparse_attention_heads(c.q.data(), 0, split, c.Dh, c.rows.data(), c.rows.size(), scale, c.sink.data(), parts.data());
    sparse_attention_heads(c.q.data(), split, c.H, c.Dh, c.rows.data(), c.rows.size(), scale, c.sink.data(), parts.data());
    for (size_t i = 0; i < all.size(); ++i) ASSERT_EQ(bits(all[i]), bits(parts[i])) << "split " << split << " at " << i;
  }
  for (float v : all) ASSERT_TRUE(std::isfinite(v));
}

}  // namespace
}  // namespace dsv4
