#include "kernels/hc_mix.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "kernels/cpu_features.h"
#include "kernels/numerics.h"

namespace dsv4 {

// One chain is bound by the add latency, so rows are taken kRows at a time: independent chains
// that share the loads of x; each sum's order is unchanged.
void hc_mix_rows(const float* fn, int rows, int HD, const float* x, float* mix) {
  constexpr int kRows = 8;
  const float* src[kRows];
  for (int j = 0; j < rows; j += kRows) {
    const int n = std::min(kRows, rows - j);
    for (int u = 0; u < n; ++u) src[u] = fn + static_cast<long>(j + u) * HD;
    hc_mix_detail::chains_scalar(src, n, HD, x, mix + j);
  }
}

float hc_sum_squares(const float* x, int HD) {
  float acc = 0.0f;
  for (int i = 0; i < HD; ++i) acc += x[i] * x[i];
  return acc;
}

namespace hc_mix_detail {
void chains_scalar(const float* const* src, int n, int HD, const float* x, float* out) {
  auto group = [&](int c0, auto count) {
    constexpr int R = decltype(count)::value;
    float acc[R] = {};
    for (int i = 0; i < HD; ++i) {
      const float xi = x[i];
      for (int u = 0; u < R; ++u) acc[u] += src[c0 + u][i] * xi;
    }
    for (int u = 0; u < R; ++u) out[c0 + u] = acc[u];
  };
  int c = 0;
  for (; c + 8 <= n; c += 8) group(c, std::integral_constant<int, 8>{});
  for (; c + 4 <= n; c += 4) group(c, std::integral_constant<int, 4>{});
  for (; c < n; ++c) group(c, std::integral_constant<int, 1>{});
}

void post_scalar(const float* f, const float* post, const float* comb, float* h, int hc, int D, int d0, int d1) {
  float old[16], out[16];
  for (int d = d0; d < d1; ++d) {
    for (int j = 0; j < hc; ++j) old[j] = h[static_cast<long>(j) * D + d];
    for (int k = 0; k < hc; ++k) {
      float o = 0.0f;
      for (int j = 0; j < hc; ++j) o += comb[j * hc + k] * old[j];
      out[k] = bf16_round(post[k] * f[d] + o);
    }
    for (int k = 0; k < hc; ++k) h[static_cast<long>(k) * D + d] = out[k];
  }
}

void tokens_scalar(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix) {
  for (int t = 0; t < tokens; ++t) {
    const float* xt = x + static_cast<long>(t) * HD;
    if (ss) ss[t] = hc_sum_squares(xt, HD);
    hc_mix_rows(fn, rows, HD, xt, mix + static_cast<long>(t) * rows);
  }
}
}  // namespace hc_mix_detail

void hc_sinkhorn(float* C, int hc, int iters, float eps) {
  for (int j = 0; j < hc; ++j) {
    float m = -std::numeric_limits<float>::infinity();
    for (int k = 0; k < hc; ++k) m = std::max(m, C[j * hc + k]);
    float sum = 0.0f;
    for (int k = 0; k < hc; ++k) sum += (C[j * hc + k] = std::exp(C[j * hc + k] - m));
    for (int k = 0; k < hc; ++k) C[j * hc + k] = C[j * hc + k] / sum + eps;
  }
  auto col_norm = [&] {
    for (int k = 0; k < hc; ++k) {
      float s = 0.0f;
      for (int j = 0; j < hc; ++j) s += C[j * hc + k];
      for (int j = 0; j < hc; ++j) C[j * hc + k] /= (s + eps);
    }
  };
  auto row_norm = [&] {
    for (int j = 0; j < hc; ++j) {
      float s = 0.0f;
      for (int k = 0; k < hc; ++k) s += C[j * hc + k];
      for (int k = 0; k < hc; ++k) C[j * hc + k] /= (s + eps);
    }
  };
  col_norm();
  for (int it = 1; it < iters; ++it) {
    row_norm();
    col_norm();
  }
}

void hc_post(const float* f, const float* post, const float* comb, float* h, int hc, int D, int d0, int d1) {
  if (hc < 1 || hc > 16) throw Error("hc_post: " + std::to_string(hc) + " streams (1 to 16 supported)");
  switch (active_isa()) {
    case Isa::Avx512: return hc_mix_detail::post_avx512(f, post, comb, h, hc, D, d0, d1);
    case Isa::Avx2: return hc_mix_detail::post_avx2(f, post, comb, h, hc, D, d0, d1);
    default: return hc_mix_detail::post_scalar(f, post, comb, h, hc, D, d0, d1);
  }
}

void hc_mix_chains(const float* const* src, int n, int HD, const float* x, float* out) {
  if (n < 0 || n > kHcMaxChains) throw Error("hc_mix_chains: " + std::to_string(n) + " chains (0 to 16 supported)");
  switch (active_isa()) {
    case Isa::Avx512: return hc_mix_detail::chains_avx512(src, n, HD, x, out);
    case Isa::Avx2: return hc_mix_detail::chains_avx2(src, n, HD, x, out);
    default: return hc_mix_detail::chains_scalar(src, n, HD, x, out);
  }
}

void hc_token_sums(const float* fn, int HD, const float* x, int c0, int c1, float* ss, float* mix) {
  for (int g = c0; g < c1; g += kHcMaxChains) {
    const int n = std::min(kHcMaxChains, c1 - g);
    const float* src[kHcMaxChains];
    float out[kHcMaxChains];
    for (int c = 0; c < n; ++c) src[c] = g + c == 0 ? x : fn + static_cast<long>(g + c - 1) * HD;
    hc_mix_chains(src, n, HD, x, out);
    for (int c = 0; c < n; ++c) (g + c == 0 ? *ss : mix[g + c - 1]) = out[c];
  }
}

void hc_mix_tokens(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix) {
  switch (active_isa()) {
    case Isa::Avx512: return hc_mix_detail::tokens_avx512(fn, rows, HD, x, tokens, ss, mix);
    case Isa::Avx2: return hc_mix_detail::tokens_avx2(fn, rows, HD, x, tokens, ss, mix);
    default: return hc_mix_detail::tokens_scalar(fn, rows, HD, x, tokens, ss, mix);
  }
}

}  // namespace dsv4
