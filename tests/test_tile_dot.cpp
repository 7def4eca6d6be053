// The scalar model of AMX's TDPBF16PS (kernels/tile_dot.h) and, where the CPU has AMX, the
// instruction itself against the model, bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/tile_dot.h"

namespace dsv4 {
namespace {

constexpr int kPairWords = 2 * kTilePairs;  // bf16 per row of a (and of b)

uint16_t bf16_of(float f) {  // exact for the values used here
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return static_cast<uint16_t>(u >> 16);
}

struct Tiles {
  std::vector<uint16_t> a = std::vector<uint16_t>(kTileRows * kPairWords, 0);
  std::vector<uint16_t> b = std::vector<uint16_t>(kTilePairs * kPairWords, 0);
  std::vector<float> c = std::vector<float>(kTileRows * kTileRows, 0.0f);
  // Element s (0: first, 1: second) of pair k for output (m, n).
  void set(int m, int n, int k, int s, float av, float bv) {
    a[m * kPairWords + 2 * k + s] = bf16_of(av);
    b[k * kPairWords + 2 * n + s] = bf16_of(bv);
  }
};

// Within one instruction the first and the second elements of the pairs form two chains from
// zero, and only their sum meets c: here 1 + (2^24 + -2^24) = 1, where a chain continuing from
// c would lose the 1 (1 + 2^24 rounds to 2^24).
TEST(TileDot, ModelAddsTwoChainsFromZeroToC) {
  Tiles t;
  t.c[0] = 1.0f;
  t.set(0, 0, 0, 0, 0x1p12f, 0x1p12f);
  t.set(0, 0, 0, 1, -0x1p12f, 0x1p12f);
  tile_dot_bf16_model(t.a.data(), t.b.data(), t.c.data());
  EXPECT_EQ(t.c[0], 1.0f);
  // The first chain: 2^24 + 1 rounds to 2^24 at each step, however many ones follow.
  Tiles u;
  u.set(0, 0, 0, 0, 0x1p12f, 0x1p12f);
  for (int k = 1; k < kTilePairs; ++k) u.set(0, 0, k, 0, 1.0f, 1.0f);
  tile_dot_bf16_model(u.a.data(), u.b.data(), u.c.data());
  EXPECT_EQ(u.c[0], 0x1p24f);
  // Separate chains: the ones in the second element add up before they meet 2^24.
  Tiles v;
  v.set(0, 0, 0, 0, 0x1p12f, 0x1p12f);
  for (int k = 1; k < kTilePairs; ++k) v.set(0, 0, k, 1, 1.0f, 1.0f);
  tile_dot_bf16_model(v.a.data(), v.b.data(), v.c.data());
  EXPECT_EQ(v.c[0], 0x1p24f + 16.0f);  // 2^24 + 15, rounded to even
}

TEST(TileDot, ModelReadsDenormalsAsZeroAndFlushesThem) {
  Tiles t;
  t.c[0] = 3.0f;
  const uint16_t denormal = 0x0040;  // 2^-127 as bf16
  t.a[0] = denormal;
  t.b[0] = bf16_of(0x1p100f);
  tile_dot_bf16_model(t.a.data(), t.b.data(), t.c.data());
  EXPECT_EQ(t.c[0], 3.0f);  // 2^-27 had it been read as a number
  Tiles u;                  // a normal product below 2^-126 is flushed
  u.set(0, 0, 0, 0, 0x1p-70f, 0x1p-70f);
  tile_dot_bf16_model(u.a.data(), u.b.data(), u.c.data());
  EXPECT_EQ(u.c[0], 0.0f);
}

// Random tiles of mixed magnitudes and signs, c mostly nonzero: TDPBF16PS equals the model
// in every element (and the hand cases above too).
TEST(TileDot, AmxMatchesTheModel) {
  if (!cpu_has_amx_bf16()) GTEST_SKIP() << "no AMX-BF16 on this CPU (or no OS permission for it)";
  std::mt19937 rng(11);
  auto random_bf16 = [&] {
    const uint32_t exponent = 127 + rng() % 24 - 12, mantissa = rng() & 0x7f, sign = (rng() & 1) << 15;
    return static_cast<uint16_t>(sign | exponent << 7 | mantissa);
  };
  long mismatches = 0;
  for (int round = 0; round < 200; ++round) {
    Tiles t;
    for (auto& h : t.a) h = rng() % 8 ? random_bf16() : 0;
    for (auto& h : t.b) h = random_bf16();
    for (auto& f : t.c) f = rng() % 4 ? std::ldexp(static_cast<float>(static_cast<int>(rng() % 2000001) - 1000000), -static_cast<int>(rng() % 24)) : 0.0f;
    std::vector<float> want = t.c, got = t.c;
    tile_dot_bf16_model(t.a.data(), t.b.data(), want.data());
    tile_detail::tile_dot_bf16_amx(t.a.data(), t.b.data(), got.data());
    for (size_t i = 0; i < want.size(); ++i) mismatches += std::memcmp(&want[i], &got[i], sizeof(float)) != 0;
  }
  EXPECT_EQ(mismatches, 0);
  Tiles t;  // the cancellation case
  t.c[0] = 1.0f;
  t.set(0, 0, 0, 0, 0x1p12f, 0x1p12f);
  t.set(0, 0, 0, 1, -0x1p12f, 0x1p12f);
  tile_detail::tile_dot_bf16_amx(t.a.data(), t.b.data(), t.c.data());
  EXPECT_EQ(t.c[0], 1.0f);
}

}  // namespace
}  // namespace dsv4
