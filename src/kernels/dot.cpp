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

void dot_f32_rows_multi(const float* const* a, int na, const float* const* rows, int count, int n, float* const* out) {
  switch (active_isa()) {
    case Isa::Avx512: dot_detail::dot_rows_multi_avx512(a, na, rows, count, n, out); break;
    case Isa::Avx2: dot_detail::dot_rows_multi_avx2(a, na, rows, count, n, out); break;
    default:
      for (int q = 0; q < na; ++q) dot_f32_rows(a[q], rows, count, n, out[q]);
      break;
  }
}

void axpy_f32_rows_multi(const float* const* alpha, int na, const float* const* rows, int count, float* const* y, int n) {
  switch (active_isa()) {
    case Isa::Avx512: dot_detail::axpy_rows_multi_avx512(alpha, na, rows, count, y, n); break;
    case Isa::Avx2: dot_detail::axpy_rows_multi_avx2(alpha, na, rows, count, y, n); break;
    default:
      for (int q = 0; q < na; ++q) axpy_f32_rows(alpha[q], rows, count, y[q], n);
      break;
  }
}

}  // namespace dsv4
