// `dsv4 check-golden model PATH...`: runs golden model cases (see src/model/golden.h).
#include <cstdio>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "model/golden.h"

namespace dsv4::cli {

void register_check_golden_model(CLI::App& check_golden) {
  auto* cmd = check_golden.add_subcommand(
      "model", "Run golden model cases (case folder, or a folder of case folders) against the engine");
  static std::vector<std::string> paths;
  static int threads = 0;
  static bool no_blocks = false, verbose = false;
  cmd->add_option("paths", paths, "Case folder(s) with case.json, config.json, model.safetensors, expected.safetensors")
      ->required();
  cmd->add_option("-t,--threads", threads, "Worker threads (0 = all cores)");
  cmd->add_flag("--no-blocks", no_blocks, "Skip the per-block teacher-forced checks");
  cmd->add_flag("-v,--verbose", verbose, "Print every check, not only failures");
  cmd->callback([] {
    int passed = 0, failed = 0;
    for (const std::string& p : paths) {
      for (const std::string& dir : find_golden_cases(p)) {
        GoldenOptions opt;
        opt.threads = threads;
        opt.blocks = !no_blocks;
        if (verbose) opt.progress = [](const std::string& s) { std::fprintf(stderr, "  %s\n", s.c_str()); };
        GoldenReport r;
        try {
          r = run_golden_case(dir, opt);
        } catch (const Error& e) {
          std::printf("FAIL %s: %s\n", dir.c_str(), e.what());
          ++failed;
          continue;
        }
        for (const GoldenCheck& c : r.checks) {
          if (c.pass && !verbose) continue;
          std::printf("  %s %-28s %-14s %.6g (limit %.6g)%s%s\n", c.pass ? "ok  " : "FAIL", c.name.c_str(),
                      c.metric.c_str(), c.value, c.limit, c.detail.empty() ? "" : "  ", c.detail.c_str());
        }
        // One summary line per case: the logit groups' max |delta| and top-1 agreement.
        std::string summary;
        for (const GoldenCheck& c : r.checks)
          if (c.metric == "max_abs" || c.metric == "top1_agree") {
            char buf[96];
            std::snprintf(buf, sizeof buf, " %s.%s=%.4g", c.name.c_str(), c.metric == "max_abs" ? "max|d|" : "top1", c.value);
            summary += buf;
          }
        int nfail = 0;
        for (const GoldenCheck& c : r.checks) nfail += !c.pass;
        std::printf("%s %s: %zu checks, %d failed;%s\n", r.pass() ? "PASS" : "FAIL", r.case_name.c_str(),
                    r.checks.size(), nfail, summary.c_str());
        (r.pass() ? passed : failed)++;
      }
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    exit_code() = failed ? 1 : 0;
  });
}

}  // namespace dsv4::cli
