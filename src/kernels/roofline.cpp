#include "kernels/roofline.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/gemm.h"

namespace dsv4 {

namespace roofline_detail {
double fma_loop_scalar(long iters, const float* seeds, float* out) {
  float a[kFmaChains];
  for (int j = 0; j < kFmaChains; ++j) a[j] = seeds[j];
  const float m = 0.999999f, c = 1e-7f;
  for (long i = 0; i < iters; ++i)
    for (float& v : a) v = v * m + c;
  for (int j = 0; j < kFmaChains; ++j) out[j] = a[j];
  return 2.0 * kFmaChains * static_cast<double>(iters);
}

uint64_t read_xor_scalar(const uint8_t* p, size_t len) {
  uint64_t x[4] = {};
  for (size_t i = 0; i + 32 <= len; i += 32)
    for (int j = 0; j < 4; ++j) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * j, 8);
      x[j] ^= w;
    }
  return x[0] ^ x[1] ^ x[2] ^ x[3];
}
}  // namespace roofline_detail

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Best pass of all threads reading their slice of [data, data + len) with the ISA's widest loads
// (integer XOR: the bytes may be any weights). Slices are cut at 64-byte addresses, whole
// 512-byte runs each: a buffer that starts off a line boundary (a std::vector's +16, a tensor
// inside a safetensors file) otherwise has every 64-byte load touch two lines, and the probe
// measures the split loads instead of memory (Zen 5 VM, 2 threads, the same 1 GiB vector:
// 50 GB/s from its +16 start, 62-69 GB/s from the next line).
double best_read_gbs(ThreadPool& pool, const uint8_t* data, size_t len, double seconds) {
  const int parts = pool.size();
  const uintptr_t base = reinterpret_cast<uintptr_t>(data);
  auto slice = [&](int64_t p, uintptr_t& b, uintptr_t& e) {
    b = (base + len * static_cast<size_t>(p) / static_cast<size_t>(parts) + 63) / 64 * 64;
    e = base + len * static_cast<size_t>(p + 1) / static_cast<size_t>(parts);
    e = e > b ? b + (e - b) / 512 * 512 : b;
  };
  size_t bytes = 0;
  for (int64_t p = 0; p < parts; ++p) {
    uintptr_t b, e;
    slice(p, b, e);
    bytes += e - b;
  }
  const Isa isa = active_isa();
  auto read = isa == Isa::Avx512 ? roofline_detail::read_xor_avx512
              : isa == Isa::Avx2 ? roofline_detail::read_xor_avx2
                                 : roofline_detail::read_xor_scalar;
  std::atomic<uint64_t> sink{0};
  double best = 0;
  const double t_end = now() + seconds;
  do {
    const double t0 = now();
    pool.parallel_for(parts, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        uintptr_t b, e;
        slice(p, b, e);
        sink ^= read(reinterpret_cast<const uint8_t*>(b), e - b);
      }
    });
    best = std::max(best, static_cast<double>(bytes) / (now() - t0) / 1e9);
  } while (now() < t_end);
  return best;
}

}  // namespace

double measure_read_gbs(ThreadPool& pool, size_t bytes, double seconds, const void* data) {
  if (data) return best_read_gbs(pool, static_cast<const uint8_t*>(data), bytes, seconds);
  // Three rounds, each with a fresh buffer (touched once first so page faults are not timed):
  // on virtual machines one allocation now and then reads an order of magnitude slower.
  const int parts = pool.size();
  double best = 0;
  for (int round = 0; round < 3; ++round) {
    std::unique_ptr<uint8_t[], decltype(&std::free)> buf(static_cast<uint8_t*>(std::aligned_alloc(64, bytes)), &std::free);
    pool.parallel_for(parts, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const size_t b = bytes * static_cast<size_t>(p) / static_cast<size_t>(parts);
        const size_t e = bytes * static_cast<size_t>(p + 1) / static_cast<size_t>(parts);
        for (size_t i = b; i < e; ++i) buf[i] = static_cast<uint8_t>(i * 131);  // not one repeated page
      }
    });
    best = std::max(best, best_read_gbs(pool, buf.get(), bytes, seconds / 3));
  }
  return best;
}

Roofline measure_peaks(ThreadPool& pool, int reps, double scale) {
  Roofline r;
  const Isa isa = active_isa();
  r.isa = isa_name(isa);
  const int parts = pool.size();
  // Peak multiply-add: every thread runs the loop; best of `reps`, flops / wall time.
  // Distinct chain seeds (the loops read them from memory, roofline.h).
  float seeds[16];
  for (int j = 0; j < 16; ++j) seeds[j] = 1.0f + 0.0625f * static_cast<float>(j);
  static_assert(roofline_detail::kFmaChains <= 16 && roofline_detail::kDotChains <= 16, "seeds");
  auto peak = [&](double (*loop)(long, const float*, float*), long full_iters) {
    const long iters = std::max(1000L, static_cast<long>(static_cast<double>(full_iters) * scale));
    double best_flops = 0;
    for (int rep = 0; rep < std::max(1, reps); ++rep) {
      std::atomic<double> flops{0};
      std::vector<float> out(static_cast<size_t>(parts) * 16);
      const double t0 = now();
      pool.parallel_for(parts, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const double f = loop(iters, seeds, &out[static_cast<size_t>(p) * 16]);
          flops = flops + f;
        }
      });
      best_flops = std::max(best_flops, flops / (now() - t0) / 1e9);
    }
    return best_flops;
  };
  r.fma_gflops = peak(isa == Isa::Avx512 ? roofline_detail::fma_loop_avx512
                      : isa == Isa::Avx2 ? roofline_detail::fma_loop_avx2
                                         : roofline_detail::fma_loop_scalar,
                      isa == Isa::Scalar ? 20'000'000 : 50'000'000);
  // (the AVX-512 path is only chosen on CPUs with AVX512_BF16, cpu_features)
  if (isa == Isa::Avx512) r.dot_gflops = peak(roofline_detail::dpbf16_loop_avx512, 30'000'000);
  if (isa == Isa::Avx512 && gemm_amx_active())
    r.amx_gflops = peak([](long iters, const float*, float* out) { return roofline_detail::tdpbf16_loop_amx(iters, out); },
                        2'000'000);
  return r;
}

Roofline measure_roofline(ThreadPool& pool, size_t bytes, double seconds, const void* data) {
  Roofline r = measure_peaks(pool);
  r.read_gbs = measure_read_gbs(pool, bytes, seconds, data);
  return r;
}

}  // namespace dsv4
