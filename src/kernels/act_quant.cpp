#include "kernels/act_quant.h"

#include <algorithm>

#include "kernels/cpu_features.h"
#include "kernels/numerics.h"

namespace dsv4 {

namespace act_quant_detail {

void quantize_row_dequantized_scalar(const float* x, int K, float* out) {
  for (int k0 = 0; k0 < K; k0 += 128) {
    const int len = std::min(128, K - k0);
    const float s = act_quant_block(x + k0, len, out + k0);
    for (int i = 0; i < len; ++i) out[k0 + i] *= s;
  }
}

}  // namespace act_quant_detail

void quantize_row_dequantized(const float* x, int K, float* out) {
  // (AVX2 has no path of its own: the scalar loop vectorises well enough at 8 lanes there.)
  if (active_isa() == Isa::Avx512)
    act_quant_detail::quantize_row_dequantized_avx512(x, K, out);
  else
    act_quant_detail::quantize_row_dequantized_scalar(x, K, out);
}

}  // namespace dsv4
