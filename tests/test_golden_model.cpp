// Golden conformance: every case under shared/golden/model, produced with DeepSeek's reference code.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "model/golden.h"

using namespace dsv4;

namespace {

void run_case(const std::string& dir) {
  GoldenOptions opt;
  opt.threads = 2;
  const GoldenReport r = run_golden_case(dir, opt);
  ASSERT_FALSE(r.checks.empty());
  for (const GoldenCheck& c : r.checks)
    EXPECT_TRUE(c.pass) << r.case_name << ": " << c.name << " " << c.metric << " = " << c.value << " (limit " << c.limit
                        << ") " << c.detail;
}

}  // namespace

TEST(GoldenModel, FlashMini) { run_case(std::string(DSV4_SHARED_DIR) + "/golden/model/flash-mini"); }
TEST(GoldenModel, ProMini) { run_case(std::string(DSV4_SHARED_DIR) + "/golden/model/pro-mini"); }

TEST(GoldenModel, EveryCaseFolderIsCovered) {
  // A new case folder must get its own test above (it is always run by `dsv4 check-golden model`).
  std::set<std::string> names;
  for (const std::string& d : find_golden_cases(std::string(DSV4_SHARED_DIR) + "/golden/model"))
    names.insert(std::filesystem::path(d).filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"flash-mini", "pro-mini"}));
}
