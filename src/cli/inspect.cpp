// `dsv4 inspect MODEL_DIR`: config summary, tensor census, weight bytes, bytes read per decoded
// token and per-sequence state bytes. Loading validates the checkpoint completely.
#include <cstdio>
#include <map>
#include <string>

#include "cli/commands.h"
#include "model/model.h"

namespace dsv4::cli {

namespace {
std::string human(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f %s", bytes, units[u]);
  return buf;
}
}  // namespace

void register_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "Validate a model directory and print what it holds");
  static std::string dir;
  cmd->add_option("model_dir", dir, "Hugging Face model directory (config.json + safetensors)")->required();
  cmd->callback([] {
    Model m(dir, 1);
    const ModelConfig& c = m.config();
    std::printf("model        %s (%s)\n", dir.c_str(), c.family_name().c_str());
    std::printf("layers       %d main + %d MTP; hidden %d; heads %d x %d (rope %d); q_lora %d; o_groups %d x %d\n",
                c.n_layers, c.n_mtp_layers, c.dim, c.n_heads, c.head_dim, c.rope_dim, c.q_lora_rank, c.o_groups,
                c.o_lora_rank);
    int swa = 0, csa = 0, hca = 0;
    for (int l = 0; l < c.n_layers; ++l) (c.ratio(l) == 0 ? swa : c.ratio(l) == 4 ? csa : hca)++;
    std::printf("attention    %d SWA, %d CSA (ratio 4, indexer %d heads, top-%d), %d HCA (ratio 128); window %d\n", swa,
                csa, c.index_n_heads, c.index_topk, hca, c.window);
    std::printf("moe          %d routed experts (top-%d, %d hash layers, scale %.3g) + %d shared; width %d\n",
                c.n_routed_experts, c.n_activated_experts, c.n_hash_layers, c.route_scale, c.n_shared_experts,
                c.moe_inter_dim);
    std::printf("vocab        %d; max positions %lld\n", c.vocab_size, static_cast<long long>(c.max_position_embeddings));
    std::map<std::string, std::pair<size_t, size_t>> census;  // dtype -> (count, bytes)
    for (const auto& [name, t] : m.store().all()) {
      auto& e = census[dtype_name(t->dtype)];
      e.first++;
      e.second += t->nbytes;
    }
    std::printf("tensors      %zu\n", m.store().all().size());
    for (const auto& [dt, e] : census) std::printf("  %-9s %8zu tensors  %s\n", dt.c_str(), e.first, human(static_cast<double>(e.second)).c_str());
    std::printf("weights      %s\n", human(static_cast<double>(m.store().total_bytes())).c_str());
    std::printf("decode reads %s of weights per token (attention, %d routed + shared experts, head)\n",
                human(static_cast<double>(m.bytes_per_token())).c_str(), c.n_activated_experts);
    for (long long n : {4096LL, 131072LL, 1048576LL})
      std::printf("state @ %-7lld %s per sequence\n", n, human(static_cast<double>(state_bytes_at(c, n))).c_str());
  });
}

}  // namespace dsv4::cli
