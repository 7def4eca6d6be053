// `dsv4 synth`: write a checkpoint with random weights in the official format.
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "model/synth.h"

namespace dsv4::cli {

void register_synth(CLI::App& app) {
  auto* cmd = app.add_subcommand("synth", "Write a random-weight checkpoint in the official format");
  static std::string config = "tiny", out_dir;
  static int layers = 0, experts = 0;
  static uint64_t seed = 1;
  cmd->add_option("--config", config, "flash | pro | tiny | path to a config.json")->capture_default_str();
  cmd->add_option("--layers", layers, "Keep only the first N main layers (0 = all)");
  cmd->add_option("--experts", experts, "Number of routed experts (0 = as the config)");
  cmd->add_option("--seed", seed, "Random seed")->capture_default_str();
  cmd->add_option("out_dir", out_dir, "Output directory")->required();
  cmd->callback([] {
    const ModelConfig c = synth_config(config, layers, experts);
    int last_pct = -1;
    synthesize_model(c, seed, out_dir, [&](size_t done, size_t total) {
      const int pct = static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total));
      if (pct != last_pct && pct % 5 == 0) {
        std::fprintf(stderr, "\rsynth: %3d%% of %.2f GiB", pct, static_cast<double>(total) / (1 << 30));
        last_pct = pct;
      }
    });
    std::fprintf(stderr, "\n");
    std::printf("wrote %s (%d layers, %d experts)\n", out_dir.c_str(), c.n_layers, c.n_routed_experts);
  });
}

}  // namespace dsv4::cli
