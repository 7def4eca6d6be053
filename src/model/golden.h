// Runner for golden model cases produced with DeepSeek's reference code (shared/golden/model):
// last-position logits of one-shot prefills, teacher-forced decode steps, MTP logits, and the
// per-block teacher-forced checks on the debug dumps. Used by `dsv4 check-golden model` and tests.
#pragma once
#include <functional>
#include <string>
#include <vector>

namespace dsv4 {

struct GoldenCheck {
  std::string name;    // e.g. "prefill_logits", "block2.out", "block2.indexer_topk"
  std::string metric;  // what `value` is
  double value = 0;
  double limit = 0;
  bool pass = false;
  std::string detail;
};

struct GoldenReport {
  std::string case_name;
  std::vector<GoldenCheck> checks;
  bool pass() const;
};

struct GoldenOptions {
  int threads = 0;
  bool logits = true;  // prefill / decode / MTP logits groups
  bool blocks = true;  // per-block teacher-forced checks (cases with debug.* dumps)
  std::function<void(const std::string&)> progress;  // optional progress lines
};

// Runs one case folder (config.json, model.safetensors, case.json, expected.safetensors).
GoldenReport run_golden_case(const std::string& dir, const GoldenOptions& opt);

// Case folders under `path`: the folder itself if it holds case.json, else its subfolders that do.
std::vector<std::string> find_golden_cases(const std::string& path);

}  // namespace dsv4
