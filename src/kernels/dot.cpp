#include "kernels/dot.h"

#include <cmath>

#include "kernels/cpu_features.h"

namespace dsv4 {

namespace dot_detail {

float dot_scalar(const float* a, const float* b, int n) {
  float lane[16] = {};
  for (int i = 0; i < n; ++i) lane[i & 15] = std::fma(a[i], b[i], lane[i & 15]);
  for (int h = 8; h >= 1; h /= 2)
    for (int l = 0; l < h; ++l) lane[l] += lane[l + h];
  return lane[0];
}

void axpy_scalar(float alpha, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] = std::fma(alpha, x[i], y[i]);
}

}  // namespace dot_detail

float dot_f32(const float* a, const float* b, int n) {
  switch (active_isa()) {
    case Isa::Avx512: return dot_detail::dot_avx512(a, b, n);
    case Isa::Avx2: return dot_detail::dot_avx2(a, b, n);
    default: return dot_detail::dot_scalar(a, b, n);
  }
}

void dot_f32_rows(const float* a, const float* const* rows, int count, int n, float* out) {
  switch (active_isa()) {
    case Isa::Avx512: dot_detail::dot_rows_avx512(a, rows, count, n, out); break;
    case Isa::Avx2: dot_detail::dot_rows_avx2(a, rows, count, n, out); break;
    default:
      for (int r = 0; r < count; ++r) out[r] = dot_detail::dot_scalar(a, rows[r], n);
      break;
  }
}

void axpy_f32(float alpha, const float* x, float* y, int n) {
  switch (active_isa()) {
    case Isa::Avx512: dot_detail::axpy_avx512(alpha, x, y, n); break;
    case Isa::Avx2: dot_detail::axpy_avx2(alpha, x, y, n); break;
    default: dot_detail::axpy_scalar(alpha, x, y, n); break;
  }
}

void axpy_f32_rows(const float* alpha, const float* const* rows, int count, float* y, int n) {
  switch (active_isa()) {
    case Isa::Avx512: dot_detail::axpy_rows_avx512(alpha, rows, count, y, n); break;
    case Isa::Avx2: dot_detail::axpy_rows_avx2(alpha, rows, count, y, n); break;
    default:
      for (int r = 0; r < count; ++r) dot_detail::axpy_scalar(alpha[r], rows[r], y, n);
      break;
  }
}

void dot_f32_rows2(const float* a0, const float* a1, const float* const* rows, int count, int n, float* out0, float* out1) {
  if (active_isa() == Isa::Avx512) {
    dot_detail::dot_rows2_avx512(a0, a1, rows, count, n, out0, out1);
  } else {  // (no fused form: the two single-query calls)
    dot_f32_rows(a0, rows, count, n, out0);
    dot_f32_rows(a1, rows, count, n, out1);
  }
}

void axpy_f32_rows2(const float* alpha0, const float* alpha1, const float* const* rows, int count, float* y0, float* y1,
                    int n) {
  if (active_isa() == Isa::Avx512) {
    dot_detail::axpy_rows2_avx512(alpha0, alpha1, rows, count, y0, y1, n);
  } else {
    axpy_f32_rows(alpha0, rows, count, y0, n);
    axpy_f32_rows(alpha1, rows, count, y1, n);
  }
}

}  // namespace dsv4
