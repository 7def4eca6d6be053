// The attention core for one query token (spec §6.2): sparse attention with an attention sink,
// an online softmax over blocks of 64 row entries as the reference kernel.
#pragma once
#include <cstddef>

namespace dsv4 {

// Heads [h0, h1) of one token. q: its queries, head h at q + h * Dh; rows: the attended KV rows
// in order, nullptr where a position is absent (a block still spans 64 entries); sink[h]: the
// head's sink logit. Per head and block: scores dot_f32(q, row) * scale, the running max m,
// p = exp(score - m) added to den and then rounded to bf16, acc rescaled by exp(m_old - m) and
// the rows added as p-weighted axpys in order. Output head h at o + h * Dh:
// bf16(acc / (den + exp(sink[h] - m))). All heads of a call share each row from cache.
void sparse_attention_heads(const float* q, int h0, int h1, int Dh, const float* const* rows, size_t nrows,
                            float scale, const float* sink, float* o);

}  // namespace dsv4
