// Exact numeric primitives of the DeepSeek-V4 reference (spec model.md §4):
// bf16 rounding, the e4m3 / e2m1 / ue8m0 codecs, power-of-two scales, act_quant (FP8
// activation quantisation), the FP4 simulation and the 128-point Walsh-Hadamard rotation.
// These are bit-exact emulations; every other kernel builds on them.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace dsv4 {

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// fp32 -> bf16 bits, round to nearest even (NaN stays a quiet NaN).
inline uint16_t bf16_bits(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_f32(uint16_t b) { return f32_from_bits(static_cast<uint32_t>(b) << 16); }
// Round an fp32 value to bf16 and read it back (the spec's bf16(v)).
inline float bf16_round(float f) { return bf16_to_f32(bf16_bits(f)); }

// IEEE half -> fp32 (for F16 tensors in checkpoints).
float f16_to_f32(uint16_t h);

// ---- FP8 e4m3fn ----
// Decoded value of every code (0x7f / 0xff are NaN).
extern const float* const kE4M3Values;  // 256 entries
inline float e4m3_to_f32(uint8_t code) { return kE4M3Values[code]; }
// Round |x| <= 448 to the nearest e4m3 value, ties to even (saturating at 448).
float round_to_e4m3(float x);
// The same for |x| <= 448 and not NaN, by bit arithmetic (the activation quantiser's hot loop).
float round_to_e4m3_clamped(float x);
// Encode a value that is exactly representable in e4m3 (e.g. the output of round_to_e4m3).
uint8_t encode_e4m3(float exact_value);

// ---- FP4 e2m1 ----
extern const float kE2M1Values[16];
inline float e2m1_to_f32(uint8_t nibble) { return kE2M1Values[nibble & 15]; }
float round_to_e2m1(float x);  // |x| <= 6, nearest, ties to even
uint8_t encode_e2m1(float exact_value);

// ---- ue8m0 scales: 2^(e-127); e == 255 is NaN ----
inline float e8m0_to_f32(uint8_t e) {
  if (e == 255) return NAN;
  if (e == 0) return 0x1p-127f;
  return f32_from_bits(static_cast<uint32_t>(e) << 23);
}
// Exponent byte of a power of two (as produced by pow2ceil).
inline uint8_t e8m0_from_pow2(float p) { return static_cast<uint8_t>(f32_bits(p) >> 23); }

// 2^ceil(log2 s) for a positive normal fp32 s, computed exactly from the bits.
inline float pow2ceil(float s) {
  uint32_t u = f32_bits(s);
  int e = static_cast<int>((u >> 23) & 0xff) - 127;
  if (u & 0x7fffffu) e += 1;
  return std::ldexp(1.0f, e);
}

// ---- activation quantisation (spec §4.5) ----
constexpr float kFp8Max = 448.0f;
constexpr float kFp4Max = 6.0f;
constexpr float kActQuantAmaxFloor = 1e-4f;

// Non-in-place form, one block: writes the rounded e4m3 values (as floats, exact) and returns
// the power-of-two scale. Used for the input of every FP8/FP4 GEMM (block 128).
float act_quant_block(const float* x, int n, float* q_out);
// In-place FP8 simulation over x[0..n), block `block`: x <- bf16(e4m3(x/s) * s).
void act_quant_simulate(float* x, int n, int block);
// Same, but also returns codes and scale bytes (for lossless compact storage).
void act_quant_simulate_codes(float* x, int n, int block, uint8_t* codes, uint8_t* scales);

// FP4 simulation (spec §4.6), block 32, in place: x <- bf16(e2m1(x/s) * s).
void fp4_simulate(float* x, int n);
// Same, with packed nibbles (low nibble = even index) and scale bytes out.
void fp4_simulate_codes(float* x, int n, uint8_t* packed, uint8_t* scales);

// 128-point Walsh-Hadamard rotation scaled by 128^-1/2, fp32 arithmetic, bf16 result (§4.9).
void hadamard128(float* x);

// RMSNorm (§4.1): y = bf16(w * (x * rsqrt(mean(x^2) + eps))). y may alias x.
void rms_norm(const float* x, const float* w, int n, float eps, float* y);
// Unweighted per-head q normalisation in bf16 arithmetic (§4.2), in place: the sum of the
// bf16-rounded squares in index order, then the bf16 steps. The second form takes `heads`
// consecutive heads of n values and gives each exactly the first form's bits (their sums run
// side by side: one head's chain is bound by the add latency).
void q_head_norm_bf16(float* q, int n, float eps);
void q_head_norm_bf16(float* q, int heads, int n, float eps);

// True when every value is zero or a finite bf16 with magnitude >= 2^-56. For such activations
// and weights every product (and every sum of products) is zero or a normal fp32, so VDPBF16PS,
// which flushes denormal inputs and results, computes the FMA order exactly; gemm_bf16_f32 takes
// that path only then.
bool bf16_dp_exact(const uint16_t* v, size_t n);

}  // namespace dsv4
