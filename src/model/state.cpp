#include "model/state.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/numerics.h"

namespace dsv4 {

void AttnRowStore::init(int nope, int rope) {
  nope_ = nope;
  rope_ = rope;
  row_bytes_ = static_cast<size_t>(nope) + static_cast<size_t>(nope / 64) + static_cast<size_t>(rope) * 2;
  rows_ = 0;
  data_.clear();
}

void AttnRowStore::set(int64_t row, const uint8_t* codes, const uint8_t* scales, const float* rope) {
  uint8_t* p = data_.data() + static_cast<size_t>(row) * row_bytes_;
  std::memcpy(p, codes, static_cast<size_t>(nope_));
  std::memcpy(p + nope_, scales, static_cast<size_t>(nope_ / 64));
  uint8_t* r = p + nope_ + nope_ / 64;
  for (int i = 0; i < rope_; ++i) {
    const uint16_t b = bf16_bits(rope[i]);
    std::memcpy(r + 2 * i, &b, 2);
  }
}

void AttnRowStore::append(const uint8_t* codes, const uint8_t* scales, const float* rope) {
  data_.resize(static_cast<size_t>(rows_ + 1) * row_bytes_);
  set(rows_++, codes, scales, rope);
}

void AttnRowStore::resize(int64_t rows) {
  data_.resize(static_cast<size_t>(rows) * row_bytes_);
  rows_ = rows;
}

void AttnRowStore::truncate(int64_t rows) {
  if (rows < rows_) resize(rows);
}

void AttnRowStore::set_raw(int64_t row, const uint8_t* bytes, int64_t n) {
  if (n > 0) std::memcpy(data_.data() + static_cast<size_t>(row) * row_bytes_, bytes, static_cast<size_t>(n) * row_bytes_);
}

void AttnRowStore::append_raw(const uint8_t* bytes, int64_t n) {
  if (n <= 0) return;
  data_.resize(static_cast<size_t>(rows_ + n) * row_bytes_);
  set_raw(rows_, bytes, n);
  rows_ += n;
}

void AttnRowStore::load(int64_t row, float* out) const {
  const uint8_t* p = data_.data() + static_cast<size_t>(row) * row_bytes_;
  const uint8_t* sc = p + nope_;
  for (int b = 0; b < nope_ / 64; ++b) {
    const float s = e8m0_to_f32(sc[b]);
    for (int i = b * 64; i < b * 64 + 64; ++i) out[i] = e4m3_to_f32(p[i]) * s;
  }
  const uint8_t* r = sc + nope_ / 64;
  for (int i = 0; i < rope_; ++i) {
    uint16_t b;
    std::memcpy(&b, r + 2 * i, 2);
    out[nope_ + i] = bf16_to_f32(b);
  }
}

void IndexKeyStore::init(int dim) {
  dim_ = dim;
  row_bytes_ = static_cast<size_t>(dim / 2 + dim / 32);
  rows_ = 0;
  data_.clear();
}

void IndexKeyStore::append(const uint8_t* packed, const uint8_t* scales) {
  data_.resize(static_cast<size_t>(rows_ + 1) * row_bytes_);
  uint8_t* p = data_.data() + static_cast<size_t>(rows_) * row_bytes_;
  std::memcpy(p, packed, static_cast<size_t>(dim_ / 2));
  std::memcpy(p + dim_ / 2, scales, static_cast<size_t>(dim_ / 32));
  ++rows_;
}

void IndexKeyStore::append_raw(const uint8_t* bytes, int64_t n) {
  if (n <= 0) return;
  data_.resize(static_cast<size_t>(rows_ + n) * row_bytes_);
  std::memcpy(data_.data() + static_cast<size_t>(rows_) * row_bytes_, bytes, static_cast<size_t>(n) * row_bytes_);
  rows_ += n;
}

void IndexKeyStore::truncate(int64_t rows) {
  if (rows < rows_) {
    rows_ = rows;
    data_.resize(static_cast<size_t>(rows) * row_bytes_);
  }
}

void IndexKeyStore::load(int64_t row, float* out) const {
  const uint8_t* p = data_.data() + static_cast<size_t>(row) * row_bytes_;
  const uint8_t* sc = p + dim_ / 2;
  for (int k = 0; k < dim_; ++k) {
    const uint8_t nib = (k % 2 == 0) ? (p[k / 2] & 15) : (p[k / 2] >> 4);
    out[k] = e2m1_to_f32(nib) * e8m0_to_f32(sc[k / 32]);
  }
}

void CompressorState::init(int r, int w) {
  ratio = r;
  width = w;
  const int slots = r == 4 ? 8 : r;
  kv.assign(static_cast<size_t>(slots) * w, 0.0f);
  score.assign(static_cast<size_t>(slots) * w, -std::numeric_limits<float>::infinity());
}

void CompressorState::reset() {
  std::fill(kv.begin(), kv.end(), 0.0f);
  std::fill(score.begin(), score.end(), -std::numeric_limits<float>::infinity());
}

void SequenceState::reset() {
  pos = 0;
  for (LayerState& l : layers) {
    l.compressed.truncate(0);
    l.index_keys.truncate(0);
    l.compressor.reset();
    l.index_compressor.reset();
  }
}

size_t SequenceState::bytes() const {
  size_t n = 0;
  for (const LayerState& l : layers)
    n += l.window.bytes() + l.compressed.bytes() + l.index_keys.bytes() +
         (l.compressor.kv.size() + l.compressor.score.size() + l.index_compressor.kv.size() +
          l.index_compressor.score.size()) * sizeof(float);
  return n;
}

size_t state_bytes_at(const ModelConfig& c, int64_t tokens, bool include_mtp) {
  const size_t attn_row = static_cast<size_t>(c.nope_dim() + c.nope_dim() / 64 + 2 * c.rope_dim);
  const size_t idx_row = static_cast<size_t>(c.index_head_dim / 2 + c.index_head_dim / 32);
  const int n = c.n_layers + (include_mtp ? c.n_mtp_layers : 0);
  size_t total = 0;
  for (int l = 0; l < n; ++l) {
    const int r = c.ratio(l);
    total += static_cast<size_t>(std::min<int64_t>(tokens, c.window)) * attn_row;
    if (r > 0) {
      total += static_cast<size_t>(tokens / r) * attn_row;
      const size_t cw = static_cast<size_t>((r == 4 ? 2 : 1) * c.head_dim);
      total += 2 * static_cast<size_t>(r == 4 ? 8 : r) * cw * sizeof(float);
    }
    if (r == 4) {
      total += static_cast<size_t>(tokens / 4) * idx_row;
      total += 2 * 8 * static_cast<size_t>(2 * c.index_head_dim) * sizeof(float);
    }
  }
  return total;
}

}  // namespace dsv4
