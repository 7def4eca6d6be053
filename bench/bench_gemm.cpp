// GEMM throughput at DeepSeek-V4-Flash shapes, per ISA path. Weights are random codes and
// larger than the caches (several copies are cycled when one is small), so M = 1 measures the
// weight stream: the "bytes_per_second" counter counts weight (+ scale) bytes read, and
// "read_GBps" / "of_read" give the read bandwidth measured around the row and the row's share of
// it. M = 512
// (and the experts' M = 12)
// report FLOP/s (2*M*N*K). Args: {M, isa (0 scalar, 1 avx2, 2 avx512)}.
// Environment: DSV4_BENCH_THREADS=N (default: all cores); DSV4_BENCH_HOT=1 keeps one copy of the
// weights so M = 1 runs from cache: the kernel's compute ceiling, to compare with the DRAM run.
// DSV4_GEMM_TILES=dp|fma picks the AVX-512 tiles of the M = 512 runs (default: chosen at start-up);
// DSV4_FP4_BYTES=0 keeps the small-M FP4 products off the VBMI byte form, DSV4_FP8_GFNI=0 the
// small-M FP8 ones off the GFNI decode, DSV4_FP8_SMALL_PAIRS=0 keeps that decode in fp32 FMAs
// instead of VDPBF16PS pairs, DSV4_FP8_PREFETCH_NTA=0|1 sets their prefetch hint (gemm.h).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <immintrin.h>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_pool.h"
#include "kernels/cpu_features.h"
#include "kernels/gemm.h"
#include "kernels/numerics.h"
#include "kernels/roofline.h"

namespace dsv4 {
namespace {

// > L3 (480 MiB on the Xeon VM this project measures on), so every call streams from DRAM.
constexpr size_t kMinBytes = size_t{1} << 30;
// The largest M measured as a decode step (weights from DRAM, read-bandwidth ratio).
constexpr int kDecodeBatchM = 12;

ThreadPool& pool() { return bench_pool(); }

// e4m3 codes as a checkpoint has them: values of a block scaled so that the largest is near 448,
// here normal with sigma 448/5. About 1 code in 7000 is subnormal (|v| < 2^-6), i.e. about 1
// in 110 runs of 64 codes holds one; uniform random bytes would make every 16th code subnormal.
// Only the first 4 MiB are drawn; the rest repeats them (a weight stream's speed does not depend
// on what it reads, and drawing 256 MiB took most of a run).
std::vector<uint8_t> rand_bytes(size_t n, uint32_t seed, bool e4m3) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 448.0f / 5.0f);
  const size_t drawn = std::min(n, size_t{4} << 20);
  for (size_t i = 0; i < drawn; ++i) v[i] = e4m3 ? encode_e4m3(round_to_e4m3_clamped(nd(rng))) : static_cast<uint8_t>(rng());
  for (size_t i = drawn; i < n; i += drawn) std::memcpy(&v[i], v.data(), std::min(drawn, n - i));
  return v;
}
// Activations: normal values (a norm's output), or with swiglu silu(g) x u of two normal
// values, the input of an expert's w2 (heavier tails: FP4 blocks in two planes on AVX2, gemm.h).
std::vector<float> rand_x(size_t n, bool swiglu = false) {
  std::vector<float> x(n);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (auto& v : x) {
    const float g = nd(rng);
    v = bf16_round(swiglu ? g / (1.0f + std::exp(-g)) * nd(rng) : g);
  }
  return x;
}

enum class WKind { Fp8, Fp4, Bf16 };

void run_bench(benchmark::State& st, WKind kind, int N, int K, bool swiglu = false) {
  const int M = static_cast<int>(st.range(0));
  const Isa want = static_cast<Isa>(st.range(1));
  if (!isa_supported(want)) {
    st.SkipWithError("ISA not supported");
    return;
  }
  const Isa saved = force_isa(want);
  const size_t wbytes = kind == WKind::Fp8 ? size_t(N) * K : kind == WKind::Fp4 ? size_t(N) * K / 2 : size_t(N) * K * 2;
  const size_t sbytes = kind == WKind::Fp8   ? size_t((N + 127) / 128) * ((K + 127) / 128)
                        : kind == WKind::Fp4 ? size_t(N) * K / 32
                                             : 0;
  // Decode's M (one token, or a batch of sequences: up to kDecodeBatchM) cycles through copies so
  // the weights come from memory; M = 512 is compute bound.
  const bool hot = std::getenv("DSV4_BENCH_HOT") != nullptr;
  const bool decode = M <= kDecodeBatchM;
  const int copies = decode && !hot ? static_cast<int>((kMinBytes + wbytes - 1) / wbytes) : 1;
  auto w = rand_bytes(wbytes * copies, 1, kind == WKind::Fp8);
  if (kind == WKind::Bf16)  // weight-like bf16 values: |w| in [2^-17, 1), random sign and mantissa
    for (size_t i = 0; i + 1 < w.size(); i += 2) {
      const uint16_t v = static_cast<uint16_t>((w[i + 1] & 0x80) << 8 | (110 + (w[i + 1] & 0x7F) % 17) << 7 | (w[i] & 0x7F));
      w[i] = static_cast<uint8_t>(v & 0xFF);
      w[i + 1] = static_cast<uint8_t>(v >> 8);
    }
  std::vector<uint8_t> s(sbytes * copies, 120);
  const auto x = rand_x(size_t(M) * K, swiglu);
  std::vector<float> y(size_t(M) * N);
  // M = 1 from DRAM: the read bandwidth (the roofline probe over these very weights, all threads
  // of the pool) right before and right after, so that each row carries its own ratio: this VM's
  // bandwidth moves by tens of percent within minutes, a probe at the start of a run is stale by
  // its end.
  const bool probe = decode && !hot;
  const double read_before = probe ? measure_read_gbs(pool(), w.size(), 0.2, w.data()) : 0.0;
  const auto t0 = std::chrono::steady_clock::now();
  int c = 0;
  for (auto _ : st) {
    if (kind == WKind::Fp8) {
      const Fp8Weight W{w.data() + wbytes * c, s.data() + sbytes * c, N, K};
      gemm_fp8(x.data(), M, W, y.data(), pool());
    } else if (kind == WKind::Fp4) {
      const Fp4Weight W{w.data() + wbytes * c, s.data() + sbytes * c, N, K};
      gemm_fp4(x.data(), M, W, y.data(), pool());
    } else {
      Bf16Weight W{reinterpret_cast<const uint16_t*>(w.data() + wbytes * c), N, K};
      W.dp_exact = true;  // by construction above (the loader scans real checkpoints)
      gemm_bf16_f32(x.data(), M, W, y.data(), pool());
    }
    benchmark::DoNotOptimize(y.data());
    c = (c + 1) % copies;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  st.counters["bytes_per_second"] =
      benchmark::Counter(double(wbytes + sbytes), benchmark::Counter::kIsIterationInvariantRate);
  if (probe) {
    const double read = (read_before + measure_read_gbs(pool(), w.size(), 0.2, w.data())) / 2;
    st.counters["read_GBps"] = read;
    st.counters["of_read"] = double(wbytes + sbytes) * double(st.iterations()) / seconds / 1e9 / read;
  }
  st.counters["FLOPS"] = benchmark::Counter(2.0 * M * N * K, benchmark::Counter::kIsIterationInvariantRate);
  // (on AVX-512 the M >= 4 products run in the tiles chosen at start-up: env DSV4_GEMM_TILES)
  // (below gemm_detail::kSharedLoadMaxM the BF16 and GFNI FP8 products stay on the small-M rows)
  const bool tiles = M >= gemm_small_m_limit() && (kind == WKind::Fp4 || M >= gemm_detail::kSharedLoadMaxM);
  st.SetLabel(want == Isa::Avx512 && tiles
                  ? std::string(isa_name(want)) + " " + gemm_tiles_name(active_gemm_tiles())
                  : std::string(isa_name(want)));
  force_isa(saved);
}

// Scalar at M = 512 takes seconds per call; it is measured on wq_a only (ArgsWithScalar512).
// M = 2, 4, 8: a decode step of that many sequences at once (Model::decode_batch), AVX-512.
void Args(benchmark::internal::Benchmark* b) {
  for (int isa : {0, 1, 2}) b->Args({1, isa});
  for (int M : {2, 4, 8, 12}) b->Args({M, 2});
  for (int isa : {1, 2}) b->Args({512, isa});
  b->ArgNames({"M", "isa"})->Unit(benchmark::kMillisecond)->UseRealTime();
}
// Routed experts also at M = 12 and 48: a prefill chunk of V4-Flash gives each of its 256
// experts chunk * 6 / 256 rows on average, 12 for 512 tokens and 48 for the default 2048
// (kPrefillChunkTokens), so those are the M their prefill products run at.
void ExpertArgs(benchmark::internal::Benchmark* b) {
  Args(b);
  for (int M : {12, 48})
    for (int isa : {1, 2}) b->Args({M, isa});
}
void ArgsWithScalar512(benchmark::internal::Benchmark* b) {
  Args(b);
  b->Args({512, 0});
}

void BM_wq_a_fp8_4096x1024(benchmark::State& st) { run_bench(st, WKind::Fp8, 1024, 4096); }
void BM_wq_b_fp8_1024x32768(benchmark::State& st) { run_bench(st, WKind::Fp8, 32768, 1024); }
void BM_wo_b_fp8_8192x4096(benchmark::State& st) { run_bench(st, WKind::Fp8, 4096, 8192); }
void BM_shared_w1_fp8_4096x2048(benchmark::State& st) { run_bench(st, WKind::Fp8, 2048, 4096); }
void BM_shared_w2_fp8_2048x4096(benchmark::State& st) { run_bench(st, WKind::Fp8, 4096, 2048); }
void BM_expert_w1_fp4_4096x2048(benchmark::State& st) { run_bench(st, WKind::Fp4, 2048, 4096); }
void BM_expert_w2_fp4_2048x4096(benchmark::State& st) { run_bench(st, WKind::Fp4, 4096, 2048); }
// The same with the model's w2 input, silu(gate) x up (rand_x).
void BM_expert_w2_fp4_swiglu_2048x4096(benchmark::State& st) { run_bench(st, WKind::Fp4, 4096, 2048, true); }
// The compressors' projections (wkv, and wgate alike): the overlapped ratio-4 compressor of
// V4-Flash emits 2 x 512 channels per token from the 4096-wide input, bf16 weights.
void BM_compressor_bf16_4096x1024(benchmark::State& st) { run_bench(st, WKind::Bf16, 1024, 4096); }
// A 16384-row slice of the output head (129280 x 4096 bf16, 1 GB: the largest single read per token).
void BM_head_bf16_4096x16384(benchmark::State& st) { run_bench(st, WKind::Bf16, 16384, 4096); }
BENCHMARK(BM_wq_a_fp8_4096x1024)->Apply(ArgsWithScalar512);
BENCHMARK(BM_wq_b_fp8_1024x32768)->Apply(Args);
BENCHMARK(BM_wo_b_fp8_8192x4096)->Apply(Args);
BENCHMARK(BM_shared_w1_fp8_4096x2048)->Apply(Args);
BENCHMARK(BM_shared_w2_fp8_2048x4096)->Apply(Args);
BENCHMARK(BM_expert_w1_fp4_4096x2048)->Apply(ExpertArgs);
BENCHMARK(BM_expert_w2_fp4_2048x4096)->Apply(ExpertArgs);
BENCHMARK(BM_expert_w2_fp4_swiglu_2048x4096)->Apply(Args);
BENCHMARK(BM_compressor_bf16_4096x1024)->Apply(Args);
BENCHMARK(BM_head_bf16_4096x16384)->Apply(Args);

// The memory side of the small-M products alone: 8 KiB rows read `rows` at a time, their 64-byte
// lines interleaved (line k of each, then line k + 1), each thread over its half of 512 MiB, with
// no software prefetch and almost no work per line. The small-M kernels stream kDirectRows (8)
// rows at once so that each row's chain of multiply-adds (the canonical order allows one per row)
// has company. With stream 1 the rows read together are adjacent, as in those kernels, so every
// stream ends after one row; with stream S > 1 the j-th of them runs on through S consecutive
// rows (rows j S + i, i = 0 .. S-1, of each block of rows x S). Zen 5 VM, two threads: one row
// at a time reads at 0.91-0.97 of the probe, 8 adjacent rows at 0.75-0.85, 8 streams of 16 or 64
// rows at 0.80-0.96 (performance.md, "M = 1").
template <int R>
__attribute__((target("avx2"))) uint64_t xor_rows(const uint8_t* p, size_t r0, size_t r1, size_t row, size_t stream) {
  __m256i x = _mm256_setzero_si256(), y = _mm256_setzero_si256();
  for (size_t r = r0; r < r1; r += R)
    for (size_t k = 0; k < row; k += 64)
      for (int j = 0; j < R; ++j) {
        const size_t block = (r - r0) / (R * stream), i = (r - r0) / R % stream;
        const uint8_t* line = p + (r0 + block * R * stream + static_cast<size_t>(j) * stream + i) * row + k;
        x = _mm256_xor_si256(x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(line)));
        y = _mm256_xor_si256(y, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(line + 32)));
      }
  alignas(32) uint64_t q[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(q), _mm256_xor_si256(x, y));
  return q[0] ^ q[1] ^ q[2] ^ q[3];
}
void BM_row_streams(benchmark::State& st) {
  const int rows_at_once = static_cast<int>(st.range(0));
  const size_t stream = static_cast<size_t>(st.range(1));
  if (!isa_supported(Isa::Avx2)) {
    st.SkipWithError("needs AVX2");
    return;
  }
  constexpr size_t kRow = 8192;
  static const std::vector<uint8_t> buf = rand_bytes(2 * kMinBytes, 3, false);
  const size_t rows = buf.size() / kRow, unit = static_cast<size_t>(rows_at_once) * stream;
  const int parts = pool().size();
  const auto xor_fn = rows_at_once == 1 ? xor_rows<1> : rows_at_once == 2 ? xor_rows<2> : rows_at_once == 4 ? xor_rows<4> : xor_rows<8>;
  const double read_before = measure_read_gbs(pool(), buf.size(), 0.2, buf.data());
  size_t bytes = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : st) {
    std::atomic<uint64_t> sink{0};
    std::atomic<size_t> done{0};
    pool().parallel_for(parts, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const size_t r0 = rows * static_cast<size_t>(p) / static_cast<size_t>(parts);
        const size_t r1 = r0 + (rows * static_cast<size_t>(p + 1) / static_cast<size_t>(parts) - r0) / unit * unit;
        sink ^= xor_fn(buf.data(), r0, r1, kRow, stream);
        done += (r1 - r0) * kRow;
      }
    });
    benchmark::DoNotOptimize(sink.load());
    bytes += done.load();
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double read = (read_before + measure_read_gbs(pool(), buf.size(), 0.2, buf.data())) / 2;
  st.counters["bytes_per_second"] = static_cast<double>(bytes) / seconds;
  st.counters["read_GBps"] = read;
  st.counters["of_read"] = static_cast<double>(bytes) / seconds / 1e9 / read;
}
BENCHMARK(BM_row_streams)
    ->ArgNames({"rows", "stream"})
    ->Args({1, 1})
    ->Args({2, 1})
    ->Args({4, 1})
    ->Args({8, 1})
    ->Args({8, 16})
    ->Args({8, 64})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace dsv4
