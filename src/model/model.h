// The DeepSeek-V4 forward pass on CPU (spec model.md §3-§10): main stack, LM head and MTP.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "core/stage_profile.h"
#include "core/thread_pool.h"
#include "model/config.h"
#include "model/state.h"
#include "model/weights.h"

namespace dsv4 {

// Tokens per forward call when a long prompt is prefilled (engine, chat, generate, bench). The
// routed experts see a chunk's tokens at once, and a product's cost per row falls with its rows:
// V4-Flash routes 6 of 256 experts, so a 512-token chunk gives an expert ~12 rows and a 2048-token
// one ~48 (docs/performance.md, "Prefill chunk"). Attention takes the chunk in pieces, so memory
// grows only by the per-token streams and MoE rows (~200 KiB a token at V4-Flash widths,
// measured by peak RSS).
constexpr int kPrefillChunkTokens = 2048;

// Called after each block of a forward call with the blocks done so far; false stops the call.
using LayerCallback = std::function<bool(int layers_done)>;

// Optional per-block capture of intermediate tensors (for golden per-block checks and debugging).
struct BlockProbe {
  std::vector<float> attn_in, attn_out, ffn_in, ffn_out;  // [n, D]
  std::vector<int32_t> expert_ids;                         // [n, K]
  std::vector<float> expert_weights;                       // [n, K]
  std::vector<int32_t> indexer_topk;                       // [n, index_topk], -1 padded (CSA only)
};

// RoPE frequencies of one regime (spec §4.10).
struct RopeTable {
  std::vector<float> freq;  // rope_dim / 2
  void init(int rope_dim, double base, bool yarn, double factor, int64_t original_seq_len, double beta_fast,
            double beta_slow);
  void angles(int64_t pos, float* cos_out, float* sin_out) const;
};

class Model {
 public:
  // Loads config.json + safetensors from `dir` (memory-mapped, validated).
  Model(const std::string& dir, int threads = 0);
  ~Model();

  const ModelConfig& config() const { return cfg_; }
  const ModelWeights& weights() const { return w_; }
  const TensorStore& store() const { return store_; }
  // Maps all weight pages now when they fit in memory (see model.cpp), printing progress to
  // stderr when `verbose`; returns whether it did. Env DSV4_PREFAULT=0/1 overrides the choice.
  bool prefault_weights(bool verbose);
  ThreadPool& pool() { return *pool_; }

  SequenceState new_state() const;      // main stack state
  SequenceState new_mtp_state() const;  // state of the MTP block

  // Runs n tokens at positions st.pos .. st.pos+n-1 through the main stack (any chunking of a
  // sequence gives the same semantics). Writes last-position logits [V] when `logits` is set and
  // the final residual streams [n, hc, D] when `final_streams` is set. `on_layer`, when set, is
  // called after each block; if it returns false the call stops there, puts the state back as it
  // was before the call and returns false (a long prefill chunk stays cancellable).
  bool forward(SequenceState& st, const int32_t* tokens, int n, float* logits,
               std::vector<float>* final_streams = nullptr, const LayerCallback& on_layer = {});

  // One decode step of several sequences at once (continuous batching): tokens[i] is the next
  // token of *states[i] (distinct states). The weight products take all the tokens as rows of one
  // product, so each weight byte is read once per step (a routed expert once for every token
  // routed to it), while attention runs per sequence over its own state. Each sequence's logits
  // (rows of `logits` [B, V]) and state equal, bit for bit, those of forward(*states[i],
  // &tokens[i], 1, ...): every product and sum keeps its order whatever the other rows are.
  void decode_batch(std::span<SequenceState* const> states, const int32_t* tokens, float* logits);

  // The MTP module: h_main [n, hc, D] final streams of the main model at positions
  // st.pos.., tokens[i] = the token following position i. Writes last-position logits.
  void mtp_forward(SequenceState& st, const float* h_main, const int32_t* tokens, int n, float* logits,
                   std::vector<float>* final_streams = nullptr);

  // One block (main layer index, or n_layers + i for MTP block i) on residual streams h [n, hc, D],
  // updating h in place and the block's state `ls` at positions start..start+n-1.
  void run_block(const BlockWeights& bw, LayerState& ls, float* h, const int32_t* tokens, int n, int64_t start,
                 BlockProbe* probe = nullptr);

  // HC_HEAD + final norm + LM head for one position's streams [hc, D]; logits [V].
  void head(const float* streams, const HcWeights& hc_head, const std::vector<float>& norm, float* logits,
            float* normed_out = nullptr);

  // Weight bytes read to decode one token (attention + K routed + shared experts + head), in all
  // and split by the forward-pass stage that reads them (`dsv4 bench --profile`).
  size_t bytes_per_token() const;
  StageBytes bytes_per_token_by_stage() const;
  // Multiply-adds of the weight products of one prefill token (the same weights, but no head:
  // prefill computes logits for the last position only). The attention over the context is not
  // counted, so MACs / time is a lower bound of the GEMMs' own rate.
  double prefill_macs_per_token() const;
  StageBytes prefill_macs_by_stage() const;  // the same, split by stage (`dsv4 bench --profile`)

  // The two sub-blocks on their normalised inputs x [n, D] (exposed for teacher-forced checks).
  void attention(const BlockWeights& bw, LayerState& ls, const float* x, int n, int64_t start, float* out,
                 BlockProbe* probe);
  void moe(const MoeWeights& mw, int layer_id, const float* x, const int32_t* tokens, int n, float* out,
           BlockProbe* probe);

 private:
  // Rows [t0, t0 + n) of a call's tokens belong to one sequence, at positions start.. of its
  // layer state `ls` (the rows of one call: consecutive segments, distinct states).
  struct Segment {
    LayerState* ls;
    int64_t start;
    int t0, n;
  };
  void run_block_segments(const BlockWeights& bw, std::span<const Segment> segs, float* h, const int32_t* tokens, int n,
                          BlockProbe* probe);
  void attention_segments(const BlockWeights& bw, std::span<const Segment> segs, const float* x, int n, float* out,
                          BlockProbe* probe);
  // HC_HEAD + final norm of each of `rows` positions' streams [rows][hc, D], then the LM head
  // over all of them at once: logits [rows, V].
  void head_rows(const float* streams, int rows, const HcWeights& hc_head, const std::vector<float>& norm, float* logits,
                 float* normed_out = nullptr);
  void embed(const int32_t* tokens, int n, float* h);
  template <class Cost>
  StageBytes weights_per_token(const Cost& cost) const;  // the layers' part of both measures above
  // A compressor over the rows of a call (the indexer's or the attention's, in each segment's
  // state): the projections once for all rows, then each segment's blocks in its own state.
  void compress(const CompressorWeights& cw, std::span<const Segment> segs, const float* x, int n, bool indexer);
  const RopeTable& rope_for(int layer_id) const;

  ModelConfig cfg_;
  TensorStore store_;
  ModelWeights w_;
  std::unique_ptr<ThreadPool> pool_;
  RopeTable rope_swa_, rope_compressed_;
  // Attention's large per-chunk buffers (queries and outputs are [n, heads, 512]: 64 MiB each
  // for a 512-token attention piece of V4-Flash), kept between calls so that a chunk does not pay for
  // fresh zeroed pages; every element is written before it is read. Calls are not concurrent.
  // Growth leaves them uninitialised: the first writes, in parallel GEMMs and loops, then fault
  // the fresh pages in on every thread instead of a serial zero fill on the caller's.
  template <class T>
  struct ScratchOf {
    std::unique_ptr<T[]> data;
    size_t size = 0;
    T* grown(size_t n) {
      if (size < n) {
        data.reset(new T[n]);
        size = n;
      }
      return data.get();
    }
  };
  using ScratchBuffer = ScratchOf<float>;
  // The smaller ones too: kv rows, window rows, the compressors' projections, the indexer's queries (64 MiB at 2048 tokens,
  // past glibc's largest mmap threshold, so as a local every indexer layer mapped, faulted and
  // zero-filled it afresh), their codes and the top-k lists.
  struct AttentionScratch {
    ScratchBuffer qr, q, o, u, kv, win, comp_rows, qi, wts, comp_a, comp_z;
    ScratchOf<uint8_t> kv_codes, kv_scales, qcodes, qscales;
    ScratchOf<int32_t> topk;
  } scratch_;
  // The MoE's routed-row buffers (up to kExpertBatchRows rows of x, gate, up, hidden and output;
  // 56 MB at V4-Flash widths), and the shared expert's. As locals they cost ~0.4 ms of page
  // faults and zero fills per prefill token on the Xeon VM (the heap handed them back between
  // layers).
  struct MoeScratch {
    ScratchBuffer xe, g, up, hdn, oe, y;
  } moe_scratch_;
  // A block's hyper-connection site inputs and outputs ([n, dim]: 32 MiB each for a 2048-token
  // chunk of V4-Flash, at glibc's mmap threshold, so as locals every layer took fresh pages).
  struct BlockScratch {
    ScratchBuffer a, f;
  } block_scratch_;
  // forward()'s residual streams ([n, hc, dim]: 128 MiB for a 2048-token chunk of V4-Flash; as a
  // local every chunk mapped, faulted and zero-filled them afresh, ~6 % of a prefill's samples).
  ScratchBuffer streams_;
};

}  // namespace dsv4
