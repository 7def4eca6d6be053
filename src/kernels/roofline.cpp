#include "kernels/roofline.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/cpu_features.h"
#include "kernels/dot.h"

namespace dsv4 {

namespace roofline_detail {
double fma_loop_scalar(long iters, float* sink) {
  float a[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  const float m = 0.999999f, c = 1e-7f;
  for (long i = 0; i < iters; ++i)
    for (float& v : a) v = v * m + c;
  float s = 0;
  for (float v : a) s += v;
  *sink = s;
  return 2.0 * 8 * static_cast<double>(iters);
}
}  // namespace roofline_detail

namespace {
double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

Roofline measure_roofline(ThreadPool& pool, size_t bytes, double seconds) {
  Roofline r;
  const Isa isa = active_isa();
  r.isa = isa_name(isa);
  // Read bandwidth: each thread sums its own contiguous slice (touched once first so page
  // faults are not timed); repeat until `seconds` have passed, keep the best pass. Three rounds,
  // each with a fresh buffer: on virtual machines one allocation now and then reads an order of
  // magnitude slower for its whole life, which would make every ratio against it meaningless.
  const size_t n = bytes / sizeof(float);
  const int parts = pool.size();
  std::vector<float> ones(4096, 1.0f);
  std::atomic<double> total{0};
  double best = 0;
  for (int round = 0; round < 3; ++round) {
    std::unique_ptr<float[], decltype(&std::free)> buf(static_cast<float*>(std::aligned_alloc(64, n * sizeof(float))),
                                                      &std::free);
    pool.parallel_for(parts, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const size_t b = n * static_cast<size_t>(p) / static_cast<size_t>(parts), e = n * static_cast<size_t>(p + 1) / static_cast<size_t>(parts);
        for (size_t i = b; i < e; ++i) buf[i] = static_cast<float>(i & 1023);  // not one repeated page
      }
    });
    const double t_end = now() + seconds / 3;
    do {
      const double t0 = now();
      pool.parallel_for(parts, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const size_t b = n * static_cast<size_t>(p) / static_cast<size_t>(parts), e = n * static_cast<size_t>(p + 1) / static_cast<size_t>(parts);
          float s = 0;
          for (size_t i = b; i < e; i += 4096) s += dot_f32(buf.get() + i, ones.data(), static_cast<int>(std::min<size_t>(4096, e - i)));
          total = total + s;
        }
      });
      best = std::max(best, static_cast<double>(n * sizeof(float)) / (now() - t0) / 1e9);
    } while (now() < t_end);
  }
  r.read_gbs = best;

  // Peak multiply-add: every thread runs the ISA's FMA loop; flops / wall time.
  auto loop = isa == Isa::Avx512 ? roofline_detail::fma_loop_avx512
              : isa == Isa::Avx2 ? roofline_detail::fma_loop_avx2
                                 : roofline_detail::fma_loop_scalar;
  const long iters = isa == Isa::Scalar ? 20'000'000 : 50'000'000;
  double best_flops = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::atomic<double> flops{0};
    std::vector<float> sink(static_cast<size_t>(parts));
    const double t0 = now();
    pool.parallel_for(parts, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const double f = loop(iters, &sink[static_cast<size_t>(p)]);
        flops = flops + f;
      }
    });
    best_flops = std::max(best_flops, flops / (now() - t0) / 1e9);
  }
  r.fma_gflops = best_flops;
  return r;
}

}  // namespace dsv4
