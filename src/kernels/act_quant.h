// act_quant (spec §4.5, block 128) of whole activation rows for the FP8/FP4 GEMMs, on the fastest
// ISA path: every path returns act_quant_block's values, bit for bit (prefill quantises every
// GEMM input, a few percent of its time on the scalar loop).
#pragma once

namespace dsv4 {

// out[k] = q[k] * s[k / 128] for the codes q and power-of-two scales s that act_quant_block gives
// each 128-block of x[0, K) (the last block may be shorter): the dequantised values the GEMMs use.
void quantize_row_dequantized(const float* x, int K, float* out);

namespace act_quant_detail {
void quantize_row_dequantized_scalar(const float* x, int K, float* out);
void quantize_row_dequantized_avx512(const float* x, int K, float* out);
}  // namespace act_quant_detail

}  // namespace dsv4
