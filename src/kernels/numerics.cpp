#include "kernels/numerics.h"

#include <algorithm>
#include <array>
#include <limits>

namespace dsv4 {

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const int exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  if (exp == 0) {
    float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return f32_from_bits(sign | 0x7f800000u | (mant << 13));
  return f32_from_bits(sign | (static_cast<uint32_t>(exp + 112) << 23) | (mant << 13));
}

namespace {

constexpr float pow2_constexpr(int e) {
  float v = 1.0f;
  for (; e > 0; --e) v *= 2.0f;
  for (; e < 0; ++e) v *= 0.5f;
  return v;
}

constexpr std::array<float, 256> make_e4m3_table() {
  std::array<float, 256> t{};
  for (int c = 0; c < 256; ++c) {
    const int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
    float v;
    if (e == 0)
      v = static_cast<float>(m) * pow2_constexpr(-9);
    else if (e == 15 && m == 7)
      v = std::numeric_limits<float>::quiet_NaN();
    else
      v = (1.0f + static_cast<float>(m) / 8.0f) * pow2_constexpr(e - 7);
    t[c] = s ? -v : v;
  }
  return t;
}

// Shared rounding rule of §4.3: q = 2^(max(floor(log2|x|), emin) - mbits), round half even.
inline float round_minifloat(float x, int emin, int mbits, float maxv) {
  const float a = std::fabs(x);
  if (a == 0.0f || std::isnan(a)) return x;
  int e;
  std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1)  =>  floor(log2 a) = e - 1
  e = std::max(e - 1, emin);
  const float q = std::ldexp(1.0f, e - mbits);
  float r = std::nearbyint(a / q) * q;  // default rounding mode: half to even
  r = std::min(r, maxv);
  return std::signbit(x) ? -r : r;
}

}  // namespace

constexpr std::array<float, 256> kE4M3Table = make_e4m3_table();
const float* const kE4M3Values = kE4M3Table.data();

const float kE2M1Values[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                               -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

float round_to_e4m3(float x) { return round_minifloat(x, -6, 3, kFp8Max); }
// §4.3's rule for e2m1: the grid's step is 0.5 below 2, 1 below 4 and 2 above, so adding
// 1.5 * 2^23 times the step rounds to it, half to even (the FPU's mode); the same value as
// round_minifloat(x, 0, 1, 6) without its frexp, division and libm rounding (the lightning
// indexer quantises 64 query heads per token and layer).
float round_to_e2m1(float x) {
  const float a = std::fabs(x);
  if (!(a > 0.0f)) return x;  // zeros and NaN
  const float magic = a < 2.0f ? 0x1.8p22f : a < 4.0f ? 0x1.8p23f : 0x1.8p24f;
  return std::copysign(std::min((a + magic) - magic, kFp4Max), x);
}

uint8_t encode_e4m3(float v) {
  const uint8_t sign = std::signbit(v) ? 0x80 : 0;
  const float a = std::fabs(v);
  if (a == 0.0f) return sign;
  if (a < 0x1p-6f) return sign | static_cast<uint8_t>(a * 512.0f);  // subnormal: m * 2^-9
  int e;
  const float f = std::frexp(a, &e);  // a = f * 2^e, f in [0.5,1): biased exp = e - 1 + 7
  const int m = static_cast<int>((f * 2.0f - 1.0f) * 8.0f);
  return sign | static_cast<uint8_t>(((e + 6) << 3) | m);
}

uint8_t encode_e2m1(float v) {
  const uint8_t sign = std::signbit(v) ? 8 : 0;
  const float a = std::fabs(v);
  // Grid {0, .5, 1, 1.5, 2, 3, 4, 6}: index by value.
  uint8_t c;
  if (a < 0.25f) c = 0;
  else if (a < 0.75f) c = 1;
  else if (a < 1.25f) c = 2;
  else if (a < 1.75f) c = 3;
  else if (a < 2.5f) c = 4;
  else if (a < 3.5f) c = 5;
  else if (a < 5.0f) c = 6;
  else c = 7;
  return sign | c;
}

float round_to_e4m3_clamped(float x) {
  // Both candidates, then a select: no branch, so the quantiser loop vectorises.
  const uint32_t u = f32_bits(x), sign = u & 0x80000000u, a = u ^ sign;
  // >= 2^-6, normal in e4m3: keep 3 mantissa bits, half to even, at most 448.
  uint32_t normal = (a + 0x7FFFFu + ((a >> 20) & 1u)) & 0xFFF00000u;
  normal = normal < 0x43E00000u ? normal : 0x43E00000u;
  // Below: the subnormal grid 2^-9; adding 1.5 * 2^14 rounds to it (half to even).
  const uint32_t sub = f32_bits((f32_from_bits(a) + 0x1.8p14f) - 0x1.8p14f);
  return f32_from_bits((a >= 0x3C800000u ? normal : sub) | sign);
}

float act_quant_block(const float* x, int n, float* q_out) {
  // amax through the bit patterns: for non-negative floats integer order is float order, and
  // the integer max vectorises without fast-math.
  uint32_t amax_bits = f32_bits(kActQuantAmaxFloor);
  for (int i = 0; i < n; ++i) {
    const uint32_t b = f32_bits(x[i]) & 0x7FFFFFFFu;
    amax_bits = b > amax_bits ? b : amax_bits;
  }
  const float s = pow2ceil(f32_from_bits(amax_bits) * (1.0f / kFp8Max));
  if (s <= 0x1p126f) {  // 1/s is a normal power of two: x * (1/s) == x / s exactly
    const float inv = 1.0f / s;
    for (int i = 0; i < n; ++i) q_out[i] = round_to_e4m3_clamped(std::clamp(x[i] * inv, -kFp8Max, kFp8Max));
  } else {
    for (int i = 0; i < n; ++i) q_out[i] = round_to_e4m3_clamped(std::clamp(x[i] / s, -kFp8Max, kFp8Max));
  }
  return s;
}

void act_quant_simulate_codes(float* x, int n, int block, uint8_t* codes, uint8_t* scales) {
  for (int b0 = 0, bi = 0; b0 < n; b0 += block, ++bi) {
    const int len = std::min(block, n - b0);
    float amax = kActQuantAmaxFloor;
    for (int i = 0; i < len; ++i) amax = std::max(amax, std::fabs(x[b0 + i]));
    const float s = pow2ceil(amax * (1.0f / kFp8Max));
    if (scales) scales[bi] = e8m0_from_pow2(s);
    for (int i = 0; i < len; ++i) {
      const float q = round_to_e4m3(std::clamp(x[b0 + i] / s, -kFp8Max, kFp8Max));
      if (codes) codes[b0 + i] = encode_e4m3(q);
      x[b0 + i] = bf16_round(q * s);
    }
  }
}

void act_quant_simulate(float* x, int n, int block) {
  act_quant_simulate_codes(x, n, block, nullptr, nullptr);
}

void fp4_simulate_codes(float* x, int n, uint8_t* packed, uint8_t* scales) {
  constexpr float kAmaxFloor = 6.0f * 0x1p-126f;
  // e2m1 codes by twice the grid value |q| (0, .5, 1, 1.5, 2, 3, 4, 6); NaN takes 7 as encode_e2m1.
  static constexpr uint8_t kCodeOfTwice[13] = {0, 1, 2, 3, 4, 0, 5, 0, 6, 0, 0, 0, 7};
  for (int b0 = 0, bi = 0; b0 < n; b0 += 32, ++bi) {
    const int len = std::min(32, n - b0);
    float amax = kAmaxFloor;
    for (int i = 0; i < len; ++i) amax = std::max(amax, std::fabs(x[b0 + i]));
    const float s = pow2ceil(amax / kFp4Max);
    if (scales) scales[bi] = e8m0_from_pow2(s);
    // 1/s is a normal power of two while s <= 2^126: x * (1/s) is then exactly x / s.
    const bool by_inverse = s <= 0x1p126f;
    const float inv = 1.0f / s;
    for (int i = 0; i < len; ++i) {
      const float v = by_inverse ? x[b0 + i] * inv : x[b0 + i] / s;
      const float q = round_to_e2m1(std::clamp(v, -kFp4Max, kFp4Max));
      if (packed) {
        const int k = b0 + i;
        const float twice = std::fabs(q) * 2.0f;
        const uint8_t nib = static_cast<uint8_t>((std::signbit(q) ? 8 : 0) |
                                                 kCodeOfTwice[twice >= 0.0f && twice <= 12.0f ? static_cast<int>(twice) : 12]);
        if (k % 2 == 0)
          packed[k / 2] = nib;
        else
          packed[k / 2] = static_cast<uint8_t>(packed[k / 2] | (nib << 4));
      }
      x[b0 + i] = bf16_round(q * s);
    }
  }
}

void fp4_simulate(float* x, int n) { fp4_simulate_codes(x, n, nullptr, nullptr); }

void hadamard128(float* x) {
  for (int h = 1; h < 128; h <<= 1) {
    for (int i = 0; i < 128; i += 2 * h) {
      for (int j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
  constexpr float kScale = 0.08838834764831845f;
  for (int i = 0; i < 128; ++i) x[i] = bf16_round(x[i] * kScale);
}

void rms_norm(const float* x, const float* w, int n, float eps, float* y) {
  float ss = 0.0f;
  for (int i = 0; i < n; ++i) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / static_cast<float>(n) + eps);
  for (int i = 0; i < n; ++i) y[i] = bf16_round(w[i] * (x[i] * r));
}

namespace {
// The bf16 steps after the sum, then the scaling of one head.
void q_head_scale(float* q, int n, float eps, float sum) {
  const float m = bf16_round(sum / static_cast<float>(n));
  const float v = bf16_round(m + eps);
  const float r = bf16_round(1.0f / std::sqrt(v));
  for (int i = 0; i < n; ++i) q[i] = bf16_round(q[i] * r);
}
}  // namespace

void q_head_norm_bf16(float* q, int n, float eps) {
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) sum += bf16_round(q[i] * q[i]);
  q_head_scale(q, n, eps, sum);
}

void q_head_norm_bf16(float* q, int heads, int n, float eps) {
  constexpr int kChains = 8;
  int h0 = 0;
  for (; h0 + kChains <= heads; h0 += kChains) {
    float sum[kChains] = {};
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < kChains; ++j) {
        const float x = q[static_cast<size_t>(h0 + j) * n + i];
        sum[j] += bf16_round(x * x);
      }
    for (int j = 0; j < kChains; ++j) q_head_scale(q + static_cast<size_t>(h0 + j) * n, n, eps, sum[j]);
  }
  for (; h0 < heads; ++h0) q_head_norm_bf16(q + static_cast<size_t>(h0) * n, n, eps);
}

bool bf16_dp_exact(const uint16_t* v, size_t n) {
  // Exponent field 0 (zero or denormal) is fine only for zero; >= 127 - 56 = 71 and < 255: a
  // magnitude of 1 .. 71 * 128 - 1, or of 255 * 128 and up, is not. Branch-free, so that it
  // vectorises (it runs over every row of every BF16 product).
  unsigned bad = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint16_t mag = static_cast<uint16_t>(v[i] & 0x7FFFu);
    bad |= static_cast<unsigned>(static_cast<uint16_t>(mag - 1u) < 71u * 128u - 1u) | static_cast<unsigned>(mag >= 255u * 128u);
  }
  return bad == 0;
}

}  // namespace dsv4
