#include "model/synth.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/safetensors.h"
#include "kernels/numerics.h"
#include "model/weights.h"

namespace dsv4 {

namespace {

// splitmix64: fast, seedable per tensor, so each tensor's bytes do not depend on write order.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f; }  // [-1, 1)
};

uint64_t hash_name(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (char c : s) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

// Power-of-two scale that gives a weight of fan-in k an rms near 1/sqrt(k) from codes of rms `code_rms`.
uint8_t scale_byte(int64_t k, double code_rms) {
  const double target = 1.0 / std::sqrt(static_cast<double>(k)) / code_rms;
  return static_cast<uint8_t>(std::clamp(127 + static_cast<int>(std::lround(std::log2(target))), 1, 254));
}

void fill_tensor(const TensorSpec& t, const std::vector<TensorSpec>& all, size_t idx, uint64_t seed,
                 std::vector<uint8_t>& out, const ModelConfig& cfg) {
  Rng rng{seed ^ hash_name(t.name)};
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  const size_t N = static_cast<size_t>(n);
  out.resize(N * dtype_size(t.dtype));
  const std::string& name = t.name;
  switch (t.dtype) {
    case DType::F8_E4M3: {
      // Uniform values in [-448, 448] rounded to e4m3 (never NaN).
      for (size_t i = 0; i < N; ++i) out[i] = encode_e4m3(round_to_e4m3(rng.uniform() * 448.0f));
      break;
    }
    case DType::I8: {  // packed FP4: random nibbles
      for (size_t i = 0; i < N; ++i) out[i] = static_cast<uint8_t>(rng.next());
      break;
    }
    case DType::F8_E8M0: {
      // The scale of the weight before it in the inventory: fan-in is its last dimension.
      const TensorSpec& w = all.at(idx - 1);
      const bool fp4 = w.dtype == DType::I8;
      const int64_t k = fp4 ? w.shape[1] * 2 : w.shape[1];
      const uint8_t b = scale_byte(k, fp4 ? 2.93 : 258.0);
      std::fill(out.begin(), out.end(), b);
      break;
    }
    case DType::BF16: {
      float a;  // half-width of the uniform distribution
      if (ends_with(name, "norm.weight")) a = 0.0f;  // norms are exactly 1
      else if (name == "embed.weight") a = 1.7f;
      else a = std::sqrt(3.0f / static_cast<float>(t.shape.back()));
      for (size_t i = 0; i < N; ++i) {
        const float v = a == 0.0f ? 1.0f : rng.uniform() * a;
        const uint16_t b = bf16_bits(v);
        std::memcpy(&out[2 * i], &b, 2);
      }
      break;
    }
    case DType::F32: {
      std::vector<float> v(N, 0.0f);
      if (ends_with(name, "_fn")) {
        const float a = 1.0f / std::sqrt(static_cast<float>(t.shape.back()));
        for (float& x : v) x = rng.uniform() * a;
      } else if (ends_with(name, "_scale")) {
        std::fill(v.begin(), v.end(), 1.0f);
      } else if (ends_with(name, "_base") || ends_with(name, "ape") || ends_with(name, "bias") || ends_with(name, "attn_sink")) {
        for (float& x : v) x = rng.uniform() * 0.1f;
      }
      std::memcpy(out.data(), v.data(), N * 4);
      break;
    }
    case DType::I64: {  // tid2eid: K distinct experts per token
      const int64_t K = t.shape[1], E = cfg.n_routed_experts;
      std::vector<int64_t> v(N);
      for (int64_t r = 0; r < t.shape[0]; ++r)
        for (int64_t k = 0; k < K; ++k) {
          int64_t e;
          bool dup;
          do {
            e = static_cast<int64_t>(rng.next() % static_cast<uint64_t>(E));
            dup = false;
            for (int64_t q = 0; q < k; ++q) dup |= v[static_cast<size_t>(r * K + q)] == e;
          } while (dup);
          v[static_cast<size_t>(r * K + k)] = e;
        }
      std::memcpy(out.data(), v.data(), N * 8);
      break;
    }
    default:
      throw Error("synth: unsupported dtype for " + name);
  }
}

}  // namespace

void synthesize_model(const ModelConfig& cfg, uint64_t seed, const std::string& out_dir,
                      const std::function<void(size_t, size_t)>& progress) {
  namespace fs = std::filesystem;
  fs::create_directories(out_dir);
  // Round-trip through the JSON parser so a synthetic model is validated like a real one.
  const std::string cfg_text = cfg.to_json_text();
  ModelConfig::from_json_text(cfg_text, "synthetic config");
  {
    std::ofstream out(fs::path(out_dir) / "config.json");
    out << cfg_text << "\n";
    if (!out) throw Error(out_dir + "/config.json: write failed");
  }
  const std::vector<TensorSpec> specs = expected_tensors(cfg);
  std::vector<TensorToWrite> headers;
  size_t total = 0;
  for (const TensorSpec& s : specs) {
    headers.push_back({s.name, s.dtype, s.shape, {}});
    size_t b = dtype_size(s.dtype);
    for (int64_t d : s.shape) b *= static_cast<size_t>(d);
    total += b;
  }
  size_t done = 0;
  write_safetensors_streaming(
      (fs::path(out_dir) / "model.safetensors").string(), headers,
      [&](size_t i, std::vector<uint8_t>& out) {
        fill_tensor(specs[i], specs, i, seed, out, cfg);
        done += out.size();
        if (progress) progress(done, total);
      },
      {{"format", "pt"}, {"generator", "dsv4 synth"}});
}

ModelConfig synth_config(const std::string& name, int layers, int experts) {
  ModelConfig c;
  if (name == "flash") {
    c = flash_config();
  } else if (name == "pro") {
    c = pro_config();
  } else if (name == "tiny") {
    // Small enough to run anywhere, with every attention kind and real head geometry.
    c = flash_config();
    c.dim = 256;
    c.n_layers = 4;
    c.n_heads = 4;
    c.q_lora_rank = 128;
    c.o_groups = 2;
    c.o_lora_rank = 128;
    c.index_n_heads = 4;
    c.index_topk = 16;
    c.n_routed_experts = 8;
    c.n_activated_experts = 2;
    c.moe_inter_dim = 128;
    c.compress_ratios = {0, 4, 128, 4, 0};
  } else {
    c = ModelConfig::from_file(name);
  }
  if (layers > 0) {
    const int mtp_ratio = c.compress_ratios.back();
    if (layers > c.n_layers) throw Error("--layers " + std::to_string(layers) + " exceeds the config's " + std::to_string(c.n_layers));
    c.compress_ratios.resize(static_cast<size_t>(layers));
    c.compress_ratios.push_back(mtp_ratio);
    c.n_layers = layers;
    c.n_hash_layers = std::min(c.n_hash_layers, layers);
  }
  if (experts > 0) {
    if (experts < c.n_activated_experts) throw Error("--experts must be at least num_experts_per_tok");
    c.n_routed_experts = experts;
  }
  return c;
}

}  // namespace dsv4
