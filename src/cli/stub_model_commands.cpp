// Temporary: model subcommands until the engine core lands in this file's successors.
#include "cli/commands.h"
#include "core/error.h"

namespace dsv4::cli {
void register_check_golden_model(CLI::App& cg) {
  cg.add_subcommand("model", "Golden model cases")->allow_extras()->callback([] { throw dsv4::Error("not implemented yet"); });
}
void register_inspect(CLI::App& app) {
  app.add_subcommand("inspect", "Inspect a model directory")->allow_extras()->callback([] { throw dsv4::Error("not implemented yet"); });
}
void register_synth(CLI::App& app) {
  app.add_subcommand("synth", "Write a random model")->allow_extras()->callback([] { throw dsv4::Error("not implemented yet"); });
}
void register_generate(CLI::App& app) {
  app.add_subcommand("generate", "Generate text")->allow_extras()->callback([] { throw dsv4::Error("not implemented yet"); });
}
}  // namespace dsv4::cli
