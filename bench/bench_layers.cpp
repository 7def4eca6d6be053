// Micro-benchmarks of the non-GEMM parts of a V4-Flash layer at real shapes, for one token
// (decode) and a 512-token chunk (prefill): indexer scoring, the sparse attention core, mHC
// (HC_PRE's sums, Sinkhorn, HC_POST). Arg isa: 0 scalar, 1 AVX2, 2 AVX-512 (kernels/cpu_features.h).
// Pool: env DSV4_BENCH_THREADS (bench_pool.h). The GEMMs, compressor projections included, are in
// bench_gemm.cpp.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "bench_pool.h"
#include "kernels/attention.h"
#include "kernels/cpu_features.h"
#include "kernels/hc_mix.h"
#include "kernels/index_score.h"
#include "kernels/numerics.h"

namespace dsv4 {
namespace {

// V4-Flash widths (spec §1).
constexpr int kHeads = 64, kHeadDim = 512, kWindow = 128, kTopK = 512;
constexpr int kIndexHeads = 64, kHc = 4, kDim = 4096, kHcRows = (2 + kHc) * kHc, kSinkhornIters = 20;

// Sets the arg's ISA for the benchmark's lifetime; false (and the run skipped) if the CPU lacks it.
struct IsaScope {
  Isa saved = active_isa();
  bool ok;
  explicit IsaScope(benchmark::State& st) : ok(isa_supported(static_cast<Isa>(st.range(1)))) {
    if (ok)
      force_isa(static_cast<Isa>(st.range(1)));
    else
      st.SkipWithError("ISA not supported");
  }
  ~IsaScope() { force_isa(saved); }
};

std::vector<float> normal(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (auto& x : v) x = bf16_round(nd(rng));
  return v;
}

// Indexer scoring: `tokens` queries (64 heads of FP4 codes) each against `keys` compressed keys,
// the keys split over the pool as in decode. 16384 keys: 64K context at ratio 4. GB/s of keys.
void BM_indexer_scores(benchmark::State& st) {
  const IsaScope isa(st);
  if (!isa.ok) return;
  const int tokens = static_cast<int>(st.range(0)), keys = static_cast<int>(st.range(2));
  std::mt19937 rng(3);
  std::vector<uint8_t> codes(static_cast<size_t>(tokens) * kIndexHeads * 64), scales(static_cast<size_t>(tokens) * kIndexHeads * 4);
  std::vector<uint8_t> key(static_cast<size_t>(keys) * kIndexKeyBytes);
  for (auto& b : codes) b = static_cast<uint8_t>(rng());
  for (auto& b : scales) b = static_cast<uint8_t>(118 + rng() % 8);
  for (size_t j = 0; j < key.size(); ++j) key[j] = j % kIndexKeyBytes < 64 ? static_cast<uint8_t>(rng()) : 120;
  const std::vector<float> w = normal(static_cast<size_t>(tokens) * kIndexHeads, 4);
  std::vector<float> score(static_cast<size_t>(keys));
  for (auto _ : st)
    for (int t = 0; t < tokens; ++t) {
      const size_t o = static_cast<size_t>(t) * kIndexHeads;
      const IndexQuery q{kIndexHeads, &codes[o * 64], &scales[o * 4], &w[o]};
      bench_pool().parallel_for(keys, [&](int64_t j0, int64_t j1) { index_scores(q, key.data(), j0, j1, score.data() + j0); }, 256);
      benchmark::DoNotOptimize(score.data());
    }
  st.counters["bytes_per_second"] = benchmark::Counter(double(tokens) * keys * kIndexKeyBytes, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["keys_per_second"] = benchmark::Counter(double(tokens) * keys, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_indexer_scores)
    ->ArgNames({"tokens", "isa", "keys"})
    ->Args({1, 0, 16384})->Args({1, 1, 16384})->Args({1, 2, 16384})
    ->Args({512, 2, 2048})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// The attention core of `tokens` tokens over 128 window + 512 selected rows (cache-resident, as
// the decoded rows are), heads split over the pool as the model does. GFLOP/s of the scores and
// the weighted sums (4 H rows Dh per token).
void BM_sparse_attention(benchmark::State& st) {
  const IsaScope isa(st);
  if (!isa.ok) return;
  const int tokens = static_cast<int>(st.range(0)), nrows = kWindow + kTopK;
  const std::vector<float> q = normal(static_cast<size_t>(tokens) * kHeads * kHeadDim, 5);
  const std::vector<float> kv = normal(static_cast<size_t>(nrows) * kHeadDim, 6);
  const std::vector<float> sink = normal(kHeads, 7);
  std::vector<const float*> rows;
  for (int r = 0; r < nrows; ++r) rows.push_back(&kv[static_cast<size_t>(r) * kHeadDim]);
  std::vector<float> o(q.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  ThreadPool& pool = bench_pool();
  const int64_t per_thread = (kHeads + pool.size() - 1) / pool.size();
  for (auto _ : st) {
    for (int t = 0; t < tokens; ++t) {
      const size_t off = static_cast<size_t>(t) * kHeads * kHeadDim;
      pool.parallel_for(kHeads, [&](int64_t h0, int64_t h1) {
        sparse_attention_heads(&q[off], static_cast<int>(h0), static_cast<int>(h1), kHeadDim, rows.data(), rows.size(), scale,
                               sink.data(), &o[off]);
      }, per_thread);
    }
    benchmark::DoNotOptimize(o.data());
  }
  st.counters["FLOPS"] = benchmark::Counter(4.0 * tokens * kHeads * nrows * kHeadDim, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_sparse_attention)
    ->ArgNames({"tokens", "isa"})
    ->Args({1, 0})->Args({1, 1})->Args({1, 2})->Args({512, 2})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// HC_PRE's sums (ss and 24 mix rows over the 4 x 4096 streams) and the Sinkhorn comb, then
// HC_POST, split over the pool as the model does (decode: one token's chains in two parts;
// prefill: groups of 16 tokens). GB/s of the streams' bytes read by the sums (the 1.5 MiB of mix weights per site
// are read once per call as well).
void BM_mhc(benchmark::State& st) {
  const IsaScope isa(st);
  if (!isa.ok) return;
  const int tokens = static_cast<int>(st.range(0)), HD = kHc * kDim;
  const std::vector<float> fn = normal(static_cast<size_t>(kHcRows) * HD, 8);
  std::vector<float> h = normal(static_cast<size_t>(tokens) * HD, 9);
  const std::vector<float> f = normal(static_cast<size_t>(tokens) * kDim, 10);
  const std::vector<float> post = normal(kHc, 11);
  std::vector<float> ss(static_cast<size_t>(tokens)), mix(static_cast<size_t>(tokens) * kHcRows);
  std::vector<float> comb(static_cast<size_t>(tokens) * kHc * kHc);
  ThreadPool& pool = bench_pool();
  for (auto _ : st) {
    if (tokens < 16) {  // decode: per token its 25 chains (ss, then the mix rows) in two parts over the pool
      pool.parallel_for(static_cast<int64_t>(tokens) * 2, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const size_t t = static_cast<size_t>(i / 2);
          const int c0 = static_cast<int>(i % 2) * 13;
          hc_token_sums(fn.data(), HD, &h[t * HD], c0, std::min(kHcRows + 1, c0 + 13), &ss[t], &mix[t * kHcRows]);
        }
      });
    } else {  // prefill: 16 tokens in the vector lanes
      pool.parallel_for((tokens + 15) / 16, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
          const int t0 = static_cast<int>(i) * 16, count = std::min(16, tokens - t0);
          hc_mix_tokens(fn.data(), kHcRows, HD, &h[static_cast<size_t>(t0) * HD], count, &ss[static_cast<size_t>(t0)],
                        &mix[static_cast<size_t>(t0) * kHcRows]);
        }
      });
    }
    pool.parallel_for(tokens, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        float* C = &comb[static_cast<size_t>(t) * kHc * kHc];
        for (int i = 0; i < kHc * kHc; ++i) C[i] = mix[static_cast<size_t>(t) * kHcRows + 2 * kHc + static_cast<size_t>(i)] * 0.1f;
        hc_sinkhorn(C, kHc, kSinkhornIters, 1e-6f);
      }
    });
    constexpr int kSpan = 1024;
    pool.parallel_for(static_cast<int64_t>(tokens) * (kDim / kSpan), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t t = i / (kDim / kSpan);
        const int d0 = static_cast<int>(i % (kDim / kSpan)) * kSpan;
        hc_post(&f[static_cast<size_t>(t) * kDim], post.data(), &comb[static_cast<size_t>(t) * kHc * kHc],
                &h[static_cast<size_t>(t) * HD], kHc, kDim, d0, d0 + kSpan);
      }
    });
    benchmark::DoNotOptimize(h.data());
  }
  st.counters["bytes_per_second"] = benchmark::Counter(4.0 * tokens * HD, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_mhc)
    ->ArgNames({"tokens", "isa"})
    ->Args({1, 0})->Args({1, 1})->Args({1, 2})->Args({512, 1})->Args({512, 2})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

// The Sinkhorn normalisation alone (4 x 4, 20 iterations), per token.
void BM_sinkhorn(benchmark::State& st) {
  const std::vector<float> logits = normal(kHc * kHc, 12);
  std::vector<float> C(logits.size());
  for (auto _ : st) {
    C = logits;
    hc_sinkhorn(C.data(), kHc, kSinkhornIters, 1e-6f);
    benchmark::DoNotOptimize(C.data());
  }
}
BENCHMARK(BM_sinkhorn);

}  // namespace
}  // namespace dsv4
