// AVX-512 dot / axpy (see dot.h). One zmm holds the 16 canonical lanes; splitting them over
// more accumulators would change the order, so the chain is one fma per 16 elements.
// GCC 12 flags its own _mm512_undefined_* helpers (used inside many intrinsics) as
// uninitialised; the pragma must precede the header to cover those locations.
#pragma GCC diagnostic ignored "-Wuninitialized"
#ifndef __clang__  // (a GCC-only warning group; clang reports it unknown)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "kernels/dot.h"

namespace dsv4::dot_detail {

namespace {
// Tree: l += l+8, +4, +2, +1.
inline float reduce16(__m512 acc) {
  __m256 s8 = _mm256_add_ps(_mm512_extractf32x8_ps(acc, 0), _mm512_extractf32x8_ps(acc, 1));
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}

// R rows against a: R independent chains sharing the loads of a.
template <int R>
inline void dot_rows(const float* a, const float* const* rows, int n, float* out) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 va = _mm512_loadu_ps(a + i);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(va, _mm512_loadu_ps(rows[r] + i), acc[r]);
  }
  if (i < n) {  // zero padding leaves the lanes unchanged (a lane is never -0)
    const __mmask16 k = static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 va = _mm512_maskz_loadu_ps(k, a + i);
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, rows[r] + i), acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r] = reduce16(acc[r]);
}
}  // namespace

float dot_avx512(const float* a, const float* b, int n) {
  float out;
  dot_rows<1>(a, &b, n, &out);
  return out;
}

void dot_rows_avx512(const float* a, const float* const* rows, int count, int n, float* out) {
  int r = 0;
  for (; r + 8 <= count; r += 8) dot_rows<8>(a, rows + r, n, out + r);  // 8 chains cover the fma latency
  for (; r + 4 <= count; r += 4) dot_rows<4>(a, rows + r, n, out + r);
  for (; r < count; ++r) dot_rows<1>(a, rows + r, n, out + r);
}

void axpy_avx512(float alpha, const float* x, float* y, int n) {
  const __m512 va = _mm512_set1_ps(alpha);
  int i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    const __mmask16 k = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i)));
  }
}

// The axpy family (dot_simd.inc): 16 lanes, the last vector's masked.
namespace {
using Vec = __m512;
using Tail = __mmask16;
constexpr int kW = 16;
constexpr Tail kAll = 0xFFFF;
inline Vec vload_tail(const float* p, Tail t) { return _mm512_maskz_loadu_ps(t, p); }
inline void vstore_tail(float* p, Tail t, Vec v) { _mm512_mask_storeu_ps(p, t, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec vbcast(float x) { return _mm512_set1_ps(x); }
constexpr int kAxpySpans(int q) { return 16 / q; }
template <int Q>
inline void axpy_rows_q_rest(const float* const* alpha, const float* const* rows, int count, float* const* y, int i, int n);
#include "kernels/dot_simd.inc"
template <int Q>
inline void axpy_rows_q_rest(const float* const* alpha, const float* const* rows, int count, float* const* y, int i, int n) {
  axpy_rows_q_span<Q, 1>(alpha, rows, count, y, i, static_cast<Tail>((1u << (n - i)) - 1));
}
}  // namespace

void axpy_rows_avx512(const float* alpha, const float* const* rows, int count, float* y, int n) {
  axpy_rows_multi_simd(&alpha, 1, rows, count, &y, n);
}

// Q queries against R rows: Q x R chains, each row vector loaded once for all Q.
namespace {
template <int Q, int R>
inline void dot_rows_q(const float* const* a, const float* const* rows, int n, float* const* out, int r0) {
  __m512 acc[Q][R];
  for (int q = 0; q < Q; ++q)
    for (int r = 0; r < R; ++r) acc[q][r] = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 va[Q];
    for (int q = 0; q < Q; ++q) va[q] = _mm512_loadu_ps(a[q] + i);
    for (int r = 0; r < R; ++r) {
      const __m512 w = _mm512_loadu_ps(rows[r] + i);
      for (int q = 0; q < Q; ++q) acc[q][r] = _mm512_fmadd_ps(va[q], w, acc[q][r]);
    }
  }
  if (i < n) {  // zero padding leaves the lanes unchanged, as in dot_rows
    const __mmask16 k = static_cast<__mmask16>((1u << (n - i)) - 1);
    __m512 va[Q];
    for (int q = 0; q < Q; ++q) va[q] = _mm512_maskz_loadu_ps(k, a[q] + i);
    for (int r = 0; r < R; ++r) {
      const __m512 w = _mm512_maskz_loadu_ps(k, rows[r] + i);
      for (int q = 0; q < Q; ++q) acc[q][r] = _mm512_fmadd_ps(va[q], w, acc[q][r]);
    }
  }
  for (int q = 0; q < Q; ++q)
    for (int r = 0; r < R; ++r) out[q][r0 + r] = reduce16(acc[q][r]);
}

// Q queries over all rows: R rows at a time (Q x R accumulators of 32 registers).
template <int Q>
inline void dot_rows_q_all(const float* const* a, const float* const* rows, int count, int n, float* const* out) {
  constexpr int R = 16 / Q;
  int r = 0;
  for (; r + R <= count; r += R) dot_rows_q<Q, R>(a, rows + r, n, out, r);
  for (; r < count; ++r) dot_rows_q<Q, 1>(a, rows + r, n, out, r);
}

}  // namespace

// Queries in fours (then a pair, then one): each row is read once per four queries.
void dot_rows_multi_avx512(const float* const* a, int na, const float* const* rows, int count, int n, float* const* out) {
  int q = 0;
  for (; q + 4 <= na; q += 4) dot_rows_q_all<4>(a + q, rows, count, n, out + q);
  if (q + 2 <= na) dot_rows_q_all<2>(a + q, rows, count, n, out + q), q += 2;
  if (q < na) dot_rows_q_all<1>(a + q, rows, count, n, out + q);
}

void axpy_rows_multi_avx512(const float* const* alpha, int na, const float* const* rows, int count, float* const* y,
                            int n) {
  axpy_rows_multi_simd(alpha, na, rows, count, y, n);
}

}  // namespace dsv4::dot_detail
