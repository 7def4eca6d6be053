// exp_f32: every SIMD path gives std::exp's bits (kernels/exp.h).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/exp.h"

namespace dsv4 {
namespace {

using Path = void (*)(const float*, float*, int);

struct SimdPath {
  Isa isa;
  Path fn;
  const char* name;
};
std::vector<SimdPath> supported_paths() {
  std::vector<SimdPath> out;
  if (isa_supported(Isa::Avx2)) out.push_back({Isa::Avx2, exp_detail::exp_avx2, "avx2"});
  if (isa_supported(Isa::Avx512)) out.push_back({Isa::Avx512, exp_detail::exp_avx512, "avx512"});
  return out;
}

// Counts the values of x whose path result differs from std::exp in any bit (NaN: any NaN).
size_t mismatches(Path path, const std::vector<float>& x, float* first_bad = nullptr) {
  std::vector<float> y(x.size());
  path(x.data(), y.data(), static_cast<int>(x.size()));
  size_t bad = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float want = std::exp(x[i]);
    const bool same = std::memcmp(&want, &y[i], 4) == 0 || (std::isnan(want) && std::isnan(y[i]));
    if (!same && bad++ == 0 && first_bad) *first_bad = x[i];
  }
  return bad;
}

std::vector<float> from_bits(uint64_t lo, uint64_t hi, uint64_t step) {
  std::vector<float> x;
  for (uint64_t u = lo; u < hi; u += step) {
    const uint32_t b = static_cast<uint32_t>(u);
    float f;
    std::memcpy(&f, &b, 4);
    x.push_back(f);
  }
  return x;
}

TEST(Exp, SimdPathsGiveStdExpBitsAcrossAllFloats) {
  // Every 61st bit pattern: both signs, zeros, denormals, every binade, infinities and NaNs.
  const std::vector<float> x = from_bits(0, uint64_t{1} << 32, 61);
  for (const SimdPath& p : supported_paths()) {
    float bad = 0.0f;
    EXPECT_EQ(mismatches(p.fn, x, &bad), 0u) << p.name << ", first at x = " << bad;
  }
}

TEST(Exp, SimdPathsGiveStdExpBitsAtTheEdges) {
  // Every float near the ends of the fast range (|x| around 88, the fallback's threshold),
  // where results turn denormal (x below -87.3) and overflow (x above 88.72), and the tiny
  // arguments where exp rounds to 1.
  std::vector<float> x;
  for (const auto& [lo, hi] : {std::pair<uint32_t, uint32_t>{0x42ae0000u, 0x42b40000u}, {0xc2ae0000u, 0xc2d00000u},
                               {0x32000000u, 0x34000000u}, {0xb2000000u, 0xb4000000u}}) {
    const std::vector<float> part = from_bits(lo, hi, 3);
    x.insert(x.end(), part.begin(), part.end());
  }
  for (float v : {0.0f, -0.0f, 1.0f, -1.0f, 88.0f, -88.0f, 88.72283f, -103.97208f, INFINITY, -INFINITY, NAN})
    x.push_back(v);
  for (const SimdPath& p : supported_paths()) {
    float bad = 0.0f;
    EXPECT_EQ(mismatches(p.fn, x, &bad), 0u) << p.name << ", first at x = " << bad;
  }
}

TEST(Exp, EveryLengthAndTheDispatcherAgree) {
  // Ragged lengths (the vector tails), through exp_f32 on each ISA, in place as well.
  std::vector<float> x(77);
  for (size_t i = 0; i < x.size(); ++i) x[i] = -20.0f + 0.53f * static_cast<float>(i);
  x[5] = 95.0f;  // a lane past the fast range inside a vector
  const Isa saved = active_isa();
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    if (!isa_supported(isa)) continue;
    force_isa(isa);
    for (int n = 0; n <= static_cast<int>(x.size()); ++n) {
      std::vector<float> y(x.begin(), x.begin() + n);
      exp_f32(y.data(), y.data(), n);
      for (int i = 0; i < n; ++i) {
        const float want = std::exp(x[static_cast<size_t>(i)]);
        ASSERT_EQ(std::memcmp(&want, &y[static_cast<size_t>(i)], 4), 0) << "isa " << static_cast<int>(isa) << " n " << n << " i " << i;
      }
    }
  }
  force_isa(saved);
}

TEST(Exp, SimdPathsAreActiveWithThisCLibrary) {
  // The SIMD paths evaluate glibc's expf algorithm; on this C library their start-up check
  // must accept them (else exp_f32 silently falls back to std::exp everywhere).
  if (supported_paths().empty()) GTEST_SKIP() << "no SIMD path on this CPU";
  EXPECT_TRUE(exp_f32_simd_active());
}

}  // namespace
}  // namespace dsv4
