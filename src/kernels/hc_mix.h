// HC_PRE's reductions (spec §5.1) and HC_POST's update (§5.2): for a token's hc streams x [HD = hc * D], the sum of squares
// ss = sum_i x[i]^2 and the mix rows mix[j] = sum_i fn[j][i] * x[i]. Each is a plain sequential
// fp32 sum (multiply, round, add, round) over i, the order of the one-token code, so every path
// and every batch size gives the same bits. The SIMD paths put tokens in the vector lanes: each
// lane is still one serial chain, gathered across the tokens' rows.
#pragma once

namespace dsv4 {

// One token's sums as n independent chains (decode, the head): out[c] = sum_i src[c][i] * x[i],
// each the plain sequential chain above, so it equals hc_mix_rows (src[c] a row of fn) or
// hc_sum_squares (src[c] = x) bit for bit. n <= kHcMaxChains. The SIMD paths put the chains in
// the vector lanes (a block of each source transposed in registers): a chain is latency-bound,
// so the one-chain-per-register scalar form left the weight stream at a fraction of the read.
constexpr int kHcMaxChains = 16;
void hc_mix_chains(const float* const* src, int n, int HD, const float* x, float* out);
// HC_PRE's sums of one token x [HD] numbered as chains: chain 0 the sum of squares (into *ss),
// chain 1 + j the mix row fn[j] (into mix[j]); chains [c0, c1) through hc_mix_chains, any count.
// (A decode step spreads a token's chains over the pool in ranges.)
void hc_token_sums(const float* fn, int HD, const float* x, int c0, int c1, float* ss, float* mix);
// mix[j] for j < rows, one token, the scalar chains (the reference the other forms equal).
void hc_mix_rows(const float* fn, int rows, int HD, const float* x, float* mix);
// Sum of squares of one token's streams.
float hc_sum_squares(const float* x, int HD);
// Both for `tokens` tokens x [tokens][HD]: ss[t] and mix[t * rows + j]. ss may be null.
void hc_mix_tokens(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix);

// HC_POST (spec §5.2) for one token's hc streams h [hc][D] (hc <= 16), elements [d0, d1):
// h[k][d] = bf16(post[k] * f[d] + sum_j comb[j * hc + k] * h[j][d]), every new value from the
// old streams. The sum starts at +0 and takes j in order; each step and the final one is a
// multiply, round, add, round (never fused), so every path gives the same bits.
void hc_post(const float* f, const float* post, const float* comb, float* h, int hc, int D, int d0, int d1);

// HC_PRE's comb (spec §5.1): C [hc][hc] (row j, column k) holds the logits and becomes the
// Sinkhorn-normalised mixing matrix: per row a softmax (max subtracted, exp, sum in order,
// divided) plus eps; then the columns, then (iters - 1) times the rows and the columns, each
// divided by (its sum in order + eps).
void hc_sinkhorn(float* C, int hc, int iters, float eps);

namespace hc_mix_detail {
void post_scalar(const float* f, const float* post, const float* comb, float* h, int hc, int D, int d0, int d1);
void post_avx2(const float* f, const float* post, const float* comb, float* h, int hc, int D, int d0, int d1);
void post_avx512(const float* f, const float* post, const float* comb, float* h, int hc, int D, int d0, int d1);
void chains_scalar(const float* const* src, int n, int HD, const float* x, float* out);
void chains_avx2(const float* const* src, int n, int HD, const float* x, float* out);
void chains_avx512(const float* const* src, int n, int HD, const float* x, float* out);
void tokens_scalar(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix);
void tokens_avx2(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix);
void tokens_avx512(const float* fn, int rows, int HD, const float* x, int tokens, float* ss, float* mix);
}  // namespace hc_mix_detail

}  // namespace dsv4
