#include "model/weights.h"

#include <algorithm>
#include <map>
#include <set>

#include "core/error.h"
#include "kernels/numerics.h"

namespace dsv4 {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Inventory {
  std::vector<TensorSpec> specs;
  void add(const std::string& name, DType t, std::vector<int64_t> shape) { specs.push_back({name, t, std::move(shape)}); }
  void fp8(const std::string& prefix, int64_t n, int64_t k) {
    add(prefix + ".weight", DType::F8_E4M3, {n, k});
    add(prefix + ".scale", DType::F8_E8M0, {ceil_div(n, 128), ceil_div(k, 128)});
  }
  void fp4(const std::string& prefix, int64_t n, int64_t k) {
    add(prefix + ".weight", DType::I8, {n, k / 2});
    add(prefix + ".scale", DType::F8_E8M0, {n, k / 32});
  }
};

void add_block(Inventory& inv, const ModelConfig& c, const std::string& p, int layer_id) {
  const int64_t D = c.dim, H = c.n_heads, Dh = c.head_dim, hcD = static_cast<int64_t>(c.hc_mult) * D;
  const int64_t mix = c.hc_mix();
  inv.add(p + "attn_norm.weight", DType::BF16, {D});
  inv.add(p + "ffn_norm.weight", DType::BF16, {D});
  for (const char* site : {"attn", "ffn"}) {
    inv.add(p + "hc_" + site + "_fn", DType::F32, {mix, hcD});
    inv.add(p + "hc_" + site + "_base", DType::F32, {mix});
    inv.add(p + "hc_" + site + "_scale", DType::F32, {3});
  }
  const std::string a = p + "attn.";
  inv.fp8(a + "wq_a", c.q_lora_rank, D);
  inv.add(a + "q_norm.weight", DType::BF16, {c.q_lora_rank});
  inv.fp8(a + "wq_b", H * Dh, c.q_lora_rank);
  inv.fp8(a + "wkv", Dh, D);
  inv.add(a + "kv_norm.weight", DType::BF16, {Dh});
  inv.fp8(a + "wo_a", static_cast<int64_t>(c.o_groups) * c.o_lora_rank, H * Dh / c.o_groups);
  inv.fp8(a + "wo_b", D, static_cast<int64_t>(c.o_groups) * c.o_lora_rank);
  inv.add(a + "attn_sink", DType::F32, {H});
  const int ratio = c.ratio(layer_id);
  if (ratio > 0) {
    const int64_t cdim = (ratio == 4 ? 2 : 1) * Dh;
    inv.add(a + "compressor.wkv.weight", DType::BF16, {cdim, D});
    inv.add(a + "compressor.wgate.weight", DType::BF16, {cdim, D});
    inv.add(a + "compressor.ape", DType::F32, {ratio, cdim});
    inv.add(a + "compressor.norm.weight", DType::BF16, {Dh});
  }
  if (ratio == 4) {
    const int64_t ih = c.index_n_heads, id = c.index_head_dim;
    inv.fp8(a + "indexer.wq_b", ih * id, c.q_lora_rank);
    inv.add(a + "indexer.weights_proj.weight", DType::BF16, {ih, D});
    inv.add(a + "indexer.compressor.wkv.weight", DType::BF16, {2 * id, D});
    inv.add(a + "indexer.compressor.wgate.weight", DType::BF16, {2 * id, D});
    inv.add(a + "indexer.compressor.ape", DType::F32, {4, 2 * id});
    inv.add(a + "indexer.compressor.norm.weight", DType::BF16, {id});
  }
  const std::string f = p + "ffn.";
  const int64_t E = c.n_routed_experts, I = c.moe_inter_dim;
  inv.add(f + "gate.weight", DType::BF16, {E, D});
  if (layer_id < c.n_hash_layers)
    inv.add(f + "gate.tid2eid", DType::I64, {c.vocab_size, c.n_activated_experts});
  else
    inv.add(f + "gate.bias", DType::F32, {E});
  if (c.n_shared_experts > 0) {
    inv.fp8(f + "shared_experts.w1", I, D);
    inv.fp8(f + "shared_experts.w3", I, D);
    inv.fp8(f + "shared_experts.w2", D, I);
  }
  for (int64_t e = 0; e < E; ++e) {
    const std::string x = f + "experts." + std::to_string(e) + ".";
    inv.fp4(x + "w1", I, D);
    inv.fp4(x + "w3", I, D);
    inv.fp4(x + "w2", D, I);
  }
}

class Binder {
 public:
  Binder(const TensorStore& s) : store_(s) {}

  const TensorView& get(const std::string& name) const { return store_.get(name); }
  Fp8Weight fp8(const std::string& p) const {
    const TensorView& w = get(p + ".weight");
    const TensorView& s = get(p + ".scale");
    return {w.data, s.data, static_cast<int>(w.dim(0)), static_cast<int>(w.dim(1))};
  }
  Fp4Weight fp4(const std::string& p) const {
    const TensorView& w = get(p + ".weight");
    const TensorView& s = get(p + ".scale");
    return {w.data, s.data, static_cast<int>(w.dim(0)), static_cast<int>(w.dim(1) * 2)};
  }
  // A GEMM weight (scanned once for bf16_dp_exact); the embedding is only gathered from.
  Bf16Weight bf16(const std::string& name, bool gemm = true) const {
    const TensorView& t = get(name);
    Bf16Weight w{t.as<uint16_t>(), static_cast<int>(t.dim(0)), static_cast<int>(t.dim(1))};
    if (gemm) w.dp_exact = bf16_dp_exact(w.w, static_cast<size_t>(w.n) * w.k);
    return w;
  }
  std::vector<float> vec(const std::string& name) const {  // small BF16 vectors widened to fp32
    const TensorView& t = get(name);
    std::vector<float> v(static_cast<size_t>(t.numel()));
    for (size_t i = 0; i < v.size(); ++i) v[i] = bf16_to_f32(t.as<uint16_t>()[i]);
    return v;
  }
  const float* f32(const std::string& name) const { return get(name).as<float>(); }
  HcWeights hc(const std::string& p) const {
    const TensorView& fn = get(p + "_fn");
    return {fn.as<float>(), f32(p + "_base"), f32(p + "_scale"), static_cast<int>(fn.dim(0))};
  }
  CompressorWeights compressor(const std::string& p, int ratio) const {
    CompressorWeights c;
    c.wkv = bf16(p + "wkv.weight");
    c.wgate = bf16(p + "wgate.weight");
    c.ape = f32(p + "ape");
    c.norm = vec(p + "norm.weight");
    c.ratio = ratio;
    c.out_dim = static_cast<int>(c.norm.size());
    return c;
  }

 private:
  const TensorStore& store_;
};

void bind_block(const Binder& b, const ModelConfig& c, const std::string& p, int layer_id, BlockWeights& blk) {
  blk.layer_id = layer_id;
  blk.attn_norm = b.vec(p + "attn_norm.weight");
  blk.ffn_norm = b.vec(p + "ffn_norm.weight");
  blk.hc_attn = b.hc(p + "hc_attn");
  blk.hc_ffn = b.hc(p + "hc_ffn");
  const std::string a = p + "attn.";
  AttentionWeights& at = blk.attn;
  at.wq_a = b.fp8(a + "wq_a");
  at.q_norm = b.vec(a + "q_norm.weight");
  at.wq_b = b.fp8(a + "wq_b");
  at.wkv = b.fp8(a + "wkv");
  at.kv_norm = b.vec(a + "kv_norm.weight");
  at.wo_a = b.fp8(a + "wo_a");
  at.wo_b = b.fp8(a + "wo_b");
  at.sink = b.f32(a + "attn_sink");
  const int ratio = c.ratio(layer_id);
  if (ratio > 0) at.compressor = b.compressor(a + "compressor.", ratio);
  if (ratio == 4) {
    at.idx_wq_b = b.fp8(a + "indexer.wq_b");
    at.idx_weights_proj = b.bf16(a + "indexer.weights_proj.weight");
    at.idx_compressor = b.compressor(a + "indexer.compressor.", 4);
  }
  const std::string f = p + "ffn.";
  MoeWeights& m = blk.moe;
  m.gate = b.bf16(f + "gate.weight");
  if (layer_id < c.n_hash_layers) {
    const TensorView& t = b.get(f + "gate.tid2eid");
    const int64_t K = c.n_activated_experts;
    m.tid2eid.resize(static_cast<size_t>(t.numel()));
    for (int64_t row = 0; row < t.dim(0); ++row) {
      std::set<int64_t> seen;
      for (int64_t k = 0; k < K; ++k) {
        const int64_t e = t.dtype == DType::I32 ? t.as<int32_t>()[row * K + k] : t.as<int64_t>()[row * K + k];
        if (e < 0 || e >= c.n_routed_experts)
          throw Error(*t.file + ": tensor '" + t.name + "': row " + std::to_string(row) + " has expert id " +
                      std::to_string(e) + " outside [0, " + std::to_string(c.n_routed_experts) + ")");
        if (!seen.insert(e).second)
          throw Error(*t.file + ": tensor '" + t.name + "': row " + std::to_string(row) + " repeats expert " +
                      std::to_string(e));
        m.tid2eid[static_cast<size_t>(row * K + k)] = static_cast<int32_t>(e);
      }
    }
  } else {
    m.bias = b.f32(f + "gate.bias");
  }
  m.has_shared = c.n_shared_experts > 0;
  if (m.has_shared) {
    m.shared.w1 = b.fp8(f + "shared_experts.w1");
    m.shared.w2 = b.fp8(f + "shared_experts.w2");
    m.shared.w3 = b.fp8(f + "shared_experts.w3");
  }
  m.experts.resize(static_cast<size_t>(c.n_routed_experts));
  for (int e = 0; e < c.n_routed_experts; ++e) {
    const std::string x = f + "experts." + std::to_string(e) + ".";
    m.experts[static_cast<size_t>(e)] = {b.fp4(x + "w1"), b.fp4(x + "w2"), b.fp4(x + "w3")};
  }
}

// Tensors the official checkpoints may carry that the model does not use (convert.py drops them).
bool ignorable_tensor(const std::string& name) {
  return name.rfind("mtp.", 0) == 0 &&
         (name.find(".emb") != std::string::npos || name.find("head.weight") != std::string::npos) &&
         name.find("hc_head") == std::string::npos;
}

}  // namespace

std::vector<TensorSpec> expected_tensors(const ModelConfig& c) {
  Inventory inv;
  const int64_t D = c.dim, hcD = static_cast<int64_t>(c.hc_mult) * D;
  inv.add("embed.weight", DType::BF16, {c.vocab_size, D});
  inv.add("head.weight", DType::BF16, {c.vocab_size, D});
  inv.add("norm.weight", DType::BF16, {D});
  inv.add("hc_head_fn", DType::F32, {c.hc_mult, hcD});
  inv.add("hc_head_base", DType::F32, {c.hc_mult});
  inv.add("hc_head_scale", DType::F32, {1});
  for (int i = 0; i < c.n_layers; ++i) add_block(inv, c, "layers." + std::to_string(i) + ".", i);
  for (int i = 0; i < c.n_mtp_layers; ++i) {
    const std::string p = "mtp." + std::to_string(i) + ".";
    add_block(inv, c, p, c.n_layers + i);
    inv.fp8(p + "e_proj", D, D);
    inv.fp8(p + "h_proj", D, D);
    inv.add(p + "enorm.weight", DType::BF16, {D});
    inv.add(p + "hnorm.weight", DType::BF16, {D});
    inv.add(p + "norm.weight", DType::BF16, {D});
    inv.add(p + "hc_head_fn", DType::F32, {c.hc_mult, hcD});
    inv.add(p + "hc_head_base", DType::F32, {c.hc_mult});
    inv.add(p + "hc_head_scale", DType::F32, {1});
  }
  return std::move(inv.specs);
}

ModelWeights bind_weights(const ModelConfig& c, const TensorStore& store) {
  const std::vector<TensorSpec> specs = expected_tensors(c);
  std::set<std::string> expected_names;
  for (const TensorSpec& s : specs) {
    expected_names.insert(s.name);
    const TensorView* t = store.find(s.name);
    if (!t) throw Error("checkpoint is missing tensor '" + s.name + "' (expected " + dtype_name(s.dtype) + " " +
                        TensorView{s.name, s.dtype, s.shape, nullptr, 0, nullptr}.shape_str() + ")");
    bool dtype_ok = t->dtype == s.dtype;
    // tid2eid may also be stored as I32; accept it and check the values the same way.
    if (!dtype_ok && s.dtype == DType::I64 && t->dtype == DType::I32) dtype_ok = true;
    if (!dtype_ok)
      throw Error(*t->file + ": tensor '" + s.name + "' has dtype " + dtype_name(t->dtype) + ", expected " +
                  dtype_name(s.dtype));
    if (t->shape != s.shape)
      throw Error(*t->file + ": tensor '" + s.name + "' has shape " + t->shape_str() + ", expected " +
                  TensorView{s.name, s.dtype, s.shape, nullptr, 0, nullptr}.shape_str());
  }
  for (const auto& [name, t] : store.all()) {
    if (!expected_names.count(name) && !ignorable_tensor(name))
      throw Error(*t->file + ": unexpected tensor '" + name + "' (not part of this config's model; wrong config.json?)");
  }
  Binder b(store);
  ModelWeights w;
  w.embed = b.bf16("embed.weight", false);
  w.head = b.bf16("head.weight");
  w.norm = b.vec("norm.weight");
  w.hc_head = b.hc("hc_head");
  w.layers.resize(static_cast<size_t>(c.n_layers));
  for (int i = 0; i < c.n_layers; ++i) bind_block(b, c, "layers." + std::to_string(i) + ".", i, w.layers[static_cast<size_t>(i)]);
  w.mtp.resize(static_cast<size_t>(c.n_mtp_layers));
  for (int i = 0; i < c.n_mtp_layers; ++i) {
    const std::string p = "mtp." + std::to_string(i) + ".";
    MtpWeights& m = w.mtp[static_cast<size_t>(i)];
    bind_block(b, c, p, c.n_layers + i, m.block);
    m.e_proj = b.fp8(p + "e_proj");
    m.h_proj = b.fp8(p + "h_proj");
    m.enorm = b.vec(p + "enorm.weight");
    m.hnorm = b.vec(p + "hnorm.weight");
    m.norm = b.vec(p + "norm.weight");
    m.hc_head = b.hc(p + "hc_head");
  }
  return w;
}

}  // namespace dsv4
