#include "model/config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace dsv4 {

using json = nlohmann::json;

namespace {

struct Reader {
  const json& j;
  const std::string& src;

  const json& need(const char* key) const {
    if (!j.contains(key)) throw Error(src + ": missing key '" + std::string(key) + "'");
    return j.at(key);
  }
  int64_t integer(const char* key, int64_t lo, int64_t hi) const {
    const json& v = need(key);
    if (!v.is_number_integer()) throw Error(src + ": key '" + std::string(key) + "' must be an integer, got " + v.dump());
    const int64_t x = v.get<int64_t>();
    if (x < lo || x > hi)
      throw Error(src + ": key '" + std::string(key) + "' = " + std::to_string(x) + " is out of range [" +
                  std::to_string(lo) + ", " + std::to_string(hi) + "]");
    return x;
  }
  int64_t integer_or(const char* key, int64_t dflt, int64_t lo, int64_t hi) const {
    return j.contains(key) ? integer(key, lo, hi) : dflt;
  }
  double number(const char* key, double lo, double hi) const {
    const json& v = need(key);
    if (!v.is_number()) throw Error(src + ": key '" + std::string(key) + "' must be a number, got " + v.dump());
    const double x = v.get<double>();
    if (!(x >= lo && x <= hi))
      throw Error(src + ": key '" + std::string(key) + "' = " + v.dump() + " is out of range");
    return x;
  }
  double number_or(const char* key, double dflt, double lo, double hi) const {
    return j.contains(key) ? number(key, lo, hi) : dflt;
  }
};

}  // namespace

std::string ModelConfig::family_name() const {
  if (dim == 4096 && n_routed_experts == 256) return "deepseek-v4-flash";
  if (dim == 7168 && n_routed_experts == 384) return "deepseek-v4-pro";
  return "deepseek-v4";
}

ModelConfig ModelConfig::from_json_text(const std::string& text, const std::string& src) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(src + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) throw Error(src + ": top level is not a JSON object");
  Reader r{j, src};
  ModelConfig c;
  c.model_type = j.value("model_type", std::string());
  if (!c.model_type.empty() && c.model_type != "deepseek_v4")
    throw Error(src + ": model_type is '" + c.model_type + "', expected 'deepseek_v4'");
  c.vocab_size = static_cast<int>(r.integer("vocab_size", 3, 1 << 22));
  c.dim = static_cast<int>(r.integer("hidden_size", 128, 1 << 16));
  c.n_layers = static_cast<int>(r.integer("num_hidden_layers", 1, 512));
  c.n_heads = static_cast<int>(r.integer("num_attention_heads", 1, 1024));
  c.head_dim = static_cast<int>(r.integer("head_dim", 128, 4096));
  c.rope_dim = static_cast<int>(r.integer("qk_rope_head_dim", 2, 512));
  c.q_lora_rank = static_cast<int>(r.integer("q_lora_rank", 128, 1 << 16));
  c.o_groups = static_cast<int>(r.integer("o_groups", 1, 1024));
  c.o_lora_rank = static_cast<int>(r.integer("o_lora_rank", 1, 1 << 16));
  c.window = static_cast<int>(r.integer("sliding_window", 1, 1 << 16));
  c.rope_theta = r.number("rope_theta", 1, 1e12);
  c.compress_rope_theta = r.number_or("compress_rope_theta", c.rope_theta, 1, 1e12);
  c.max_position_embeddings = r.integer("max_position_embeddings", 1, int64_t(1) << 40);
  c.index_n_heads = static_cast<int>(r.integer("index_n_heads", 1, 1024));
  c.index_head_dim = static_cast<int>(r.integer("index_head_dim", 128, 128));
  c.index_topk = static_cast<int>(r.integer("index_topk", 1, 1 << 20));
  c.n_routed_experts = static_cast<int>(r.integer("n_routed_experts", 1, 1 << 16));
  c.n_shared_experts = static_cast<int>(r.integer("n_shared_experts", 0, 1));
  c.n_activated_experts = static_cast<int>(r.integer("num_experts_per_tok", 1, 64));
  c.moe_inter_dim = static_cast<int>(r.integer("moe_intermediate_size", 32, 1 << 16));
  c.n_hash_layers = static_cast<int>(r.integer_or("num_hash_layers", 0, 0, 512));
  c.route_scale = r.number_or("routed_scaling_factor", 1.0, 0, 1e6);
  c.swiglu_limit = r.number_or("swiglu_limit", 0.0, 0, 1e6);
  c.hc_mult = static_cast<int>(r.integer("hc_mult", 1, 16));
  c.hc_sinkhorn_iters = static_cast<int>(r.integer("hc_sinkhorn_iters", 1, 1000));
  c.hc_eps = r.number("hc_eps", 0, 1);
  c.norm_eps = r.number_or("rms_norm_eps", 1e-6, 0, 1);
  c.n_mtp_layers = static_cast<int>(r.integer_or("num_nextn_predict_layers", 0, 0, 1));
  c.bos_token_id = static_cast<int>(r.integer_or("bos_token_id", 0, 0, c.vocab_size - 1));
  c.eos_token_id = static_cast<int>(r.integer_or("eos_token_id", 1, 0, c.vocab_size - 1));
  if (j.contains("expert_dtype")) {
    if (!j["expert_dtype"].is_string()) throw Error(src + ": expert_dtype must be a string");
    c.expert_dtype = j["expert_dtype"].get<std::string>();
    if (c.expert_dtype != "fp4")
      throw Error(src + ": expert_dtype '" + c.expert_dtype + "' is not supported (only fp4)");
  }
  if (j.contains("scoring_func") && j["scoring_func"] != "sqrtsoftplus")
    throw Error(src + ": scoring_func " + j["scoring_func"].dump() + " is not supported (only sqrtsoftplus)");

  const json& rs = r.need("rope_scaling");
  if (!rs.is_object()) throw Error(src + ": rope_scaling must be an object");
  Reader rr{rs, src};
  c.rope_factor = rr.number("factor", 1, 1e6);
  c.original_seq_len = rr.integer("original_max_position_embeddings", 0, int64_t(1) << 40);
  c.beta_fast = rr.number("beta_fast", 0, 1e6);
  c.beta_slow = rr.number("beta_slow", 0, 1e6);

  const json& cr = r.need("compress_ratios");
  if (!cr.is_array()) throw Error(src + ": compress_ratios must be an array");
  for (const auto& v : cr) {
    if (!v.is_number_integer() || (v != 0 && v != 4 && v != 128))
      throw Error(src + ": compress_ratios entry " + v.dump() + " is not 0, 4 or 128");
    c.compress_ratios.push_back(v.get<int>());
  }
  if (static_cast<int>(c.compress_ratios.size()) < c.n_layers + c.n_mtp_layers)
    throw Error(src + ": compress_ratios has " + std::to_string(c.compress_ratios.size()) + " entries, need " +
                std::to_string(c.n_layers + c.n_mtp_layers) + " (num_hidden_layers + num_nextn_predict_layers)");
  c.compress_ratios.resize(static_cast<size_t>(c.n_layers + c.n_mtp_layers));

  // Structural constraints the kernels rely on.
  auto require = [&](bool ok, const std::string& what) {
    if (!ok) throw Error(src + ": " + what);
  };
  require(c.rope_dim % 2 == 0 && c.rope_dim < c.head_dim, "qk_rope_head_dim must be even and < head_dim");
  require(c.nope_dim() % 64 == 0, "head_dim - qk_rope_head_dim must be a multiple of 64");
  require(c.dim % 128 == 0, "hidden_size must be a multiple of 128");
  require(c.q_lora_rank % 128 == 0, "q_lora_rank must be a multiple of 128");
  require(c.moe_inter_dim % 128 == 0, "moe_intermediate_size must be a multiple of 128");
  require((c.n_heads * c.head_dim) % c.o_groups == 0, "num_attention_heads*head_dim must divide by o_groups");
  require(c.n_heads % c.o_groups == 0, "num_attention_heads must be a multiple of o_groups");
  require((c.o_groups * c.o_lora_rank) % 128 == 0, "o_groups*o_lora_rank must be a multiple of 128");
  require(c.n_activated_experts <= c.n_routed_experts, "num_experts_per_tok exceeds n_routed_experts");
  require(c.n_hash_layers <= c.n_layers, "num_hash_layers exceeds num_hidden_layers");
  require(c.rope_dim <= c.index_head_dim, "qk_rope_head_dim exceeds index_head_dim");
  return c;
}

ModelConfig ModelConfig::from_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json_text(ss.str(), path);
}

std::string ModelConfig::to_json_text() const {
  nlohmann::ordered_json j;
  j["architectures"] = {"DeepseekV4ForCausalLM"};
  j["model_type"] = "deepseek_v4";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = dim;
  j["num_hidden_layers"] = n_layers;
  j["num_attention_heads"] = n_heads;
  j["num_key_value_heads"] = 1;
  j["head_dim"] = head_dim;
  j["qk_rope_head_dim"] = rope_dim;
  j["q_lora_rank"] = q_lora_rank;
  j["o_groups"] = o_groups;
  j["o_lora_rank"] = o_lora_rank;
  j["sliding_window"] = window;
  j["compress_ratios"] = compress_ratios;
  j["rope_theta"] = rope_theta;
  j["compress_rope_theta"] = compress_rope_theta;
  j["rope_scaling"] = {{"type", "yarn"},
                       {"factor", rope_factor},
                       {"original_max_position_embeddings", original_seq_len},
                       {"beta_fast", beta_fast},
                       {"beta_slow", beta_slow}};
  j["max_position_embeddings"] = max_position_embeddings;
  j["index_n_heads"] = index_n_heads;
  j["index_head_dim"] = index_head_dim;
  j["index_topk"] = index_topk;
  j["n_routed_experts"] = n_routed_experts;
  j["n_shared_experts"] = n_shared_experts;
  j["num_experts_per_tok"] = n_activated_experts;
  j["moe_intermediate_size"] = moe_inter_dim;
  j["num_hash_layers"] = n_hash_layers;
  j["routed_scaling_factor"] = route_scale;
  j["scoring_func"] = "sqrtsoftplus";
  j["topk_method"] = "noaux_tc";
  j["norm_topk_prob"] = true;
  j["swiglu_limit"] = swiglu_limit;
  j["hc_mult"] = hc_mult;
  j["hc_sinkhorn_iters"] = hc_sinkhorn_iters;
  j["hc_eps"] = hc_eps;
  j["rms_norm_eps"] = norm_eps;
  j["num_nextn_predict_layers"] = n_mtp_layers;
  j["bos_token_id"] = bos_token_id;
  j["eos_token_id"] = eos_token_id;
  j["expert_dtype"] = expert_dtype;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = false;
  j["torch_dtype"] = "bfloat16";
  j["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"}, {"quant_method", "fp8"},
                              {"scale_fmt", "ue8m0"}, {"weight_block_size", {128, 128}}};
  return j.dump(2);
}

namespace {
ModelConfig common_v4() {
  ModelConfig c;
  c.vocab_size = 129280;
  c.head_dim = 512;
  c.rope_dim = 64;
  c.o_lora_rank = 1024;
  c.window = 128;
  c.rope_theta = 10000;
  c.compress_rope_theta = 160000;
  c.rope_factor = 16;
  c.original_seq_len = 65536;
  c.max_position_embeddings = 1048576;
  c.index_n_heads = 64;
  c.index_head_dim = 128;
  c.n_shared_experts = 1;
  c.n_activated_experts = 6;
  c.n_hash_layers = 3;
  c.swiglu_limit = 10;
  c.n_mtp_layers = 1;
  c.model_type = "deepseek_v4";
  return c;
}
}  // namespace

ModelConfig flash_config() {
  ModelConfig c = common_v4();
  c.dim = 4096;
  c.n_layers = 43;
  c.n_heads = 64;
  c.q_lora_rank = 1024;
  c.o_groups = 8;
  c.index_topk = 512;
  c.n_routed_experts = 256;
  c.moe_inter_dim = 2048;
  c.route_scale = 1.5;
  c.compress_ratios = {0, 0};
  for (int i = 2; i < 43; ++i) c.compress_ratios.push_back(i % 2 == 0 ? 4 : 128);
  c.compress_ratios.push_back(0);
  return c;
}

ModelConfig pro_config() {
  ModelConfig c = common_v4();
  c.dim = 7168;
  c.n_layers = 61;
  c.n_heads = 128;
  c.q_lora_rank = 1536;
  c.o_groups = 16;
  c.index_topk = 1024;
  c.n_routed_experts = 384;
  c.moe_inter_dim = 3072;
  c.route_scale = 2.5;
  c.compress_ratios = {128, 128};
  for (int i = 2; i < 61; ++i) c.compress_ratios.push_back(i % 2 == 0 ? 4 : 128);
  c.compress_ratios.push_back(0);
  return c;
}

}  // namespace dsv4
