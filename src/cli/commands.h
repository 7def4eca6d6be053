// Each `dsv4` subcommand lives in its own file and registers itself on the CLI11 app.
// main.cpp only wires them together, so subcommands can be added without touching each other.
#pragma once
#include <CLI/CLI.hpp>

namespace dsv4::cli {

// `dsv4 check-golden <kind> ...`: golden-data runners. Each prints failures with the case name,
// ends with "N passed, M failed" and returns non-zero on any failure.
void register_check_golden_model(CLI::App& check_golden);
void register_check_golden_tokenizer(CLI::App& check_golden);
void register_check_golden_encoding(CLI::App& check_golden);
void register_check_golden_parse(CLI::App& check_golden);

void register_inspect(CLI::App& app);
void register_synth(CLI::App& app);
void register_generate(CLI::App& app);
void register_chat(CLI::App& app);  // `dsv4 chat` (src/cli/chat.cpp)
void register_bench(CLI::App& app);
void register_make_tokenizer(CLI::App& app);  // `dsv4 make-tokenizer` (src/cli/make_tokenizer.cpp)
void register_serve(CLI::App& app);           // `dsv4 serve` (src/cli/serve.cpp)

// Exit code the subcommand callbacks leave for main(): CLI11 callbacks return void.
int& exit_code();

}  // namespace dsv4::cli
