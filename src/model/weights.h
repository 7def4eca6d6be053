// Typed, validated views of a DeepSeek-V4 checkpoint's tensors (spec model.md §11).
// Large matrices point into the memory map; only small vectors (norm weights, tid2eid) are widened.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "model/config.h"

namespace dsv4 {

// FP8 e4m3 [n, k] with ue8m0 block scales [ceil(n/128), ceil(k/128)].
struct Fp8Weight {
  const uint8_t* w = nullptr;
  const uint8_t* scale = nullptr;
  int n = 0, k = 0;
  int scale_cols() const { return (k + 127) / 128; }
};
// Packed FP4 e2m1 [n, k/2] (low nibble = even k) with ue8m0 scales [n, k/32].
struct Fp4Weight {
  const uint8_t* w = nullptr;
  const uint8_t* scale = nullptr;
  int n = 0, k = 0;
};
// BF16 [n, k].
struct Bf16Weight {
  const uint16_t* w = nullptr;
  int n = 0, k = 0;
  // Every weight is zero or a finite bf16 with |w| >= 2^-56 (bf16_dp_exact, set at load): the
  // VDPBF16PS path is then exact (gemm.h); false keeps the GEMM on the FMA path.
  bool dp_exact = false;
};

struct HcWeights {
  const float* fn = nullptr;     // [mix, hc*D]
  const float* base = nullptr;   // [mix]
  const float* scale = nullptr;  // [3] (HC sites) or [1] (head)
  int mix = 0;
};

struct CompressorWeights {
  Bf16Weight wkv, wgate;  // [c*Dc, D]
  const float* ape = nullptr;  // [ratio, c*Dc]
  std::vector<float> norm;     // [Dc]
  int ratio = 0, out_dim = 0;  // Dc
  bool overlap() const { return ratio == 4; }
};

struct AttentionWeights {
  Fp8Weight wq_a, wq_b, wkv, wo_a, wo_b;
  std::vector<float> q_norm, kv_norm;
  const float* sink = nullptr;  // [H]
  CompressorWeights compressor;  // ratio > 0
  // Indexer (ratio 4 only).
  Fp8Weight idx_wq_b;
  Bf16Weight idx_weights_proj;
  CompressorWeights idx_compressor;
};

struct ExpertWeights {
  Fp4Weight w1, w2, w3;
};
struct SharedExpertWeights {
  Fp8Weight w1, w2, w3;
};

struct MoeWeights {
  Bf16Weight gate;                 // [E, D]
  const float* bias = nullptr;     // [E], learned-routing layers
  std::vector<int32_t> tid2eid;    // [V * K], hash layers
  std::vector<ExpertWeights> experts;
  SharedExpertWeights shared;
  bool has_shared = false;
};

struct BlockWeights {
  int layer_id = 0;  // index into compress_ratios (MTP block: n_layers + i)
  std::vector<float> attn_norm, ffn_norm;
  HcWeights hc_attn, hc_ffn;
  AttentionWeights attn;
  MoeWeights moe;
};

struct MtpWeights {
  BlockWeights block;
  Fp8Weight e_proj, h_proj;
  std::vector<float> enorm, hnorm, norm;
  HcWeights hc_head;
};

struct ModelWeights {
  Bf16Weight embed, head;  // [V, D]
  std::vector<float> norm;
  HcWeights hc_head;
  std::vector<BlockWeights> layers;
  std::vector<MtpWeights> mtp;
};

// The full tensor inventory a config implies: name, dtype and shape of every tensor.
struct TensorSpec {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
};
std::vector<TensorSpec> expected_tensors(const ModelConfig& cfg);

// Validates the store against expected_tensors (every tensor present with the right dtype and
// shape, no unknown tensor, tid2eid rows distinct and in range) and binds the views.
// Throws dsv4::Error naming the file, the tensor and what is wrong.
ModelWeights bind_weights(const ModelConfig& cfg, const TensorStore& store);

}  // namespace dsv4
