// DeepSeek-V4 model configuration, read from a Hugging Face config.json (spec model.md §1).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv4 {

enum class AttnKind { SWA, CSA, HCA };

struct ModelConfig {
  int vocab_size = 0;
  int dim = 0;                 // hidden_size D
  int n_layers = 0;            // num_hidden_layers (main stack)
  int n_heads = 0;             // H
  int head_dim = 0;            // 512
  int rope_dim = 0;            // qk_rope_head_dim, 64
  int q_lora_rank = 0;
  int o_groups = 0;
  int o_lora_rank = 0;
  int window = 0;              // sliding_window
  std::vector<int> compress_ratios;  // n_layers + n_mtp entries
  double rope_theta = 10000;
  double compress_rope_theta = 160000;
  double rope_factor = 1;
  int64_t original_seq_len = 0;
  double beta_fast = 32, beta_slow = 1;
  int64_t max_position_embeddings = 0;
  int index_n_heads = 0, index_head_dim = 0, index_topk = 0;
  int n_routed_experts = 0, n_shared_experts = 0, n_activated_experts = 0;
  int moe_inter_dim = 0;
  int n_hash_layers = 0;
  double route_scale = 1;
  double swiglu_limit = 0;
  int hc_mult = 4;
  int hc_sinkhorn_iters = 20;
  double hc_eps = 1e-6;
  double norm_eps = 1e-6;
  int n_mtp_layers = 0;
  int bos_token_id = 0, eos_token_id = 1;
  std::string expert_dtype = "fp4";
  std::string model_type;

  int nope_dim() const { return head_dim - rope_dim; }
  int ratio(int layer) const { return compress_ratios.at(static_cast<size_t>(layer)); }
  AttnKind attn_kind(int layer) const {
    const int r = ratio(layer);
    return r == 0 ? AttnKind::SWA : (r == 4 ? AttnKind::CSA : AttnKind::HCA);
  }
  int hc_mix() const { return (2 + hc_mult) * hc_mult; }
  // "deepseek-v4-flash" / "deepseek-v4-pro" by geometry, else "deepseek-v4".
  std::string family_name() const;

  // Parses and validates (every key of spec §1 present with a sane value); throws dsv4::Error
  // naming the file and the key.
  static ModelConfig from_json_text(const std::string& text, const std::string& source_name);
  static ModelConfig from_file(const std::string& path);
  std::string to_json_text() const;  // HF key names, for synthetic checkpoints
};

// Built-in geometries for `dsv4 synth`.
ModelConfig flash_config();
ModelConfig pro_config();

}  // namespace dsv4
