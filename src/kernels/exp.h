// exp_f32: y[i] = std::exp(x[i]) for float arrays, bit for bit on every ISA path.
//
// The SIMD paths evaluate the C library's expf algorithm (glibc since 2.28, musl alike): in
// double, z = x 32 / ln 2 is split into an integer k and r in [-1/2, 1/2], 2^(k/32) comes from
// a 32-entry table with k / 32 added to its exponent, 2^(r/32) from a cubic in r (two fused
// multiply-adds and one more for the cubic term), and the double product is rounded once to
// float. |x| >= 88 and NaN lanes call std::exp. At first use both SIMD paths are compared with
// std::exp over a sample of every binade a model meets; should this C library's expf differ,
// every path calls std::exp instead (exp_f32_simd_active()).
#pragma once
#include <cstdint>

namespace dsv4 {

void exp_f32(const float* x, float* y, int n);
// Whether exp_f32 runs the SIMD paths (false: they disagreed with std::exp, or the CPU has none).
bool exp_f32_simd_active();

namespace exp_detail {
// The algorithm's constants: 32 / ln 2, the round-to-integer shift (1.5 * 2^52), the cubic's
// coefficients for 2^(r/32) (C0 r^3 + C1 r^2 + C2 r + 1), and the table: entry i is the bits
// of 2^(i/32) minus i << 47, so that adding k << 47 sets the exponent of 2^(k/32).
constexpr double kInvLn2N = 0x1.71547652b82fep+5;
constexpr double kShift = 0x1.8p+52;
constexpr double kC0 = 0x1.c6af84b912394p-5 / 32 / 32 / 32, kC1 = 0x1.ebfce50fac4f3p-3 / 32 / 32,
                 kC2 = 0x1.62e42ff0c52d6p-1 / 32;
constexpr uint32_t kSpecialAbsBits = 0x42b00000u;  // |x| >= 88 (and inf, NaN): std::exp
alignas(64) inline constexpr uint64_t kTable[32] = {
    0x3ff0000000000000ull, 0x3fefd9b0d3158574ull, 0x3fefb5586cf9890full, 0x3fef9301d0125b51ull,
    0x3fef72b83c7d517bull, 0x3fef54873168b9aaull, 0x3fef387a6e756238ull, 0x3fef1e9df51fdee1ull,
    0x3fef06fe0a31b715ull, 0x3feef1a7373aa9cbull, 0x3feedea64c123422ull, 0x3feece086061892dull,
    0x3feebfdad5362a27ull, 0x3feeb42b569d4f82ull, 0x3feeab07dd485429ull, 0x3feea47eb03a5585ull,
    0x3feea09e667f3bcdull, 0x3fee9f75e8ec5f74ull, 0x3feea11473eb0187ull, 0x3feea589994cce13ull,
    0x3feeace5422aa0dbull, 0x3feeb737b0cdc5e5ull, 0x3feec49182a3f090ull, 0x3feed503b23e255dull,
    0x3feee89f995ad3adull, 0x3feeff76f2fb5e47ull, 0x3fef199bdd85529cull, 0x3fef3720dcef9069ull,
    0x3fef5818dcfba487ull, 0x3fef7c97337b9b5full, 0x3fefa4afa2a490daull, 0x3fefd0765b6e4540ull};

void exp_scalar(const float* x, float* y, int n);  // std::exp
void exp_avx512(const float* x, float* y, int n);
void exp_avx2(const float* x, float* y, int n);
}  // namespace exp_detail

}  // namespace dsv4
