// `dsv4 check-golden parse FILE.json...`: runs the strict output parser over golden parse cases
// (shared/golden/encoding/parse/{valid,malformed}.json format). A case with `expected` must parse to
// exactly that message (arguments compared as strings); a case with `expected_error` must be rejected.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "text/output_parser.h"

namespace dsv4::cli {

namespace {

using Json = nlohmann::ordered_json;

Json load_json(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw dsv4::Error("cannot open " + path);
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return Json::parse(ss.str());
  } catch (const Json::exception& e) {
    throw dsv4::Error(path + ": invalid JSON: " + e.what());
  }
}

// JSON-escaped excerpt so control characters and newlines stay visible on one line.
// Cut on UTF-8 character boundaries.
std::string excerpt(const std::string& s, std::size_t from, std::size_t len) {
  const auto is_cont = [&](std::size_t i) {
    return i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80;
  };
  from = std::min(from, s.size());
  std::size_t to = std::min(s.size(), from + len);
  while (from > 0 && is_cont(from)) --from;
  while (to < s.size() && is_cont(to)) ++to;
  std::string out;
  text::append_json_string(out, std::string_view(s).substr(from, to - from));
  return (from > 0 ? "..." : "") + out + (to < s.size() ? "..." : "");
}

// First differing byte with some context on both sides.
std::string short_diff(const std::string& expected, const std::string& got) {
  std::size_t i = 0;
  while (i < expected.size() && i < got.size() && expected[i] == got[i]) ++i;
  const std::size_t from = i > 20 ? i - 20 : 0;
  return "at byte " + std::to_string(i) + ": expected " + excerpt(expected, from, 60) + ", got " +
         excerpt(got, from, 60);
}

std::string string_field(const Json& obj, const char* key) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return {};
  if (!it->is_string()) throw dsv4::Error(std::string("field '") + key + "' is not a string");
  return it->get<std::string>();
}

// Returns the differences between the expected message and what the parser produced.
std::vector<std::string> compare(const Json& expected, const text::ParsedMessage& got) {
  std::vector<std::string> diffs;
  const auto cmp = [&](const std::string& what, const std::string& e, const std::string& g) {
    if (e != g) diffs.push_back(what + " " + short_diff(e, g));
  };
  cmp("content", string_field(expected, "content"), got.content);
  cmp("reasoning_content", string_field(expected, "reasoning_content"), got.reasoning_content);
  const Json calls = expected.value("tool_calls", Json::array());
  if (calls.size() != got.tool_calls.size()) {
    diffs.push_back("tool_calls: expected " + std::to_string(calls.size()) + " calls, got " +
                    std::to_string(got.tool_calls.size()));
    return diffs;
  }
  for (std::size_t i = 0; i < calls.size(); ++i) {
    const Json& fn = calls[i].at("function");
    const std::string prefix = "tool_calls[" + std::to_string(i) + "].";
    cmp(prefix + "name", string_field(fn, "name"), got.tool_calls[i].name);
    cmp(prefix + "arguments", string_field(fn, "arguments"), got.tool_calls[i].arguments);
    if (!got.tool_calls[i].complete) diffs.push_back(prefix + "complete: call reported as cut off");
  }
  return diffs;
}

// Runs one file; returns {passed, failed}.
std::pair<int, int> run_file(const std::string& path) {
  const Json cases = load_json(path);
  if (!cases.is_array()) throw dsv4::Error(path + ": expected a JSON array of cases");
  int passed = 0, failed = 0;
  for (const Json& c : cases) {
    const std::string name = c.value("name", std::string("<unnamed>"));
    std::vector<std::string> problems;
    try {
      const std::string mode = c.at("thinking_mode").get<std::string>();
      const std::string completion = c.at("completion").get<std::string>();
      const bool expect_error = c.contains("expected_error");
      try {
        const text::ParsedMessage msg = text::parse_completion(completion, mode, /*strict=*/true);
        if (expect_error) {
          problems.push_back("accepted, but the reference rejects it (" +
                             c["expected_error"].value("message", std::string()) + ")");
        } else {
          problems = compare(c.at("expected"), msg);
        }
      } catch (const dsv4::Error& e) {
        if (!expect_error) problems.push_back(std::string("rejected: ") + e.what());
      }
    } catch (const Json::exception& e) {
      problems.push_back(std::string("bad case: ") + e.what());
    } catch (const dsv4::Error& e) {
      problems.push_back(std::string("bad case: ") + e.what());
    }
    if (problems.empty()) {
      ++passed;
    } else {
      ++failed;
      std::printf("FAIL %s\n", name.c_str());
      for (const auto& p : problems) std::printf("  %s\n", p.c_str());
    }
  }
  return {passed, failed};
}

}  // namespace

void register_check_golden_parse(CLI::App& check_golden) {
  auto* cmd = check_golden.add_subcommand(
      "parse", "Strict output parser vs. golden parse cases (valid.json / malformed.json format)");
  static std::vector<std::string> files;
  cmd->add_option("files", files, "Golden parse case files")->required()->check(CLI::ExistingFile);
  cmd->callback([] {
    int passed = 0, failed = 0;
    for (const auto& f : files) {
      const auto [p, m] = run_file(f);
      passed += p;
      failed += m;
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    std::fflush(stdout);
    if (failed > 0) exit_code() = 1;
  });
}

}  // namespace dsv4::cli
