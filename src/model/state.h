// Per-sequence decode state (spec model.md §7), stored in the precision the reference already
// rounds to: FP8 codes + ue8m0 scales for the non-RoPE dims of attention rows, bf16 RoPE dims,
// packed FP4 + scales for indexer keys. Lossless with respect to the simulated values.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"

namespace dsv4 {

// Rows of [nope | rope] attention vectors: nope dims as e4m3 codes with one scale per 64,
// rope dims as bf16.
class AttnRowStore {
 public:
  void init(int nope, int rope);
  int64_t rows() const { return rows_; }
  size_t row_bytes() const { return row_bytes_; }
  // codes/scales from act_quant_simulate_codes over the nope dims; rope values are bf16-exact.
  void append(const uint8_t* codes, const uint8_t* scales, const float* rope);
  void set(int64_t row, const uint8_t* codes, const uint8_t* scales, const float* rope);  // row < rows()
  void resize(int64_t rows);
  void load(int64_t row, float* out) const;  // nope + rope floats
  void truncate(int64_t rows);
  size_t bytes() const { return data_.capacity(); }
  // Raw row bytes (row_bytes() each), for state snapshots (model/checkpoint.h).
  const uint8_t* row_data(int64_t row) const { return data_.data() + static_cast<size_t>(row) * row_bytes_; }
  void set_raw(int64_t row, const uint8_t* bytes, int64_t n);  // overwrites rows [row, row+n) < rows()
  void append_raw(const uint8_t* bytes, int64_t n);

 private:
  int nope_ = 0, rope_ = 0;
  size_t row_bytes_ = 0;
  int64_t rows_ = 0;
  std::vector<uint8_t> data_;
};

// Indexer keys: 128 dims as packed e2m1 nibbles with one scale per 32.
class IndexKeyStore {
 public:
  void init(int dim);
  int64_t rows() const { return rows_; }
  void append(const uint8_t* packed, const uint8_t* scales);
  void load(int64_t row, float* out) const;
  void truncate(int64_t rows);
  size_t bytes() const { return data_.capacity(); }
  size_t row_bytes() const { return row_bytes_; }
  const uint8_t* row_data(int64_t row) const { return data_.data() + static_cast<size_t>(row) * row_bytes_; }
  void append_raw(const uint8_t* bytes, int64_t n);

 private:
  int dim_ = 0;
  size_t row_bytes_ = 0;
  int64_t rows_ = 0;
  std::vector<uint8_t> data_;
};

// Partial-block state of a compressor: kv candidates and gate scores (with ape) of the
// current block, and for the overlapping (ratio 4) compressor also the previous block.
struct CompressorState {
  int ratio = 0, width = 0;  // width = c * Dc
  std::vector<float> kv, score;  // [slots][width]; overlap: slots 0..3 previous, 4..7 current
  void init(int ratio, int width);
  void reset();
};

struct LayerState {
  AttnRowStore window;      // ring: position p in slot p % window
  AttnRowStore compressed;  // row j summarises positions [j*r, (j+1)*r)
  CompressorState compressor;
  IndexKeyStore index_keys;
  CompressorState index_compressor;
};

struct SequenceState {
  int64_t pos = 0;  // number of tokens already consumed
  std::vector<LayerState> layers;
  void reset();
  size_t bytes() const;
};

// Bytes of per-sequence state at a context length (for `inspect` and capacity planning).
size_t state_bytes_at(const ModelConfig& cfg, int64_t tokens, bool include_mtp = true);

}  // namespace dsv4
