// dsv4: one binary, subcommands registered from src/cli/*.cpp.
#include <malloc.h>

#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "core/error.h"

int main(int argc, char** argv) {
#ifdef __GLIBC__
  // Prefill allocates and frees many buffers of several MB per layer (activations, GEMM operands).
  // By default glibc serves those with fresh mmap()s and gives them back at free(), so every layer
  // page-faults and zero-fills them again, serially on the calling thread. Keeping freed memory in
  // the heap instead costs no extra peak memory and removes that work.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest allowed threshold
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
  CLI::App app{"dsv4: DeepSeek-V4 inference engine and local API server"};
  app.set_version_flag("--version", std::string("dsv4 ") + DSV4_VERSION);
  app.require_subcommand(1);

  CLI::App* check_golden = app.add_subcommand(
      "check-golden", "Check the engine against golden data produced by DeepSeek's reference code");
  check_golden->require_subcommand(1);
  dsv4::cli::register_check_golden_model(*check_golden);
  dsv4::cli::register_check_golden_tokenizer(*check_golden);
  dsv4::cli::register_check_golden_encoding(*check_golden);
  dsv4::cli::register_check_golden_parse(*check_golden);

  dsv4::cli::register_inspect(app);
  dsv4::cli::register_synth(app);
  dsv4::cli::register_generate(app);
  dsv4::cli::register_chat(app);
  dsv4::cli::register_bench(app);
  dsv4::cli::register_make_tokenizer(app);
  dsv4::cli::register_serve(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const dsv4::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return 2;
  }
  return dsv4::cli::exit_code();
}
