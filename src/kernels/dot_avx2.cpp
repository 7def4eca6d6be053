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

// The axpy family (dot_simd.inc): 8 lanes, the last few elements one at a time (the same chain).
namespace {
using Vec = __m256;
struct Tail {};  // (every vector is whole here)
constexpr Tail kAll{};
constexpr int kW = 8;
inline Vec vload_tail(const float* p, Tail) { return _mm256_loadu_ps(p); }
inline void vstore_tail(float* p, Tail, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vbcast(float x) { return _mm256_set1_ps(x); }
constexpr int kAxpySpans(int q) { return q == 1 ? 8 : q == 2 ? 6 : 2; }  // (4 x 2: 8 accumulators, 4 alphas)
template <int Q>
inline void axpy_rows_q_rest(const float* const* alpha, const float* const* rows, int count, float* const* y, int i, int n) {
  for (; i < n; ++i)
    for (int q = 0; q < Q; ++q)
      for (int r = 0; r < count; ++r)
        y[q][i] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(alpha[q][r]), _mm_set_ss(rows[r][i]), _mm_set_ss(y[q][i])));
}
#include "kernels/dot_simd.inc"
}  // namespace

void axpy_rows_avx2(const float* alpha, const float* const* rows, int count, float* y, int n) {
  axpy_rows_multi_simd(&alpha, 1, rows, count, &y, n);
}

// Q queries against R rows (Q x R pairs of accumulators, each row vector loaded once for all Q):
// the attention heads over the same KV rows, which come from L2 (a 64-row block is 128 KiB); one
// query at a time loaded a row vector per FMA.
namespace {
template <int Q, int R>
inline void dot_rows_q(const float* const* a, const float* const* rows, int n, float* const* out, int r0) {
  __m256 lo[Q][R], hi[Q][R];
  for (int q = 0; q < Q; ++q)
    for (int r = 0; r < R; ++r) lo[q][r] = hi[q][r] = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 a0[Q], a1[Q];
    for (int q = 0; q < Q; ++q) {
      a0[q] = _mm256_loadu_ps(a[q] + i);
      a1[q] = _mm256_loadu_ps(a[q] + i + 8);
    }
    for (int r = 0; r < R; ++r) {
      const __m256 w0 = _mm256_loadu_ps(rows[r] + i), w1 = _mm256_loadu_ps(rows[r] + i + 8);
      for (int q = 0; q < Q; ++q) {
        lo[q][r] = _mm256_fmadd_ps(a0[q], w0, lo[q][r]);
        hi[q][r] = _mm256_fmadd_ps(a1[q], w1, hi[q][r]);
      }
    }
  }
  if (i < n) {  // zero-padded tail step, as in dot_rows
    alignas(32) float ta[16] = {}, tb[16] = {};
    for (int q = 0; q < Q; ++q) {
      for (int j = 0; j < n - i; ++j) ta[j] = a[q][i + j];
      for (int r = 0; r < R; ++r) {
        for (int j = 0; j < n - i; ++j) tb[j] = rows[r][i + j];
        lo[q][r] = _mm256_fmadd_ps(_mm256_load_ps(ta), _mm256_load_ps(tb), lo[q][r]);
        hi[q][r] = _mm256_fmadd_ps(_mm256_load_ps(ta + 8), _mm256_load_ps(tb + 8), hi[q][r]);
      }
    }
  }
  for (int q = 0; q < Q; ++q)
    for (int r = 0; r < R; ++r) {
      const __m256 s8 = _mm256_add_ps(lo[q][r], hi[q][r]);
      const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
      const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
      const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
      out[q][r0 + r] = _mm_cvtss_f32(s1);
    }
}
template <int Q>
inline void dot_rows_q_all(const float* const* a, const float* const* rows, int count, int n, float* const* out) {
  constexpr int R = Q == 1 ? 4 : Q == 2 ? 2 : 1;  // (8 accumulators)
  int r = 0;
  for (; r + R <= count; r += R) dot_rows_q<Q, R>(a, rows + r, n, out, r);
  for (; r < count; ++r) dot_rows_q<Q, 1>(a, rows + r, n, out, r);
}
}  // namespace

// Queries in fours (then pairs, then one): each row vector is read once per four queries. (Zen 3,
// one thread, 32 heads over 640 rows of 512: 1.4-1.9 ms per call one query at a time, 1.3-1.6
// in pairs, 1.0 in fours; fours with three spans per output spilled: 1.3.)
void dot_rows_multi_avx2(const float* const* a, int na, const float* const* rows, int count, int n, float* const* out) {
  int q = 0;
  for (; q + 4 <= na; q += 4) dot_rows_q_all<4>(a + q, rows, count, n, out + q);
  for (; q + 2 <= na; q += 2) dot_rows_q_all<2>(a + q, rows, count, n, out + q);
  if (q < na) dot_rows_q_all<1>(a + q, rows, count, n, out + q);
}

void axpy_rows_multi_avx2(const float* const* alpha, int na, const float* const* rows, int count, float* const* y, int n) {
  axpy_rows_multi_simd(alpha, na, rows, count, y, n);
}

}  // namespace dsv4::dot_detail
