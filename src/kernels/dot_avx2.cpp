// AVX2 dot / axpy (see dot.h): the 16 canonical lanes are two ymm accumulators.
#include <immintrin.h>

#include "kernels/dot.h"

namespace dsv4::dot_detail {

namespace {
// R rows against a, each two ymm accumulators (lanes 0-7, 8-15): 2R independent chains.
template <int R>
inline void dot_rows(const float* a, const float* const* rows, int n, float* out) {
  __m256 lo[R], hi[R];
  for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 a0 = _mm256_loadu_ps(a + i), a1 = _mm256_loadu_ps(a + i + 8);
    for (int r = 0; r < R; ++r) {
      lo[r] = _mm256_fmadd_ps(a0, _mm256_loadu_ps(rows[r] + i), lo[r]);
      hi[r] = _mm256_fmadd_ps(a1, _mm256_loadu_ps(rows[r] + i + 8), hi[r]);
    }
  }
  if (i < n) {  // zero-padded tail step (a lane is never -0, so padding changes nothing)
    alignas(32) float ta[16] = {}, tb[16] = {};
    for (int j = 0; j < n - i; ++j) ta[j] = a[i + j];
    for (int r = 0; r < R; ++r) {
      for (int j = 0; j < n - i; ++j) tb[j] = rows[r][i + j];
      lo[r] = _mm256_fmadd_ps(_mm256_load_ps(ta), _mm256_load_ps(tb), lo[r]);
      hi[r] = _mm256_fmadd_ps(_mm256_load_ps(ta + 8), _mm256_load_ps(tb + 8), hi[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m256 s8 = _mm256_add_ps(lo[r], hi[r]);
    const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    out[r] = _mm_cvtss_f32(s1);
  }
}
}  // namespace

float dot_avx2(const float* a, const float* b, int n) {
  float out;
  dot_rows<1>(a, &b, n, &out);
  return out;
}

void dot_rows_avx2(const float* a, const float* const* rows, int count, int n, float* out) {
  int r = 0;
  for (; r + 4 <= count; r += 4) dot_rows<4>(a, rows + r, n, out + r);  // 8 chains cover the fma latency
  for (; r + 2 <= count; r += 2) dot_rows<2>(a, rows + r, n, out + r);
  for (; r < count; ++r) dot_rows<1>(a, rows + r, n, out + r);
}

void axpy_avx2(float alpha, const float* x, float* y, int n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) {
    const __m128 r = _mm_fmadd_ss(_mm_set_ss(alpha), _mm_set_ss(x[i]), _mm_set_ss(y[i]));
    y[i] = _mm_cvtss_f32(r);
  }
}

// Elements [i, i + 8 S) of y stay in S registers while every row is applied to them in turn.
namespace {
template <int S>
inline void axpy_rows_span(const float* alpha, const float* const* rows, int count, float* y, int i) {
  __m256 acc[S];
  for (int s = 0; s < S; ++s) acc[s] = _mm256_loadu_ps(y + i + 8 * s);
  for (int r = 0; r < count; ++r) {
    const __m256 va = _mm256_set1_ps(alpha[r]);
    for (int s = 0; s < S; ++s) acc[s] = _mm256_fmadd_ps(va, _mm256_loadu_ps(rows[r] + i + 8 * s), acc[s]);
  }
  for (int s = 0; s < S; ++s) _mm256_storeu_ps(y + i + 8 * s, acc[s]);
}
}  // namespace

void axpy_rows_avx2(const float* alpha, const float* const* rows, int count, float* y, int n) {
  constexpr int S = 8;
  int i = 0;
  for (; i + 8 * S <= n; i += 8 * S) axpy_rows_span<S>(alpha, rows, count, y, i);
  for (; i + 8 <= n; i += 8) axpy_rows_span<1>(alpha, rows, count, y, i);
  for (; i < n; ++i)  // single elements: the same fma chain
    for (int r = 0; r < count; ++r)
      y[i] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(alpha[r]), _mm_set_ss(rows[r][i]), _mm_set_ss(y[i])));
}

}  // namespace dsv4::dot_detail
