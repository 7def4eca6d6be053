// fp32 vector primitives for attention, with one result on every ISA path (see gemm.h):
// dot_f32 sums in the canonical order (16 lanes, element i to lane i mod 16, fused
// multiply-add, then the tree l += l+8, +4, +2, +1); axpy_f32 is one fma per element.
#pragma once

namespace dsv4 {

// sum_i a[i] * b[i] in the canonical order.
float dot_f32(const float* a, const float* b, int n);
// out[r] = dot_f32(a, rows[r], n) for r < count: several rows' chains at once (one chain is
// bound by the fma latency), each result bit-identical to dot_f32's.
void dot_f32_rows(const float* a, const float* const* rows, int count, int n, float* out);
// y[i] = fma(alpha, x[i], y[i]).
void axpy_f32(float alpha, const float* x, float* y, int n);
// axpy_f32(alpha[r], rows[r], y, n) for r = 0 .. count-1 in turn, in one pass over y: every
// element takes the same fma chain, but y is loaded and stored once instead of count times.
void axpy_f32_rows(const float* alpha, const float* const* rows, int count, float* y, int n);
// Several queries or outputs sharing the rows (attention: heads over the same KV rows), each row
// read once per group of queries (four on AVX-512, two on AVX2): out[q] as dot_f32_rows(a[q], ...), y[q] as
// axpy_f32_rows(alpha[q], ...) for q < na, bit for bit.
void dot_f32_rows_multi(const float* const* a, int na, const float* const* rows, int count, int n, float* const* out);
void axpy_f32_rows_multi(const float* const* alpha, int na, const float* const* rows, int count, float* const* y, int n);

namespace dot_detail {
float dot_scalar(const float* a, const float* b, int n);
void dot_rows_avx2(const float* a, const float* const* rows, int count, int n, float* out);
void dot_rows_avx512(const float* a, const float* const* rows, int count, int n, float* out);
void axpy_scalar(float alpha, const float* x, float* y, int n);
void axpy_rows_avx2(const float* alpha, const float* const* rows, int count, float* y, int n);
void axpy_rows_avx512(const float* alpha, const float* const* rows, int count, float* y, int n);
void dot_rows_multi_avx2(const float* const* a, int na, const float* const* rows, int count, int n, float* const* out);
void axpy_rows_multi_avx2(const float* const* alpha, int na, const float* const* rows, int count, float* const* y, int n);
void dot_rows_multi_avx512(const float* const* a, int na, const float* const* rows, int count, int n, float* const* out);
void axpy_rows_multi_avx512(const float* const* alpha, int na, const float* const* rows, int count, float* const* y,
                            int n);
float dot_avx2(const float* a, const float* b, int n);
void axpy_avx2(float alpha, const float* x, float* y, int n);
float dot_avx512(const float* a, const float* b, int n);
void axpy_avx512(float alpha, const float* x, float* y, int n);
}  // namespace dot_detail

}  // namespace dsv4
