// HC_PRE's reductions (spec §5.1): for a token's hc streams x [HD = hc * D], the sum of squares
// ss = sum_i x[i]^2 and the mix rows mix[j] = sum_i fn[j][i] * x[i]. Each is a plain sequential
// fp32 sum (multiply, round, add, round) over i, the order of the one-token code, so every path
// and every batch size gives the same bits. The SIMD paths put tokens in the vector lanes: each
// lane is still one serial chain, gathered across the tokens' rows.
#pragma once

namespace dsv4 {

// mix[j] for j < rows, one token (decode, the head): rows at once, each its own chain.
void hc_mix_rows(const float* fn, int rows, int HD, const float* x, float* mix);
// Sum of squares of one token's streams.
float hc_sum_squares(const float* x, int HD);
// Both for `tokens` tokens x [tokens][HD]: ss[t] and mix[t * rows + j]. ss may be null.
void hc_mix_tokens(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix);

namespace hc_mix_detail {
void tokens_scalar(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix);
void tokens_avx2(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix);
void tokens_avx512(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix);
}  // namespace hc_mix_detail

}  // namespace dsv4
