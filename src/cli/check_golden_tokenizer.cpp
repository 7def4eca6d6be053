// `dsv4 check-golden tokenizer --tokenizer FILE CASES.jsonl...`: runs encode cases (text -> ids, and
// the decode round trip) and decode cases (ids -> text), detected per line by their fields.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "text/tokenizer.h"

namespace dsv4::cli {

namespace {

using json = nlohmann::json;

// Printable, bounded rendering of text for diffs: escapes controls and non-ASCII stays as is.
std::string show(const std::string& s, size_t from, size_t len = 40) {
  std::string out = from > 0 ? "…" : "";
  const size_t end = std::min(s.size(), from + len);
  for (size_t i = from; i < end; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (end < s.size()) out += "…";
  return "\"" + out + "\"";
}

std::string show_ids(const std::vector<int32_t>& ids, size_t from, size_t len = 8) {
  std::string out = from > 0 ? "[… " : "[";
  const size_t end = std::min(ids.size(), from + len);
  for (size_t i = from; i < end; ++i) out += (i > from ? ", " : "") + std::to_string(ids[i]);
  out += end < ids.size() ? " …]" : "]";
  return out + " (" + std::to_string(ids.size()) + " ids)";
}

std::string diff_ids(const std::vector<int32_t>& want, const std::vector<int32_t>& got) {
  size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  const size_t from = i > 2 ? i - 2 : 0;
  return "first difference at index " + std::to_string(i) + ": expected " + show_ids(want, from) + ", got " +
         show_ids(got, from);
}

std::string diff_text(const std::string& want, const std::string& got) {
  size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  const size_t from = i > 10 ? i - 10 : 0;
  return "first difference at byte " + std::to_string(i) + ": expected " + show(want, from) + ", got " +
         show(got, from);
}

struct Totals {
  int passed = 0;
  int failed = 0;
};

// Returns an empty string on success, else the failure description.
std::string run_case(const text::Tokenizer& tok, const json& c) {
  if (!c.contains("text") || !c["text"].is_string() || !c.contains("ids") || !c["ids"].is_array()) {
    return "case lacks string \"text\" / array \"ids\"";
  }
  const std::string& text = c["text"].get_ref<const std::string&>();
  const auto ids = c["ids"].get<std::vector<int32_t>>();
  try {
    if (c.contains("skip_special_tokens")) {  // decode case
      const std::string got = tok.decode(ids, c["skip_special_tokens"].get<bool>());
      return got == text ? "" : "decode: " + diff_text(text, got);
    }
    // Encode case. add_special_tokens=true would add nothing for V4 (add_bos/eos_token false).
    std::string problems;
    const auto got = tok.encode(text, true);
    if (got != ids) problems += "encode: " + diff_ids(ids, got);
    const std::string back = tok.decode(ids, false);
    if (back != text) problems += std::string(problems.empty() ? "" : "; ") + "round trip: " + diff_text(text, back);
    return problems;
  } catch (const std::exception& e) {
    return std::string("error: ") + e.what();
  }
}

void run_file(const text::Tokenizer& tok, const std::string& path, Totals& totals) {
  std::ifstream f(path);
  if (!f) throw Error(path + ": cannot open file");
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::string name = path + ":" + std::to_string(lineno);
    std::string problem;
    try {
      const json c = json::parse(line);
      if (c.is_object() && c.contains("name") && c["name"].is_string()) name = c["name"].get<std::string>();
      problem = c.is_object() ? run_case(tok, c) : "line is not a JSON object";
    } catch (const json::exception& e) {
      problem = std::string("bad case line: ") + e.what();
    }
    if (problem.empty()) {
      ++totals.passed;
    } else {
      ++totals.failed;
      std::printf("FAIL %s: %s\n", name.c_str(), problem.c_str());
    }
  }
}

}  // namespace

void register_check_golden_tokenizer(CLI::App& check_golden) {
  auto* cmd = check_golden.add_subcommand(
      "tokenizer", "Golden tokenizer cases: encode (text, ids) and decode (ids, skip_special_tokens, text) JSONL");
  static std::string tokenizer_path;
  static std::vector<std::string> case_files;
  cmd->add_option("--tokenizer", tokenizer_path, "tokenizer.json to load")->required()->check(CLI::ExistingFile);
  cmd->add_option("cases", case_files, "JSONL case files (cases.jsonl, decode_cases.jsonl)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->callback([] {
    const auto tok = text::Tokenizer::from_file(tokenizer_path);
    Totals totals;
    for (const std::string& path : case_files) run_file(*tok, path, totals);
    std::printf("%d passed, %d failed\n", totals.passed, totals.failed);
    exit_code() = totals.failed == 0 ? 0 : 1;
  });
}

}  // namespace dsv4::cli
