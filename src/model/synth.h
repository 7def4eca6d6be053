// Synthetic checkpoints: random weights in the official format (same names, dtypes and block
// scales) for any config. Used for benchmarks at real layer geometry and the built-in demo model.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "model/config.h"

namespace dsv4 {

// Writes OUT_DIR/config.json and OUT_DIR/model.safetensors. Deterministic for a seed.
void synthesize_model(const ModelConfig& cfg, uint64_t seed, const std::string& out_dir,
                      const std::function<void(size_t done, size_t total)>& progress = {});

// Built-in configs by name ("flash", "pro", "tiny") or a config.json path, with optional
// overrides of the layer and expert counts (0 = keep).
ModelConfig synth_config(const std::string& name_or_path, int layers, int experts);

}  // namespace dsv4
