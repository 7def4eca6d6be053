#include "kernels/gemm.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/aligned_vector.h"
#include "kernels/act_quant.h"
#include "kernels/cpu_features.h"
#include "kernels/numerics.h"
#include "kernels/roofline.h"

namespace dsv4 {

namespace gd = gemm_detail;

void quantize_rows_fp8(const float* x, int M, int K, float* q, float* s) {
  const int nb = (K + 127) / 128;
  for (int m = 0; m < M; ++m)
    for (int b = 0; b < nb; ++b) {
      const int k0 = b * 128, len = std::min(128, K - k0);
      s[m * nb + b] = act_quant_block(x + static_cast<size_t>(m) * K + k0, len, q + static_cast<size_t>(m) * K + k0);
    }
}

namespace {

// FMA tiles when FMA's measured rate is this many times VDPBF16PS's (flops counted alike). The
// fp32 tiles load a weight vector per 16 products where the pair tiles load one per 32, so a
// plain "faster instruction" rule would pick them too early. (Xeon VM: 2.0. Zen 5 VM: 0.63, measured
// before the FMA probe was fixed, when it read about 1.25x high, so below 0.5.)
constexpr double kFmaTilesRatio = 1.5;

GemmTiles measure_gemm_tiles() {
  if (detected_isa() != Isa::Avx512) return GemmTiles::Dp;  // (only there are both kinds)
  float seeds[16], out[16];
  for (int j = 0; j < 16; ++j) seeds[j] = 1.0f + 0.0625f * static_cast<float>(j);
  auto best_rate = [&](double (*loop)(long, const float*, float*), long iters) {
    double best = 0;
    for (int round = 0; round < 3; ++round) {  // best of three: a VM's neighbours come and go
      const auto t0 = std::chrono::steady_clock::now();
      const double flops = loop(iters, seeds, out);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (s > 0) best = std::max(best, flops / s);
    }
    return best;
  };
  const double fma = best_rate(roofline_detail::fma_loop_avx512, 100'000);
  const double dp = best_rate(roofline_detail::dpbf16_loop_avx512, 50'000);
  return fma > kFmaTilesRatio * dp ? GemmTiles::Fma : GemmTiles::Dp;
}

GemmTiles tiles_from_env() {
  const char* e = std::getenv("DSV4_GEMM_TILES");
  if (e && !std::strcmp(e, "dp")) return GemmTiles::Dp;
  if (e && !std::strcmp(e, "fma")) return GemmTiles::Fma;
  return measure_gemm_tiles();
}

std::atomic<int> g_tiles{-1};  // -1: not yet chosen

// Whether an M-row product on the active path runs through the VDPBF16PS tiles (its activations
// are then prepared as bf16 pairs as well).
bool pair_tiles(int M) {
  return M >= gemm_small_m_limit() && active_isa() == Isa::Avx512 && active_gemm_tiles() == GemmTiles::Dp;
}

const float* e8m0_table() {
  static const std::array<float, 256> t = [] {
    std::array<float, 256> v{};
    for (int e = 0; e < 256; ++e) v[e] = e8m0_to_f32(static_cast<uint8_t>(e));
    return v;
  }();
  return t.data();
}

gd::Problem base_problem(gd::Kind kind, int M, int K) {
  gd::Problem p;
  p.kind = kind;
  p.M = M;
  p.K = K;
  p.kp = kind == gd::Kind::Fp4 ? (K + 127) / 128 * 128 : (K + 31) / 32 * 32;
  p.nb = (K + 127) / 128;
  p.e4m3 = kE4M3Values;
  p.e2m1 = kE2M1Values;
  p.e8m0 = e8m0_table();
  p.small_m = gemm_small_m_limit();
  p.fp8_gfni = (kind == gd::Kind::Fp8 || kind == gd::Kind::Fp8AsBf16) && M < std::max(p.small_m, gd::kSharedLoadMaxM) &&
               active_isa() == Isa::Avx512 && fp8_gfni_active();
  p.fp8_nta = (kind == gd::Kind::Fp8 || kind == gd::Kind::Fp8AsBf16) && (M < p.small_m || p.fp8_gfni) &&
              fp8_prefetch_nta_active();
  p.fp4_ahead = kind == gd::Kind::Fp4 && fp4_prefetch_ahead_active();
  return p;
}

// Activations the back ends can read in 32-wide steps: the caller's rows when K is a multiple
// of 32, else a zero-padded copy.
struct PaddedRows {
  AlignedVector<float> buf;
  const float* a = nullptr;
  int stride = 0;
};
PaddedRows pad_rows(const float* x, int M, int K, int x_stride, int kp) {
  PaddedRows r;
  if (kp == K) {
    r.a = x;
    r.stride = x_stride;
    return r;
  }
  r.buf.assign(static_cast<size_t>(M) * kp, 0.0f);
  for (int m = 0; m < M; ++m)
    std::copy(x + static_cast<size_t>(m) * x_stride, x + static_cast<size_t>(m) * x_stride + K,
              r.buf.begin() + static_cast<ptrdiff_t>(m) * kp);
  r.a = r.buf.data();
  r.stride = kp;
  return r;
}

// Whether rows [n0, n1) of an FP4 product have every group scale byte in kFp4FoldMinByte ..
// p.fp4_fold_max_byte (their scales fold into bf16 weights: gemm.h).
bool fp4_rows_foldable(const gd::Problem& p, int n0, int n1) {
  if (p.fp4_fold_max_byte < gd::kFp4FoldMinByte) return false;
  const uint8_t* s = p.ws + static_cast<size_t>(n0) * (p.K / 32);
  // Plain min / max reductions, which the compiler vectorises (std::minmax_element, which finds
  // positions, ran a byte per cycle: 11 % of an expert's AMX product at M = 48).
  uint8_t lo = 255, hi = 0;
  const size_t n = static_cast<size_t>(n1 - n0) * static_cast<size_t>(p.K / 32);
  for (size_t i = 0; i < n; ++i) {
    lo = std::min(lo, s[i]);
    hi = std::max(hi, s[i]);
  }
  return n == 0 || (lo >= gd::kFp4FoldMinByte && hi <= p.fp4_fold_max_byte);
}

// The largest scale byte whose FP4 weights may fold for activations whose largest exponent field
// is top (gemm.h kFp4FoldMinByte): |a| < 2^ea, so a partial is below 48 * 2^ea unscaled and
// 48 * 2^ea * sw scaled; both stay below 2^127 for ea <= 121 and sw <= 2^(121 - ea). 0: none.
int fp4_fold_max_byte(uint32_t top) {
  const int ea = static_cast<int>(top >> 23) - 126;
  return ea <= 121 ? std::min(gd::kFp4FoldMaxByte, 127 + 121 - std::max(ea, 0)) : 0;
}

// Runs rows [row_begin, row_end) in panels of kPanelRows, split over the pool.
// One product ready to run: its problem (activations prepared) and the rows it computes.
// simd_ok = false keeps it on the scalar reference (weight scales outside the range the SIMD
// decoders are exact for; no checkpoint has them).
struct Job {
  gd::Problem p;
  int row_begin = 0, row_end = 0;
  bool simd_ok = true;
};

// Rows [m0, m1) of p as a problem of their own: its per-row arrays offset (layouts in gemm.h).
gd::Problem slice_rows(const gd::Problem& p, int m0, int m1) {
  gd::Problem s = p;
  const size_t m = static_cast<size_t>(m0), nb = static_cast<size_t>(p.nb);
  s.M = m1 - m0;
  s.a = p.a + m * static_cast<size_t>(p.a_stride);
  if (p.a_pairs) s.a_pairs = p.a_pairs + m * static_cast<size_t>(p.kp / 2);
  if (p.a_int) s.a_int = p.a_int + m * nb * 64;
  if (p.a_int_high) s.a_int_high = p.a_int_high + m * nb * 64;
  if (p.a_int_unit) s.a_int_unit = p.a_int_unit + m * nb * 16;
  if (p.a_int_corr) s.a_int_corr = p.a_int_corr + m * nb * 16;
  if (p.a_int_ok) s.a_int_ok = p.a_int_ok + m * nb;
  s.y = p.y + m * static_cast<size_t>(p.y_stride);
  return s;
}
// Row slices of a product with M activation rows (gd::kSliceRows): equal ones, multiples of 4
// (the tiles' MR). M > kSliceRows leaves every slice over kSliceRows / 2 rows, so each stays
// on the tiles the product was prepared for (far above gemm_small_m_limit()).
static_assert(gd::kSliceRows / 2 >= 8, "a slice stays above every gemm_small_m_limit()");
struct Slices {
  int count = 1, rows = 0;
};
Slices row_slices(int M) {
  if (M <= gd::kSliceRows) return {1, M};
  const int count = (M + gd::kSliceRows - 1) / gd::kSliceRows;
  return {count, ((M + count - 1) / count + 3) / 4 * 4};
}

// Runs the jobs' rows in panels of kPanelRows, all in one pool job (one hand-off for a batch).
// A pool chunk's panels of one product run slice by slice over M (gd::kSliceRows).
void run_jobs(Job* jobs, size_t count, ThreadPool& pool) {
  // Buffers live per thread and only grow: a decode step makes hundreds of small GEMM calls.
  // (Named through references below: a pool thread would see its own thread_locals.)
  thread_local AlignedVector<float> zero_buf;
  thread_local std::vector<int64_t> starts_buf;
  AlignedVector<float>& zero = zero_buf;
  std::vector<int64_t>& starts = starts_buf;
  starts.assign(count + 1, 0);
  size_t need = 0;
  for (size_t i = 0; i < count; ++i) {
    Job& j = jobs[i];
    const bool empty = j.p.M <= 0 || j.row_end <= j.row_begin;
    if (!empty && zero.size() < static_cast<size_t>(j.p.kp) + 32) zero.assign(static_cast<size_t>(j.p.kp) + 32, 0.0f);
    j.p.row0 = j.row_begin;
    j.p.row_end = j.row_end;
    if (!j.simd_ok || active_isa() == Isa::Scalar) j.simd_ok = false;
    if (!empty && j.simd_ok) need = std::max(need, static_cast<size_t>(gd::scratch_floats(j.p.M, j.p.nb)));
    if (!empty && j.simd_ok && j.p.a_amx) need = std::max(need, static_cast<size_t>(gd::amx_scratch_floats(j.p.K)));
    starts[i + 1] = starts[i] + (empty ? 0 : (j.row_end - j.row_begin + gd::kPanelRows - 1) / gd::kPanelRows);
  }
  for (size_t i = 0; i < count; ++i) jobs[i].p.zero_row = zero.data();
  const Isa isa = active_isa();
  pool.parallel_for(starts[count], [&](int64_t p0, int64_t p1) {
    thread_local AlignedVector<float> scratch;  // fully written before read by the back ends
    if (scratch.size() < need) scratch.resize(need);
    size_t i = static_cast<size_t>(std::upper_bound(starts.begin(), starts.begin() + static_cast<ptrdiff_t>(count) + 1, p0) -
                                   starts.begin()) - 1;
    for (int64_t pi = p0; pi < p1;) {
      while (pi >= starts[i + 1]) ++i;
      const Job& j = jobs[i];
      const int64_t run_end = std::min(p1, starts[i + 1]);  // this product's panels in the chunk
      if (j.simd_ok && j.p.a_amx && isa == Isa::Avx512) {  // all of the chunk's panels at once
        const int n0 = j.row_begin + static_cast<int>(pi - starts[i]) * gd::kPanelRows;
        const int n1 = std::min(j.row_end, j.row_begin + static_cast<int>(run_end - starts[i]) * gd::kPanelRows);
        if (j.p.kind != gd::Kind::Fp4) {
          gd::rows_amx_fp8(j.p, n0, n1, scratch.data());
        } else {  // runs of panels whose scales fold; the others through the fp32 tiles
          gd::Problem plain = j.p;
          plain.a_amx = nullptr;
          for (int a = n0; a < n1;) {
            int b = a;
            while (b < n1 && fp4_rows_foldable(j.p, b, std::min(n1, b + gd::kPanelRows))) b = std::min(n1, b + gd::kPanelRows);
            if (b > a) {
              gd::rows_amx_fp4(j.p, a, b, scratch.data());
            } else {
              b = std::min(n1, a + gd::kPanelRows);
              gd::rows_avx512(plain, a, b, scratch.data());
            }
            a = b;
          }
        }
        pi = run_end;
        continue;
      }
      const Slices sl = j.simd_ok ? row_slices(j.p.M) : Slices{1, j.p.M};
      for (int si = 0; si < sl.count; ++si) {
        const int m0 = si * sl.rows;
        const gd::Problem p = sl.count == 1 ? j.p : slice_rows(j.p, m0, std::min(j.p.M, m0 + sl.rows));
        for (int64_t q = pi; q < run_end; ++q) {
          const int n0 = j.row_begin + static_cast<int>(q - starts[i]) * gd::kPanelRows;
          const int n1 = std::min(j.row_end, n0 + gd::kPanelRows);
          switch (j.simd_ok ? isa : Isa::Scalar) {
            case Isa::Avx512: gd::rows_avx512(p, n0, n1, scratch.data()); break;
            case Isa::Avx2: gd::rows_avx2(p, n0, n1, scratch.data()); break;
            default: gd::rows_scalar(p, n0, n1); break;
          }
        }
      }
      pi = run_end;
    }
  });
}

// fp8/fp4 input: act_quant per row and 128-block into a zero-padded [M, kp] buffer, dequantised
// (q * sa: exact, the scale is a power of two). Rows are independent, so this is split over the
// pool too (it is a visible cost at M = 512).
void quantize_padded(const float* x, const gd::Problem& p, AlignedVector<float>& q, ThreadPool& pool) {
  // Every element is written below (the padding too), so the buffer is only grown, not cleared.
  const size_t stride = static_cast<size_t>(gd::act_stride(p.kp));
  if (q.size() < static_cast<size_t>(p.M) * stride) q.resize(static_cast<size_t>(p.M) * stride);
  pool.parallel_for(p.M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      float* qm = q.data() + static_cast<size_t>(m) * stride;
      std::fill(qm + p.K, qm + stride, 0.0f);
      quantize_row_dequantized(x + static_cast<size_t>(m) * p.K, p.K, qm);
      if (p.kind == gd::Kind::Fp4)  // (a short last block takes the zeros written past K above)
        (active_isa() == Isa::Avx512 ? gd::fp4_permute_blocks_avx512 : gd::fp4_permute_blocks)(qm, p.nb);
    }
  }, 8);
}

// Whether the small-M fp32 paths may fold the weight scales into the activations
// (Problem::fold_w_scale): max |a| * 2^120 * sw_max < 2^127 and sw_min >= 2^-120.
bool can_fold_w_scale(const float* a, int M, int K, int a_stride, int scale_lo, int scale_hi) {
  const bool small = M < gemm_small_m_limit() ||
                     (M < gd::kSharedLoadMaxM && active_isa() == Isa::Avx512 && fp8_gfni_active());
  if (!small || scale_lo < 127 - 120) return false;
  // The largest magnitude as float bits: their unsigned order is the numeric one, and a NaN's
  // sort above infinity's (then no fold). Eight independent maxima: one chain of float maxima
  // was a latency-bound 6 us per call at K = 4096, a third of a small product's fixed cost.
  uint32_t top[8] = {};
  for (int m = 0; m < M; ++m) {
    const float* am = a + static_cast<size_t>(m) * a_stride;
    int k = 0;
    for (; k + 8 <= K; k += 8)
      for (int j = 0; j < 8; ++j) top[j] = std::max(top[j], f32_bits(am[k + j]) & 0x7FFFFFFFu);
    for (; k < K; ++k) top[0] = std::max(top[0], f32_bits(am[k]) & 0x7FFFFFFFu);
  }
  const float amax = f32_from_bits(*std::max_element(top, top + 8));
  return std::isfinite(amax) && std::ldexp(static_cast<double>(amax), 120 + scale_hi - 127) < 0x1p127;
}

// Smallest and largest ue8m0 byte of an FP8 weight's block scales (a few KB: checked per call).
std::pair<int, int> fp8_scale_range(const uint8_t* ws, int n, int k) {
  const size_t count = static_cast<size_t>((n + 127) / 128) * static_cast<size_t>((k + 127) / 128);
  if (count == 0) return {255, 0};
  const auto [lo, hi] = std::minmax_element(ws, ws + count);
  return {*lo, *hi};
}

// Activations as the VDPBF16PS operand of the FP8 kinds (gemm.h): dword d of 32-chunk c holds
// element c+d in its high word and element c+16+d in its low one, as bf16, zero past K; `out` is only grown (every dword is
// written). With `check`, returns false (and leaves `out` unusable) if a value is not a bf16, or
// is a nonzero below 2^-56 (bf16_dp_exact): then the fp32 back ends must run. Quantised
// activations (e4m3 values) need no check.
bool fp8_act_pairs(const float* x, int M, int K, int x_stride, int kp, bool check, AlignedVector<uint32_t>& out,
                   ThreadPool& pool) {
  if (out.size() < static_cast<size_t>(M) * kp / 2) out.resize(static_cast<size_t>(M) * kp / 2);
  std::vector<char> row_ok(static_cast<size_t>(M), 1);
  pool.parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* xr = x + static_cast<size_t>(m) * x_stride;
      uint32_t* o = out.data() + static_cast<size_t>(m) * kp / 2;
      uint32_t low_bits = 0;
      int c = 0;
      for (; c + 32 <= K; c += 32)  // (whole chunks without bounds tests: the compiler vectorises these)
        for (int d = 0; d < 16; ++d) {
          const uint32_t first = f32_bits(xr[c + d]), second = f32_bits(xr[c + 16 + d]);
          low_bits |= (first | second) & 0xFFFFu;
          o[c / 2 + d] = (first & 0xFFFF0000u) | (second >> 16);
        }
      for (; c < kp; c += 32)
        for (int d = 0; d < 16; ++d) {
          const uint32_t first = c + d < K ? f32_bits(xr[c + d]) : 0u, second = c + 16 + d < K ? f32_bits(xr[c + 16 + d]) : 0u;
          low_bits |= (first | second) & 0xFFFFu;
          o[c / 2 + d] = (first & 0xFFFF0000u) | (second >> 16);
        }
      if (check)
        row_ok[static_cast<size_t>(m)] =
            low_bits == 0 && bf16_dp_exact(reinterpret_cast<const uint16_t*>(o), static_cast<size_t>(kp));
    }
  }, 8);
  return std::all_of(row_ok.begin(), row_ok.end(), [](char c) { return c != 0; });
}

// Whether an FP8-kind product of M rows and K columns runs through the AMX tiles (gemm.h).
bool amx_tiles(int M, int K) {
  return active_isa() == Isa::Avx512 && M >= gemm_amx_min_m() && K % gd::kFp8StepK == 0 && gemm_amx_active() &&
         cpu_has_avx512_vbmi();  // (the tile rows are gathered with byte permutes)
}

// Activations as AMX tile rows (Problem::a_amx), token blocks over the pool. With `check`,
// false if a value is not a bf16 or is a nonzero below 2^-56 (then the AMX tiles must not run).
bool fp8_amx_activations(const float* x, int M, int K, int x_stride, bool check, AlignedVector<uint32_t>& out,
                         ThreadPool& pool) {
  const int blocks = (M + 15) / 16;
  const size_t block_dw = static_cast<size_t>(K) * 8;  // 16 tokens x K / 2
  if (out.size() < blocks * block_dw) out.resize(blocks * block_dw);
  std::vector<char> ok(static_cast<size_t>(blocks), 1);
  pool.parallel_for(blocks, [&](int64_t b0, int64_t b1) {
    thread_local AlignedVector<uint32_t> work_buf;
    AlignedVector<uint32_t>& work = work_buf;
    if (work.size() < 16 * 128) work.resize(16 * 128);
    for (int64_t b = b0; b < b1; ++b) {
      const int rows = std::min(16, M - static_cast<int>(b) * 16);
      ok[static_cast<size_t>(b)] = gd::amx_fp8_activation_block(x + static_cast<size_t>(b) * 16 * x_stride, rows, K, x_stride,
                                                                 out.data() + static_cast<size_t>(b) * block_dw, work.data());
    }
  });
  return !check || std::all_of(ok.begin(), ok.end(), [](char c) { return c != 0; });
}

}  // namespace

namespace gemm_detail {

// The canonical order of gemm.h, written out plainly: the reference for the SIMD paths.
void rows_scalar(const Problem& p, int n0, int n1) {
  for (int n = n0; n < n1; ++n) {
    for (int m = 0; m < p.M; ++m) {
      const float* a = p.a + static_cast<size_t>(m) * p.a_stride;
      float lane[16] = {}, slot[16] = {}, even[16] = {};
      for (int b = 0; b < p.nb; ++b) {
        const int k0 = b * 128, k1 = std::min(p.K, k0 + 128);
        if (p.kind == Kind::Fp4) {
          // Lane d: elements 8d + kFp4Order[t] unscaled from +0; times the group's scale. An
          // even block's scaled partial waits for the odd one's, which adds it in one FMA; the
          // pair's sum goes to the lane (a lane without elements adds +0; a last even block
          // alone adds its partial + 0).
          float part[16] = {};
          for (int t = 0; t < 8; ++t)
            for (int d = 0; d < 16; ++d) {
              const int k = k0 + 8 * d + kFp4Order[t];
              if (k >= k1) continue;
              const uint8_t byte = p.w[static_cast<size_t>(n) * (p.K / 2) + k / 2];
              const float w = p.e2m1[(k & 1) ? byte >> 4 : byte & 15];
              part[d] = std::fma(a[k0 + 16 * t + d], w, part[d]);
            }
          for (int d = 0; d < 16; ++d) {
            const float sw = k0 + 8 * d < k1 ? p.e8m0[p.ws[static_cast<size_t>(n) * (p.K / 32) + (k0 + 8 * d) / 32]] : 1.0f;
            if (b % 2 == 0)
              even[d] = part[d] * sw;
            else
              lane[d] = lane[d] + std::fma(part[d], sw, even[d]);
          }
          if (b % 2 == 0 && b + 1 == p.nb)
            for (int d = 0; d < 16; ++d) lane[d] = lane[d] + (even[d] + 0.0f);
        } else if (p.kind == Kind::Bf16) {
          // Lane d of each 32-chunk: element 2d+1, then 2d (a is permuted: bf16_permuted_pos).
          const uint16_t* wb = reinterpret_cast<const uint16_t*>(p.w) + static_cast<size_t>(n) * p.K;
          for (int c = k0; c < k1; c += 32)
            for (int d = 0; d < 16; ++d)
              for (int k : {c + 2 * d + 1, c + 2 * d}) {
                if (k >= k1) continue;
                const float w = f32_from_bits(static_cast<uint32_t>(wb[k]) << 16);
                lane[d] = std::fma(a[bf16_permuted_pos(k)], w, lane[d]);
              }
        } else {
          // Slot k mod 16 in increasing k, weights dequantised (exact); every step and at the
          // end of K the slots fold into the lanes (gemm.h "step order").
          const float sw = p.e8m0[p.ws[static_cast<size_t>(n / 128) * p.nb + b]];
          for (int k = k0; k < k1; ++k) {
            slot[k % 16] = std::fma(a[k], p.e4m3[p.w[static_cast<size_t>(n) * p.K + k]] * sw, slot[k % 16]);
            if ((k + 1) % kFp8StepK == 0 || k + 1 == p.K) {
              for (int d = 0; d < 8; ++d) lane[d] = lane[d] + (slot[d] + slot[d + 8]);
              std::fill(slot, slot + 16, 0.0f);
            }
          }
        }
      }
      for (int h = 8; h >= 1; h /= 2)
        for (int l = 0; l < h; ++l) lane[l] += lane[l + h];
      p.y[static_cast<size_t>(m) * p.y_stride + (n - p.row0)] = p.round_bf16 ? bf16_round(lane[0]) : lane[0];
    }
  }
}

void fp4_permute_blocks(float* a, int nb) {
  for (int b = 0; b < nb; ++b) {
    float blk[128];
    std::copy(a + b * 128, a + b * 128 + 128, blk);
    for (int r = 0; r < 128; ++r) a[b * 128 + fp4_permuted_pos(r)] = blk[r];
  }
}

void fp4_int_activations(const float* a, int nb, uint32_t* words, float* unit, uint8_t* ok, uint32_t* high) {
  for (int b = 0; b < nb; ++b) {
    const float* ab = a + b * 128;  // position 16 t + d: lane d's t-th element
    int32_t ints[128];
    int e[16];
    bool zero[16], lane_ok[16];
    // One plane: u = 2^(e - 127 - 14) per lane; 1 / u and u / 2 as bit patterns (an all-zero
    // lane takes u = 1).
    for (int d = 0; d < 16; ++d) {
      uint32_t top = 0;  // the largest |value|'s bits (a NaN's are larger than any number's)
      for (int t = 0; t < 8; ++t) top = std::max(top, f32_bits(ab[16 * t + d]) & 0x7FFFFFFFu);
      e[d] = static_cast<int>(top >> 23);  // biased exponent of the largest value
      zero[d] = top == 0;
      bool good = zero[d] || (e[d] >= kFp4IntMinExp && e[d] <= kFp4IntMaxExp);
      const float inv_u = zero[d] || !good ? 1.0f : f32_from_bits(static_cast<uint32_t>(268 - e[d]) << 23);
      unit[b * 16 + d] = zero[d] || !good ? 1.0f : f32_from_bits(static_cast<uint32_t>(e[d] - 15) << 23);
      for (int t = 0; t < 8; ++t) {
        const float v = ab[16 * t + d] * inv_u;  // exact: a power of two, in the normal range
        const float r = std::nearbyint(v);       // |v| < 2^15
        good = good && r == v;
        ints[16 * t + d] = static_cast<int32_t>(r);
      }
      lane_ok[d] = good;
    }
    ok[b] = std::all_of(lane_ok, lane_ok + 16, [](bool g) { return g; });
    if (!ok[b] && high) {
      // Two planes: the lanes without the one-plane form at u = 2^(e - 144).
      bool good = true;
      for (int d = 0; d < 16; ++d) {
        if (lane_ok[d]) continue;
        bool lane = e[d] >= kFp4IntMinExp + 3 && e[d] <= kFp4TwoPlaneMaxExp;
        const float inv_u = lane ? f32_from_bits(static_cast<uint32_t>(271 - e[d]) << 23) : 1.0f;
        unit[b * 16 + d] = lane ? f32_from_bits(static_cast<uint32_t>(e[d] - 18) << 23) : 1.0f;
        int64_t sum = 0;
        for (int t = 0; t < 8; ++t) {
          const float v = ab[16 * t + d] * inv_u;  // |v| < 2^18
          const float r = std::nearbyint(v);
          lane = lane && r == v;
          ints[16 * t + d] = lane ? static_cast<int32_t>(r) : 0;
          sum += std::abs(static_cast<int64_t>(ints[16 * t + d]));
        }
        good = good && lane && 12 * sum < (int64_t{1} << 24);
      }
      if (good) {
        ok[b] = 2;
        for (int u = 0; u < 4; ++u)
          for (int d = 0; d < 16; ++d)
            high[b * 64 + 16 * u + d] = (static_cast<uint32_t>(ints[16 * (2 * u + 1) + d] >> 15) & 0xFFFFu) |
                                        (static_cast<uint32_t>(ints[16 * (2 * u) + d] >> 15) << 16);
        for (int& n : ints) n &= 0x7FFF;  // the low planes, 0 .. 2^15 - 1
      }
    }
    for (int u = 0; u < 4; ++u)
      for (int d = 0; d < 16; ++d)  // dword d of vector u: (element 8d+u, element 8d+4+u), as a_pairs
        words[b * 64 + 16 * u + d] = (static_cast<uint32_t>(ints[16 * (2 * u + 1) + d]) & 0xFFFFu) |
                                     (static_cast<uint32_t>(ints[16 * (2 * u) + d]) << 16);
  }
}

}  // namespace gemm_detail

// FP8 GEMMs share everything but the weight decoding: quantise the activations (into
// q and pairs, which the job then points to), then run.
static Job prepare_quantized(gd::Kind kind, const float* x, int M, const uint8_t* w, const uint8_t* ws, int n, int k,
                             float* y, AlignedVector<float>& q, AlignedVector<uint32_t>& pairs, ThreadPool& pool) {
  Job job;
  gd::Problem& p = job.p;
  p = base_problem(kind, M, k);
  bool fp8_pairs = false, fp8_amx = false;
  int scale_lo = 0, scale_hi = 0;
  if (kind == gd::Kind::Fp8) {
    const auto [lo, hi] = fp8_scale_range(ws, n, k);
    scale_lo = lo, scale_hi = hi;
    job.simd_ok = hi <= gd::kFp8ScaleMaxByte;
    // Many rows on AVX-512: the VDPBF16PS path, when it is exact for these scales.
    fp8_pairs = job.simd_ok && lo >= gd::kFp8PairsMinByte && pair_tiles(M);
    fp8_amx = job.simd_ok && lo >= gd::kFp8PairsMinByte && amx_tiles(M, k);
  }
  quantize_padded(x, p, q, pool);
  p.a = q.data();
  p.a_stride = gd::act_stride(p.kp);
  if (kind == gd::Kind::Fp8) p.fold_w_scale = can_fold_w_scale(q.data(), M, k, p.a_stride, scale_lo, scale_hi);
  // FP4: q is permuted per block, vector t holds element 8d + kFp4Order[t].
  // FP4 in integers: small M on the SIMD paths, and the AVX-512 tiles where VDPBF16PS is not
  // the faster instruction (there VPDPWSSD takes 32 products per issue slot against FMA's 16).
  // (FP4 from kAmxFp4MinM rows: below, converting the codes into tile rows costs more than the
  // fp32 tiles' whole product.)
  const bool fp4_amx = kind == gd::Kind::Fp4 && M >= gd::kAmxFp4MinM && amx_tiles(M, k) && k % 256 == 0;
  const bool fp4_ints = kind == gd::Kind::Fp4 && !fp4_amx && active_isa() != Isa::Scalar &&
                        (M < p.small_m || (active_isa() == Isa::Avx512 && active_gemm_tiles() == GemmTiles::Fma));
  if (fp4_amx) {
    // The activations as tile rows, and the bound on the scales that fold (panels whose scales
    // do not fold run the fp32 tiles: run_jobs).
    const int blocks = (M + 15) / 16;
    const size_t block_dw = static_cast<size_t>(k) * 8;  // 16 tokens x K / 2 (gemm.h)
    if (pairs.size() < blocks * block_dw) pairs.resize(blocks * block_dw);
    std::vector<uint32_t> block_top(static_cast<size_t>(blocks));
    pool.parallel_for(blocks, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int rows = std::min(16, M - static_cast<int>(b) * 16);
        const float* a = q.data() + static_cast<size_t>(b) * 16 * p.a_stride;
        gd::amx_fp4_activation_block(a, rows, p.nb, p.a_stride, pairs.data() + static_cast<size_t>(b) * block_dw);
        uint32_t top = 0;
        for (int r = 0; r < rows; ++r)
          for (int i = 0; i < k; ++i) top = std::max(top, f32_bits(a[static_cast<size_t>(r) * p.a_stride + i]) & 0x7F800000u);
        block_top[static_cast<size_t>(b)] = top;
      }
    });
    p.a_amx = pairs.data();
    p.fp4_fold_max_byte = fp4_fold_max_byte(*std::max_element(block_top.begin(), block_top.end()));
  } else if (fp4_ints) {
    // The activations as exact integers where they have that form (gemm_detail), in one
    // buffer: words (or byte planes), then lane units, then with bytes the lane corrections,
    // then block flags, then on AVX2 the high planes of two-plane blocks.
    const bool avx512 = active_isa() == Isa::Avx512;
    const bool bytes = M < p.small_m && avx512 && fp4_bytes_active();
    const size_t blocks = static_cast<size_t>(M) * p.nb;
    if (pairs.size() < blocks * 161) pairs.resize(blocks * 161);
    uint32_t* words = pairs.data();
    float* unit = reinterpret_cast<float*>(pairs.data() + blocks * 64);
    float* corr = reinterpret_cast<float*>(pairs.data() + blocks * 80);
    uint8_t* ok = reinterpret_cast<uint8_t*>(pairs.data() + blocks * 96);
    // (The two-plane form at small M only: AVX-512's word form and the tiles have none.)
    uint32_t* high = (avx512 && !bytes) || M >= p.small_m || p.nb > gd::kFp4TwoPlaneMaxBlocks || !fp4_two_planes_active()
                         ? nullptr
                         : pairs.data() + blocks * 97;
    pool.parallel_for(M, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        const float* a = q.data() + static_cast<size_t>(m) * p.a_stride;
        const size_t mb = static_cast<size_t>(m) * p.nb;
        if (bytes)  // (all its two-plane blocks kept: unlike AVX2's, they cost the other blocks nothing)
          gd::fp4_byte_activations_avx512(a, p.nb, words + mb * 64, unit + mb * 16, corr + mb * 16, ok + mb,
                                          high ? high + mb * 64 : nullptr);
        else if (avx512)
          gd::fp4_int_activations_avx512(a, p.nb, words + mb * 64, unit + mb * 16, ok + mb);
        else {
          gd::fp4_int_activations_avx2(a, p.nb, words + mb * 64, unit + mb * 16, ok + mb, high ? high + mb * 64 : nullptr);
          // A row with few two-plane blocks runs them in fp32 (they would cost its one-plane
          // blocks more than they save: gemm_avx2.cpp, fp4_rows_int).
          if (std::count(ok + mb, ok + mb + p.nb, uint8_t{2}) * gd::kFp4TwoPlaneShare < p.nb)
            std::replace(ok + mb, ok + mb + p.nb, uint8_t{2}, uint8_t{0});
        }
      }
    }, 8);
    // The tiles redo a block without the integer form in fp32 (about three times the work), so
    // they pay only when nearly all blocks have it: activations like gate x up products, with
    // heavier tails than a norm's output, often do not (then the fp32 tiles run).
    const size_t ok_blocks = static_cast<size_t>(std::count(ok, ok + blocks, uint8_t{1}));
    if (M < p.small_m || ok_blocks * 10 >= blocks * 9) {
      p.a_int = words;
      p.a_int_high = high;
      p.a_int_unit = unit;
      p.a_int_ok = ok;
      if (bytes) p.a_int_corr = corr;
    }
  } else if (kind == gd::Kind::Fp4 && pair_tiles(M)) {  // the VDPBF16PS tiles
    if (pairs.size() < static_cast<size_t>(M) * p.nb * 64) pairs.resize(static_cast<size_t>(M) * p.nb * 64);
    std::vector<uint32_t> row_top(static_cast<size_t>(M));  // per row: the largest exponent field of |a|
    pool.parallel_for(M, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        uint32_t top = 0;
        for (int b = 0; b < p.nb; ++b) {
          const float* qb = q.data() + static_cast<size_t>(m) * p.a_stride + b * 128;
          uint32_t* out = pairs.data() + (static_cast<size_t>(m) * p.nb + b) * 64;
          for (int u = 0; u < 4; ++u)
            for (int d = 0; d < 16; ++d) {  // e4m3 values times 2^e are exact in bf16: the high halves
              const uint32_t lo = f32_bits(qb[16 * (2 * u + 1) + d]), hi = f32_bits(qb[16 * (2 * u) + d]);
              top = std::max(top, std::max(lo, hi) & 0x7F800000u);
              out[16 * u + d] = (lo >> 16) | (hi & 0xFFFF0000u);
            }
        }
        row_top[static_cast<size_t>(m)] = top;
      }
    }, 8);
    p.a_pairs = pairs.data();
    p.fp4_fold_max_byte = fp4_fold_max_byte(*std::max_element(row_top.begin(), row_top.end()));
  } else if (fp8_amx) {  // (as the pairs: always exact here)
    fp8_amx_activations(q.data(), M, k, p.a_stride, false, pairs, pool);
    p.a_amx = pairs.data();
  } else if (fp8_pairs && !(p.fp8_gfni && p.fold_w_scale)) {  // (else the GFNI rows run: rows_simd)
    // dequantised e4m3 values are bf16s >= 2^-31: always usable
    fp8_act_pairs(q.data(), M, k, p.a_stride, p.kp, false, pairs, pool);
    p.a_pairs = pairs.data();
  } else if (kind == gd::Kind::Fp8 && p.fp8_gfni && p.fold_w_scale && job.simd_ok && scale_lo >= gd::kFp8PairsMinByte &&
             fp8_small_pairs_active()) {  // the GFNI rows as bf16 pairs (exact for these scales, as the tiles)
    fp8_act_pairs(q.data(), M, k, p.a_stride, p.kp, false, pairs, pool);
    p.a_pairs = pairs.data();
  }
  p.w = w;
  p.ws = ws;
  p.y = y;
  p.y_stride = n;
  job.row_begin = 0;
  job.row_end = n;
  return job;
}

template <class Weight>
static void quantized_batch(gd::Kind kind, const GemmItem<Weight>* items, size_t count, ThreadPool& pool) {
  // Per calling thread and only grown: a forward pass makes hundreds of these calls. (Named
  // through references: a lambda run on a pool thread would see that thread's thread_locals.)
  thread_local std::vector<AlignedVector<float>> q_bufs;
  thread_local std::vector<AlignedVector<uint32_t>> pair_bufs;
  thread_local std::vector<Job> job_buf;
  std::vector<AlignedVector<float>>& qs = q_bufs;
  std::vector<AlignedVector<uint32_t>>& prs = pair_bufs;
  std::vector<Job>& jobs = job_buf;
  if (qs.size() < count) qs.resize(count);
  if (prs.size() < count) prs.resize(count);
  jobs.clear();
  // FP4 items on the same activations (an expert's w1 and w3; in decode every routed expert's
  // w1 and w3) share the prepared activations: for FP4 they depend on x, M and K only (FP8's
  // choices also depend on the weight scales). Keyed by x; a batch has at most a few hundred items.
  thread_local std::unordered_map<const float*, size_t> prepared_buf;
  std::unordered_map<const float*, size_t>& prepared = prepared_buf;
  prepared.clear();
  for (size_t i = 0; i < count; ++i) {
    const GemmItem<Weight>& it = items[i];
    const auto same = kind == gd::Kind::Fp4 ? prepared.find(it.x) : prepared.end();
    if (same != prepared.end() && it.M == items[same->second].M && it.W->k == items[same->second].W->k) {
      Job j = jobs[same->second];
      j.p.w = it.W->w;
      j.p.ws = it.W->scale;
      j.p.y = it.y;
      j.p.y_stride = it.W->n;
      j.row_begin = 0;
      j.row_end = it.W->n;
      jobs.push_back(j);
      continue;
    }
    if (kind == gd::Kind::Fp4) prepared[it.x] = jobs.size();
    jobs.push_back(prepare_quantized(kind, it.x, it.M, it.W->w, it.W->scale, it.W->n, it.W->k, it.y, qs[i], prs[i], pool));
  }
  run_jobs(jobs.data(), jobs.size(), pool);
}

void gemm_fp8(const float* x, int M, const Fp8Weight& W, float* y, ThreadPool& pool) {
  const GemmItem<Fp8Weight> item{x, M, &W, y};
  quantized_batch(gd::Kind::Fp8, &item, 1, pool);
}

void gemm_fp4(const float* x, int M, const Fp4Weight& W, float* y, ThreadPool& pool) {
  const GemmItem<Fp4Weight> item{x, M, &W, y};
  quantized_batch(gd::Kind::Fp4, &item, 1, pool);
}

void gemm_fp8_batch(std::span<const GemmItem<Fp8Weight>> items, ThreadPool& pool) {
  quantized_batch(gd::Kind::Fp8, items.data(), items.size(), pool);
}

void gemm_fp4_batch(std::span<const GemmItem<Fp4Weight>> items, ThreadPool& pool) {
  quantized_batch(gd::Kind::Fp4, items.data(), items.size(), pool);
}

void gemm_fp8_as_bf16_rows_batch(std::span<const Fp8RowsItem> items, ThreadPool& pool) {
  // Per calling thread and only grown (see quantized_batch).
  thread_local std::vector<PaddedRows> pad_bufs;
  thread_local std::vector<AlignedVector<uint32_t>> pair_bufs;
  thread_local std::vector<Job> job_buf;
  std::vector<PaddedRows>& pads = pad_bufs;
  std::vector<AlignedVector<uint32_t>>& prs = pair_bufs;
  std::vector<Job>& jobs = job_buf;
  if (pads.size() < items.size()) pads.resize(items.size());
  if (prs.size() < items.size()) prs.resize(items.size());
  jobs.clear();
  for (size_t i = 0; i < items.size(); ++i) {
    const Fp8RowsItem& it = items[i];
    const Fp8Weight& W = *it.W;
    Job job;
    gd::Problem& p = job.p;
    p = base_problem(gd::Kind::Fp8AsBf16, it.M, W.k);
    pads[i] = pad_rows(it.x, it.M, W.k, it.x_stride, p.kp);
    p.a = pads[i].a;
    p.a_stride = pads[i].stride;
    const auto [lo, hi] = fp8_scale_range(W.scale, W.n, W.k);
    job.simd_ok = hi <= gd::kFp8ScaleMaxByte;
    p.fold_w_scale = can_fold_w_scale(p.a, it.M, W.k, p.a_stride, lo, hi);
    if (job.simd_ok && lo >= gd::kFp8AsBf16PairsMinByte && amx_tiles(it.M, W.k)) {
      if (fp8_amx_activations(it.x, it.M, W.k, it.x_stride, true, prs[i], pool)) p.a_amx = prs[i].data();
    } else if (job.simd_ok && lo >= gd::kFp8AsBf16PairsMinByte && pair_tiles(it.M) && !(p.fp8_gfni && p.fold_w_scale) &&
               fp8_act_pairs(it.x, it.M, W.k, it.x_stride, p.kp, true, prs[i], pool)) {
      p.a_pairs = prs[i].data();
    } else if (job.simd_ok && lo >= gd::kFp8AsBf16PairsMinByte && p.fp8_gfni && p.fold_w_scale && fp8_small_pairs_active() &&
               fp8_act_pairs(it.x, it.M, W.k, it.x_stride, p.kp, true, prs[i], pool)) {
      p.a_pairs = prs[i].data();  // (the GFNI rows as bf16 pairs, as above)
    }
    p.w = W.w;
    p.ws = W.scale;
    p.y = it.y;
    p.y_stride = it.y_stride;
    job.row_begin = it.row_begin;
    job.row_end = it.row_end;
    jobs.push_back(job);
  }
  run_jobs(jobs.data(), jobs.size(), pool);
}

void gemm_fp8_as_bf16_rows(const float* x, int M, int x_stride, const Fp8Weight& W, int row_begin,
                           int row_end, float* y, int y_stride, ThreadPool& pool) {
  const Fp8RowsItem item{x, M, x_stride, &W, row_begin, row_end, y, y_stride};
  gemm_fp8_as_bf16_rows_batch({&item, 1}, pool);
}

void gemm_fp8_as_bf16(const float* x, int M, const Fp8Weight& W, float* y, ThreadPool& pool) {
  gemm_fp8_as_bf16_rows(x, M, W.k, W, 0, W.n, y, W.n, pool);
}

// A kernel form that is on by default where the CPU has what it needs: `env`=0 turns it off
// (read once), force() sets it for tests and benchmarks (clamped to the CPU).
class CpuFormSwitch {
 public:
  // preferred: where the form is on by default (null: wherever the CPU has it); env "0" turns
  // it off, "1" on (as far as the CPU has it).
  CpuFormSwitch(const char* env, bool (*cpu_has)(), bool (*preferred)() = nullptr)
      : env_(env), cpu_has_(cpu_has), preferred_(preferred) {}
  bool active() {
    int v = state_.load(std::memory_order_relaxed);
    if (v < 0) {
      const char* e = std::getenv(env_);
      const bool off = e && std::strcmp(e, "0") == 0, on = e && std::strcmp(e, "1") == 0;
      v = cpu_has_() && !off && (on || !preferred_ || preferred_());
      state_.store(v, std::memory_order_relaxed);
    }
    return v != 0;
  }
  bool force(bool on) {
    const bool before = active();
    state_.store(on && cpu_has_(), std::memory_order_relaxed);
    return before;
  }

 private:
  const char* env_;
  bool (*cpu_has_)();
  bool (*preferred_)();
  std::atomic<int> state_{-1};  // -1: not yet read from the environment
};

static CpuFormSwitch g_fp4_bytes("DSV4_FP4_BYTES", cpu_has_avx512_vbmi);
static CpuFormSwitch g_fp8_gfni("DSV4_FP8_GFNI", cpu_has_avx512_vbmi_gfni);
static CpuFormSwitch g_fp8_small_pairs("DSV4_FP8_SMALL_PAIRS", cpu_has_avx512_vbmi_gfni);
static CpuFormSwitch g_fp8_nta("DSV4_FP8_PREFETCH_NTA", [] { return true; }, cpu_is_amd);
static CpuFormSwitch g_fp4_ahead("DSV4_FP4_PREFETCH_AHEAD", [] { return true; }, cpu_is_amd);
static CpuFormSwitch g_amx("DSV4_GEMM_AMX", cpu_has_amx_bf16);
static CpuFormSwitch g_fp4_two_planes("DSV4_FP4_TWO_PLANES", [] { return isa_supported(Isa::Avx2); });

bool fp4_two_planes_active() { return g_fp4_two_planes.active(); }
bool force_fp4_two_planes(bool on) { return g_fp4_two_planes.force(on); }
bool fp4_bytes_active() { return g_fp4_bytes.active(); }
bool force_fp4_bytes(bool on) { return g_fp4_bytes.force(on); }
bool fp8_gfni_active() { return g_fp8_gfni.active(); }
bool force_fp8_gfni(bool on) { return g_fp8_gfni.force(on); }
bool fp8_small_pairs_active() { return g_fp8_small_pairs.active(); }
bool force_fp8_small_pairs(bool on) { return g_fp8_small_pairs.force(on); }
bool fp8_prefetch_nta_active() { return g_fp8_nta.active(); }
bool force_fp8_prefetch_nta(bool on) { return g_fp8_nta.force(on); }
bool fp4_prefetch_ahead_active() { return g_fp4_ahead.active(); }
bool force_fp4_prefetch_ahead(bool on) { return g_fp4_ahead.force(on); }
bool gemm_amx_active() { return g_amx.active(); }
bool force_gemm_amx(bool on) { return g_amx.force(on); }
int gemm_amx_min_m() { return 4; }

GemmTiles active_gemm_tiles() {
  int v = g_tiles.load(std::memory_order_relaxed);
  if (v < 0) {
    static const GemmTiles chosen = tiles_from_env();  // (measured once, thread-safely)
    v = static_cast<int>(chosen);
    int expected = -1;  // a force_gemm_tiles() in the meantime wins
    if (!g_tiles.compare_exchange_strong(expected, v, std::memory_order_relaxed)) v = expected;
  }
  return static_cast<GemmTiles>(v);
}

GemmTiles force_gemm_tiles(GemmTiles tiles) {
  const GemmTiles before = active_gemm_tiles();
  g_tiles.store(static_cast<int>(tiles), std::memory_order_relaxed);
  return before;
}

const char* gemm_tiles_name(GemmTiles tiles) { return tiles == GemmTiles::Fma ? "fma" : "dp"; }

int gemm_small_m_limit() {
  const Isa isa = active_isa();
  return isa == Isa::Avx2 || (isa == Isa::Avx512 && active_gemm_tiles() == GemmTiles::Dp) ? 8 : gd::kTilesMinM;
}

// The activations of a BF16 product in the problem (run on the calling thread's buffers): two
// views of the (bf16-valued) x, zero past K: fp32 permuted per 32-chunk for the FMA back ends,
// and where the VDPBF16PS back ends may run (AVX-512: small M, or the pair tiles) bf16 words in
// natural order, checked for that path's exactness.
static gd::Problem prepare_bf16(const float* x, int M, const Bf16Weight& W, AlignedVector<float>& perm,
                                AlignedVector<uint32_t>& pairs, ThreadPool& pool) {
  gd::Problem p = base_problem(gd::Kind::Bf16, M, W.k);
  const bool pairs_possible =
      W.dp_exact && active_isa() == Isa::Avx512 && (M < std::max(p.small_m, gd::kSharedLoadMaxM) || pair_tiles(M));
  const size_t stride = static_cast<size_t>(gd::act_stride(p.kp));
  // Kept between calls (a prefill's products are tens of MiB each: fresh zeroed pages every call
  // cost more than the scan); each row's padding is zeroed below, the rest written.
  if (perm.size() < static_cast<size_t>(M) * stride) perm.resize(static_cast<size_t>(M) * stride);
  if (pairs_possible && pairs.size() < static_cast<size_t>(M) * p.kp / 2) pairs.resize(static_cast<size_t>(M) * p.kp / 2);
  uint16_t* words = reinterpret_cast<uint16_t*>(pairs.data());
  std::vector<char> row_ok(static_cast<size_t>(M), 1);
  pool.parallel_for(M, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      float* row = perm.data() + static_cast<size_t>(m) * stride;
      std::fill(row + W.k / 32 * 32, row + stride, 0.0f);  // (the last chunk's gaps, the padding)
      for (int k = 0; k < W.k; ++k) row[gd::bf16_permuted_pos(k)] = x[static_cast<size_t>(m) * W.k + k];
      if (!pairs_possible) continue;
      std::fill(words + static_cast<size_t>(m) * p.kp + W.k, words + static_cast<size_t>(m + 1) * p.kp, uint16_t{0});
      for (int k = 0; k < W.k; ++k)
        words[static_cast<size_t>(m) * p.kp + k] = static_cast<uint16_t>(f32_bits(x[static_cast<size_t>(m) * W.k + k]) >> 16);
      row_ok[static_cast<size_t>(m)] = bf16_dp_exact(words + static_cast<size_t>(m) * p.kp, static_cast<size_t>(p.kp));
    }
  }, 8);
  p.a = perm.data();
  p.a_stride = static_cast<int>(stride);
  if (pairs_possible && std::all_of(row_ok.begin(), row_ok.end(), [](char c) { return c != 0; })) p.a_pairs = pairs.data();
  p.round_bf16 = false;
  return p;
}

void gemm_bf16_f32_batch(std::span<const GemmItem<Bf16Weight>> items, ThreadPool& pool) {
  // Per calling thread and only grown. (Named through references: a pool thread would see its
  // own thread_locals.)
  thread_local std::vector<AlignedVector<float>> perm_bufs;
  thread_local std::vector<AlignedVector<uint32_t>> pair_bufs;
  thread_local std::vector<Job> job_buf;
  std::vector<AlignedVector<float>>& perms = perm_bufs;
  std::vector<AlignedVector<uint32_t>>& prs = pair_bufs;
  std::vector<Job>& jobs = job_buf;
  if (perms.size() < items.size()) perms.resize(items.size());
  if (prs.size() < items.size()) prs.resize(items.size());
  jobs.clear();
  for (size_t i = 0; i < items.size(); ++i) {
    const GemmItem<Bf16Weight>& it = items[i];
    // Items on the same activations (a compressor's wkv and wgate) share the prepared views.
    size_t same = i;
    for (size_t q = 0; q < i && same == i; ++q)
      if (items[q].x == it.x && items[q].M == it.M && items[q].W->k == it.W->k && items[q].W->dp_exact == it.W->dp_exact)
        same = q;
    Job j{same < i ? jobs[same].p : prepare_bf16(it.x, it.M, *it.W, perms[i], prs[i], pool), 0, it.W->n, true};
    j.p.w = reinterpret_cast<const uint8_t*>(it.W->w);
    j.p.y = it.y;
    j.p.y_stride = it.W->n;
    jobs.push_back(j);
  }
  run_jobs(jobs.data(), jobs.size(), pool);
}

void gemm_bf16_f32(const float* x, int M, const Bf16Weight& W, float* y, ThreadPool& pool) {
  const GemmItem<Bf16Weight> item{x, M, &W, y};
  gemm_bf16_f32_batch({&item, 1}, pool);
}

}  // namespace dsv4
