// Output parser: golden parity (strict), lenient degradation per malformed category, split
// invariance of the event stream, hold-back behaviour, UTF-8 robustness.
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "text/output_parser.h"

namespace {

using dsv4::text::coalesce;
using dsv4::text::EventType;
using dsv4::text::FinishReason;
using dsv4::text::OutputEvent;
using dsv4::text::OutputParser;
using dsv4::text::OutputParserOptions;
using dsv4::text::OutputStart;
using dsv4::text::ParsedMessage;
using dsv4::text::ParseMode;
using dsv4::text::parse_completion;
using Json = nlohmann::ordered_json;

const std::string kEos = "<｜end▁of▁sentence｜>";

Json load_cases(const char* file) {
  const std::string path = std::string(DSV4_SHARED_DIR) + "/golden/encoding/parse/" + file;
  std::ifstream f(path, std::ios::binary);
  if (!f) ADD_FAILURE() << "cannot open " << path;
  std::stringstream ss;
  ss << f.rdbuf();
  return Json::parse(ss.str());
}

const Json& valid_cases() {
  static const Json j = load_cases("valid.json");
  return j;
}
const Json& malformed_cases() {
  static const Json j = load_cases("malformed.json");
  return j;
}

OutputParserOptions options(OutputStart start, ParseMode mode) {
  OutputParserOptions o;
  o.start = start;
  o.mode = mode;
  o.make_tool_call_id = [](std::size_t i) { return "call_" + std::to_string(i); };
  return o;
}

struct ParseRun {
  std::vector<OutputEvent> events;
  bool failed = false;
  std::string error;
};

ParseRun run_chunks(const std::vector<std::string>& chunks, const OutputParserOptions& o) {
  OutputParser p(o);
  ParseRun r;
  for (const auto& c : chunks) p.feed(c, r.events);
  p.finish(r.events);
  r.failed = p.failed();
  r.error = p.error();
  return r;
}

ParseRun run_text(const std::string& text, const OutputParserOptions& o) { return run_chunks({text}, o); }

ParsedMessage assemble(const std::vector<OutputEvent>& events) {
  dsv4::text::MessageAssembler a;
  a.apply(events);
  return a.message();
}

ParsedMessage lenient(const std::string& text, OutputStart start = OutputStart::kContent) {
  return parse_completion(text, start, /*strict=*/false);
}

std::vector<std::string> split_bytes(const std::string& s) {
  std::vector<std::string> out;
  for (char c : s) out.emplace_back(1, c);
  return out;
}

std::vector<std::string> split_chars(const std::string& s) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < s.size();) {
    std::size_t n = 1;
    while (i + n < s.size() && (static_cast<unsigned char>(s[i + n]) & 0xC0) == 0x80) ++n;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

std::vector<std::string> split_random(const std::string& s, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::string> out;
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = 1 + rng() % 12;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

void expect_matches_golden(const Json& c, const ParsedMessage& m) {
  const Json& e = c.at("expected");
  EXPECT_EQ(m.content, e.at("content").get<std::string>());
  EXPECT_EQ(m.reasoning_content, e.at("reasoning_content").get<std::string>());
  const Json& calls = e.at("tool_calls");
  ASSERT_EQ(m.tool_calls.size(), calls.size());
  for (std::size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(m.tool_calls[i].name, calls[i]["function"]["name"].get<std::string>());
    EXPECT_EQ(m.tool_calls[i].arguments, calls[i]["function"]["arguments"].get<std::string>());
    EXPECT_TRUE(m.tool_calls[i].complete);
    EXPECT_FALSE(m.tool_calls[i].id.empty());
  }
  // Every golden completion ends with EOS, so the finish reason follows from the calls.
  EXPECT_EQ(m.finish_reason, calls.empty() ? FinishReason::kStop : FinishReason::kToolCalls);
}

// ---- golden parity ----

TEST(OutputParserGolden, StrictMatchesReferenceOnValidCases) {
  ASSERT_GT(valid_cases().size(), 50u);
  for (const Json& c : valid_cases()) {
    SCOPED_TRACE(c["name"].get<std::string>());
    ParsedMessage m;
    ASSERT_NO_THROW(m = parse_completion(c["completion"].get<std::string>(),
                                         c["thinking_mode"].get<std::string>(), true));
    expect_matches_golden(c, m);
  }
}

TEST(OutputParserGolden, LenientGivesTheSameParseOnValidCases) {
  for (const Json& c : valid_cases()) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const auto start = dsv4::text::output_start_for(c["thinking_mode"].get<std::string>());
    const std::string text = c["completion"].get<std::string>();
    expect_matches_golden(c, parse_completion(text, start, false));
    // The event streams of both modes agree too (ids are deterministic here).
    EXPECT_EQ(coalesce(run_text(text, options(start, ParseMode::kStrict)).events),
              coalesce(run_text(text, options(start, ParseMode::kLenient)).events));
  }
}

TEST(OutputParserGolden, StrictRejectsMalformedCases) {
  ASSERT_GT(malformed_cases().size(), 15u);
  for (const Json& c : malformed_cases()) {
    SCOPED_TRACE(c["name"].get<std::string>());
    EXPECT_THROW(parse_completion(c["completion"].get<std::string>(), c["thinking_mode"].get<std::string>(), true),
                 dsv4::Error);
  }
}

// ---- lenient behaviour per malformed category (the table in docs/output-parsing.md) ----

struct CallExpect {
  std::string name;
  std::string arguments;
  bool complete = true;
};
struct LenientExpect {
  std::string content;
  std::string reasoning;
  std::vector<CallExpect> calls;
  FinishReason finish;
};

const std::string kWeather = R"({"city": "Beijing", "unit": "celsius"})";

TEST(OutputParserLenient, MalformedCasesDegradeAsDocumented) {
  const std::map<std::string, LenientExpect> table = {
      {"malformed/missing_think_end", {"", "I was thinking and got cut off", {}, FinishReason::kStop}},
      {"malformed/truncated_reasoning_no_eos", {"", "Partial reasoning", {}, FinishReason::kLength}},
      {"malformed/missing_eos", {"An answer without EOS", "", {}, FinishReason::kLength}},
      {"malformed/thinking_missing_eos", {"answer", "r", {}, FinishReason::kLength}},
      {"malformed/dsml_inside_reasoning",
       {"", "Let me call.", {{"get_weather", kWeather}}, FinishReason::kToolCalls}},
      {"malformed/truncated_in_value",
       {"", "", {{"get_weather", R"({"city": "Bei)", false}}, FinishReason::kLength}},
      {"malformed/truncated_before_block_end",
       {"", "", {{"get_weather", R"({"city": "Beijing"})"}}, FinishReason::kLength}},
      {"malformed/missing_string_attr", {"", "", {{"f", R"({"a": 1})"}}, FinishReason::kToolCalls}},
      {"malformed/no_newline_after_invoke", {"", "", {{"f", R"({"a": "1"})"}}, FinishReason::kToolCalls}},
      {"malformed/no_newline_after_block_open", {"", "", {{"f", "{}"}}, FinishReason::kToolCalls}},
      {"malformed/content_after_block", {"", "", {{"get_weather", kWeather}}, FinishReason::kToolCalls}},
      {"malformed/text_after_eos", {"answer", "", {}, FinishReason::kStop}},
      {"malformed/second_think_end_in_content", {"answermore", "r", {}, FinishReason::kStop}},
      {"malformed/think_end_in_chat_content", {"answer", "", {}, FinishReason::kStop}},
      {"malformed/dsml_single_newline", {"x", "", {{"get_weather", kWeather}}, FinishReason::kToolCalls}},
      {"malformed/bos_in_content", {"answer", "", {}, FinishReason::kStop}},
      {"malformed/value_contains_closer",
       {"", "", {{"f", R"({"a": "x</｜DSML｜parameter>y"})"}}, FinishReason::kToolCalls}},
  };
  std::size_t checked = 0;
  for (const Json& c : malformed_cases()) {
    const std::string name = c["name"].get<std::string>();
    SCOPED_TRACE(name);
    const auto start = dsv4::text::output_start_for(c["thinking_mode"].get<std::string>());
    ParsedMessage m;
    ASSERT_NO_THROW(m = parse_completion(c["completion"].get<std::string>(), start, false));
    const auto it = table.find(name);
    if (it == table.end()) continue;  // roundtrip cases: checked in UnescapedValueWithCloserRoundTrips
    ++checked;
    const LenientExpect& e = it->second;
    EXPECT_EQ(m.content, e.content);
    EXPECT_EQ(m.reasoning_content, e.reasoning);
    EXPECT_EQ(m.finish_reason, e.finish);
    ASSERT_EQ(m.tool_calls.size(), e.calls.size());
    for (std::size_t i = 0; i < e.calls.size(); ++i) {
      EXPECT_EQ(m.tool_calls[i].name, e.calls[i].name);
      EXPECT_EQ(m.tool_calls[i].arguments, e.calls[i].arguments);
      EXPECT_EQ(m.tool_calls[i].complete, e.calls[i].complete);
    }
  }
  EXPECT_EQ(checked, table.size());
}

TEST(OutputParserLenient, UnescapedValueWithCloserRoundTrips) {
  // The encoder renders values raw; a value containing "</｜DSML｜parameter>" is recovered whole.
  for (const Json& c : malformed_cases()) {
    const std::string name = c["name"].get<std::string>();
    if (name.rfind("roundtrip/", 0) != 0) continue;
    SCOPED_TRACE(name);
    const auto m = parse_completion(c["completion"].get<std::string>(), c["thinking_mode"].get<std::string>(), false);
    ASSERT_EQ(m.tool_calls.size(), 1u);
    EXPECT_EQ(m.finish_reason, FinishReason::kToolCalls);
    const Json args = Json::parse(m.tool_calls[0].arguments);
    EXPECT_EQ(args["tags"], "<think>x</think> <｜User｜> </｜DSML｜parameter>");
    EXPECT_EQ(args["multiline"], "line1\nline2\r\n\tindented");
    EXPECT_EQ(args["big"].dump(), "12345678901234567890");
    EXPECT_EQ(args["nested_unicode"]["esc"], "a\x01" "b");
    EXPECT_EQ(args.size(), 18u);
  }
}

TEST(OutputParserLenient, UnclosedReasoningCanBeSurfacedAsContent) {
  OutputParserOptions o = options(OutputStart::kReasoning, ParseMode::kLenient);
  o.unclosed_reasoning_as_content = true;
  auto m = assemble(run_text("all of it" + kEos, o).events);
  EXPECT_EQ(m.reasoning_content, "all of it");
  EXPECT_EQ(m.content, "all of it");
  EXPECT_EQ(m.finish_reason, FinishReason::kStop);
  // Not when cut by max_tokens, and not when reasoning closed normally.
  m = assemble(run_text("cut", o).events);
  EXPECT_EQ(m.content, "");
  EXPECT_EQ(m.finish_reason, FinishReason::kLength);
  m = assemble(run_text("r</think>a" + kEos, o).events);
  EXPECT_EQ(m.content, "a");
}

TEST(OutputParserLenient, BlockOpenerVariants) {
  const std::string block = "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEos;
  for (const std::string sep : {"", "\n", "\n\n", "\n\n\n"}) {
    SCOPED_TRACE(sep.size());
    const auto m = lenient("Text." + sep + block);
    EXPECT_EQ(m.content, sep.size() == 3 ? "Text.\n" : "Text.");  // exactly two newlines belong to the opener
    ASSERT_EQ(m.tool_calls.size(), 1u);
    EXPECT_EQ(m.tool_calls[0].arguments, "{}");
  }
  // Missing first bar is not DSML (valid.json: missing_first_bar_dsml_is_content).
  const auto m = lenient("a\n\n<DSML｜tool_calls>\n</DSML｜tool_calls>" + kEos);
  EXPECT_EQ(m.content, "a\n\n<DSML｜tool_calls>\n</DSML｜tool_calls>");
  EXPECT_TRUE(m.tool_calls.empty());
}

TEST(OutputParserLenient, BrokenDsmlIsKeptAsContent) {
  // Invoke header that cannot be parsed: the whole invoke comes back verbatim as content.
  const std::string bad = "<｜DSML｜invoke nome=\"f\">\n<｜DSML｜parameter name=\"a\" string=\"true\">1</｜DSML｜parameter>\n</｜DSML｜invoke>";
  auto m = lenient("\n\n<｜DSML｜tool_calls>\n" + bad + "\n</｜DSML｜tool_calls>" + kEos);
  EXPECT_EQ(m.content, bad);
  EXPECT_TRUE(m.tool_calls.empty());
  EXPECT_EQ(m.finish_reason, FinishReason::kStop);
  // Stray invoke without a block opener stays text.
  m = lenient("see <｜DSML｜invoke name=\"f\"> here" + kEos);
  EXPECT_EQ(m.content, "see <｜DSML｜invoke name=\"f\"> here");
  // Junk between invokes is content, the calls still parse.
  m = lenient("\n\n<｜DSML｜tool_calls>\nnote\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEos);
  EXPECT_EQ(m.content, "note");
  ASSERT_EQ(m.tool_calls.size(), 1u);
  // Parameter without name: markup kept as content, the call continues.
  m = lenient("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter>v</｜DSML｜parameter>\n"
              "<｜DSML｜parameter name=\"b\" string=\"false\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEos);
  EXPECT_EQ(m.content, "<｜DSML｜parameter>v</｜DSML｜parameter>");
  ASSERT_EQ(m.tool_calls.size(), 1u);
  EXPECT_EQ(m.tool_calls[0].arguments, R"({"b": 2})");
}

TEST(OutputParserLenient, MissingStringAttributeIsTypedByContent) {
  const auto m = lenient("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
                         "<｜DSML｜parameter name=\"a\">[1, 2]</｜DSML｜parameter>\n"
                         "<｜DSML｜parameter name=\"b\">ls -la</｜DSML｜parameter>\n"
                         "<｜DSML｜parameter name=\"c\" string=\"true\">x</｜DSML｜parameter>\n"
                         "</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEos);
  ASSERT_EQ(m.tool_calls.size(), 1u);
  EXPECT_EQ(m.tool_calls[0].arguments, R"({"a": [1, 2], "b": "ls -la", "c": "x"})");
}

TEST(OutputParserLenient, DuplicateParametersAreKeptInOrder) {
  const std::string text = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
                           "<｜DSML｜parameter name=\"a\" string=\"true\">1</｜DSML｜parameter>\n"
                           "<｜DSML｜parameter name=\"a\" string=\"true\">2</｜DSML｜parameter>\n"
                           "</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEos;
  EXPECT_THROW(parse_completion(text, OutputStart::kContent, true), dsv4::Error);
  EXPECT_EQ(lenient(text).tool_calls.at(0).arguments, R"({"a": "1", "a": "2"})");
}

TEST(OutputParserLenient, EndsAtBlockCloseAndIgnoresTheRest) {
  OutputParser p(options(OutputStart::kContent, ParseMode::kLenient));
  auto ev = p.feed("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>");
  EXPECT_TRUE(p.ended());  // the server may stop generating here
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev.back().type, EventType::kMessageEnd);
  EXPECT_EQ(ev.back().finish, FinishReason::kToolCalls);
  EXPECT_TRUE(p.feed("more text" + kEos).empty());
  EXPECT_TRUE(p.finish().empty());
}

TEST(OutputParserLenient, EosInsideACallEndsTheMessage) {
  const auto m = lenient("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"a\">\n</｜DSML｜invoke>\n"
                         "<｜DSML｜invoke name=\"b\">\n<｜DSML｜parameter name=\"x\" string=\"true\">abc" + kEos);
  ASSERT_EQ(m.tool_calls.size(), 2u);
  EXPECT_TRUE(m.tool_calls[0].complete);
  EXPECT_FALSE(m.tool_calls[1].complete);
  EXPECT_EQ(m.tool_calls[1].arguments, R"({"x": "abc)");
  EXPECT_EQ(m.finish_reason, FinishReason::kToolCalls);
}

TEST(OutputParserLenient, TruncationDropsPartialMarkupButKeepsText) {
  EXPECT_EQ(lenient("Hello\n\n<｜DSML｜tool_ca").content, "Hello");
  EXPECT_EQ(lenient("Hello\n\n<｜DSML｜tool_ca").finish_reason, FinishReason::kLength);
  EXPECT_EQ(lenient("a < b\n\n<").content, "a < b\n\n<");  // could have been markup, but was not
  EXPECT_EQ(lenient("x<｜end▁of").content, "x<｜end▁of");
  const auto m = lenient("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_wea");
  EXPECT_TRUE(m.tool_calls.empty());
  EXPECT_EQ(m.content, "");
  // Cut right after a parameter, inside the next tag: the value stays clean, the call is incomplete.
  const auto c = lenient("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
                         "<｜DSML｜parameter name=\"a\" string=\"true\">1</｜DSML｜parameter>\n<｜DSML｜par");
  ASSERT_EQ(c.tool_calls.size(), 1u);
  EXPECT_EQ(c.tool_calls[0].arguments, R"({"a": "1)");
  EXPECT_FALSE(c.tool_calls[0].complete);
  EXPECT_EQ(c.finish_reason, FinishReason::kLength);
}

TEST(OutputParserLenient, StrayControlTokensAreDropped) {
  auto m = lenient("<think>a<｜begin▁of▁sentence｜>b</think>c" + kEos);
  EXPECT_EQ(m.content, "abc");
  m = parse_completion("x<think>y</think>z" + kEos, OutputStart::kReasoning, false);
  EXPECT_EQ(m.reasoning_content, "xy");
  EXPECT_EQ(m.content, "z");
}

// ---- strict-mode quirks of the reference, reproduced ----

TEST(OutputParserStrict, ReferenceQuirks) {
  const std::string head = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n";
  const std::string param = "<｜DSML｜parameter name=\"a\" string=\"true\">1</｜DSML｜parameter>\n";
  // The reference accepts text that stops right after an invoke header or a parameter line.
  auto m = parse_completion(head, OutputStart::kContent, true);
  ASSERT_EQ(m.tool_calls.size(), 1u);
  EXPECT_EQ(m.tool_calls[0].arguments, "{}");
  EXPECT_EQ(m.finish_reason, FinishReason::kLength);
  m = parse_completion(head + param, OutputStart::kContent, true);
  EXPECT_EQ(m.tool_calls.at(0).arguments, R"({"a": "1"})");
  // ... but not one that stops after "</｜DSML｜invoke>\n".
  EXPECT_THROW(parse_completion(head + param + "</｜DSML｜invoke>\n", OutputStart::kContent, true), dsv4::Error);
  // EOS is optional after the block; the opener without anything after it ends the content.
  m = parse_completion(head + param + "</｜DSML｜invoke>\n</｜DSML｜tool_calls>", OutputStart::kContent, true);
  EXPECT_EQ(m.finish_reason, FinishReason::kToolCalls);
  m = parse_completion("Hi\n\n<｜DSML｜tool_calls", OutputStart::kContent, true);
  EXPECT_EQ(m.content, "Hi");
  // Names are taken raw, quotes included; leading Unicode whitespace before name= is allowed.
  m = parse_completion("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke\u3000name=\"a\"b\">\n\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEos,
                       OutputStart::kContent, true);
  EXPECT_EQ(m.tool_calls.at(0).name, "a\"b");
  // A value may end in "<\n" before the closer: the reference strips both.
  m = parse_completion(head + "<｜DSML｜parameter name=\"a\" string=\"true\">v<\n/｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEos,
                       OutputStart::kContent, true);
  EXPECT_EQ(m.tool_calls.at(0).arguments, R"({"a": "v"})");
  // The key ends at the first string="..." marker.
  m = parse_completion(head + "<｜DSML｜parameter name=\"k\" string=\"false\">\" string=\"true\">x</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEos,
                       OutputStart::kContent, true);
  EXPECT_EQ(m.tool_calls.at(0).arguments, R"({"k": " string="true">x})");
  // Special tokens are fine inside values, not in content or reasoning.
  m = parse_completion(head + "<｜DSML｜parameter name=\"a\" string=\"true\"></think>" + kEos + "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + kEos,
                       OutputStart::kContent, true);
  EXPECT_EQ(m.tool_calls.at(0).arguments, "{\"a\": \"</think>" + kEos + "\"}");
  EXPECT_THROW(parse_completion("a" + kEos + "b</think>c" + kEos, OutputStart::kReasoning, true), dsv4::Error);
  EXPECT_THROW(parse_completion("a<think>b" + kEos, OutputStart::kContent, true), dsv4::Error);
  EXPECT_THROW(parse_completion("a｜DSML｜b" + kEos, OutputStart::kContent, true), dsv4::Error);
  EXPECT_THROW(parse_completion("a" + kEos + kEos, OutputStart::kContent, true), dsv4::Error);
}

// ---- streaming ----

// All golden completions, both modes, split every way: the coalesced event stream (and, in strict
// mode, the verdict) never depends on the split.
TEST(OutputParserStreaming, SplitInvariantOverAllGoldenCases) {
  std::size_t runs = 0;
  for (const Json* cases : {&valid_cases(), &malformed_cases()}) {
    for (const Json& c : *cases) {
      const std::string text = c["completion"].get<std::string>();
      const auto start = dsv4::text::output_start_for(c["thinking_mode"].get<std::string>());
      for (ParseMode mode : {ParseMode::kStrict, ParseMode::kLenient}) {
        SCOPED_TRACE(c["name"].get<std::string>() + (mode == ParseMode::kStrict ? " strict" : " lenient"));
        const auto o = options(start, mode);
        const ParseRun whole = run_text(text, o);
        const auto expected = coalesce(whole.events);
        std::vector<std::vector<std::string>> splits = {split_bytes(text), split_chars(text)};
        for (unsigned seed = 1; seed <= 8; ++seed) splits.push_back(split_random(text, seed));
        for (std::size_t i = 0; i <= text.size(); ++i) splits.push_back({text.substr(0, i), text.substr(i)});
        for (const auto& chunks : splits) {
          const ParseRun r = run_chunks(chunks, o);
          ASSERT_EQ(coalesce(r.events), expected);
          ASSERT_EQ(r.failed, whole.failed);
          ASSERT_EQ(r.error, whole.error);
          ++runs;
        }
      }
    }
  }
  EXPECT_GT(runs, 1000u);
}

TEST(OutputParserStreaming, NoPartialMarkupIsEverEmitted) {
  // Feed byte by byte; at every point, no content/reasoning delta contains a DSML marker or a special
  // token fragment that was later resolved as markup.
  for (const Json& c : valid_cases()) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const std::string text = c["completion"].get<std::string>();
    OutputParser p(options(dsv4::text::output_start_for(c["thinking_mode"].get<std::string>()), ParseMode::kLenient));
    std::string emitted;
    for (char ch : text) {
      for (const auto& e : p.feed(std::string(1, ch))) {
        if (e.type == EventType::kContentDelta || e.type == EventType::kReasoningDelta) emitted += e.text;
        if (e.type == EventType::kToolCallArguments) {
          EXPECT_EQ(e.text.find("｜DSML｜"), std::string::npos);
        }
      }
    }
    const std::string expected = c["expected"]["reasoning_content"].get<std::string>() +
                                 c["expected"]["content"].get<std::string>();
    EXPECT_EQ(emitted, expected);  // never more than the final text, in order
  }
}

TEST(OutputParserStreaming, HoldsBackOnlyWhatCouldBeMarkup) {
  OutputParser p(options(OutputStart::kContent, ParseMode::kLenient));
  const auto text_of = [](const std::vector<OutputEvent>& ev) {
    std::string s;
    for (const auto& e : ev) s += e.text;
    return s;
  };
  EXPECT_EQ(text_of(p.feed("Hello <")), "Hello ");
  EXPECT_EQ(text_of(p.feed("b>")), "<b>");
  EXPECT_EQ(text_of(p.feed("\n")), "");       // could start "\n\n<｜DSML｜tool_calls"
  EXPECT_EQ(text_of(p.feed("\n<｜DSML")), "");
  EXPECT_EQ(text_of(p.feed("｜x")), "\n\n<｜DSML｜x");
  EXPECT_EQ(text_of(p.feed("<｜end▁of▁sent")), "");
  EXPECT_EQ(text_of(p.feed("ence｜>")), "");
  EXPECT_TRUE(p.ended());
}

TEST(OutputParserStreaming, ArgumentFragmentsHaveTheApiShape) {
  OutputParser p(options(OutputStart::kReasoning, ParseMode::kLenient));
  std::vector<OutputEvent> ev;
  for (const auto& ch : split_chars(valid_cases()[4]["completion"].get<std::string>())) p.feed(ch, ev);
  p.finish(ev);
  ev = coalesce(ev);
  ASSERT_EQ(ev.size(), 5u);
  EXPECT_EQ(ev[0].type, EventType::kReasoningDelta);
  EXPECT_EQ(ev[1].type, EventType::kToolCallBegin);
  EXPECT_EQ(ev[1].tool_name, "get_weather");
  EXPECT_EQ(ev[1].tool_id, "call_0");
  EXPECT_EQ(ev[2].type, EventType::kToolCallArguments);
  EXPECT_EQ(ev[2].text, kWeather);
  EXPECT_EQ(ev[3].type, EventType::kToolCallEnd);
  EXPECT_TRUE(ev[3].tool_complete);
  EXPECT_EQ(ev[4].type, EventType::kMessageEnd);
  EXPECT_EQ(ev[4].finish, FinishReason::kToolCalls);
  // String values stream while they are generated, before the parameter closes.
  OutputParser q(options(OutputStart::kContent, ParseMode::kLenient));
  q.feed("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"w\">\n<｜DSML｜parameter name=\"t\" string=\"true\">");
  std::string args;
  for (const auto& e : q.feed("line \"1\"\nline 2")) args += e.text;
  EXPECT_EQ(args, "line \\\"1\\\"\\nline 2");
}

TEST(OutputParserStreaming, DefaultToolCallIdsAreUnique) {
  OutputParser p;  // default options: reasoning start, lenient, random ids
  auto ev = p.feed("r</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"a\">\n</｜DSML｜invoke>\n"
                   "<｜DSML｜invoke name=\"b\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>");
  std::vector<std::string> ids;
  for (const auto& e : ev)
    if (e.type == EventType::kToolCallBegin) ids.push_back(e.tool_id);
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_NE(ids[0], ids[1]);
  EXPECT_EQ(ids[0].rfind("call_", 0), 0u);
  EXPECT_EQ(ids[0].size(), 29u);
}

// ---- UTF-8 ----

TEST(OutputParserUtf8, InvalidBytesBecomeReplacementCharacters) {
  for (ParseMode mode : {ParseMode::kStrict, ParseMode::kLenient}) {
    const std::string text = "a\xff" "b\xe4\xbd" "c\xed\xa0\x80" + kEos;
    const ParseRun whole = run_text(text, options(OutputStart::kContent, mode));
    EXPECT_FALSE(whole.failed);
    const auto m = assemble(whole.events);
    EXPECT_EQ(m.content, "a\uFFFDb\uFFFDc\uFFFD\uFFFD\uFFFD");
    EXPECT_EQ(coalesce(run_chunks(split_bytes(text), options(OutputStart::kContent, mode)).events),
              coalesce(whole.events));
  }
  // An incomplete sequence at the very end is flushed as U+FFFD.
  EXPECT_EQ(lenient("ok\xe4\xbd").content, "ok\uFFFD");
  // Split inside a character: nothing is emitted until it completes.
  OutputParser p(options(OutputStart::kContent, ParseMode::kLenient));
  EXPECT_TRUE(p.feed("\xe4").empty());
  auto ev = p.feed("\xbd\xa0");
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].text, "你");
}

TEST(OutputParserJson, StringsFollowPythonDumps) {
  std::string out;
  dsv4::text::append_json_string(out, "a\"b\\c\n\r\t\b\f\x01\x1f\x7f/é😀\u2028");
  EXPECT_EQ(out, "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\x7f/é😀\u2028\"");
}

TEST(OutputParserApi, ThinkingModeNames) {
  EXPECT_EQ(dsv4::text::output_start_for("thinking"), OutputStart::kReasoning);
  EXPECT_EQ(dsv4::text::output_start_for("chat"), OutputStart::kContent);
  EXPECT_THROW(dsv4::text::output_start_for("Thinking"), dsv4::Error);
  EXPECT_STREQ(dsv4::text::to_string(FinishReason::kToolCalls), "tool_calls");
  EXPECT_STREQ(dsv4::text::to_string(FinishReason::kLength), "length");
  EXPECT_STREQ(dsv4::text::to_string(FinishReason::kStop), "stop");
}

}  // namespace
