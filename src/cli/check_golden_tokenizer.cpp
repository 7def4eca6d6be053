// Placeholder until the text layer lands (issue 2); replaced by the real runner.
#include "cli/commands.h"
#include "core/error.h"

namespace dsv4::cli {

void register_check_golden_tokenizer(CLI::App& check_golden) {
  auto* cmd = check_golden.add_subcommand("tokenizer", "Golden tokenizer cases (not available yet)");
  cmd->allow_extras();
  cmd->callback([] { throw dsv4::Error("check-golden tokenizer is not implemented yet"); });
}

}  // namespace dsv4::cli
