// The roofline probe's per-ISA loops agree with the scalar ones, and the probe returns sane,
// positive limits for a given buffer.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/roofline.h"

namespace dsv4 {
namespace {

TEST(Roofline, ReadLoopsAgreeWithScalar) {
  std::mt19937_64 rng(3);
  std::vector<uint64_t> words(4096);
  for (auto& w : words) w = rng();
  const auto* p = reinterpret_cast<const uint8_t*>(words.data());
  for (size_t len : {size_t{512}, size_t{4096}, words.size() * 8}) {
    const uint64_t ref = roofline_detail::read_xor_scalar(p, len);
    uint64_t want = 0;
    for (size_t i = 0; i < len / 8; ++i) want ^= words[i];
    EXPECT_EQ(ref, want);
    if (isa_supported(Isa::Avx2)) {
      EXPECT_EQ(roofline_detail::read_xor_avx2(p, len), want);
    }
    if (isa_supported(Isa::Avx512)) {
      EXPECT_EQ(roofline_detail::read_xor_avx512(p, len), want);
    }
  }
}

// Every chain of the FMA peak loops does the work counted, from its own seed: chain j ends
// where kFmaChains separate one-lane chains of the same steps end. (The loops once started all
// chains equal, and the compiler kept one of them.)
TEST(Roofline, FmaLoopsRunEveryChainFromItsSeed) {
  constexpr int kChains = roofline_detail::kFmaChains;
  constexpr long kIters = 1000;
  float seeds[kChains], fused[kChains], separate[kChains];
  for (int j = 0; j < kChains; ++j) {
    seeds[j] = 1.0f + 0.37f * static_cast<float>(j);
    float f = seeds[j], s = seeds[j];
    for (long i = 0; i < kIters; ++i) {
      f = std::fma(f, 0.999999f, 1e-7f);
      volatile float prod = s * 0.999999f;  // (rounded on its own: the scalar loop has no FMA)
      s = prod + 1e-7f;
    }
    fused[j] = f, separate[j] = s;
  }
  auto check = [&](double (*loop)(long, const float*, float*), int lanes, const float* want) {
    float out[kChains] = {};
    EXPECT_EQ(loop(kIters, seeds, out), 2.0 * lanes * kChains * kIters);
    for (int j = 0; j < kChains; ++j) EXPECT_EQ(out[j], want[j]) << "chain " << j;
  };
  check(roofline_detail::fma_loop_scalar, 1, separate);
  if (isa_supported(Isa::Avx2)) check(roofline_detail::fma_loop_avx2, 8, fused);
  if (isa_supported(Isa::Avx512)) check(roofline_detail::fma_loop_avx512, 16, fused);
  for (int j = 1; j < kChains; ++j) EXPECT_NE(fused[j], fused[0]);  // the seeds make them differ
}

// The VDPBF16PS peak loop does the work it counts: kDotChains chains x 16 lanes, each adding
// 1 * 2^-24 twice per iteration to its seed (exact in fp32 at this count).
TEST(Roofline, DotLoopCountsItsWork) {
  if (isa_supported(Isa::Avx512)) {  // (only the AVX-512 path, which needs AVX512_BF16, uses it)
    constexpr int kChains = roofline_detail::kDotChains;
    float seeds[kChains], out[kChains] = {};
    for (int j = 0; j < kChains; ++j) seeds[j] = static_cast<float>(j) * 0x1p-10f;
    const double flops = roofline_detail::dpbf16_loop_avx512(1000, seeds, out);
    EXPECT_EQ(flops, 2.0 * 32 * kChains * 1000);
    for (int j = 0; j < kChains; ++j) EXPECT_EQ(out[j], seeds[j] + 1000 * 0x1p-23f) << "chain " << j;
  }
}

// The AMX peak loop does the work it counts: four tile products per iteration, each adding
// 32 products of 2^-24 * 2^-24 to every element (exact at this count).
TEST(Roofline, AmxLoopCountsItsWork) {
  if (cpu_has_amx_bf16()) {
    float out[1] = {};
    EXPECT_EQ(roofline_detail::tdpbf16_loop_amx(1000, out), 2.0 * 4 * 16 * 16 * 32 * 1000);
    EXPECT_EQ(out[0], 1000 * 32 * 0x1p-48f);
  }
}

// Prefill is reported against the faster multiply-add instruction, whichever it is on this CPU.
TEST(Roofline, GemmPeakIsTheFasterInstruction) {
  Roofline zen5;
  zen5.fma_gflops = 544, zen5.dot_gflops = 863;
  EXPECT_EQ(zen5.gemm_peak_gflops(), 863);
  EXPECT_STREQ(zen5.gemm_peak_name(), "VDPBF16PS");
  Roofline xeon;
  xeon.fma_gflops = 352, xeon.dot_gflops = 171;
  EXPECT_EQ(xeon.gemm_peak_gflops(), 352);
  EXPECT_STREQ(xeon.gemm_peak_name(), "FMA");
  Roofline amx = xeon;  // products on AMX tiles
  amx.amx_gflops = 7500;
  EXPECT_EQ(amx.gemm_peak_gflops(), 7500);
  EXPECT_STREQ(amx.gemm_peak_name(), "AMX");
  Roofline avx2;  // no VDPBF16PS path
  avx2.fma_gflops = 200;
  EXPECT_EQ(avx2.gemm_peak_gflops(), 200);
  EXPECT_STREQ(avx2.gemm_peak_name(), "FMA");
}

// Each piece of work counts with its duration against the mean of the probes around it.
TEST(Roofline, SampledPeakWeighsEachPieceByItsTime) {
  PeakSamples s;
  s.start(100);
  EXPECT_EQ(s.mean(), 100);  // no work yet: the first probe
  s.piece(1.0, 200);         // 1 s between probes of 100 and 200: 150
  s.piece(3.0, 200);         // 3 s at 200
  EXPECT_DOUBLE_EQ(s.mean(), (1.0 * 150 + 3.0 * 200) / 4.0);
  EXPECT_EQ(s.lo(), 100);
  EXPECT_EQ(s.hi(), 200);
  s.start(50);  // a new interval forgets the old one
  s.piece(2.0, 50);
  EXPECT_EQ(s.mean(), 50);
  EXPECT_EQ(s.hi(), 50);
}

TEST(Roofline, ShortPeakProbeMeasuresComputeOnly) {
  ThreadPool pool(2);
  const Roofline r = measure_peaks(pool, 1, 0.01);
  EXPECT_EQ(r.read_gbs, 0);
  EXPECT_GT(r.fma_gflops, 0.1);
  EXPECT_LT(r.fma_gflops, 1e6);
  EXPECT_GT(r.gemm_peak_gflops(), 0.1);
}

TEST(Roofline, MeasuresAGivenBuffer) {
  ThreadPool pool(2);
  std::vector<uint8_t> buf(size_t{8} << 20, 1);
  const double gbs = measure_read_gbs(pool, buf.size(), 0.05, buf.data());
  EXPECT_GT(gbs, 0.1);
  EXPECT_LT(gbs, 10000.0);
}

// A buffer that starts off a cache line and ends off a 512-byte run: the probe cuts its slices at
// line boundaries inside it (under ASan a read past either end fails here), and it still counts
// nearly all of the buffer.
TEST(Roofline, ReadsOnlyInsideAMisalignedBuffer) {
  ThreadPool pool(2);
  const size_t n = (size_t{4} << 20) + 333;
  std::unique_ptr<uint8_t[]> owner(new uint8_t[n + 13]);
  uint8_t* data = owner.get() + 13;  // (new[]: 16-byte aligned at best, so 13 is off every line)
  std::memset(data, 7, n);
  const double gbs = measure_read_gbs(pool, n, 0.02, data);
  EXPECT_GT(gbs, 0.1);
  EXPECT_LT(gbs, 10000.0);
  // Too small for one 512-byte run per thread: nothing read, no bandwidth claimed.
  EXPECT_EQ(measure_read_gbs(pool, 100, 0.01, data), 0.0);
}

}  // namespace
}  // namespace dsv4
