#include "kernels/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/dot.h"
#include "kernels/exp.h"
#include "kernels/numerics.h"

namespace dsv4 {

namespace {
// max over li of z[li] * scale (-inf for none), in eight independent chains: one chain waited on
// each max's latency, and held a third of this function's time. The maximum does not depend on
// the order (a ±0 tie can only change the sign of a zero subtracted before exp, which gives 1
// either way), so the result is the one chain's.
float block_max(const float* z, int n, float scale) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float m[8] = {kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf, kNegInf};
  int li = 0;
  for (; li + 8 <= n; li += 8)
    for (int j = 0; j < 8; ++j) m[j] = std::max(m[j], z[li + j] * scale);
  for (; li < n; ++li) m[0] = std::max(m[0], z[li] * scale);
  for (int j = 1; j < 8; ++j) m[0] = std::max(m[0], m[j]);
  return m[0];
}
}  // namespace

void sparse_attention_heads(const float* q, int h0, int h1, int Dh, const float* const* rows, size_t nrows,
                            float scale, const float* sink, float* o) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const size_t nh = static_cast<size_t>(h1 - h0), dh = static_cast<size_t>(Dh);
  // (per thread and only grown: a prefill chunk calls this once per token and thread)
  thread_local std::vector<float> acc, z, pb, m, den;
  thread_local std::vector<const float*> live, qh, took_pb;
  thread_local std::vector<float*> zh, took_acc;
  acc.assign(nh * dh, 0.0f);
  z.resize(nh * 64);
  pb.resize(nh * 64);
  m.assign(nh, kNegInf);
  den.assign(nh, 0.0f);
  live.resize(64);
  qh.resize(nh);
  took_pb.resize(nh);
  zh.resize(nh);
  took_acc.resize(nh);
  for (size_t i = 0; i < nh; ++i) {
    qh[i] = q + (static_cast<size_t>(h0) + i) * dh;
    zh[i] = z.data() + i * 64;
  }
  for (size_t b0 = 0; b0 < nrows; b0 += 64) {
    const size_t b1 = std::min(nrows, b0 + 64);
    int nlive = 0;  // the block's present rows, in order
    for (size_t e = b0; e < b1; ++e)
      if (rows[e]) live[static_cast<size_t>(nlive++)] = rows[e];
    // All heads at once: each row is read from cache once per group of heads
    // (dot_f32_rows_multi, axpy_f32_rows_multi); each head's operations and their order are
    // those of one head alone.
    dot_f32_rows_multi(qh.data(), static_cast<int>(nh), live.data(), nlive, Dh, zh.data());
    int ntook = 0;  // the heads that take this block's values
    for (size_t i = 0; i < nh; ++i) {
      const float* zi = zh[i];
      float* ah = &acc[i * dh];
      const float bm = block_max(zi, nlive, scale);
      if (bm == kNegInf) continue;
      const float m_new = std::max(m[i], bm);
      const float alpha = m[i] == kNegInf ? 0.0f : std::exp(m[i] - m_new);
      if (alpha != 1.0f) {  // (m unchanged: alpha is exactly 1 and scaling would change nothing)
        den[i] *= alpha;
        for (size_t k = 0; k < dh; ++k) ah[k] *= alpha;
      }
      float* pi = pb.data() + i * 64;
      for (int li = 0; li < nlive; ++li) pi[li] = zi[li] * scale - m_new;
      exp_f32(pi, pi, nlive);
      float sum = den[i];  // (a local: through den[i] every add waited on a store and a load)
      for (int li = 0; li < nlive; ++li) {
        sum += pi[li];
        pi[li] = bf16_round(pi[li]);
      }
      den[i] = sum;
      m[i] = m_new;
      took_pb[static_cast<size_t>(ntook)] = pi;
      took_acc[static_cast<size_t>(ntook++)] = ah;
    }
    // The block's rows in order, as nlive axpys per head.
    axpy_f32_rows_multi(took_pb.data(), ntook, live.data(), nlive, took_acc.data(), Dh);
  }
  for (size_t i = 0; i < nh; ++i) {
    const size_t h = static_cast<size_t>(h0) + i;
    const float d = den[i] + std::exp(sink[h] - m[i]);
    float* oh = o + h * dh;
    for (size_t k = 0; k < dh; ++k) oh[k] = bf16_round(acc[i * dh + k] / d);
  }
}

}  // namespace dsv4
