// Exact primitives of spec model.md §4: bit-exact against brute-force definitions.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/numerics.h"

using namespace dsv4;

namespace {
// Nearest grid value, ties to the even code (the definition the fast rounding must equal).
float brute_round(float x, const float* grid, int n_codes, float maxv) {
  const float a = std::min(std::fabs(x), maxv);
  int best = 0;
  for (int c = 1; c < n_codes; ++c) {
    const float d = std::fabs(grid[c] - a), db = std::fabs(grid[best] - a);
    if (d < db || (d == db && (c % 2 == 0))) best = c;
  }
  return std::signbit(x) ? -grid[best] : grid[best];
}
// The bit-arithmetic rounding of the activation quantiser equals the reference rule for
// |x| <= 448: a sweep over the bit patterns, and every float within 16 ulps of each e4m3 value
// and of each midpoint between neighbours (where the ties and carries are), both signs.
TEST(Numerics, RoundToE4m3ClampedMatchesReference) {
  std::vector<float> probes;
  const uint32_t top = f32_bits(448.0f);
  for (uint32_t a = 0; a <= top; a += 4099) probes.push_back(f32_from_bits(a));
  std::vector<float> grid;
  for (int c = 0; c < 127; ++c) grid.push_back(kE4M3Values[c]);  // 0 .. 448, ascending
  for (size_t i = 0; i + 1 < grid.size(); ++i) {
    for (float centre : {grid[i], 0.5f * (grid[i] + grid[i + 1])}) {
      const uint32_t cb = f32_bits(centre);
      for (int d = -16; d <= 16; ++d) {
        const int64_t b = static_cast<int64_t>(cb) + d;
        if (b >= 0 && b <= top) probes.push_back(f32_from_bits(static_cast<uint32_t>(b)));
      }
    }
  }
  size_t bad = 0;
  for (float p : probes)
    for (float x : {p, -p})
      if (f32_bits(round_to_e4m3_clamped(x)) != f32_bits(round_to_e4m3(x)) && bad++ < 5)
        ADD_FAILURE() << "x=" << x << " bits=" << std::hex << f32_bits(x);
  EXPECT_EQ(bad, 0u) << "of " << 2 * probes.size();
}

}  // namespace

TEST(Numerics, Bf16RoundsToNearestEven) {
  EXPECT_EQ(bf16_round(1.0f + 0x1p-8f), 1.0f);                  // tie -> even (1.0)
  EXPECT_EQ(bf16_round(1.0f + 3 * 0x1p-8f), 1.0f + 0x1p-6f);    // tie -> even (odd mantissa rounds up)
  EXPECT_EQ(bf16_round(1.0f + 0x1p-8f + 0x1p-20f), 1.0f + 0x1p-7f);
  EXPECT_TRUE(std::isnan(bf16_round(NAN)));
}

TEST(Numerics, E2M1SpecExamples) {
  EXPECT_EQ(round_to_e2m1(2.5f), 2.0f);
  EXPECT_EQ(round_to_e2m1(5.0f), 4.0f);
  EXPECT_EQ(round_to_e2m1(0.25f), 0.0f);
  EXPECT_EQ(round_to_e2m1(0.75f), 1.0f);
  EXPECT_EQ(round_to_e2m1(1.25f), 1.0f);
  EXPECT_EQ(round_to_e2m1(5.5f), 6.0f);
  EXPECT_EQ(round_to_e2m1(-5.5f), -6.0f);
}

TEST(Numerics, RoundingEqualsNearestGridValue) {
  float e4m3_pos[128];
  for (int c = 0; c < 127; ++c) e4m3_pos[c] = e4m3_to_f32(static_cast<uint8_t>(c));
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1, 1);
  for (int i = 0; i < 200000; ++i) {
    const float x = u(rng) * std::ldexp(1.0f, static_cast<int>(rng() % 20) - 10);
    if (std::fabs(x) <= 448.0f) {
      ASSERT_EQ(round_to_e4m3(x), brute_round(x, e4m3_pos, 127, 448.0f)) << x;
    }
    const float y = u(rng) * 6.0f;
    ASSERT_EQ(round_to_e2m1(y), brute_round(y, kE2M1Values, 8, 6.0f)) << y;
  }
}

// The e2m1 rounding (an add-and-subtract per step size) and the FP4 simulation's codes equal the
// nearest-grid definition where it is decided: a sweep over the bit patterns up to 6, every
// float within 16 ulps of each grid value and midpoint (the ties), both signs, and past 6.
TEST(Numerics, RoundToE2m1MatchesReferenceAtTiesAndSweep) {
  std::vector<float> probes{0.0f, 6.5f, 100.0f, 0x1p-140f};
  const uint32_t top = f32_bits(6.0f);
  for (uint32_t a = 0; a <= top; a += 1021) probes.push_back(f32_from_bits(a));
  for (int c = 0; c < 7; ++c)
    for (float centre : {kE2M1Values[c], 0.5f * (kE2M1Values[c] + kE2M1Values[c + 1]), kE2M1Values[c + 1]})
      for (int d = -16; d <= 16; ++d) {
        const int64_t b = static_cast<int64_t>(f32_bits(centre)) + d;
        if (b >= 0) probes.push_back(f32_from_bits(static_cast<uint32_t>(b)));
      }
  size_t bad = 0;
  for (float p : probes)
    for (float x : {p, -p})
      if (f32_bits(round_to_e2m1(x)) != f32_bits(brute_round(x, kE2M1Values, 8, 6.0f)) && bad++ < 5)
        ADD_FAILURE() << "x=" << x << " bits=" << std::hex << f32_bits(x);
  EXPECT_EQ(bad, 0u) << "of " << 2 * probes.size();
  EXPECT_TRUE(std::isnan(round_to_e2m1(NAN)));
  // The simulation's codes: a block whose scale is 1 (amax 6) holds the ties themselves.
  float blk[32];
  for (int i = 0; i < 32; ++i) blk[i] = (i % 2 ? -1.0f : 1.0f) * static_cast<float>(i % 13) * 0.25f;
  blk[31] = 6.0f;
  float want[32];
  for (int i = 0; i < 32; ++i) want[i] = round_to_e2m1(blk[i]);
  uint8_t packed[16], scale = 0;
  fp4_simulate_codes(blk, 32, packed, &scale);
  EXPECT_EQ(e8m0_to_f32(scale), 1.0f);
  for (int k = 0; k < 32; ++k) {
    const uint8_t nib = k % 2 ? packed[k / 2] >> 4 : packed[k / 2] & 15;
    EXPECT_EQ(nib, encode_e2m1(want[k])) << k;
    EXPECT_EQ(f32_bits(blk[k]), f32_bits(want[k])) << k;
  }
}

TEST(Numerics, CodecsRoundTrip) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(e4m3_to_f32(static_cast<uint8_t>(c))));
      continue;
    }
    EXPECT_EQ(encode_e4m3(e4m3_to_f32(static_cast<uint8_t>(c))), c) << c;
  }
  EXPECT_EQ(e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(e4m3_to_f32(0x01), 0x1p-9f);  // smallest subnormal
  for (int c = 0; c < 16; ++c) EXPECT_EQ(encode_e2m1(e2m1_to_f32(static_cast<uint8_t>(c))), c);
  EXPECT_EQ(e8m0_to_f32(127), 1.0f);
  EXPECT_EQ(e8m0_to_f32(0), 0x1p-127f);
  EXPECT_TRUE(std::isnan(e8m0_to_f32(255)));
}

TEST(Numerics, Pow2CeilIsExact) {
  EXPECT_EQ(pow2ceil(1.0f), 1.0f);
  EXPECT_EQ(pow2ceil(std::nextafter(1.0f, 2.0f)), 2.0f);
  EXPECT_EQ(pow2ceil(0.75f), 1.0f);
  EXPECT_EQ(pow2ceil(3.0f), 4.0f);
  EXPECT_EQ(pow2ceil(0x1p-20f), 0x1p-20f);
}

TEST(Numerics, ActQuantBlock) {
  float x[128], q[128];
  for (int i = 0; i < 128; ++i) x[i] = bf16_round(std::sin(i * 0.37f) * 3.0f);
  float amax = 0;
  for (float v : x) amax = std::max(amax, std::fabs(v));
  const float s = act_quant_block(x, 128, q);
  EXPECT_EQ(s, pow2ceil(amax * (1.0f / 448.0f)));
  for (int i = 0; i < 128; ++i) EXPECT_EQ(q[i], round_to_e4m3(x[i] / s));
  // The amax floor: an all-zero block gets scale pow2ceil(1e-4/448), never zero or NaN.
  float z[128] = {}, qz[128];
  EXPECT_EQ(act_quant_block(z, 128, qz), pow2ceil(1e-4f * (1.0f / 448.0f)));
}

TEST(Numerics, SimulationsProduceCodeTimesScale) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0, 2);
  float x[448], y[448];
  for (float& v : x) v = bf16_round(nd(rng));
  std::copy(x, x + 448, y);
  uint8_t codes[448], scales[7];
  act_quant_simulate_codes(y, 448, 64, codes, scales);
  for (int i = 0; i < 448; ++i) EXPECT_EQ(y[i], e4m3_to_f32(codes[i]) * e8m0_to_f32(scales[i / 64]));
  float f[128];
  for (float& v : f) v = bf16_round(nd(rng));
  uint8_t packed[64], s4[4];
  fp4_simulate_codes(f, 128, packed, s4);
  for (int k = 0; k < 128; ++k) {
    const uint8_t nib = k % 2 ? packed[k / 2] >> 4 : packed[k / 2] & 15;
    EXPECT_EQ(f[k], e2m1_to_f32(nib) * e8m0_to_f32(s4[k / 32]));
  }
}

TEST(Numerics, HadamardMatchesDefinition) {
  float x[128], y[128];
  for (int i = 0; i < 128; ++i) x[i] = bf16_round(std::cos(i * 1.3f));
  std::copy(x, x + 128, y);
  hadamard128(y);
  for (int i = 0; i < 128; ++i) {
    double s = 0;
    for (int j = 0; j < 128; ++j) s += (__builtin_popcount(static_cast<unsigned>(i & j)) % 2 ? -1.0 : 1.0) * x[j];
    s *= 0.08838834764831845;
    EXPECT_NEAR(y[i], s, std::fabs(s) * 0x1p-7 + 1e-6) << i;
    EXPECT_EQ(y[i], bf16_round(y[i]));
  }
}

// The many-head form gives every head the one-head form's bits (head counts around its 8 chains,
// values over many binades so that another summation order would change bits).
TEST(Numerics, QHeadNormHeadsEqualOneHeadAtATime) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int heads : {1, 7, 8, 9, 17, 64}) {
    std::vector<float> q(static_cast<size_t>(heads) * 512);
    for (float& v : q) v = bf16_round(std::ldexp(u(rng), static_cast<int>(rng() % 24) - 12));
    std::vector<float> one = q;
    for (int h = 0; h < heads; ++h) q_head_norm_bf16(one.data() + static_cast<size_t>(h) * 512, 512, 1e-6f);
    q_head_norm_bf16(q.data(), heads, 512, 1e-6f);
    for (size_t i = 0; i < q.size(); ++i) ASSERT_EQ(f32_bits(q[i]), f32_bits(one[i])) << heads << " heads, at " << i;
  }
}

// bf16_dp_exact accepts zeros and normal bf16s from 2^-56 on, and nothing else.
TEST(Numerics, Bf16DpExactBounds) {
  const uint16_t ok[] = {0x0000, 0x8000, 0x2380, 0xA380, 0x3F80, 0x7F7F, 0xFF7F};  // 0, -0, +-2^-56, 1, +-max
  for (uint16_t v : ok) EXPECT_TRUE(bf16_dp_exact(&v, 1)) << std::hex << v;
  const uint16_t bad[] = {0x0001, 0x007F, 0x0080, 0x237F, 0xA37F, 0x7F80, 0xFF80, 0x7FC0};  // denormals, < 2^-56, inf, nan
  for (uint16_t v : bad) EXPECT_FALSE(bf16_dp_exact(&v, 1)) << std::hex << v;
  std::vector<uint16_t> run(1000, 0x3F80);
  EXPECT_TRUE(bf16_dp_exact(run.data(), run.size()));
  run[997] = 0x0001;
  EXPECT_FALSE(bf16_dp_exact(run.data(), run.size()));
}

TEST(Numerics, QHeadNormIsBf16Arithmetic) {
  float q[512];
  for (int i = 0; i < 512; ++i) q[i] = bf16_round(std::sin(i * 0.1f) * 5);
  q_head_norm_bf16(q, 512, 1e-6f);
  double ss = 0;
  for (float v : q) ss += v * v;
  EXPECT_NEAR(ss / 512, 1.0, 0.02);
  for (float v : q) EXPECT_EQ(v, bf16_round(v));
}
