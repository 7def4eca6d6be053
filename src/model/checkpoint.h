// Snapshots of a SequenceState at a position, for prefix reuse across requests
// (docs/prefix-cache.md). Compressed attention rows and indexer keys are append-only and a row
// never changes once written, so a snapshot records only their counts; what is rewritten as the
// sequence advances (the window ring and the compressors' partial blocks) is copied. A snapshot
// therefore restores onto the state it was taken from, or onto any state holding the same rows
// (one grown from the same tokens), and is immutable and shareable once taken.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/state.h"

namespace dsv4 {

struct StateCheckpoint {
  struct Layer {
    int64_t compressed_rows = 0, index_rows = 0;
    std::vector<uint8_t> window;        // ring slots [0, min(pos, W)), raw rows
    std::vector<float> kv, score;       // live slots of the attention compressor's partial blocks
    std::vector<float> index_kv, index_score;  // same for the indexer compressor
  };
  int64_t pos = 0;
  std::vector<Layer> layers;
  size_t bytes() const;
};

StateCheckpoint take_checkpoint(const SequenceState& st);

// Rewinds `st` to `cp`: st must have been grown from the same tokens up to at least cp.pos.
// Rows appended after cp.pos are dropped. Throws dsv4::Error when the shapes cannot match.
void restore_checkpoint(SequenceState& st, const StateCheckpoint& cp);

// Makes `dst` (any state of the same model; its contents are discarded) hold `src`'s first cp.pos
// positions: the shared rows are copied, then cp is applied. `src` is not modified.
void fork_state(const SequenceState& src, const StateCheckpoint& cp, SequenceState& dst);

// Size of a checkpoint at position `pos` (without MTP state), for capacity planning.
size_t checkpoint_bytes_at(const ModelConfig& cfg, int64_t pos);

}  // namespace dsv4
