#include "kernels/exp.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu_features.h"

namespace dsv4 {

namespace exp_detail {

void exp_scalar(const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] = std::exp(x[i]);
}

namespace {

// Every 1009th float of [-104, 89] (past both ends expf is 0 or inf) through the path, against
// std::exp: 2.2 million values, every binade and table entry many times over (~6 ms a path; it
// runs once per process, so it is kept short: a C library with another algorithm differs on a
// large share of all values).
bool agrees(void (*path)(const float*, float*, int)) {
  constexpr uint32_t kStep = 1009;
  constexpr int kBatch = 4096;
  std::vector<float> x(kBatch), y(kBatch);
  auto run = [&](uint32_t lo, uint32_t hi) {  // float bits [lo, hi), one sign
    for (uint32_t u = lo; u < hi;) {
      int m = 0;
      for (; m < kBatch && u < hi; ++m, u += kStep) std::memcpy(&x[static_cast<size_t>(m)], &u, 4);
      path(x.data(), y.data(), m);
      for (int i = 0; i < m; ++i) {
        const float want = std::exp(x[static_cast<size_t>(i)]);
        if (std::memcmp(&want, &y[static_cast<size_t>(i)], 4) != 0) return false;
      }
    }
    return true;
  };
  return run(0x00000000u, 0x42b20000u) && run(0x80000000u, 0xc2d00000u);  // [0, 89), [-0, -104)
}

bool simd_agrees() {
  if (isa_supported(Isa::Avx512) && !agrees(exp_avx512)) return false;
  if (isa_supported(Isa::Avx2) && !agrees(exp_avx2)) return false;
  return true;
}

}  // namespace
}  // namespace exp_detail

bool exp_f32_simd_active() {
  static const bool ok = exp_detail::simd_agrees();
  return ok && active_isa() != Isa::Scalar;
}

void exp_f32(const float* x, float* y, int n) {
  if (n <= 0) return;
  if (!exp_f32_simd_active()) return exp_detail::exp_scalar(x, y, n);
  switch (active_isa()) {
    case Isa::Avx512: exp_detail::exp_avx512(x, y, n); break;
    case Isa::Avx2: exp_detail::exp_avx2(x, y, n); break;
    default: exp_detail::exp_scalar(x, y, n); break;
  }
}

}  // namespace dsv4
