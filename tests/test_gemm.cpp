// GEMM / dot kernels: every SIMD path equals the scalar path bit for bit (ragged shapes,
// extreme codes, 1 vs 2 threads), and the scalar path matches a plain double-precision
// reference up to fp32 reassociation.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <initializer_list>
#include <utility>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "kernels/act_quant.h"
#include "kernels/cpu_features.h"
#include "kernels/dot.h"
#include "kernels/gemm.h"
#include "kernels/hc_mix.h"
#include "kernels/numerics.h"

namespace dsv4 {
namespace {

// Restores the ISA choice when a test ends.
struct IsaGuard {
  Isa saved = active_isa();
  ~IsaGuard() { force_isa(saved); }
};

std::vector<Isa> simd_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Avx2, Isa::Avx512})
    if (isa_supported(i)) v.push_back(i);
  return v;
}

// Every path, the scalar reference last.
std::vector<Isa> all_isas() {
  std::vector<Isa> v = simd_isas();
  v.push_back(Isa::Scalar);
  return v;
}

// got[0, count) carries want's bits and got[count] still holds the sentinel (nothing written past
// the end); reports the first difference only.
void expect_bits_then_sentinel(const std::vector<float>& got, const std::vector<float>& want, int count, float sentinel,
                               const std::string& what) {
  for (size_t i = 0; i < static_cast<size_t>(count); ++i)
    if (f32_bits(got[i]) != f32_bits(want[i])) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", want " << want[i];
      return;
    }
  EXPECT_EQ(got[static_cast<size_t>(count)], sentinel) << what << ": wrote past the end";
}

TEST(CpuFeatures, ReportsIsas) {
  std::string tested = "scalar";
  for (Isa i : simd_isas()) tested += std::string(" ") + isa_name(i);
  std::printf("[ gemm ] detected %s; ISA paths tested: %s\n", isa_name(detected_isa()), tested.c_str());
  IsaGuard g;
  EXPECT_EQ(force_isa(Isa::Scalar), Isa::Scalar);
  EXPECT_EQ(active_isa(), Isa::Scalar);
}

// Random e4m3 codes: NaN-free, with the extremes (±448, ±0, subnormals) over-represented.
uint8_t rand_e4m3(std::mt19937& rng) {
  static const uint8_t special[] = {0x00, 0x80, 0x01, 0x81, 0x07, 0x87, 0x08, 0x7e, 0xfe, 0x04, 0x84};
  const uint32_t r = rng();
  if (r % 8 == 0) return special[(r >> 8) % sizeof(special)];
  uint8_t c;
  do c = static_cast<uint8_t>(rng()); while ((c & 0x7f) == 0x7f);
  return c;
}

// bf16 activations of mixed magnitude, with exact zeros and negative zeros.
std::vector<float> rand_act(std::mt19937& rng, size_t n) {
  std::vector<float> x(n);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> ex(-12, 6);
  for (auto& v : x) {
    const uint32_t r = rng() % 32;
    if (r == 0) v = 0.0f;
    else if (r == 1) v = -0.0f;
    else v = bf16_round(std::ldexp(nd(rng), ex(rng)));
  }
  return x;
}

struct Fp8Data {
  std::vector<uint8_t> w, s;
  Fp8Weight W;
};
// Scales 2^-17 .. 2^6 by default; checkpoint-like ones (2^-15 .. 2^-8) with scale_lo = 112,
// span = 8: there the small-M paths fold the scales into the activations (gemm.h fold_w_scale).
Fp8Data make_fp8(std::mt19937& rng, int N, int K, int scale_lo = 110, int span = 24) {
  Fp8Data d;
  d.w.resize(static_cast<size_t>(N) * K);
  for (auto& c : d.w) c = rand_e4m3(rng);
  const int sr = (N + 127) / 128, sc = (K + 127) / 128;
  d.s.resize(static_cast<size_t>(sr) * sc);
  for (auto& e : d.s) e = static_cast<uint8_t>(scale_lo + static_cast<int>(rng() % static_cast<uint32_t>(span)));
  d.W = {d.w.data(), d.s.data(), N, K};
  return d;
}
struct Fp4Data {
  std::vector<uint8_t> w, s;
  Fp4Weight W;
};
Fp4Data make_fp4(std::mt19937& rng, int N, int K) {
  Fp4Data d;
  d.w.resize(static_cast<size_t>(N) * K / 2);
  for (auto& c : d.w) c = static_cast<uint8_t>(rng());
  d.s.resize(static_cast<size_t>(N) * K / 32);
  for (auto& e : d.s) e = static_cast<uint8_t>(112 + rng() % 20);
  d.W = {d.w.data(), d.s.data(), N, K};
  return d;
}
struct Bf16Data {
  std::vector<uint16_t> w;
  Bf16Weight W;
};
Bf16Data make_bf16(std::mt19937& rng, int N, int K) {
  Bf16Data d;
  const auto v = rand_act(rng, static_cast<size_t>(N) * K);
  d.w.resize(v.size());
  for (size_t i = 0; i < v.size(); ++i) d.w[i] = bf16_bits(v[i]);
  d.W = {d.w.data(), N, K};
  d.W.dp_exact = bf16_dp_exact(d.w.data(), d.w.size());
  return d;
}

void expect_bits_equal(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size());
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (f32_bits(a[i]) != f32_bits(b[i]) && bad++ == 0) first = i;
  EXPECT_EQ(bad, 0u) << what << ": first difference at " << first << ": " << a[first] << " vs " << b[first];
}

// Restores the GEMM tile choice, the VBMI small-M forms (FP4 bytes, FP8 GFNI) and the FP8
// prefetch hint when a test is done.
struct TilesGuard {
  GemmTiles saved = active_gemm_tiles();
  bool saved_bytes = fp4_bytes_active();
  bool saved_gfni = fp8_gfni_active();
  bool saved_small_pairs = fp8_small_pairs_active();
  bool saved_nta = fp8_prefetch_nta_active();
  bool saved_ahead = fp4_prefetch_ahead_active();
  bool saved_amx = gemm_amx_active();
  ~TilesGuard() {
    force_gemm_amx(saved_amx);
    force_gemm_tiles(saved);
    force_fp4_bytes(saved_bytes);
    force_fp8_gfni(saved_gfni);
    force_fp8_small_pairs(saved_small_pairs);
    force_fp8_prefetch_nta(saved_nta);
    force_fp4_prefetch_ahead(saved_ahead);
  }
};

// Runs `f(pool, y)` for scalar/1 thread (the reference) and every ISA x {1, 2} threads; on
// AVX-512 with both kinds of M >= 4 tiles (VDPBF16PS and fp32 FMA), and where the CPU has VBMI
// also without the small-M FP4 byte form and FP8 GFNI decode (which are on in the other runs),
// once with the GFNI rows in fp32 FMAs instead of VDPBF16PS pairs, and where it has AMX once more
// with the AMX tiles (off in the other runs).
// The FP8 rows' prefetch hint alternates with the thread count (NTA at 1 thread, T0 at 2), and
// so does the FP4 rows' prefetch (ahead in the row at 2 threads, the next rows at 1).
template <class F>
std::vector<float> check_all_paths(size_t out_size, const std::string& what, F f) {
  IsaGuard g;
  TilesGuard tg;
  ThreadPool p1(1), p2(2);
  std::vector<float> ref(out_size, -7.0f);
  force_isa(Isa::Scalar);
  f(p1, ref);
  {
    std::vector<float> y(out_size, -7.0f);
    f(p2, y);
    expect_bits_equal(ref, y, what + " scalar 2 threads");
  }
  struct Variant {
    GemmTiles tiles;
    bool bytes;
    bool amx = false;
    bool small_pairs = true;  // (the GFNI rows through VDPBF16PS; fp32 FMAs in one more run)
  };
  for (Isa isa : simd_isas())
    for (Variant v : {Variant{GemmTiles::Dp, true}, Variant{GemmTiles::Fma, true}, Variant{GemmTiles::Dp, false},
                      Variant{GemmTiles::Fma, true, true}, Variant{GemmTiles::Dp, true, false, false}}) {
      if (isa != Isa::Avx512 && (v.tiles == GemmTiles::Fma || !v.bytes)) continue;  // (only AVX-512 has these)
      if (!v.bytes && !cpu_has_avx512_vbmi()) continue;                             // (the same run as the first)
      if (v.amx && !cpu_has_amx_bf16()) continue;
      if (!v.small_pairs && (isa != Isa::Avx512 || !cpu_has_avx512_vbmi_gfni())) continue;  // (the first run again)
      force_isa(isa);
      force_gemm_tiles(v.tiles);
      force_fp4_bytes(v.bytes);
      force_fp8_gfni(v.bytes);
      force_fp8_small_pairs(v.small_pairs);
      force_gemm_amx(v.amx);
      for (ThreadPool* p : {&p1, &p2}) {
        force_fp8_prefetch_nta(p == &p1);
        force_fp4_prefetch_ahead(p == &p2);
        std::vector<float> y(out_size, -7.0f);
        f(*p, y);
        const std::string variant = isa != Isa::Avx512                    ? ""
                                    : std::string(" ") + gemm_tiles_name(v.tiles) + (fp4_bytes_active() ? " bytes" : "") +
                                          (fp8_gfni_active() ? " gfni" : "") +
                                          (fp8_gfni_active() && fp8_small_pairs_active() ? " pairs" : "") +
                                          (gemm_amx_active() ? " amx" : "");
        expect_bits_equal(ref, y, what + " " + isa_name(isa) + variant + " " + std::to_string(p->size()) + " threads");
      }
    }
  return ref;
}

struct Shape {
  int M, N, K;
};
std::string name(const char* kind, Shape s) {
  return std::string(kind) + " M=" + std::to_string(s.M) + " N=" + std::to_string(s.N) + " K=" + std::to_string(s.K);
}

// Plain reference: exact block sums in double, then the block loop of §4.7 in double.
// (Differs from the canonical fp32 order only by fp32 rounding of the partial sums.)
void expect_close(const std::vector<float>& got, const std::vector<double>& ref, const std::vector<double>& mag,
                  bool bf16_out, const std::string& what) {
  for (size_t i = 0; i < got.size(); ++i) {
    const double tol = (bf16_out ? std::fabs(ref[i]) * 0x1p-8 : 0.0) + mag[i] * 1e-6 + 1e-30;
    ASSERT_LE(std::fabs(got[i] - ref[i]), tol) << what << " at " << i;
  }
}

const Shape kFp8Shapes[] = {{1, 300, 1024}, {2, 129, 200}, {3, 17, 130}, {17, 257, 384},
                            {4, 16, 96},    {5, 33, 31},   {1, 40, 7},   {17, 140, 512},
                            {6, 40, 2080}, {9, 40, 2080},  // (three K chunks of the M >= 4 tiles, the last one
                                                           // short; 9 rows: tiles at any small-M limit)
                            {16, 16, 256}, {6, 50, 512}, {40, 300, 768}, {33, 129, 1280},  // (AMX: 1-3 token and row blocks)
                            {7, 140, 640},   // (small M in passes of 4 and 3 rows sharing each weight load)
                            {13, 40, 512}};  // (passes of 4, 4, 4 and 1: the shared-load rows up to M = 15)

// HC_PRE's sums over many tokens (tokens in the vector lanes) equal the one-token chains bit for
// bit on every path: row counts that take full, partial and single-row passes, token counts
// around the vector width, and magnitudes spread over many binades so that another order or a
// fused multiply-add would change bits. Nothing is written past mix or ss.
TEST(HcMix, TokensEqualOneTokenChainsOnEveryPath) {
  IsaGuard guard;
  std::mt19937 rng(11);
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> ex(-12, 12);
  for (const int HD : {37, 1000}) {
    for (const int rows : {0, 1, 4, 13, 24, 29}) {
      std::vector<float> fn(static_cast<size_t>(rows) * HD + 1);
      for (auto& v : fn) v = std::ldexp(nd(rng), ex(rng));
      for (const int tokens : {1, 7, 16, 17, 33}) {
        std::vector<float> x(static_cast<size_t>(tokens) * HD);
        for (auto& v : x) v = std::ldexp(nd(rng), ex(rng));
        std::vector<float> want_mix(static_cast<size_t>(tokens) * rows + 1), want_ss(static_cast<size_t>(tokens) + 1);
        for (int t = 0; t < tokens; ++t) {
          want_ss[static_cast<size_t>(t)] = hc_sum_squares(&x[static_cast<size_t>(t) * HD], HD);
          hc_mix_rows(fn.data(), rows, HD, &x[static_cast<size_t>(t) * HD], &want_mix[static_cast<size_t>(t) * rows]);
        }
        for (Isa isa : all_isas()) {
          force_isa(isa);
          const float sentinel = -7.5f;
          std::vector<float> mix(want_mix.size(), sentinel), ss(want_ss.size(), sentinel);
          hc_mix_tokens(fn.data(), rows, HD, x.data(), tokens, ss.data(), mix.data());
          const std::string what = std::string(isa_name(isa)) + " HD " + std::to_string(HD) + " rows " +
                                   std::to_string(rows) + " tokens " + std::to_string(tokens);
          expect_bits_then_sentinel(mix, want_mix, tokens * rows, sentinel, what + " mix");
          expect_bits_then_sentinel(ss, want_ss, tokens, sentinel, what + " ss");
          std::vector<float> mix_only(want_mix.size(), sentinel);  // without ss
          hc_mix_tokens(fn.data(), rows, HD, x.data(), tokens, nullptr, mix_only.data());
          expect_bits_then_sentinel(mix_only, want_mix, tokens * rows, sentinel, what + " mix without ss");
        }
      }
    }
  }
  // The chains are order-sensitive on this data: one fused multiply-add per step changes bits.
  const int HD = 1000;
  std::vector<float> a(HD), b(HD);
  for (auto& v : a) v = std::ldexp(nd(rng), ex(rng));
  for (auto& v : b) v = std::ldexp(nd(rng), ex(rng));
  float fused = 0.0f, plain = 0.0f;
  hc_mix_rows(a.data(), 1, HD, b.data(), &plain);
  for (int i = 0; i < HD; ++i) fused = std::fma(a[static_cast<size_t>(i)], b[static_cast<size_t>(i)], fused);
  EXPECT_NE(f32_bits(fused), f32_bits(plain));
}

// One token's chains with the chains in the vector lanes (decode's HC_PRE, the head) equal the
// scalar rows and sum of squares bit for bit on every path: chain counts that fill one or two
// vectors or part of one, lengths with and without a partial last block, a source that is x
// itself (the sum of squares). Nothing is written past the n outputs.
TEST(HcMix, ChainsEqualScalarRowsOnEveryPath) {
  IsaGuard guard;
  std::mt19937 rng(12);
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> ex(-12, 12);
  for (const int HD : {5, 16, 37, 1000}) {
    std::vector<float> fn(static_cast<size_t>(kHcMaxChains) * HD), x(static_cast<size_t>(HD));
    for (auto& v : fn) v = std::ldexp(nd(rng), ex(rng));
    for (auto& v : x) v = std::ldexp(nd(rng), ex(rng));
    for (const int n : {1, 3, 8, 9, 13, 16}) {
      // Chain 0 the sum of squares, the others rows of fn (the decode site's first part).
      std::vector<const float*> src{x.data()};
      for (int c = 1; c < n; ++c) src.push_back(&fn[static_cast<size_t>(c) * HD]);
      std::vector<float> want(static_cast<size_t>(n) + 1);
      want[0] = hc_sum_squares(x.data(), HD);
      hc_mix_rows(&fn[static_cast<size_t>(HD)], n - 1, HD, x.data(), &want[1]);
      for (Isa isa : all_isas()) {
        force_isa(isa);
        const float sentinel = -7.5f;
        std::vector<float> out(want.size(), sentinel);
        hc_mix_chains(src.data(), n, HD, x.data(), out.data());
        expect_bits_then_sentinel(out, want, n, sentinel,
                                  std::string(isa_name(isa)) + " HD " + std::to_string(HD) + " chains " + std::to_string(n));
      }
    }
  }
  std::vector<float> x(8, 1.0f), out(1, -7.5f);
  const float* src[kHcMaxChains + 1] = {};
  hc_mix_chains(src, 0, 8, x.data(), out.data());  // (no chains: nothing read or written)
  EXPECT_EQ(out[0], -7.5f);
  for (auto& p : src) p = x.data();
  EXPECT_THROW(hc_mix_chains(src, kHcMaxChains + 1, 8, x.data(), out.data()), Error);
}

// HC_POST on every path equals the spec formula evaluated element by element (the sum from +0
// in order of j, then post * f added, one bf16 rounding), bit for bit: stream counts with and
// without the 4-stream form, ranges with vector tails, magnitudes over many binades (another
// order or a fused multiply-add changes bits), a NaN; elements outside the range stay as they were.
TEST(HcMix, PostEqualsTheFormulaOnEveryPath) {
  IsaGuard guard;
  std::mt19937 rng(12);
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> ex(-12, 12);
  for (const int hc : {1, 2, 4, 5, 16}) {
    const int D = 70;
    std::vector<float> h0(static_cast<size_t>(hc) * D), f(D), post(static_cast<size_t>(hc)), comb(static_cast<size_t>(hc) * hc);
    for (auto* v : {&h0, &f, &post, &comb})
      for (auto& x : *v) x = std::ldexp(nd(rng), ex(rng));
    h0[3] = std::numeric_limits<float>::quiet_NaN();
    // Plants: column 0 of comb all ones and element 5 of the streams 2^24, 1, 1, -2^24, 0, ...,
    // which sum to 0 in order of j and to 2 in reverse; element 9 gives post[hc - 1] * f[9] =
    // (1 + 2^-12)^2 and a sum of -(1 + 2^-11): 0 when the product is rounded first, 2^-24 fused.
    for (int j = 0; j < hc; ++j) comb[static_cast<size_t>(j * hc)] = 1.0f;
    for (int j = 0; j < hc; ++j) h0[static_cast<size_t>(j) * D + 5] = j < 4 ? std::array{0x1p24f, 1.0f, 1.0f, -0x1p24f}[static_cast<size_t>(j)] : 0.0f;
    if (hc >= 2) {
      const int k = hc - 1;
      for (int j = 0; j < hc; ++j) comb[static_cast<size_t>(j * hc + k)] = j == 0 ? 1.0f : 0.0f;
      for (int j = 0; j < hc; ++j) h0[static_cast<size_t>(j) * D + 9] = j == 0 ? -(1.0f + 0x1p-11f) : 0.0f;
      post[static_cast<size_t>(k)] = 1.0f + 0x1p-12f;
      f[9] = 1.0f + 0x1p-12f;
    }
    for (const auto& [d0, d1] : {std::pair{0, 70}, {0, 64}, {5, 38}, {17, 18}, {33, 33}}) {
      std::vector<float> want = h0;
      for (int d = d0; d < d1; ++d) {
        std::vector<float> out(static_cast<size_t>(hc));
        for (int k = 0; k < hc; ++k) {
          float o = 0.0f;
          for (int j = 0; j < hc; ++j) o += comb[static_cast<size_t>(j * hc + k)] * h0[static_cast<size_t>(j) * D + d];
          out[static_cast<size_t>(k)] = bf16_round(post[static_cast<size_t>(k)] * f[static_cast<size_t>(d)] + o);
        }
        for (int k = 0; k < hc; ++k) want[static_cast<size_t>(k) * D + d] = out[static_cast<size_t>(k)];
      }
      for (Isa isa : all_isas()) {
        force_isa(isa);
        std::vector<float> h = h0;
        hc_post(f.data(), post.data(), comb.data(), h.data(), hc, D, d0, d1);
        for (size_t i = 0; i < h.size(); ++i)
          ASSERT_EQ(f32_bits(h[i]), f32_bits(want[i])) << isa_name(isa) << " hc " << hc << " [" << d0 << ", " << d1 << ") at " << i;
      }
    }
  }
  std::vector<float> one(4);
  EXPECT_THROW(hc_post(one.data(), one.data(), one.data(), one.data(), 17, 1, 0, 1), Error);
}

// The Sinkhorn normalisation makes the mixing matrix doubly stochastic: after its last column
// pass every column sums to 1 (up to eps), and with enough iterations the rows do too; one
// iteration leaves the rows of a skewed matrix far from it.
TEST(HcMix, SinkhornIsDoublyStochastic) {
  std::mt19937 rng(13);
  std::normal_distribution<float> nd;
  for (const int hc : {2, 4, 7}) {
    std::vector<float> logits(static_cast<size_t>(hc) * hc);
    for (auto& v : logits) v = 3.0f * nd(rng);
    for (const int iters : {1, 20}) {
      std::vector<float> C = logits;
      hc_sinkhorn(C.data(), hc, iters, 1e-6f);
      float worst_row = 0.0f;
      for (int k = 0; k < hc; ++k) {
        float col = 0.0f, row = 0.0f;
        for (int j = 0; j < hc; ++j) {
          col += C[static_cast<size_t>(j * hc + k)];
          row += C[static_cast<size_t>(k * hc + j)];
          EXPECT_GT(C[static_cast<size_t>(j * hc + k)], 0.0f);
        }
        EXPECT_NEAR(col, 1.0f, 1e-3f) << "hc " << hc << " iters " << iters;  // (s / (s + eps))
        worst_row = std::max(worst_row, std::fabs(row - 1.0f));
      }
      if (iters == 20) {
        EXPECT_LT(worst_row, 1e-3f) << "hc " << hc;
      } else if (hc == 7) {
        EXPECT_GT(worst_row, 1e-2f);
      }
    }
  }
}

TEST(Gemm, TileChoiceCanBeForcedAndRestored) {
  TilesGuard tg;
  const GemmTiles before = active_gemm_tiles();
  EXPECT_EQ(force_gemm_tiles(GemmTiles::Fma), before);
  EXPECT_EQ(active_gemm_tiles(), GemmTiles::Fma);
  EXPECT_EQ(force_gemm_tiles(GemmTiles::Dp), GemmTiles::Fma);
  EXPECT_EQ(active_gemm_tiles(), GemmTiles::Dp);
  EXPECT_STREQ(gemm_tiles_name(GemmTiles::Fma), "fma");
  EXPECT_STREQ(gemm_tiles_name(GemmTiles::Dp), "dp");
}

TEST(Gemm, Fp8AllPathsBitIdentical) {
  std::mt19937 rng(1);
  for (const auto& [scale_lo, span] : {std::pair{110, 24}, std::pair{112, 8}})
  for (Shape s : kFp8Shapes) {
    auto d = make_fp8(rng, s.N, s.K, scale_lo, span);
    const auto x = rand_act(rng, static_cast<size_t>(s.M) * s.K);
    const auto y = check_all_paths(static_cast<size_t>(s.M) * s.N, name("fp8", s),
                                   [&](ThreadPool& p, std::vector<float>& out) { gemm_fp8(x.data(), s.M, d.W, out.data(), p); });
    // Reference.
    const int nb = (s.K + 127) / 128;
    std::vector<float> q(static_cast<size_t>(s.M) * s.K), sa(static_cast<size_t>(s.M) * nb);
    quantize_rows_fp8(x.data(), s.M, s.K, q.data(), sa.data());
    std::vector<double> ref(y.size()), mag(y.size());
    for (int m = 0; m < s.M; ++m)
      for (int n = 0; n < s.N; ++n) {
        double acc = 0, am = 0;
        for (int b = 0; b < nb; ++b) {
          double part = 0, pm = 0;
          for (int k = b * 128; k < std::min(s.K, b * 128 + 128); ++k) {
            const double t = double(q[size_t(m) * s.K + k]) * e4m3_to_f32(d.w[size_t(n) * s.K + k]);
            part += t;
            pm += std::fabs(t);
          }
          const double sc = double(sa[size_t(m) * nb + b]) * e8m0_to_f32(d.s[size_t(n / 128) * nb + b]);
          acc += part * sc;
          am += pm * sc;
        }
        ref[size_t(m) * s.N + n] = acc;
        mag[size_t(m) * s.N + n] = am;
      }
    expect_close(y, ref, mag, true, name("fp8 vs reference", s));
  }
}

TEST(Gemm, Fp4AllPathsBitIdentical) {
  std::mt19937 rng(2);
  const Shape shapes[] = {{1, 300, 1024}, {2, 129, 96}, {3, 17, 160}, {17, 65, 4096}, {4, 31, 32}, {6, 50, 288},
                          {1, 33, 640}, {2, 20, 928},  // (runs of 4 blocks cut short: 5 and 7 full blocks)
                          {37, 33, 384}, {36, 20, 2304},  // (several M blocks; K chunks 1024, 1024, 256)
                          {16, 16, 128}, {50, 33, 1024}, {80, 70, 512},  // (AMX: 1-5 token and row blocks)
                          {1, 70, 2304}, {2, 45, 4096}};  // (small M, two rows per page: strided passes)
  for (Shape s : shapes) {
    auto d = make_fp4(rng, s.N, s.K);
    const auto x = rand_act(rng, static_cast<size_t>(s.M) * s.K);
    const auto y = check_all_paths(static_cast<size_t>(s.M) * s.N, name("fp4", s),
                                   [&](ThreadPool& p, std::vector<float>& out) { gemm_fp4(x.data(), s.M, d.W, out.data(), p); });
    const int nb = (s.K + 127) / 128;
    std::vector<float> q(static_cast<size_t>(s.M) * s.K), sa(static_cast<size_t>(s.M) * nb);
    quantize_rows_fp8(x.data(), s.M, s.K, q.data(), sa.data());
    std::vector<double> ref(y.size()), mag(y.size());
    for (int m = 0; m < s.M; ++m)
      for (int n = 0; n < s.N; ++n) {
        double acc = 0, am = 0;
        for (int b = 0; b < s.K / 32; ++b) {
          double part = 0, pm = 0;
          for (int k = b * 32; k < b * 32 + 32; ++k) {
            const uint8_t byte = d.w[size_t(n) * s.K / 2 + k / 2];
            const double t = double(q[size_t(m) * s.K + k]) * e2m1_to_f32((k & 1) ? byte >> 4 : byte & 15);
            part += t;
            pm += std::fabs(t);
          }
          const double sc = double(sa[size_t(m) * nb + b / 4]) * e8m0_to_f32(d.s[size_t(n) * (s.K / 32) + b]);
          acc += part * sc;
          am += pm * sc;
        }
        ref[size_t(m) * s.N + n] = acc;
        mag[size_t(m) * s.N + n] = am;
      }
    expect_close(y, ref, mag, true, name("fp4 vs reference", s));
  }
}

// FP4 sums a 128-block's lanes in integers where the activations have an exact int16 form
// (gemm.h, fp4_int_activations): at small M on AVX-512 and AVX2, and in the AVX-512 fp32-FMA
// tile choice at M >= 4. The activations of rand_act span 18 binades, so nearly every lane there
// takes the fp32 route; these are mostly integer lanes, with blocks broken on purpose (a tiny
// element, which the lane's unit cannot reach).
TEST(Gemm, Fp4IntegerBlocksKeepTheCanonicalOrder) {
  std::mt19937 rng(12);
  const Shape shapes[] = {{1, 64, 4096}, {2, 40, 2048}, {3, 33, 640}, {1, 20, 1056},
                          {4, 20, 640}, {5, 40, 1024}, {17, 33, 2304},  // (tiles; K chunks 1024, 1024, 256)
                          {6, 24, 1120}, {9, 24, 1120}};                // (tiles, a last block of 96)
  for (Shape s : shapes) {
    auto d = make_fp4(rng, s.N, s.K);
    // Magnitudes in [1, 2) at even k, [2^-9, 2) at odd k (every lane has an integer form, and the
    // odd elements give both bytes of the AVX-512 byte form), then one element made tiny in every
    // 16th block: more than 90 % of the blocks stay integer, so the M >= 4 tiles take them too.
    std::vector<float> x(static_cast<size_t>(s.M) * s.K);
    std::uniform_real_distribution<float> mag(1.0f, 2.0f);
    for (size_t k = 0; k < x.size(); ++k)
      x[k] = bf16_round(std::ldexp(rng() % 2 ? mag(rng) : -mag(rng), k % 2 ? -static_cast<int>(rng() % 10) : 0));
    for (size_t k = 0; k < x.size(); k += 16 * 128) x[k] = bf16_round(x[k] * 0x1p-16f);
    const auto y = check_all_paths(static_cast<size_t>(s.M) * s.N, name("fp4 int", s),
                                   [&](ThreadPool& p, std::vector<float>& out) { gemm_fp4(x.data(), s.M, d.W, out.data(), p); });
    // Both kinds of blocks did occur: the GEMM's own activations, quantised and permuted.
    const int nb = (s.K + 127) / 128;
    std::vector<float> q(static_cast<size_t>(s.M) * s.K), sa(static_cast<size_t>(s.M) * nb);
    quantize_rows_fp8(x.data(), s.M, s.K, q.data(), sa.data());
    int ok_blocks = 0;
    for (int m = 0; m < s.M; ++m) {
      std::vector<float> a(static_cast<size_t>(nb) * 128, 0.0f);
      for (int k = 0; k < s.K; ++k)
        a[static_cast<size_t>(k / 128 * 128 + gemm_detail::fp4_permuted_pos(k % 128))] = q[size_t(m) * s.K + k] * sa[size_t(m) * nb + k / 128];
      std::vector<uint32_t> words(static_cast<size_t>(nb) * 64);
      std::vector<float> unit(static_cast<size_t>(nb) * 16);
      std::vector<uint8_t> ok(static_cast<size_t>(nb));
      gemm_detail::fp4_int_activations(a.data(), nb, words.data(), unit.data(), ok.data());
      for (uint8_t o : ok) ok_blocks += o;
    }
    if (s.M >= 4) {
      EXPECT_GE(ok_blocks * 10, s.M * nb * 9) << name("fp4 int", s);  // (the tiles' threshold)
    }
    EXPECT_LT(ok_blocks, s.M * nb) << name("fp4 int", s);
    ASSERT_FALSE(y.empty());
  }
}

// Blocks meet in pairs before their lane (gemm.h FP4 order): lane 0's block partials are
// 1 + 2^-8, 0, 2^-24, 2^-24 (weights 1, scales 1). Block by block into the lane, each 2^-24 is
// half an ulp of 1 + 2^-8 and rounds away (ties to even), leaving 1 + 2^-8, which bf16 rounds
// to 1; pairs first give 2^-23, an ulp, kept: 1 + 2^-8 + 2^-23, above the bf16 tie. Pairing
// blocks 1 and 2 would lose both halves as well. Every path, and every row block and token
// block size (M = 1, 5, 16 and 33: rows, tiles and AMX where the CPU has them), must give it.
TEST(Gemm, Fp4BlockPairsMeetBeforeTheirLane) {
  const int N = 20, K = 512;
  std::vector<uint8_t> codes(static_cast<size_t>(N) * K / 2, 0), scales(static_cast<size_t>(N) * K / 32, 127);
  for (int n = 0; n < N; ++n)
    for (int k : {0, 1, 256, 384}) {
      uint8_t& byte = codes[static_cast<size_t>(n) * K / 2 + k / 2];
      byte = static_cast<uint8_t>(byte | (k % 2 ? 0x20 : 0x02));  // e2m1 code 2: 1.0
    }
  const Fp4Weight W{codes.data(), scales.data(), N, K};
  for (int M : {1, 5, 16, 33}) {
    std::vector<float> x(static_cast<size_t>(M) * K, 0.0f);
    for (int m = 0; m < M; ++m) {
      float* row = &x[static_cast<size_t>(m) * K];
      row[0] = 1.0f;
      row[1] = 0x1p-8f;
      row[256] = 0x1p-24f;
      row[384] = 0x1p-24f;
    }
    const auto y = check_all_paths(static_cast<size_t>(M) * N, "fp4 block pairs M=" + std::to_string(M),
                                   [&](ThreadPool& p, std::vector<float>& out) { gemm_fp4(x.data(), M, W, out.data(), p); });
    ASSERT_EQ(y.size(), static_cast<size_t>(M) * N);
    for (float v : y) EXPECT_GT(v, 1.0f + 0x1p-8f) << "M=" << M;
  }
}

// The integer form itself: which blocks have one, and that it gives back the values exactly; with
// `high` (AVX2) also the two-plane form (gemm.h) of blocks without the one-plane form.
TEST(Gemm, Fp4IntActivationsAreExactOrRefused) {
  constexpr int nb = 19;
  std::mt19937 rng(13);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> a(nb * 128);
  for (auto& v : a) v = round_to_e4m3_clamped(nd(rng) * 64.0f) * 0x1p-6f;  // e4m3 values times a block scale
  auto lane0 = [&](int b, int t) -> float& { return a[static_cast<size_t>(b) * 128 + 16 * t]; };
  lane0(1, 3) = 0x1p-24f;                                  // 1: spans more than 18 bits (refused)
  lane0(2, 0) = std::numeric_limits<float>::quiet_NaN();  // 2: NaN (refused)
  std::fill(a.begin() + 3 * 128, a.begin() + 4 * 128, 0.0f);  // 3: all zeros (taken)
  for (int i = 0; i < 128; ++i) a[4 * 128 + i] = std::ldexp(static_cast<float>(i % 7) - 3.0f, -105);  // 4: largest binade 2^-104: u < 2^-117 (refused)
  for (int i = 0; i < 128; ++i) a[5 * 128 + i] = static_cast<float>(32767 - 2 * i);  // 5: odd integers up to 2^15 - 1 (taken)
  for (int i = 0; i < 128; ++i) a[6 * 128 + i] = static_cast<float>(32769 - 2 * i);  // 6: 32769 > 2^15: unit 2 (two planes: unit 1/4)
  lane0(7, 5) = std::numeric_limits<float>::infinity();  // 7: infinity (refused)
  a[8 * 128 + 16 * 2 + 9] = -0.0f;                       // 8: a negative zero (taken)
  for (int i = 0; i < 128; ++i) a[9 * 128 + i] = std::ldexp(static_cast<float>(i % 7) - 3.0f, -104);  // 9: 2^-103: u = 2^-117 (taken)
  // Two planes: u = 2^-9 under a largest value of 448 or 480 in lane 0 (n = 229376, 245760).
  lane0(10, 0) = -448.0f, lane0(10, 3) = 0x1p-9f, lane0(10, 6) = -0x3p-9f;  // 10: 18 bits, both signs (two planes)
  lane0(11, 0) = 480.0f, lane0(11, 1) = 0x1p-10f;                          // 11: a bit below u (refused)
  for (int t = 0; t < 5; ++t) lane0(12, t) = t % 2 ? -480.0f : 480.0f;      // 12: 12 sum |n| = 12 (5 x 245760 + 1) < 2^24 (two planes)
  lane0(12, 7) = 0x1p-9f;
  for (int t = 0; t < 6; ++t) lane0(13, t) = 480.0f;                         // 13: 12 (6 x 245760 + 1) >= 2^24 (refused)
  lane0(13, 7) = 0x1p-9f;
  for (int i = 0; i < 128; ++i) a[14 * 128 + i] = i < 16 ? 0x1p-101f : 0x1p-118f;  // 14: largest binade 2^-101: fine u < 2^-117 (refused)
  for (int i = 0; i < 128; ++i) a[15 * 128 + i] = i < 16 ? 0x1p-100f : 0x1p-117f;  // 15: 2^-100: fine u = 2^-117 (two planes)
  // Largest binades at the top (gemm.h: no partial sum may overflow), values 0 and +-2^(e - 127):
  for (int i = 0; i < 128; ++i) a[16 * 128 + i] = std::ldexp(static_cast<float>(i % 3) - 1.0f, 121);  // 16: e = 248 (taken)
  for (int i = 0; i < 128; ++i) a[17 * 128 + i] = std::ldexp(static_cast<float>(i % 3) - 1.0f, 122);  // 17: e = 249 (two planes)
  for (int i = 0; i < 128; ++i) a[18 * 128 + i] = std::ldexp(static_cast<float>(i % 3) - 1.0f, 123);  // 18: e = 250 (refused)
  const uint8_t want[nb] = {1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0};
  const uint8_t want_two[nb] = {1, 0, 0, 1, 0, 1, 2, 0, 1, 1, 2, 0, 2, 0, 0, 2, 1, 2, 0};
  // n of element t of lane d, from the planes (one plane: high absent or unused).
  auto value = [](const uint32_t* words, const uint32_t* high, const float* unit, int b, int t, int d) {
    const int u = t / 2, shift = t % 2 ? 0 : 16;
    const uint32_t w = words[b * 64 + 16 * u + d] >> shift & 0xFFFF;
    const int n = high ? 32768 * static_cast<int16_t>(high[b * 64 + 16 * u + d] >> shift & 0xFFFF) + static_cast<int>(w)
                       : static_cast<int16_t>(w);
    return static_cast<float>(n) * unit[b * 16 + d] * 2.0f;
  };
  struct Form {
    std::vector<uint32_t> words = std::vector<uint32_t>(nb * 64), high = std::vector<uint32_t>(nb * 64);
    std::vector<float> unit = std::vector<float>(nb * 16);
    std::vector<uint8_t> ok = std::vector<uint8_t>(nb);
  };
  Form one, two;
  gemm_detail::fp4_int_activations(a.data(), nb, one.words.data(), one.unit.data(), one.ok.data());
  gemm_detail::fp4_int_activations(a.data(), nb, two.words.data(), two.unit.data(), two.ok.data(), two.high.data());
  for (int b = 0; b < nb; ++b) {
    EXPECT_EQ(one.ok[b], want[b]) << "block " << b;
    EXPECT_EQ(two.ok[b], want_two[b]) << "block " << b << " (two planes)";
    for (int t = 0; t < 8; ++t)
      for (int d = 0; d < 16; ++d) {
        if (one.ok[b]) {
          EXPECT_EQ(value(one.words.data(), nullptr, one.unit.data(), b, t, d), a[b * 128 + 16 * t + d]) << "block " << b;
        }
        if (two.ok[b] == 2) {
          EXPECT_EQ(value(two.words.data(), two.high.data(), two.unit.data(), b, t, d), a[b * 128 + 16 * t + d]) << "block " << b;
          EXPECT_LT(two.words[b * 64 + 16 * (t / 2) + d] >> (t % 2 ? 0 : 16) & 0xFFFF, 32768u) << "block " << b;  // (low planes: 0 .. 2^15 - 1)
        }
      }
  }
  // The SIMD versions must agree with this one (AVX-512: the one-plane form only).
  for (Isa isa : simd_isas()) {
    const Form& ref = isa == Isa::Avx512 ? one : two;
    Form got;
    if (isa == Isa::Avx512)
      gemm_detail::fp4_int_activations_avx512(a.data(), nb, got.words.data(), got.unit.data(), got.ok.data());
    else
      gemm_detail::fp4_int_activations_avx2(a.data(), nb, got.words.data(), got.unit.data(), got.ok.data(), got.high.data());
    for (int b = 0; b < nb; ++b) {
      EXPECT_EQ(got.ok[b], ref.ok[b]) << isa_name(isa) << " block " << b;
      if (!ref.ok[b]) continue;
      for (int i = 0; i < 64; ++i) EXPECT_EQ(got.words[b * 64 + i], ref.words[b * 64 + i]) << isa_name(isa) << " block " << b;
      if (ref.ok[b] == 2) {
        for (int i = 0; i < 64; ++i) EXPECT_EQ(got.high[b * 64 + i], ref.high[b * 64 + i]) << isa_name(isa) << " block " << b;
      }
      for (int i = 0; i < 16; ++i) EXPECT_EQ(f32_bits(got.unit[b * 16 + i]), f32_bits(ref.unit[b * 16 + i])) << isa_name(isa) << " block " << b;
    }
  }
}

// The w2 input of an expert, silu(gate) x up, leaves about a quarter of the blocks without the
// one-plane integer form: AVX2 takes them in two planes, AVX-512's byte form in three (gemm.h). Every path gives the scalar
// reference's bits, and both kinds of blocks did occur.
TEST(Gemm, Fp4TwoPlaneBlocksKeepTheCanonicalOrder) {
  std::mt19937 rng(15);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const Shape shapes[] = {{1, 48, 2048}, {2, 40, 4096}, {3, 33, 1056}, {7, 20, 640}};
  for (Shape s : shapes) {
    auto d = make_fp4(rng, s.N, s.K);
    std::vector<float> x(static_cast<size_t>(s.M) * s.K);
    for (float& v : x) {
      const float g = nd(rng), up = nd(rng);
      v = bf16_round(g / (1.0f + std::exp(-g)) * up);
    }
    for (bool two_planes : {true, false}) {  // (off: those blocks through the fp32 chain)
      const bool saved = force_fp4_two_planes(two_planes);
      const auto y = check_all_paths(static_cast<size_t>(s.M) * s.N, name("fp4 two planes", s) + (two_planes ? " on" : " off"),
                                     [&](ThreadPool& p, std::vector<float>& out) { gemm_fp4(x.data(), s.M, d.W, out.data(), p); });
      force_fp4_two_planes(saved);
      ASSERT_FALSE(y.empty());
    }
    const int nb = (s.K + 127) / 128;
    std::vector<float> q(static_cast<size_t>(s.M) * s.K), sa(static_cast<size_t>(s.M) * nb);
    quantize_rows_fp8(x.data(), s.M, s.K, q.data(), sa.data());
    int count[3] = {};
    for (int m = 0; m < s.M; ++m) {
      std::vector<float> a(static_cast<size_t>(nb) * 128, 0.0f);
      for (int k = 0; k < s.K; ++k)
        a[static_cast<size_t>(k / 128 * 128 + gemm_detail::fp4_permuted_pos(k % 128))] = q[size_t(m) * s.K + k] * sa[size_t(m) * nb + k / 128];
      std::vector<uint32_t> words(static_cast<size_t>(nb) * 64), high(static_cast<size_t>(nb) * 64);
      std::vector<float> unit(static_cast<size_t>(nb) * 16);
      std::vector<uint8_t> ok(static_cast<size_t>(nb));
      gemm_detail::fp4_int_activations(a.data(), nb, words.data(), unit.data(), ok.data(), high.data());
      for (uint8_t o : ok) ++count[o];
    }
    EXPECT_GT(count[1], 0) << name("fp4 two planes", s);
    EXPECT_GT(count[2], 0) << name("fp4 two planes", s);
  }
}

// A batch computes each item exactly as its own call would, also where items share activations
// (the FP4 and BF16 batches prepare them once per x pointer: here non-adjacent items on one x,
// and the same pointer with a different M or K, which must not share).
TEST(Gemm, BatchItemsEqualSingleCalls) {
  IsaGuard g;
  TilesGuard tg;
  std::mt19937 rng(21);
  ThreadPool pool(2);
  const auto x0 = rand_act(rng, 2 * 1024), x1 = rand_act(rng, 2 * 1024);
  auto a = make_fp4(rng, 40, 1024), b = make_fp4(rng, 24, 1024), c = make_fp4(rng, 33, 512);
  auto f8 = make_fp8(rng, 48, 1024, 110, 20), f8b = make_fp8(rng, 20, 1024, 110, 20);
  auto h = make_bf16(rng, 36, 1024), h2 = make_bf16(rng, 52, 1024), h_inexact = make_bf16(rng, 20, 1024);
  h_inexact.w[5] = 0x0001;  // (a subnormal bf16: off the VDPBF16PS path)
  h_inexact.W.dp_exact = bf16_dp_exact(h_inexact.w.data(), h_inexact.w.size());
  ASSERT_TRUE(h.W.dp_exact);
  ASSERT_FALSE(h_inexact.W.dp_exact);
  struct Item {
    const float* x;
    int M;
    const Fp4Weight* W;
  };
  const Item fp4_items[] = {{x0.data(), 1, &a.W}, {x1.data(), 1, &b.W}, {x0.data(), 1, &b.W},
                            {x0.data(), 2, &a.W}, {x0.data(), 1, &c.W}, {x1.data(), 1, &a.W}};
  std::vector<Isa> isas = simd_isas();
  isas.insert(isas.begin(), Isa::Scalar);
  for (Isa isa : isas) {
    force_isa(isa);
    std::vector<std::vector<float>> ys, single;
    std::vector<GemmItem<Fp4Weight>> batch;
    for (const Item& it : fp4_items) {
      ys.emplace_back(static_cast<size_t>(it.M) * it.W->n, -7.0f);
      single.emplace_back(static_cast<size_t>(it.M) * it.W->n, -9.0f);
    }
    for (size_t i = 0; i < std::size(fp4_items); ++i) {
      batch.push_back({fp4_items[i].x, fp4_items[i].M, fp4_items[i].W, ys[i].data()});
      gemm_fp4(fp4_items[i].x, fp4_items[i].M, *fp4_items[i].W, single[i].data(), pool);
    }
    gemm_fp4_batch(batch, pool);
    for (size_t i = 0; i < ys.size(); ++i) expect_bits_equal(single[i], ys[i], std::string("fp4 batch item ") + std::to_string(i) + " " + isa_name(isa));
    std::vector<float> y8a(48), y8b(20), s8a(48), s8b(20);
    const GemmItem<Fp8Weight> items8[] = {{x0.data(), 1, &f8.W, y8a.data()}, {x0.data(), 1, &f8b.W, y8b.data()}};
    gemm_fp8_batch(items8, pool);
    gemm_fp8(x0.data(), 1, f8.W, s8a.data(), pool);
    gemm_fp8(x0.data(), 1, f8b.W, s8b.data(), pool);
    expect_bits_equal(s8a, y8a, std::string("fp8 batch item 0 ") + isa_name(isa));
    expect_bits_equal(s8b, y8b, std::string("fp8 batch item 1 ") + isa_name(isa));
    // BF16 (a compressor's two products on one x share its prepared views): the same x with
    // another M, another x, and a weight off the pairs path (not dp_exact) must not share them.
    std::vector<float> y16[5], s16[5];
    const GemmItem<Bf16Weight> items16[] = {{x0.data(), 1, &h.W, nullptr}, {x0.data(), 1, &h2.W, nullptr},
                                            {x0.data(), 2, &h.W, nullptr}, {x1.data(), 1, &h2.W, nullptr},
                                            {x0.data(), 1, &h_inexact.W, nullptr}};
    std::vector<GemmItem<Bf16Weight>> batch16(std::begin(items16), std::end(items16));
    for (size_t i = 0; i < batch16.size(); ++i) {
      y16[i].assign(static_cast<size_t>(batch16[i].M) * batch16[i].W->n, -7.0f);
      s16[i].assign(y16[i].size(), -9.0f);
      batch16[i].y = y16[i].data();
      gemm_bf16_f32(batch16[i].x, batch16[i].M, *batch16[i].W, s16[i].data(), pool);
    }
    gemm_bf16_f32_batch(batch16, pool);
    for (size_t i = 0; i < batch16.size(); ++i)
      expect_bits_equal(s16[i], y16[i], std::string("bf16 batch item ") + std::to_string(i) + " " + isa_name(isa));
  }
}

// The FP4 activation layout: value r of a block goes to fp4_permuted_pos(r), on every path.
TEST(Gemm, Fp4PermuteBlocksPlacesEveryValue) {
  constexpr int nb = 3;
  std::vector<float> a(nb * 128);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i);
  std::vector<float> ref = a;
  gemm_detail::fp4_permute_blocks(ref.data(), nb);
  for (int b = 0; b < nb; ++b)
    for (int r = 0; r < 128; ++r) ASSERT_EQ(ref[b * 128 + gemm_detail::fp4_permuted_pos(r)], a[b * 128 + r]) << b << " " << r;
  if (isa_supported(Isa::Avx512)) {
    std::vector<float> v = a;
    gemm_detail::fp4_permute_blocks_avx512(v.data(), nb);
    EXPECT_EQ(v, ref);
  }
}

// The byte form of the same integers (AVX-512, gemm.h): every value n = 256 hi + lo comes back
// from its two planes at the byte that meets its weight nibble, the corrections are -12 unit
// sum n, and a block is refused exactly where the word form refuses it or some n > 32639. With
// `high`, the blocks refused so take three planes, n = 65536 top + 256 hi + lo, where the word
// form or its two planes (fp4_int_activations with high) have them, at those forms' units.
TEST(Gemm, Fp4ByteActivationsSplitTheIntegersExactly) {
  if (!isa_supported(Isa::Avx512)) GTEST_SKIP() << "no AVX-512 on this CPU";
  constexpr int nb = 11;
  std::mt19937 rng(14);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> a(nb * 128);
  for (auto& v : a) v = round_to_e4m3_clamped(nd(rng) * 64.0f) * 0x1p-6f;
  auto lane0 = [&](int b, int t) -> float& { return a[static_cast<size_t>(b) * 128 + 16 * t]; };
  for (int i = 0; i < 128; ++i) a[1 * 128 + i] = static_cast<float>(32767 - 2 * i);        // 1: n up to 32767 (refused; three planes)
  for (int i = 0; i < 128; ++i) a[2 * 128 + i] = static_cast<float>(32639 - 2 * i);        // 2: n up to 32639 (taken)
  for (int i = 0; i < 128; ++i) a[3 * 128 + i] = static_cast<float>(-32767 + 256 * (i % 7));  // 3: n down to -32767 (taken)
  a[4 * 128 + 16 * 3] = 0x1p-30f;                                                            // 4: no integer form (refused)
  for (int i = 0; i < 128; ++i) a[5 * 128 + i] = static_cast<float>((i * 37) % 511 - 255);  // 5: lo bytes of both signs
  lane0(6, 0) = -448.0f, lane0(6, 3) = 0x1p-9f, lane0(6, 6) = -0x3p-9f;                      // 6: 18 bits (three planes)
  for (int t = 0; t < 5; ++t) lane0(7, t) = t % 2 ? -480.0f : 480.0f;                         // 7: 12 sum |n| < 2^24 (three planes)
  lane0(7, 7) = 0x1p-9f;
  for (int t = 0; t < 6; ++t) lane0(8, t) = 480.0f;                                          // 8: 12 sum |n| >= 2^24 (refused)
  lane0(8, 7) = 0x1p-9f;
  for (int i = 0; i < 128; ++i) a[9 * 128 + i] = std::ldexp(static_cast<float>(i % 3) - 1.0f, 122);  // 9: e = 249 (three planes)
  for (int i = 0; i < 128; ++i) {                                                            // 10: silu(g) x up, lanes of every kind
    const float g = nd(rng), up = nd(rng);
    a[10 * 128 + i] = round_to_e4m3_clamped(g / (1.0f + std::exp(-g)) * up * 64.0f) * 0x1p-6f;
  }
  lane0(10, 2) = 0x1p-9f, lane0(10, 4) = 300.0f;
  struct Form {
    std::vector<uint32_t> words = std::vector<uint32_t>(nb * 64), high = std::vector<uint32_t>(nb * 64);
    std::vector<float> unit = std::vector<float>(nb * 16), corr = std::vector<float>(nb * 16);
    std::vector<uint8_t> ok = std::vector<uint8_t>(nb);
  };
  Form word, two, bytes, bytes3;
  gemm_detail::fp4_int_activations(a.data(), nb, word.words.data(), word.unit.data(), word.ok.data());
  gemm_detail::fp4_int_activations(a.data(), nb, two.words.data(), two.unit.data(), two.ok.data(), two.high.data());
  gemm_detail::fp4_byte_activations_avx512(a.data(), nb, bytes.words.data(), bytes.unit.data(), bytes.corr.data(), bytes.ok.data());
  gemm_detail::fp4_byte_activations_avx512(a.data(), nb, bytes3.words.data(), bytes3.unit.data(), bytes3.corr.data(),
                                           bytes3.ok.data(), bytes3.high.data());
  const uint8_t want[nb] = {1, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0};
  const uint8_t want3[nb] = {1, 2, 1, 1, 0, 1, 2, 2, 0, 2, 2};
  constexpr int kEven[4] = {1, 5, 0, 4}, kOdd[4] = {3, 7, 2, 6};  // vector t of element 8d + 2i (+1)
  for (int b = 0; b < nb; ++b) {
    EXPECT_EQ(bytes.ok[b], want[b]) << "block " << b;
    EXPECT_EQ(bytes3.ok[b], want3[b]) << "block " << b << " (three planes)";
    EXPECT_EQ(bytes3.ok[b] == 1, bytes.ok[b] == 1) << "block " << b;
    for (const Form* f : {&bytes, &bytes3}) {
      if (!f->ok[b]) continue;
      const bool three = f->ok[b] == 2;
      // The units of the word form where it holds, else of its two planes.
      const Form& ref = word.ok[b] ? word : two;
      ASSERT_TRUE(ref.ok[b]) << "block " << b;
      for (int d = 0; d < 16; ++d) {
        const float u = ref.unit[b * 16 + d];
        EXPECT_EQ(f32_bits(f->unit[b * 16 + d]), f32_bits(u)) << "block " << b << " lane " << d;
        double sum = 0;
        for (int odd = 0; odd < 2; ++odd)
          for (int i = 0; i < 4; ++i) {
            const int t = odd ? kOdd[i] : kEven[i];
            const auto byte = [&](const std::vector<uint32_t>& planes, int plane) {
              return static_cast<int8_t>(planes[b * 64 + 16 * plane + d] >> (8 * i) & 0xFF);
            };
            const int top = three ? byte(f->high, odd) : 0;
            if (three) {
              EXPECT_LE(std::abs(top), 4) << "block " << b;
            }
            const int n = 65536 * top + 256 * byte(f->words, odd) + byte(f->words, 2 + odd);
            EXPECT_EQ(static_cast<float>(n) * u * 2.0f, a[b * 128 + 16 * t + d]) << "block " << b << " lane " << d << " t " << t;
            sum += n;
          }
        EXPECT_EQ(f->corr[b * 16 + d], static_cast<float>(-12.0 * sum * u)) << "block " << b << " lane " << d;
      }
    }
  }
}

TEST(Gemm, Fp8AsBf16AllPathsBitIdentical) {
  std::mt19937 rng(3);
  for (const auto& [scale_lo, span] : {std::pair{110, 24}, std::pair{112, 8}})
  for (Shape s : kFp8Shapes) {
    auto d = make_fp8(rng, s.N, s.K, scale_lo, span);
    const auto x = rand_act(rng, static_cast<size_t>(s.M) * s.K);
    const auto y = check_all_paths(static_cast<size_t>(s.M) * s.N, name("fp8_as_bf16", s), [&](ThreadPool& p, std::vector<float>& out) {
      gemm_fp8_as_bf16(x.data(), s.M, d.W, out.data(), p);
    });
    const int nb = (s.K + 127) / 128;
    std::vector<double> ref(y.size()), mag(y.size());
    for (int m = 0; m < s.M; ++m)
      for (int n = 0; n < s.N; ++n) {
        double acc = 0, am = 0;
        for (int k = 0; k < s.K; ++k) {
          const double t = double(x[size_t(m) * s.K + k]) * e4m3_to_f32(d.w[size_t(n) * s.K + k]) *
                           e8m0_to_f32(d.s[size_t(n / 128) * nb + k / 128]);
          acc += t;
          am += std::fabs(t);
        }
        ref[size_t(m) * s.N + n] = acc;
        mag[size_t(m) * s.N + n] = am;
      }
    expect_close(y, ref, mag, true, name("fp8_as_bf16 vs reference", s));
  }
}

// Many activation rows: their quantisation and pairing are split over the pool, so the pool
// threads take part (buffers owned by the calling thread must reach them).
TEST(Gemm, ManyRowsPreparedOnEveryThread) {
  std::mt19937 rng(14);
  const int M = 240, N = 16, K = 4096;  // rows long enough that the pool threads wake in time
  auto d8 = make_fp8(rng, N, K);
  auto d4 = make_fp4(rng, N, K);
  const auto x = rand_act(rng, static_cast<size_t>(M) * K);
  for (int rep = 0; rep < 3; ++rep) {
    check_all_paths(static_cast<size_t>(M) * N, "fp8 many rows",
                    [&](ThreadPool& p, std::vector<float>& out) { gemm_fp8(x.data(), M, d8.W, out.data(), p); });
    check_all_paths(static_cast<size_t>(M) * N, "fp4 many rows",
                    [&](ThreadPool& p, std::vector<float>& out) { gemm_fp4(x.data(), M, d4.W, out.data(), p); });
    check_all_paths(static_cast<size_t>(M) * N, "fp8_as_bf16 many rows",
                    [&](ThreadPool& p, std::vector<float>& out) { gemm_fp8_as_bf16(x.data(), M, d8.W, out.data(), p); });
  }
}

// The FP8 rows' prefetch hint: NTA by default on AMD CPUs only (the vendor as /proc/cpuinfo
// names it), T0 elsewhere, and forcing sets it either way; the FP4 rows' prefetch alike.
TEST(Gemm, PrefetchChoicesDefaultByVendorAndCanBeForced) {
  std::ifstream info("/proc/cpuinfo");
  std::string line, vendor;
  while (vendor.empty() && std::getline(info, line))
    if (line.rfind("vendor_id", 0) == 0) vendor = line.substr(line.find(':') + 2);
  if (!vendor.empty()) {
    EXPECT_EQ(cpu_is_amd(), vendor == "AuthenticAMD") << vendor;
  }
  TilesGuard g;
  // Each choice: on AMD by default (unless its env variable sets it), and force() sets it and
  // returns the previous setting.
  auto check = [](const char* env, bool (*active)(), bool (*force)(bool)) {
    if (!std::getenv(env)) {
      EXPECT_EQ(active(), cpu_is_amd()) << env;
    }
    force(true);
    EXPECT_TRUE(active()) << env;
    EXPECT_TRUE(force(false)) << env;
    EXPECT_FALSE(active()) << env;
  };
  check("DSV4_FP8_PREFETCH_NTA", fp8_prefetch_nta_active, force_fp8_prefetch_nta);
  check("DSV4_FP4_PREFETCH_AHEAD", fp4_prefetch_ahead_active, force_fp4_prefetch_ahead);  // (gemm.h)
}

// Below gemm_small_m_limit() rows the small-M back ends run: 8 rows with the VDPBF16PS tiles and
// on AVX2, whose weight conversion costs more below that, 4 with the AVX-512 fp32 FMA tiles.
TEST(Gemm, SmallMLimitFollowsTheTiles) {
  IsaGuard g;
  TilesGuard tg;
  if (isa_supported(Isa::Avx512)) {
    force_isa(Isa::Avx512);
    force_gemm_tiles(GemmTiles::Dp);
    EXPECT_EQ(gemm_small_m_limit(), 8);
    force_gemm_tiles(GemmTiles::Fma);
    EXPECT_EQ(gemm_small_m_limit(), 4);
  }
  if (isa_supported(Isa::Avx2)) {
    force_isa(Isa::Avx2);
    for (GemmTiles t : {GemmTiles::Dp, GemmTiles::Fma}) {
      force_gemm_tiles(t);
      EXPECT_EQ(gemm_small_m_limit(), 8) << gemm_tiles_name(t);
    }
  }
}

// More activation rows than gemm_detail::kSliceRows: the products run slice by slice over M
// (517 rows: three slices of 176, 176 and 165), also in a batch whose pool chunks span an
// unsliced product and a sliced one. Every path must still give the scalar bits.
TEST(Gemm, RowSlicesMatchTheWholeProduct) {
  std::mt19937 rng(21);
  const int M = 517, N = 40, K = 384;
  static_assert(517 > 2 * gemm_detail::kSliceRows, "three slices");
  auto d8 = make_fp8(rng, N, K);
  auto d4 = make_fp4(rng, N, K);
  auto d16 = make_bf16(rng, N, K);
  const auto x = rand_act(rng, static_cast<size_t>(M) * K);
  // FP4 also with small integers, which quantise to exact integers (the FP4 M >= 4 FMA tiles
  // take them in integer arithmetic), but two rows past the first slice with one lane that has
  // no integer form (448 next to 2^-8: such blocks are redone in fp32, by per-row flags). The
  // rest of those two rows zero, so that where a weight row has 0 at 448's column the small
  // term is the whole output.
  std::vector<float> xi(x.size());
  for (float& v : xi) v = static_cast<float>(static_cast<int>(rng() % 17) - 8);
  for (int m : {300, 450}) {
    std::fill(xi.begin() + static_cast<ptrdiff_t>(m) * K, xi.begin() + static_cast<ptrdiff_t>(m + 1) * K, 0.0f);
    xi[static_cast<size_t>(m) * K + 128] = 448.0f;
    xi[static_cast<size_t>(m) * K + 129] = 0x1p-8f;
  }
  check_all_paths(static_cast<size_t>(M) * N, "fp8 sliced",
                  [&](ThreadPool& p, std::vector<float>& out) { gemm_fp8(x.data(), M, d8.W, out.data(), p); });
  const std::vector<float>* fp4_acts[] = {&x, &xi};
  for (const std::vector<float>* a : fp4_acts)
    check_all_paths(static_cast<size_t>(M) * N, a == &x ? "fp4 sliced" : "fp4 sliced, integer activations",
                    [&](ThreadPool& p, std::vector<float>& out) { gemm_fp4(a->data(), M, d4.W, out.data(), p); });
  check_all_paths(static_cast<size_t>(M) * N, "fp8_as_bf16 sliced",
                  [&](ThreadPool& p, std::vector<float>& out) { gemm_fp8_as_bf16(x.data(), M, d8.W, out.data(), p); });
  check_all_paths(static_cast<size_t>(M) * N, "bf16 sliced",
                  [&](ThreadPool& p, std::vector<float>& out) { gemm_bf16_f32(x.data(), M, d16.W, out.data(), p); });
  const int small_m = 7;
  check_all_paths(static_cast<size_t>(M + small_m) * N, "fp4 batch sliced", [&](ThreadPool& p, std::vector<float>& out) {
    const GemmItem<Fp4Weight> items[] = {{xi.data(), small_m, &d4.W, out.data()}, {xi.data(), M, &d4.W, out.data() + small_m * N}};
    gemm_fp4_batch(items, p);
  });
}

// Grouped output projection: rows [r0, r1) with an offset x and strided y equal the matching
// columns of the full product, on every path.
TEST(Gemm, Fp8AsBf16RowsMatchesFull) {
  std::mt19937 rng(4);
  // (the second: AMX tiles where the CPU has them, with their row offsets and strides)
  for (const auto& [M, K, xs] : {std::tuple{5, 160, 200}, std::tuple{20, 512, 520}}) {
  const int N = 400, ys = 90;
  auto d = make_fp8(rng, N, K);
  const auto x = rand_act(rng, static_cast<size_t>(M) * xs);
  std::vector<float> xd(static_cast<size_t>(M) * K);
  for (int m = 0; m < M; ++m) std::copy(x.begin() + m * xs, x.begin() + m * xs + K, xd.begin() + m * K);
  ThreadPool pool(2);
  std::vector<float> full(static_cast<size_t>(M) * N);
  gemm_fp8_as_bf16(xd.data(), M, d.W, full.data(), pool);
  for (auto [r0, r1] : {std::pair{0, 90}, std::pair{100, 190}, std::pair{250, 331}}) {
    const auto y = check_all_paths(static_cast<size_t>(M) * ys, "fp8_as_bf16_rows", [&](ThreadPool& p, std::vector<float>& out) {
      gemm_fp8_as_bf16_rows(x.data(), M, xs, d.W, r0, r1, out.data(), ys, p);
    });
    for (int m = 0; m < M; ++m)
      for (int n = r0; n < r1; ++n)
        ASSERT_EQ(f32_bits(y[size_t(m) * ys + n - r0]), f32_bits(full[size_t(m) * N + n])) << m << " " << n;
  }
  }
}

// The BF16 product keeps its activation buffers between calls: a call with a shorter K must
// not see the previous call's values in its padding (an infinity there times a zero weight
// would be NaN on the paths that read whole chunks).
TEST(Gemm, Bf16PaddingIsZeroedBetweenCalls) {
  std::mt19937 rng(23);
  ThreadPool pool(2);
  const IsaGuard guard;
  for (Isa isa : all_isas()) {
    force_isa(isa);
    for (int M : {2, 9}) {
      auto big = make_bf16(rng, 20, 96);
      const std::vector<float> inf(static_cast<size_t>(M) * 96, std::numeric_limits<float>::infinity());
      std::vector<float> y_big(static_cast<size_t>(M) * 20);
      gemm_bf16_f32(inf.data(), M, big.W, y_big.data(), pool);
      auto d = make_bf16(rng, 20, 40);
      const auto x = rand_act(rng, static_cast<size_t>(M) * 40);
      std::vector<float> y(static_cast<size_t>(M) * 20);
      gemm_bf16_f32(x.data(), M, d.W, y.data(), pool);
      for (float v : y) ASSERT_TRUE(std::isfinite(v)) << isa_name(isa) << " M=" << M;
    }
  }
}

TEST(Gemm, Bf16F32AllPathsBitIdentical) {
  std::mt19937 rng(5);
  for (Shape s : kFp8Shapes) {
    auto d = make_bf16(rng, s.N, s.K);
    const auto x = rand_act(rng, static_cast<size_t>(s.M) * s.K);
    const auto y = check_all_paths(static_cast<size_t>(s.M) * s.N, name("bf16", s),
                                   [&](ThreadPool& p, std::vector<float>& out) { gemm_bf16_f32(x.data(), s.M, d.W, out.data(), p); });
    std::vector<double> ref(y.size()), mag(y.size());
    for (int m = 0; m < s.M; ++m)
      for (int n = 0; n < s.N; ++n) {
        double acc = 0, am = 0;
        for (int k = 0; k < s.K; ++k) {
          const double t = double(x[size_t(m) * s.K + k]) * bf16_to_f32(d.w[size_t(n) * s.K + k]);
          acc += t;
          am += std::fabs(t);
        }
        ref[size_t(m) * s.N + n] = acc;
        mag[size_t(m) * s.N + n] = am;
      }
    expect_close(y, ref, mag, false, name("bf16 vs reference", s));
  }
}

// VDPBF16PS flushes denormal inputs and results: with tiny weights or activations (products
// below 2^-126, bf16 denormals) the GEMM must stay on the exact FMA order on every path.
TEST(Gemm, Bf16TinyValuesKeepTheExactOrder) {
  std::mt19937 rng(6);
  const int M = 1, N = 40, K = 256;
  auto d = make_bf16(rng, N, K);
  const auto x = rand_act(rng, static_cast<size_t>(M) * K);
  ASSERT_TRUE(d.W.dp_exact);
  auto run = [&](const std::vector<float>& xs, const Bf16Weight& W, const std::string& what) {
    check_all_paths(static_cast<size_t>(M) * N, what,
                    [&](ThreadPool& p, std::vector<float>& out) { gemm_bf16_f32(xs.data(), M, W, out.data(), p); });
  };
  // Tiny activations (some bf16 denormals, most products below 2^-126) with ordinary weights.
  auto tiny_x = x;
  for (float& v : tiny_x) v = bf16_round(std::ldexp(v, -118));
  run(tiny_x, d.W, "bf16 tiny activations");
  // Tiny weights in the first rows with ordinary activations.
  for (int i = 0; i < 3 * K; ++i) d.w[i] = bf16_bits(std::ldexp(bf16_to_f32(d.w[i]), -118));
  d.W.dp_exact = bf16_dp_exact(d.w.data(), d.w.size());
  EXPECT_FALSE(d.W.dp_exact);
  run(x, d.W, "bf16 tiny weights");
}

// An FP8 order check: every row of W holds the codes `w` (zero elsewhere) with scale 1, every
// activation row the values `x` (including an amax of 448 per block, so activation scales are 1);
// every output must be exactly `want` on every path, for both GEMM forms, at M = 1 (decode), 5,
// 9 (the VDPBF16PS tiles on AVX-512 from gemm_small_m_limit() rows on) and 40 (AMX tiles where
// the CPU has them).
void expect_fp8_order_gives(float want, int K, std::initializer_list<std::pair<int, uint8_t>> w,
                            std::initializer_list<std::pair<int, float>> x_vals, const std::string& what) {
  const int N = 20;
  std::vector<uint8_t> wb(static_cast<size_t>(N) * K, 0x00), s(static_cast<size_t>((K + 127) / 128), 127);
  for (int n = 0; n < N; ++n)
    for (const auto& [k, code] : w) wb[static_cast<size_t>(n) * K + k] = code;
  const Fp8Weight W{wb.data(), s.data(), N, K};
  for (int M : {1, 5, 9, 40}) {
    std::vector<float> x(static_cast<size_t>(M) * K, 0.0f);
    for (int m = 0; m < M; ++m)
      for (const auto& [k, v] : x_vals) x[static_cast<size_t>(m) * K + k] = v;
    const std::string at = what + " M=" + std::to_string(M);
    const auto plain = check_all_paths(static_cast<size_t>(M) * N, "fp8 " + at,
                                       [&](ThreadPool& p, std::vector<float>& out) { gemm_fp8(x.data(), M, W, out.data(), p); });
    const auto as_bf16 = check_all_paths(static_cast<size_t>(M) * N, "fp8_as_bf16 " + at,
                                         [&](ThreadPool& p, std::vector<float>& out) { gemm_fp8_as_bf16(x.data(), M, W, out.data(), p); });
    for (size_t i = 0; i < plain.size(); ++i) {
      EXPECT_EQ(plain[i], want) << "fp8 " << at << " at " << i;
      EXPECT_EQ(as_bf16[i], want) << "fp8_as_bf16 " << at << " at " << i;
    }
  }
}

// The FP8 slots take their elements in increasing k (gemm.h). Slot 5 gets +2^16 (element 5),
// 2^-18 (element 21, lost), -2^16 (element 37), then 2^-9 (element 53): 2^-9. The order before
// the step order (each 32-chunk's high half first) gave 0: 2^-9 was lost against 2^16 there.
TEST(Gemm, Fp8SlotsRunInIncreasingK) {
  expect_fp8_order_gives(0x1p-9f, 64, {{5, 0x78}, {21, 0x01}, {37, 0xF8}, {53, 0x01}},  // 256, 2^-9, -256, 2^-9
                         {{5, 256.0f}, {21, 0x1p-9f}, {37, 256.0f}, {53, 1.0f}, {60, 448.0f}}, "increasing k");
}

// VDPBF16PS flushes denormals and reads bf16 only: activations below 2^-56, or ones that are not
// bf16 values, keep FP8-as-BF16 on the FMA order.
TEST(Gemm, Fp8AsBf16UnusualActivationsKeepTheExactOrder) {
  std::mt19937 rng(12);
  const int M = 6, N = 48, K = 256;
  auto d = make_fp8(rng, N, K);
  const auto x = rand_act(rng, static_cast<size_t>(M) * K);
  auto run = [&](const std::vector<float>& xs, const std::string& what) {
    check_all_paths(static_cast<size_t>(M) * N, what,
                    [&](ThreadPool& p, std::vector<float>& out) { gemm_fp8_as_bf16(xs.data(), M, d.W, out.data(), p); });
  };
  auto tiny = x;
  for (float& v : tiny) v = bf16_round(std::ldexp(v, -118));
  run(tiny, "fp8_as_bf16 tiny activations");
  auto wide = x;
  for (float& v : wide) v *= 1.0f + 0x1p-9f + 0x1p-12f;  // low mantissa bits a bf16 lacks
  run(wide, "fp8_as_bf16 activations that are not bf16");
}

// The decoders must agree with the numerics tables on all 254 non-NaN e4m3 codes.
TEST(Gemm, Fp8EveryCodeDecodes) {
  std::vector<uint8_t> w;
  for (int c = 0; c < 256; ++c)
    if ((c & 0x7f) != 0x7f) w.push_back(static_cast<uint8_t>(c));
  const int N = static_cast<int>(w.size()), K = 1;
  std::vector<uint8_t> s(static_cast<size_t>((N + 127) / 128), 127);
  const Fp8Weight W{w.data(), s.data(), N, K};
  // Row m of x is 2^m: M = 1 decodes in registers, M = 9 goes through the bf16 pairs on AVX-512
  // (M = 4 through either, by the tile choice: gemm_small_m_limit()).
  const float x[9] = {1.0f, 2.0f, 4.0f, 8.0f, 16.0f, 32.0f, 64.0f, 128.0f, 256.0f};
  for (int M : {1, 4, 9}) {
    const auto y = check_all_paths(static_cast<size_t>(M) * N, "every e4m3 code", [&](ThreadPool& p, std::vector<float>& out) {
      gemm_fp8_as_bf16(x, M, W, out.data(), p);
    });
    // + 0.0f: the canonical sums start at +0, so code 0x80 (-0) yields +0.
    for (int m = 0; m < M; ++m)
      for (int i = 0; i < N; ++i)
        EXPECT_EQ(f32_bits(y[static_cast<size_t>(m) * N + i]), f32_bits(bf16_round(e4m3_to_f32(w[i]) * x[m] + 0.0f)))
            << "M=" << M << " code " << i;
  }
}

// The same at every position of a full 128-block, where the small-M AVX-512 path decodes 32 codes
// at a time (the GFNI form where the CPU has it): row n holds code n everywhere, and a one-hot
// activation picks one column, so each output is one weight times a power of two.
TEST(Gemm, Fp8EveryCodeDecodesAtEveryBlockPosition) {
  const int N = 256, K = 256;
  std::vector<uint8_t> w(static_cast<size_t>(N) * K);
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) w[static_cast<size_t>(n) * K + k] = (n & 0x7f) == 0x7f ? 0 : static_cast<uint8_t>(n);
  std::vector<uint8_t> s(static_cast<size_t>(2 * 2), 127 + 3);  // 2^3
  const Fp8Weight W{w.data(), s.data(), N, K};
  for (int col : {0, 5, 15, 16, 31, 32, 47, 63, 64, 100, 127, 128, 200, 255}) {
    std::vector<float> x(K, 0.0f);
    x[col] = 0.5f;
    const auto y = check_all_paths(N, "every e4m3 code at column " + std::to_string(col),
                                   [&](ThreadPool& p, std::vector<float>& out) { gemm_fp8_as_bf16(x.data(), 1, W, out.data(), p); });
    for (int n = 0; n < N; ++n)
      EXPECT_EQ(f32_bits(y[n]), f32_bits(bf16_round(e4m3_to_f32(w[static_cast<size_t>(n) * K]) * 4.0f + 0.0f)))
          << "column " << col << " code " << n;
  }
}

// The batched form: every row's result equals dot_f32's on every path, for row counts that
// leave each path's tail (1..3 rows after the groups of 4 / 2).
TEST(Dot, RowsMatchSingleDots) {
  IsaGuard g;
  std::mt19937 rng(11);
  for (int n : {1, 15, 16, 33, 512}) {
    const auto a = rand_act(rng, n);
    std::vector<std::vector<float>> rows;
    for (int r = 0; r < 17; ++r) rows.push_back(rand_act(rng, n));  // (16: one tree of 16 sums)
    std::vector<const float*> ptr;
    for (const auto& r : rows) ptr.push_back(r.data());
    force_isa(Isa::Scalar);
    std::vector<float> ref;
    for (const auto& r : rows) ref.push_back(dot_f32(a.data(), r.data(), n));
    std::vector<float> ref2;  // the first row as the query
    for (const auto& r : rows) ref2.push_back(dot_f32(rows[0].data(), r.data(), n));
    for (Isa isa : all_isas()) {
      force_isa(isa);
      for (int count : {0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 16, 17}) {
        const std::string what = std::string(isa_name(isa)) + " n=" + std::to_string(n) + " count=" + std::to_string(count);
        std::vector<float> out(18, -1.0f);
        dot_f32_rows(a.data(), ptr.data(), count, n, out.data());
        expect_bits_then_sentinel(out, ref, count, -1.0f, what);
        // Several queries at once (groups of four, a pair, a single): a and the first row, in turn.
        for (int na : {1, 2, 3, 5, 6}) {
          std::vector<const float*> qs;
          std::vector<std::vector<float>> outs(static_cast<size_t>(na), std::vector<float>(18, -1.0f));
          std::vector<float*> out_ptr;
          for (int q = 0; q < na; ++q) {
            qs.push_back(q % 2 ? ptr[0] : a.data());
            out_ptr.push_back(outs[static_cast<size_t>(q)].data());
          }
          dot_f32_rows_multi(qs.data(), na, ptr.data(), count, n, out_ptr.data());
          for (int q = 0; q < na; ++q)
            expect_bits_then_sentinel(outs[static_cast<size_t>(q)], q % 2 ? ref2 : ref, count, -1.0f,
                                      what + " " + std::to_string(na) + " queries, query " + std::to_string(q));
        }
      }
    }
  }
}

// The row quantiser gives act_quant_block's dequantised values on every path, bit for bit:
// ragged last blocks, tiny blocks (amax floor), e4m3 subnormals, saturation, an inf in a block
// (the scalar fallback), and nothing written past K.
TEST(ActQuant, RowsMatchScalarOnEveryPath) {
  IsaGuard g;
  std::mt19937 rng(13);
  for (int K : {1, 17, 128, 130, 300, 4096}) {
    for (int variant = 0; variant < 4; ++variant) {
      auto x = rand_act(rng, static_cast<size_t>(K));
      if (variant == 1)
        for (auto& v : x) v *= 1e-7f;  // below the amax floor: fixed scale, e4m3 subnormals
      if (variant == 2 && K > 5) x[5] = 3e38f;  // one huge value: the rest of the block underflows
      if (variant == 3) x[static_cast<size_t>(K) / 2] = std::numeric_limits<float>::infinity();
      std::vector<float> ref(static_cast<size_t>(K));
      for (int k0 = 0; k0 < K; k0 += 128) {
        const int len = std::min(128, K - k0);
        const float s = act_quant_block(x.data() + k0, len, ref.data() + k0);
        for (int i = 0; i < len; ++i) ref[static_cast<size_t>(k0 + i)] *= s;
      }
      for (Isa isa : all_isas()) {
        force_isa(isa);
        std::vector<float> out(static_cast<size_t>(K) + 1, -7.0f);
        quantize_row_dequantized(x.data(), K, out.data());
        expect_bits_then_sentinel(out, ref, K, -7.0f,
                                  std::string(isa_name(isa)) + " K=" + std::to_string(K) + " variant " + std::to_string(variant));
      }
    }
  }
}

// axpy_f32_rows is count axpy_f32 calls in order, bit for bit, on every path; y past n untouched.
TEST(Dot, AxpyRowsMatchSingleAxpys) {
  IsaGuard g;
  std::mt19937 rng(12);
  for (int n : {1, 7, 15, 16, 33, 130, 512}) {
    std::vector<std::vector<float>> rows;
    std::vector<float> alpha;
    for (int r = 0; r < 9; ++r) {
      rows.push_back(rand_act(rng, n));
      alpha.push_back(bf16_round(std::uniform_real_distribution<float>(0.0f, 1.0f)(rng)));
    }
    std::vector<const float*> ptr;
    for (const auto& r : rows) ptr.push_back(r.data());
    const std::vector<float> alpha_rev(alpha.rbegin(), alpha.rend());
    const auto y0 = rand_act(rng, n);
    for (int count : {0, 1, 2, 5, 9}) {
      force_isa(Isa::Scalar);
      auto ref = y0, ref_rev = y0;
      for (int r = 0; r < count; ++r) axpy_f32(alpha[static_cast<size_t>(r)], ptr[static_cast<size_t>(r)], ref.data(), n);
      for (int r = 0; r < count; ++r) axpy_f32(alpha_rev[static_cast<size_t>(r)], ptr[static_cast<size_t>(r)], ref_rev.data(), n);
      for (Isa isa : all_isas()) {
        force_isa(isa);
        const std::string what = std::string(isa_name(isa)) + " n=" + std::to_string(n) + " count=" + std::to_string(count);
        auto y = y0;
        y.push_back(-1.0f);
        axpy_f32_rows(alpha.data(), ptr.data(), count, y.data(), n);
        expect_bits_then_sentinel(y, ref, n, -1.0f, what);
        // Several outputs at once (groups of four, a pair, a single): the alphas as above and
        // reversed, in turn.
        for (int na : {1, 2, 3, 5, 6}) {
          std::vector<std::vector<float>> ys(static_cast<size_t>(na), y0);
          std::vector<const float*> alphas;
          std::vector<float*> y_ptr;
          for (int q = 0; q < na; ++q) {
            ys[static_cast<size_t>(q)].push_back(-1.0f);
            alphas.push_back(q % 2 ? alpha_rev.data() : alpha.data());
            y_ptr.push_back(ys[static_cast<size_t>(q)].data());
          }
          axpy_f32_rows_multi(alphas.data(), na, ptr.data(), count, y_ptr.data(), n);
          for (int q = 0; q < na; ++q)
            expect_bits_then_sentinel(ys[static_cast<size_t>(q)], q % 2 ? ref_rev : ref, n, -1.0f,
                                      what + " " + std::to_string(na) + " outputs, output " + std::to_string(q));
        }
      }
    }
  }
}

TEST(Dot, AllPathsBitIdentical) {
  IsaGuard g;
  std::mt19937 rng(6);
  for (int n : {0, 1, 5, 15, 16, 17, 31, 64, 100, 512, 1000}) {
    const auto a = rand_act(rng, n), b = rand_act(rng, n);
    const float alpha = bf16_round(0.37f);
    force_isa(Isa::Scalar);
    const float ref = dot_f32(a.data(), b.data(), n);
    auto yref = b;
    axpy_f32(alpha, a.data(), yref.data(), n);
    double exact = 0, mag = 0;
    for (int i = 0; i < n; ++i) {
      exact += double(a[i]) * b[i];
      mag += std::fabs(double(a[i]) * b[i]);
    }
    EXPECT_LE(std::fabs(ref - exact), mag * 1e-6 + 1e-30) << n;
    for (Isa isa : simd_isas()) {
      force_isa(isa);
      EXPECT_EQ(f32_bits(dot_f32(a.data(), b.data(), n)), f32_bits(ref)) << isa_name(isa) << " n=" << n;
      auto y = b;
      axpy_f32(alpha, a.data(), y.data(), n);
      expect_bits_equal(yref, y, std::string("axpy ") + isa_name(isa));
    }
  }
}

// The slots fold into the lanes every 256 elements, slot d with slot d+8 (gemm.h): step 0 leaves
// lane 0 at 2^16 (element 0); in step 1 slots 0 and 8 each sum two 2^-9 (elements 256, 272 and
// 264, 280), and lane 0 takes their 2^-7 whole; step 2 subtracts 2^16 (element 512): 2^-7.
// Chains over all of K lose every 2^-9 against 2^16 (2^-8 from slot or lane 8 alone), and
// lanes that take slots d and d+8 apart lose 2^-8 in a tie (also 2^-8).
TEST(Gemm, Fp8SlotsFoldIntoTheLanesEveryStep) {
  expect_fp8_order_gives(0x1p-7f, 768,
                         {{0, 0x78}, {256, 0x01}, {264, 0x01}, {272, 0x01}, {280, 0x01}, {512, 0xF8}},  // 256, 2^-9 x 4, -256
                         {{0, 256.0f}, {256, 1.0f}, {264, 1.0f}, {272, 1.0f}, {280, 1.0f}, {512, 256.0f}, {100, 448.0f},
                          {228, 448.0f}, {356, 448.0f}, {484, 448.0f}, {612, 448.0f}, {740, 448.0f}},
                         "steps");
}

// Weight scales outside the range the SIMD decoders are exact for (gemm.h) must still give the
// canonical result: huge ones (2^120 sw overflows) and tiny ones (VDPBF16PS would flush
// denormal products), at M = 1, 5 and 9.
TEST(Gemm, Fp8UnusualWeightScalesKeepTheExactOrder) {
  std::mt19937 rng(13);
  const int N = 40, K = 256;
  for (uint8_t scale : {uint8_t{140}, uint8_t{10}, uint8_t{30}}) {
    auto d = make_fp8(rng, N, K);
    for (auto& e : d.s) e = scale;
    for (int M : {1, 5, 9}) {
      auto x = rand_act(rng, static_cast<size_t>(M) * K);
      if (scale < 127)  // small activations too: most products are then denormals
        for (float& v : x) v = std::ldexp(v, -20);
      const std::string what = "scale byte " + std::to_string(scale) + " M=" + std::to_string(M);
      check_all_paths(static_cast<size_t>(M) * N, "fp8 " + what,
                      [&](ThreadPool& p, std::vector<float>& out) { gemm_fp8(x.data(), M, d.W, out.data(), p); });
      check_all_paths(static_cast<size_t>(M) * N, "fp8_as_bf16 " + what,
                      [&](ThreadPool& p, std::vector<float>& out) { gemm_fp8_as_bf16(x.data(), M, d.W, out.data(), p); });
    }
  }
}

// The FP4 tiles take the group scales into their bf16 weights where the sums stay normal numbers
// (gemm.h, kFp4FoldMinByte); elsewhere the lanes take the scales as before. Each 16-row panel
// here has one scale byte throughout: 32 (a product 0.5 * 2^-95 * 2^-31 would be a denormal, so
// those rows must not fold), 33 (the smallest that folds: products down to 2^-126), 120 and
// 200 (large scales, bounded by the activations' magnitude). The activations are the smallest
// quantised values (multiples of 2^-31 under the amax floor) in every block of the even rows
// and half of the blocks of the odd ones, ordinary ones in the rest, or huge (2^120 and more), where an unscaled partial overflows while a scaled
// one would not.
TEST(Gemm, Fp4ScalesInTheWeightsKeepTheExactOrder) {
  std::mt19937 rng(19);
  const int K = 512, groups = K / 32;
  const uint8_t bytes[] = {32, 33, 120, 200};
  const int N = 16 * 4;
  auto d = make_fp4(rng, N, K);
  for (int n = 0; n < N; ++n)
    for (int g = 0; g < groups; ++g) d.s[size_t(n) * groups + g] = bytes[n / 16];
  for (uint8_t& c : d.w)  // many codes of magnitude 0.5 (1, 9): the smallest nonzero products
    if (rng() % 2) c = static_cast<uint8_t>((c & 0xF0) | (rng() % 2 ? 1 : 9));
  for (const char* acts : {"tiny", "huge"})
    for (int M : {4, 9, 13, 50}) {  // (50: AMX where the CPU has it, the unfoldable panels beside it)
      auto x = rand_act(rng, static_cast<size_t>(M) * K);
      for (int m = 0; m < M; ++m)
        for (int k = 0; k < K; ++k) {
          float& v = x[size_t(m) * K + k];
          if (acts[0] == 'h')
            v = std::ldexp(v, 118);
          else if (m % 2 == 0 || (k / 128) % 2 == 0)  // below the floor: sa = 2^-22, multiples of 2^-31
            v = static_cast<float>(static_cast<int>(rng() % 17) - 8) * 0x1p-31f;
        }
      check_all_paths(static_cast<size_t>(M) * N, std::string("fp4 folded scales, ") + acts + " M=" + std::to_string(M),
                      [&](ThreadPool& p, std::vector<float>& out) { gemm_fp4(x.data(), M, d.W, out.data(), p); });
    }
}

// FP4 scale bytes 0 (2^-127) and 255 (NaN) are not e << 23: a group holding one must not take
// the AVX-512 decode that reads the bytes in place. Rows 0..15 have only 2^-127 scales (their
// outputs are then tiny but not zero), rows 16..31 one such group among plain ones, rows
// 32..47 only plain ones; the last row of the first group of a second call holds a 255.
TEST(Gemm, Fp4SpecialScaleBytesKeepTheirValues) {
  std::mt19937 rng(17);
  const int N = 48, K = 512, groups = K / 32;
  auto d = make_fp4(rng, N, K);
  for (int n = 0; n < 16; ++n)
    for (int g = 0; g < groups; ++g) d.s[size_t(n) * groups + g] = 0;
  for (int n = 16; n < 32; ++n) d.s[size_t(n) * groups + (n % groups)] = 0;
  for (int M : {1, 3}) {
    const auto x = rand_act(rng, static_cast<size_t>(M) * K);
    const auto y = check_all_paths(static_cast<size_t>(M) * N, "fp4 scale byte 0 M=" + std::to_string(M),
                                   [&](ThreadPool& p, std::vector<float>& out) { gemm_fp4(x.data(), M, d.W, out.data(), p); });
    int tiny = 0;
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < 16; ++n) {
        const float v = std::fabs(y[size_t(m) * N + n]);
        EXPECT_LT(v, 0x1p-90f) << "row " << n;
        tiny += v > 0.0f;
      }
    EXPECT_GT(tiny, 8 * M) << "2^-127 scales read as zero";
  }
  d.s[15 * groups + 3] = 255;
  IsaGuard g;
  const auto x = rand_act(rng, K);
  for (Isa isa : all_isas()) {
    force_isa(isa);
    ThreadPool p(1);
    std::vector<float> out(N);
    gemm_fp4(x.data(), 1, d.W, out.data(), p);
    EXPECT_TRUE(std::isnan(out[15])) << isa_name(isa);
    EXPECT_FALSE(std::isnan(out[14])) << isa_name(isa);
  }
}

}  // namespace
}  // namespace dsv4
