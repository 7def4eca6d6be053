// fp32 vector primitives for attention, with one result on every ISA path (see gemm.h):
// dot_f32 sums in the canonical order (16 lanes, element i to lane i mod 16, fused
// multiply-add, then the tree l += l+8, +4, +2, +1); axpy_f32 is one fma per element.
#pragma once

namespace dsv4 {

// sum_i a[i] * b[i] in the canonical order.
float dot_f32(const float* a, const float* b, int n);
// y[i] = fma(alpha, x[i], y[i]).
void axpy_f32(float alpha, const float* x, float* y, int n);

namespace dot_detail {
float dot_scalar(const float* a, const float* b, int n);
void axpy_scalar(float alpha, const float* x, float* y, int n);
float dot_avx2(const float* a, const float* b, int n);
void axpy_avx2(float alpha, const float* x, float* y, int n);
float dot_avx512(const float* a, const float* b, int n);
void axpy_avx512(float alpha, const float* x, float* y, int n);
}  // namespace dot_detail

}  // namespace dsv4
