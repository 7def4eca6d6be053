// `dsv4 check-golden encoding [--tokenizer FILE] PATH...`: renders every golden encoding case and
// compares the prompt bytes (and, with a tokenizer, the token ids) with the reference's.
// PATH: an official fixture folder (manifest.json), generated cases.jsonl, errors.jsonl or
// api_prompt_tokens.jsonl; the kind of each line is recognised by its keys.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "text/chat_format.h"
#include "text/json_py.h"
#include "text/tokenizer.h"

namespace dsv4::cli {

namespace {

namespace fs = std::filesystem;
using text::json_py::Json;

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw dsv4::Error("cannot open " + p.string());
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Printable excerpt: escapes control bytes, cut on UTF-8 character boundaries.
std::string excerpt(const std::string& s, std::size_t from, std::size_t to) {
  auto is_cont = [&](std::size_t i) { return i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80; };
  to = std::min(to, s.size());
  while (from > 0 && is_cont(from)) --from;
  while (to < s.size() && is_cont(to)) ++to;
  std::string out;
  for (std::size_t i = from; i < to; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\x%02x", c); out += b; }
    else out += static_cast<char>(c);
  }
  return out;
}

std::string text_diff(const std::string& expected, const std::string& got) {
  std::size_t i = 0;
  while (i < expected.size() && i < got.size() && expected[i] == got[i]) ++i;
  std::size_t from = i > 40 ? i - 40 : 0;
  std::ostringstream ss;
  ss << "    first difference at byte " << i << " (expected " << expected.size() << " bytes, got "
     << got.size() << ")\n"
     << "    expected: ..." << excerpt(expected, from, i + 40) << "...\n"
     << "    got:      ..." << excerpt(got, from, i + 40) << "...\n";
  return ss.str();
}

std::string ids_diff(const std::vector<int32_t>& expected, const std::vector<int32_t>& got) {
  std::size_t i = 0;
  while (i < expected.size() && i < got.size() && expected[i] == got[i]) ++i;
  auto window = [&](const std::vector<int32_t>& v) {
    std::string s;
    std::size_t from = i > 4 ? i - 4 : 0;
    for (std::size_t k = from; k < std::min(v.size(), i + 5); ++k) s += (k == i ? "[" : "") + std::to_string(v[k]) + (k == i ? "] " : " ");
    return s;
  };
  std::ostringstream ss;
  ss << "    ids differ at index " << i << " (expected " << expected.size() << " ids, got " << got.size()
     << ")\n    expected: " << window(expected) << "\n    got:      " << window(got) << "\n";
  return ss.str();
}

std::vector<int32_t> ids_of(const Json& arr) {
  std::vector<int32_t> ids;
  for (const auto& v : arr) ids.push_back(v.get<int32_t>());
  return ids;
}

struct Runner {
  const text::Tokenizer* tok = nullptr;
  text::PromptFormatConfig config;  // the golden data come from the preview encoder
  int passed = 0, failed = 0;

  void fail(const std::string& name, const std::string& why) {
    ++failed;
    std::printf("FAIL %s\n%s", name.c_str(), why.c_str());
    if (!why.empty() && why.back() != '\n') std::printf("\n");
  }

  // Render + compare text, then ids.
  void check_render(const std::string& name, const std::string& expected, const Json* expected_ids,
                    const std::function<std::string()>& render) {
    std::string got;
    try {
      got = render();
    } catch (const dsv4::Error& e) {
      fail(name, std::string("    render threw: ") + e.what());
      return;
    }
    if (got != expected) {
      fail(name, text_diff(expected, got));
      return;
    }
    if (tok && expected_ids) {
      std::vector<int32_t> ids;
      try {
        ids = tok->encode(got, true);
      } catch (const dsv4::Error& e) {
        fail(name, std::string("    tokenize threw: ") + e.what());
        return;
      }
      std::vector<int32_t> want = ids_of(*expected_ids);
      if (ids != want) {
        fail(name, ids_diff(want, ids));
        return;
      }
    }
    ++passed;
  }

  void run_line(const Json& c, const std::string& where) {
    const std::string name = c.contains("name") ? c["name"].get<std::string>() : where;
    if (c.contains("expected_error")) {
      try {
        const Json& in = c.at("input");
        text::RenderOptions opt = text::render_options_from_json(in.value("options", Json()));
        Json ctx = in.contains("options") ? in["options"].value("context", Json()) : Json();
        std::string out = text::render_prompt_json(in.at("messages"), opt, config, ctx);
        fail(name, "    expected rejection (" + c["expected_error"].get<std::string>() + "), but rendered " +
                       std::to_string(out.size()) + " bytes");
      } catch (const dsv4::Error&) {
        ++passed;
      }
    } else if (c.contains("request_messages")) {
      text::RenderOptions opt;
      opt.thinking_mode = text::parse_thinking_mode(c.at("thinking_mode").get<std::string>());
      check_render(name, c.at("rendered").get<std::string>(), c.contains("expected_ids") ? &c["expected_ids"] : nullptr,
                   [&] { return text::render_prompt_json(c.at("request_messages"), opt, config); });
    } else if (c.contains("input") && c.contains("expected")) {
      const Json& in = c["input"];
      check_render(name, c["expected"].get<std::string>(), c.contains("expected_ids") ? &c["expected_ids"] : nullptr,
                   [&] {
                     const Json opts = in.value("options", Json());
                     text::RenderOptions opt = text::render_options_from_json(opts);
                     Json ctx = opts.is_object() ? opts.value("context", Json()) : Json();
                     return text::render_prompt_json(in.at("messages"), opt, config, ctx);
                   });
    } else {
      fail(name, "    unrecognised case shape");
    }
  }

  void run_jsonl(const fs::path& p) {
    std::istringstream in(read_file(p));
    std::string line;
    int n = 0;
    while (std::getline(in, line)) {
      ++n;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      std::string where = p.filename().string() + ":" + std::to_string(n);
      Json c;
      try {
        c = text::json_py::parse(line);
      } catch (const dsv4::Error& e) {
        fail(where, std::string("    bad JSON line: ") + e.what());
        continue;
      }
      try {
        run_line(c, where);
      } catch (const std::exception& e) {  // a malformed case, not a renderer failure
        fail(where, std::string("    malformed case: ") + e.what());
      }
    }
  }

  void run_official(const fs::path& dir) {
    Json manifest = text::json_py::parse(read_file(dir / "manifest.json"));
    for (const Json& e : manifest) {
      const std::string input = e.at("input").get<std::string>();
      std::string expected = read_file(dir / e.at("output").get<std::string>());
      check_render("official/" + input, expected, e.contains("expected_ids") ? &e["expected_ids"] : nullptr, [&] {
        Json data = text::json_py::parse(read_file(dir / input));
        Json messages;
        if (data.is_object()) {  // {tools, messages}: the harness attaches tools to messages[0]
          messages = data.at("messages");
          if (data.contains("tools") && !messages.empty()) messages[0]["tools"] = data["tools"];
        } else {
          messages = data;
        }
        Json opts = e.value("options", Json::object());
        opts["thinking_mode"] = e.at("thinking_mode");
        text::RenderOptions opt = text::render_options_from_json(opts);
        return text::render_prompt_json(messages, opt, config, opts.value("context", Json()));
      });
    }
  }

  void run_path(const std::string& path) {
    fs::path p(path);
    if (fs::is_directory(p)) {
      if (!fs::exists(p / "manifest.json")) throw dsv4::Error(path + ": no manifest.json in this folder");
      run_official(p);
    } else if (fs::is_regular_file(p)) {
      run_jsonl(p);
    } else {
      throw dsv4::Error(path + ": no such file or folder");
    }
  }
};

}  // namespace

void register_check_golden_encoding(CLI::App& check_golden) {
  auto* cmd = check_golden.add_subcommand("encoding", "Golden prompt-rendering cases (DeepSeek-V4 encoder)");
  auto tokenizer_path = std::make_shared<std::string>();
  auto paths = std::make_shared<std::vector<std::string>>();
  cmd->add_option("--tokenizer", *tokenizer_path, "tokenizer.json: also compare token ids");
  cmd->add_option("paths", *paths, "official fixture folder, cases.jsonl, errors.jsonl or api_prompt_tokens.jsonl")
      ->required();
  cmd->callback([tokenizer_path, paths] {
    std::unique_ptr<text::Tokenizer> tok;
    if (!tokenizer_path->empty()) tok = text::Tokenizer::from_file(*tokenizer_path);
    Runner r;
    r.tok = tok.get();
    for (const std::string& p : *paths) r.run_path(p);
    std::printf("%d passed, %d failed\n", r.passed, r.failed);
    if (r.failed > 0) exit_code() = 1;
  });
}

}  // namespace dsv4::cli
