#include "model/checkpoint.h"

#include <algorithm>
#include <string>

#include "core/error.h"

namespace dsv4 {

namespace {

// Slots of a compressor's partial state that later tokens can still read. Overlapping (ratio 4)
// compressors keep the previous block in slots 0..3, so all 8 slots matter. Otherwise only the
// current block's slots written so far do: the rest are rewritten before the block is pooled.
size_t live_slots(const CompressorState& cs, int64_t pos) {
  if (cs.width == 0 || cs.ratio == 0) return 0;
  const size_t slots = cs.kv.size() / static_cast<size_t>(cs.width);
  if (cs.ratio == 4 && slots == 8) return 8;
  return static_cast<size_t>(pos % cs.ratio);
}

void save_partial(const CompressorState& cs, int64_t pos, std::vector<float>& kv, std::vector<float>& score) {
  const size_t n = live_slots(cs, pos) * static_cast<size_t>(cs.width);
  kv.assign(cs.kv.begin(), cs.kv.begin() + static_cast<ptrdiff_t>(n));
  score.assign(cs.score.begin(), cs.score.begin() + static_cast<ptrdiff_t>(n));
}

void load_partial(CompressorState& cs, const std::vector<float>& kv, const std::vector<float>& score) {
  if (kv.size() > cs.kv.size() || score.size() != kv.size()) throw Error("checkpoint: compressor state does not match the model");
  std::copy(kv.begin(), kv.end(), cs.kv.begin());
  std::copy(score.begin(), score.end(), cs.score.begin());
}

void apply_small_parts(SequenceState& st, const StateCheckpoint& cp) {
  for (size_t l = 0; l < cp.layers.size(); ++l) {
    const StateCheckpoint::Layer& c = cp.layers[l];
    LayerState& ls = st.layers[l];
    const size_t rb = ls.window.row_bytes();
    if (rb == 0 || c.window.size() % rb != 0 || static_cast<int64_t>(c.window.size() / rb) > ls.window.rows())
      throw Error("checkpoint: window ring does not match the model");
    ls.window.set_raw(0, c.window.data(), static_cast<int64_t>(c.window.size() / rb));
    load_partial(ls.compressor, c.kv, c.score);
    load_partial(ls.index_compressor, c.index_kv, c.index_score);
  }
  st.pos = cp.pos;
}

}  // namespace

size_t StateCheckpoint::bytes() const {
  size_t n = sizeof(*this);
  for (const Layer& l : layers)
    n += sizeof(Layer) + l.window.capacity() +
         (l.kv.capacity() + l.score.capacity() + l.index_kv.capacity() + l.index_score.capacity()) * sizeof(float);
  return n;
}

StateCheckpoint take_checkpoint(const SequenceState& st) {
  StateCheckpoint cp;
  cp.pos = st.pos;
  cp.layers.resize(st.layers.size());
  for (size_t l = 0; l < st.layers.size(); ++l) {
    const LayerState& ls = st.layers[l];
    StateCheckpoint::Layer& c = cp.layers[l];
    c.compressed_rows = ls.compressed.rows();
    c.index_rows = ls.index_keys.rows();
    // Before the ring wraps, slot p holds position p; later every slot is live.
    const int64_t nwin = std::min(st.pos, ls.window.rows());
    if (nwin > 0) c.window.assign(ls.window.row_data(0), ls.window.row_data(0) + nwin * ls.window.row_bytes());
    save_partial(ls.compressor, st.pos, c.kv, c.score);
    save_partial(ls.index_compressor, st.pos, c.index_kv, c.index_score);
  }
  return cp;
}

void restore_checkpoint(SequenceState& st, const StateCheckpoint& cp) {
  if (st.layers.size() != cp.layers.size()) throw Error("checkpoint: layer count does not match the state");
  if (st.pos < cp.pos)
    throw Error("checkpoint at position " + std::to_string(cp.pos) + " is ahead of the state (" + std::to_string(st.pos) + ")");
  for (size_t l = 0; l < cp.layers.size(); ++l) {
    const StateCheckpoint::Layer& c = cp.layers[l];
    LayerState& ls = st.layers[l];
    if (ls.compressed.rows() < c.compressed_rows || ls.index_keys.rows() < c.index_rows)
      throw Error("checkpoint: the state has fewer compressed rows than the checkpoint");
    ls.compressed.truncate(c.compressed_rows);
    ls.index_keys.truncate(c.index_rows);
  }
  apply_small_parts(st, cp);
}

void fork_state(const SequenceState& src, const StateCheckpoint& cp, SequenceState& dst) {
  if (src.layers.size() != cp.layers.size() || dst.layers.size() != cp.layers.size())
    throw Error("checkpoint: layer count does not match the state");
  if (src.pos < cp.pos) throw Error("fork: the source state is behind the checkpoint");
  for (size_t l = 0; l < cp.layers.size(); ++l) {
    const StateCheckpoint::Layer& c = cp.layers[l];
    const LayerState& s = src.layers[l];
    LayerState& d = dst.layers[l];
    if (s.compressed.rows() < c.compressed_rows || s.index_keys.rows() < c.index_rows)
      throw Error("checkpoint: the source state has fewer compressed rows than the checkpoint");
    if (d.compressed.row_bytes() != s.compressed.row_bytes() || d.index_keys.row_bytes() != s.index_keys.row_bytes())
      throw Error("fork: states belong to different models");
    d.compressed.truncate(0);
    d.index_keys.truncate(0);
    if (c.compressed_rows > 0) d.compressed.append_raw(s.compressed.row_data(0), c.compressed_rows);
    if (c.index_rows > 0) d.index_keys.append_raw(s.index_keys.row_data(0), c.index_rows);
    // Slots the checkpoint does not carry are rewritten before they are read; start them clean.
    d.compressor.reset();
    d.index_compressor.reset();
  }
  apply_small_parts(dst, cp);
}

size_t checkpoint_bytes_at(const ModelConfig& c, int64_t pos) {
  const size_t attn_row = static_cast<size_t>(c.nope_dim() + c.nope_dim() / 64 + 2 * c.rope_dim);
  size_t total = 0;
  for (int l = 0; l < c.n_layers; ++l) {
    const int r = c.ratio(l);
    total += static_cast<size_t>(std::min<int64_t>(pos, c.window)) * attn_row;
    if (r == 4) {
      total += 2 * 8 * static_cast<size_t>(2 * c.head_dim) * sizeof(float);        // attention compressor
      total += 2 * 8 * static_cast<size_t>(2 * c.index_head_dim) * sizeof(float);  // indexer compressor
    } else if (r > 0) {
      total += 2 * static_cast<size_t>(pos % r) * static_cast<size_t>(c.head_dim) * sizeof(float);
    }
  }
  return total;
}

}  // namespace dsv4
