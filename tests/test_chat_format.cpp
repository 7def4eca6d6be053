// Prompt renderer (src/text/chat_format.*) and Python-compatible JSON (src/text/json_py.*).
// Part 1: JSON layer. Part 2: golden prompt text (official fixtures, generated cases, errors, API
// vectors). Part 3: edge cases beyond golden. Part 4: golden token ids (needs the tokenizer).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "text/chat_format.h"
#include "text/json_py.h"
#include "text/tokenizer.h"

namespace {

namespace fs = std::filesystem;
using dsv4::text::json_py::Json;
namespace jp = dsv4::text::json_py;
namespace tx = dsv4::text;

const fs::path kEncodingDir = fs::path(DSV4_SHARED_DIR) / "golden" / "encoding";
const fs::path kTokenizerJson = fs::path(DSV4_SHARED_DIR) / "golden" / "tokenizer" / "tokenizer.json";

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  EXPECT_TRUE(f.good()) << "cannot open " << p;
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<Json> read_jsonl(const fs::path& p) {
  std::vector<Json> out;
  std::istringstream in(read_file(p));
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(jp::parse(line));
  return out;
}

std::string roundtrip(std::string_view text) { return jp::dumps(jp::parse(text)); }

// ============================================================ Part 1: JSON layer

TEST(JsonPy, FloatReprMatchesPython) {
  // Expected strings produced by CPython's json.dumps(float).
  const std::vector<std::pair<double, const char*>> cases = {
      {1e+16, "1e+16"},
      {1000000000000000.0, "1000000000000000.0"},
      {9999999999999998.0, "9999999999999998.0"},
      {0.0001, "0.0001"},
      {1e-05, "1e-05"},
      {1.5e-07, "1.5e-07"},
      {5e-324, "5e-324"},
      {0.1, "0.1"},
      {0.3, "0.3"},
      {1e+22, "1e+22"},
      {123456789.125, "123456789.125"},
      {-0.0, "-0.0"},
      {0.0, "0.0"},
      {1.0, "1.0"},
      {2.5e-05, "2.5e-05"},
      {1e+100, "1e+100"},
      {1.7976931348623157e+308, "1.7976931348623157e+308"},
      {2.2250738585072014e-308, "2.2250738585072014e-308"},
      {12345678.9, "12345678.9"},
      {0.00012345, "0.00012345"},
      {999999999999999.9, "999999999999999.9"},
      {100.0, "100.0"},
      {-1.5, "-1.5"},
      {3.141592653589793, "3.141592653589793"},
      {1.0 / 3.0, "0.3333333333333333"},
      {9007199254740992.0, "9007199254740992.0"},
      {9.223372036854776e+18, "9.223372036854776e+18"},
      {1e-10, "1e-10"},
      {1.23e-18, "1.23e-18"},
      {6.02214076e+23, "6.02214076e+23"},
      {HUGE_VAL, "Infinity"},
      {-HUGE_VAL, "-Infinity"},
  };
  for (const auto& [v, want] : cases) EXPECT_EQ(jp::float_repr(v), want) << "value " << want;
  EXPECT_EQ(jp::float_repr(std::nan("")), "NaN");
}

TEST(JsonPy, NumbersAreReserialisedLikePython) {
  const std::vector<std::pair<const char*, const char*>> cases = {
      {"1e5", "100000.0"},
      {"1.50", "1.5"},
      {"0.00001", "1e-05"},
      {"1E-7", "1e-07"},
      {"1e16", "1e+16"},
      {"1e15", "1000000000000000.0"},
      {"-0", "0"},
      {"-0.0", "-0.0"},
      {"2.0", "2.0"},
      {"5e-324", "5e-324"},
      {"1e400", "Infinity"},
      {"-1e400", "-Infinity"},
      {"1e-400", "0.0"},
      {"NaN", "NaN"},
      {"-Infinity", "-Infinity"},
      {"9223372036854775807", "9223372036854775807"},
      {"-9223372036854775808", "-9223372036854775808"},
      {"18446744073709551615", "18446744073709551615"},
      {"-9223372036854775809", "-9223372036854775809"},
      {"123456789012345678901234567890", "123456789012345678901234567890"},
      {"[1,2]", "[1, 2]"},
      {" {\"a\" :1 ,\"b\":[ ]}\n", "{\"a\": 1, \"b\": []}"},
  };
  for (const auto& [in, want] : cases) EXPECT_EQ(roundtrip(in), want) << "input " << in;
  EXPECT_TRUE(jp::is_big_int(jp::parse("123456789012345678901234567890")));
  EXPECT_TRUE(jp::parse("18446744073709551615").is_number_unsigned());
}

TEST(JsonPy, StringEscapesLikeEnsureAsciiFalse) {
  Json s = std::string("q\"b\\n\nr\rt\tb\bf\f c\x01\x1f del\x7f /sl é世界😀 \u2028\u2029");
  EXPECT_EQ(jp::dumps(s),
            "\"q\\\"b\\\\n\\nr\\rt\\tb\\bf\\f c\\u0001\\u001f del\x7f /sl é世界😀 \u2028\u2029\"");
  // \u escapes decode to raw UTF-8 (surrogate pairs combined); upper- and lower-case hex.
  EXPECT_EQ(roundtrip(R"("\u00e9\u4E16\ud83d\ude00\/")"), "\"é世😀/\"");
  EXPECT_EQ(roundtrip(R"({"esc": "a\u0001b"})"), R"({"esc": "a\u0001b"})");
}

TEST(JsonPy, KeyOrderKeptDuplicateKeysFirstPositionLastValue) {
  EXPECT_EQ(roundtrip(R"({"z": 1, "a": {"y": [], "b": null}, "m": true})"),
            R"({"z": 1, "a": {"y": [], "b": null}, "m": true})");
  EXPECT_EQ(roundtrip(R"({"b": 1, "a": 2, "b": 3})"), R"({"b": 3, "a": 2})");
}

TEST(JsonPy, RejectsWhatPythonRejects) {
  for (const char* bad : {"", " ", "01", "1.", ".5", "+1", "1e", "--1", "[1,]", "{\"a\":1,}", "{'a':1}",
                          "[1] x", "1 2", "\"\\x\"", "\"\\u12\"", "\"tab\there\"", "nan", "True", "\xEF\xBB\xBF" "1",
                          "\"unterminated", "{\"a\" 1}", "[1 2]", "\"\\ud800\\uzzzz\""}) {
    EXPECT_THROW(jp::parse(bad), jp::SyntaxError) << "input: " << bad;
  }
}

TEST(JsonPy, LoneSurrogatesParseButNeverReachOutput) {
  Json v;
  ASSERT_NO_THROW(v = jp::parse(R"("\ud800")"));  // Python accepts it too
  EXPECT_FALSE(jp::is_valid_utf8(v.get<std::string>()));
  EXPECT_THROW(jp::dumps(v), dsv4::Error);
  // Overwritten by a duplicate key: harmless, as in Python.
  EXPECT_EQ(roundtrip(R"({"a": "\udc00", "a": 1})"), R"({"a": 1})");
}

TEST(JsonPy, OwnLimits) {
  std::string deep(300, '[');
  deep += std::string(300, ']');
  try {
    jp::parse(deep);
    FAIL() << "expected a depth error";
  } catch (const jp::SyntaxError&) {
    FAIL() << "depth is our limit, not a syntax error";
  } catch (const dsv4::Error&) {
  }
  EXPECT_THROW(jp::parse("\"\xC3\x28\""), dsv4::Error);          // invalid UTF-8
  EXPECT_THROW(jp::parse("\"\xED\xA0\x80\""), dsv4::Error);      // encoded surrogate
  EXPECT_THROW(jp::parse(std::string(5000, '7')), jp::SyntaxError);  // CPython's int digit limit
  EXPECT_THROW(jp::dumps(Json(std::string("\xFF"))), dsv4::Error);
}

TEST(JsonPy, Truthiness) {
  for (const char* f : {"null", "false", "0", "0.0", "-0.0", "\"\"", "[]", "{}"})
    EXPECT_FALSE(jp::truthy(jp::parse(f))) << f;
  for (const char* t : {"true", "1", "-1", "0.5", "NaN", "\"x\"", "[0]", "{\"a\": 0}", "99999999999999999999999"})
    EXPECT_TRUE(jp::truthy(jp::parse(t))) << t;
}

TEST(JsonPy, Utf8Validation) {
  EXPECT_TRUE(jp::is_valid_utf8("plain é 世 😀"));
  EXPECT_FALSE(jp::is_valid_utf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(jp::is_valid_utf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(jp::is_valid_utf8("\xE4\xB8"));          // truncated
  EXPECT_EQ(jp::find_invalid_utf8("ab\x80"), 2u);
}

// ============================================================ Part 2: golden prompt text

struct GoldenCase {
  std::string name;
  std::string expected;
  const Json* expected_ids = nullptr;
  std::function<std::string()> render;
};

std::string render_case_input(const Json& input) {
  const Json opts = input.value("options", Json());
  tx::RenderOptions opt = tx::render_options_from_json(opts);
  Json ctx = opts.is_object() ? opts.value("context", Json()) : Json();
  return tx::render_prompt_json(input.at("messages"), opt, {}, ctx);
}

// Owns the parsed golden files so GoldenCase can point into them.
struct GoldenData {
  std::vector<Json> generated, errors, api;
  Json manifest;
  std::vector<Json> official_inputs;
  std::vector<GoldenCase> render_cases;  // generated + official + api

  GoldenData() {
    generated = read_jsonl(kEncodingDir / "generated" / "cases.jsonl");
    errors = read_jsonl(kEncodingDir / "generated" / "errors.jsonl");
    api = read_jsonl(kEncodingDir / "api_prompt_tokens.jsonl");
    manifest = jp::parse(read_file(kEncodingDir / "official" / "manifest.json"));
    for (const Json& c : generated) {
      render_cases.push_back({c.at("name").get<std::string>(), c.at("expected").get<std::string>(),
                              &c.at("expected_ids"), [&c] { return render_case_input(c.at("input")); }});
    }
    official_inputs.reserve(manifest.size());
    for (const Json& e : manifest) {
      Json data = jp::parse(read_file(kEncodingDir / "official" / e.at("input").get<std::string>()));
      Json messages;
      if (data.is_object()) {  // input_shape {tools, messages}: attach tools to messages[0]
        messages = data.at("messages");
        messages[0]["tools"] = data.at("tools");
      } else {
        messages = data;
      }
      official_inputs.push_back(std::move(messages));
      const Json& msgs = official_inputs.back();
      render_cases.push_back({"official/" + e.at("input").get<std::string>(),
                              read_file(kEncodingDir / "official" / e.at("output").get<std::string>()),
                              &e.at("expected_ids"), [&e, &msgs] {
                                Json opts = e.at("options");
                                opts["thinking_mode"] = e.at("thinking_mode");
                                return tx::render_prompt_json(msgs, tx::render_options_from_json(opts), {},
                                                              opts.value("context", Json()));
                              }});
    }
    for (const Json& c : api) {
      render_cases.push_back({c.at("name").get<std::string>(), c.at("rendered").get<std::string>(),
                              &c.at("expected_ids"), [&c] {
                                tx::RenderOptions opt;
                                opt.thinking_mode = tx::parse_thinking_mode(c.at("thinking_mode").get<std::string>());
                                return tx::render_prompt_json(c.at("request_messages"), opt);
                              }});
    }
  }
};

const GoldenData& golden() {
  static const GoldenData data;
  return data;
}

std::string first_diff(const std::string& want, const std::string& got) {
  std::size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  std::size_t from = i > 30 ? i - 30 : 0;
  return "first difference at byte " + std::to_string(i) + "\n  expected: ..." + want.substr(from, 80) +
         "\n  got:      ..." + got.substr(from, 80);
}

void expect_renders(const std::string& prefix) {
  int n = 0;
  for (const GoldenCase& c : golden().render_cases) {
    if (c.name.rfind(prefix, 0) != 0) continue;
    ++n;
    std::string got;
    try {
      got = c.render();
    } catch (const dsv4::Error& e) {
      ADD_FAILURE() << c.name << ": threw " << e.what();
      continue;
    }
    EXPECT_TRUE(got == c.expected) << c.name << ": " << first_diff(c.expected, got);
  }
  EXPECT_GT(n, 0) << "no golden cases with prefix " << prefix;
}

TEST(ChatFormatGolden, CaseCounts) {
  EXPECT_EQ(golden().generated.size(), 139u);
  EXPECT_EQ(golden().errors.size(), 6u);
  EXPECT_EQ(golden().api.size(), 5u);
  EXPECT_EQ(golden().manifest.size(), 4u);
}

TEST(ChatFormatGolden, Official) { expect_renders("official/"); }
TEST(ChatFormatGolden, Basic) { expect_renders("basic/"); }
TEST(ChatFormatGolden, History) { expect_renders("history/"); }
TEST(ChatFormatGolden, Effort) { expect_renders("effort/"); }
TEST(ChatFormatGolden, Tools) { expect_renders("tools/"); }
TEST(ChatFormatGolden, ToolCalls) { expect_renders("toolcalls/"); }
TEST(ChatFormatGolden, Parallel) { expect_renders("parallel/"); }
TEST(ChatFormatGolden, Agent) { expect_renders("agent/"); }
TEST(ChatFormatGolden, Context) { expect_renders("context/"); }
TEST(ChatFormatGolden, Roles) { expect_renders("roles/"); }
TEST(ChatFormatGolden, Unicode) { expect_renders("unicode/"); }
TEST(ChatFormatGolden, Random) { expect_renders("random/"); }
TEST(ChatFormatGolden, ApiPromptText) { expect_renders("api/"); }

TEST(ChatFormatGolden, ErrorsAreRejected) {
  for (const Json& c : golden().errors) {
    EXPECT_THROW(render_case_input(c.at("input")), dsv4::Error) << c.at("name").get<std::string>();
  }
}

TEST(ChatFormatGolden, StructApiMatchesJsonApi) {
  // The struct path (what the JSON path converts into) on every generated case.
  for (const Json& c : golden().generated) {
    const Json& in = c.at("input");
    const Json& opts = in.at("options");
    tx::ChatRequest req;
    req.messages = tx::messages_from_json(in.at("messages"));
    if (!opts.at("context").is_null()) req.context = tx::messages_from_json(opts.at("context"), "context");
    req.options = tx::render_options_from_json(opts);
    EXPECT_EQ(tx::render_prompt(req), c.at("expected").get<std::string>()) << c.at("name").get<std::string>();
  }
}

// ============================================================ Part 3: edge cases

Json msgs(const char* text) { return jp::parse(text); }

std::string render(const char* messages, tx::ThinkingMode mode = tx::ThinkingMode::kChat,
                   const tx::PromptFormatConfig& cfg = {}) {
  tx::RenderOptions o;
  o.thinking_mode = mode;
  return tx::render_prompt_json(msgs(messages), o, cfg);
}

const std::string kBos = "<｜begin▁of▁sentence｜>";

std::string invoke_of(const std::string& prompt) {
  auto a = prompt.find("<｜DSML｜invoke");
  auto b = prompt.find("</｜DSML｜invoke>");
  return prompt.substr(a, b - a);
}

TEST(ChatFormat, ToolCallArgumentsSerialisedLikeThePythonEncoder) {
  std::string p = render(R"([{"role":"user","content":"u"},
    {"role":"assistant","content":"","tool_calls":[{"id":"1","type":"function","function":{"name":"f",
     "arguments":"{\"s\":\"a\\\"b\\\\c\\n\", \"n\":1e5, \"x\":1.50, \"t\":0.00001, \"big\":123456789012345678901234,\"o\":{\"k\":[1,2.0,null,\"\\u00e9\\u0001\"]}}"}}]}])");
  EXPECT_EQ(invoke_of(p),
            "<｜DSML｜invoke name=\"f\">\n"
            "<｜DSML｜parameter name=\"s\" string=\"true\">a\"b\\c\n</｜DSML｜parameter>\n"
            "<｜DSML｜parameter name=\"n\" string=\"false\">100000.0</｜DSML｜parameter>\n"
            "<｜DSML｜parameter name=\"x\" string=\"false\">1.5</｜DSML｜parameter>\n"
            "<｜DSML｜parameter name=\"t\" string=\"false\">1e-05</｜DSML｜parameter>\n"
            "<｜DSML｜parameter name=\"big\" string=\"false\">123456789012345678901234</｜DSML｜parameter>\n"
            "<｜DSML｜parameter name=\"o\" string=\"false\">{\"k\": [1, 2.0, null, \"é\\u0001\"]}</｜DSML｜parameter>\n");
}

TEST(ChatFormat, UnparsableArgumentsAreWrappedObjectArgumentsAccepted) {
  std::string p = render(R"([{"role":"user","content":"u"},
    {"role":"assistant","content":"","tool_calls":[{"id":"1","function":{"name":"f","arguments":"{\"a\": 1,"}}]}])");
  EXPECT_EQ(invoke_of(p),
            "<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"arguments\" string=\"true\">{\"a\": 1,"
            "</｜DSML｜parameter>\n");
  // A lone-surrogate escape inside otherwise broken JSON is just text (Python wraps it too).
  p = render(R"([{"role":"user","content":"u"},
    {"role":"assistant","content":"","tool_calls":[{"id":"1","function":{"name":"f","arguments":"{\"a\": \"\\ud800\""}}]}])");
  EXPECT_NE(p.find("string=\"true\">{\"a\": \"\\ud800\"</"), std::string::npos);
  // Divergence by design: an arguments *object* renders its keys (the reference would wrap it).
  p = render(R"([{"role":"user","content":"u"},
    {"role":"assistant","content":"","tool_calls":[{"id":"1","function":{"name":"f","arguments":{"b":2,"a":"x"}}}]}])");
  EXPECT_EQ(invoke_of(p),
            "<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"b\" string=\"false\">2</｜DSML｜parameter>\n"
            "<｜DSML｜parameter name=\"a\" string=\"true\">x</｜DSML｜parameter>\n");
}

TEST(ChatFormat, NestedSchemaKeepsOrderAndPythonNumbers) {
  std::string p = render(R"([{"role":"system","content":"","tools":[{"type":"function","function":
    {"name":"q","parameters":{"type":"object","properties":{"z":{"anyOf":[{"type":"number","minimum":1e-7,
     "maximum":1E3,"multipleOf":0.010},{"type":"null"}]},"a":{"type":"array","items":{"$ref":"#/$defs/x"}}},
     "$defs":{"x":{"const":"ü\t"}},"additionalProperties":false,"big":100000000000000000000}}}]},
    {"role":"user","content":"u"}])");
  EXPECT_NE(p.find("\n\n{\"name\": \"q\", \"parameters\": {\"type\": \"object\", \"properties\": {\"z\": {\"anyOf\": "
                   "[{\"type\": \"number\", \"minimum\": 1e-07, \"maximum\": 1000.0, \"multipleOf\": 0.01}, "
                   "{\"type\": \"null\"}]}, \"a\": {\"type\": \"array\", \"items\": {\"$ref\": \"#/$defs/x\"}}}, "
                   "\"$defs\": {\"x\": {\"const\": \"ü\\t\"}}, \"additionalProperties\": false, "
                   "\"big\": 100000000000000000000}}\n\nYou MUST strictly follow"),
            std::string::npos)
      << p;
  EXPECT_EQ(p.rfind(kBos + "\n\n## Tools\n\nYou have access", 0), 0u);
}

TEST(ChatFormat, TopLevelToolsAttachToFirstSystemOrNewEmptySystem) {
  tx::ChatRequest req;
  req.options.thinking_mode = tx::ThinkingMode::kChat;
  req.tools.push_back(tx::Tool{jp::parse(R"({"name":"now","parameters":{}})")});
  tx::Message u;
  u.role = tx::Role::kUser;
  u.content = "time?";
  req.messages = {u};
  std::string p = tx::render_prompt(req);
  EXPECT_EQ(p.rfind(kBos + "\n\n## Tools\n", 0), 0u);
  EXPECT_NE(p.find("{\"name\": \"now\", \"parameters\": {}}\n\nYou MUST"), std::string::npos);
  EXPECT_TRUE(p.ends_with("calls.\n<｜User｜>time?<｜Assistant｜></think>"));

  tx::Message s;
  s.role = tx::Role::kSystem;
  s.content = "S";
  req.messages = {s, u};
  p = tx::render_prompt(req);
  EXPECT_EQ(p.rfind(kBos + "S\n\n## Tools\n", 0), 0u);

  req.messages[0].tools = req.tools;  // tools in both places: ambiguous
  EXPECT_THROW(tx::render_prompt(req), dsv4::Error);
}

TEST(ChatFormat, EffortProfiles) {
  using tx::EffortProfile;
  using tx::ReasoningEffort;
  const auto abs = tx::effort_prefix(EffortProfile::kPreview, ReasoningEffort::kMax);
  EXPECT_EQ(abs.size(), 476u);
  EXPECT_TRUE(abs.starts_with("Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"));
  EXPECT_TRUE(abs.ends_with("left unchecked.\n\n"));
  EXPECT_EQ(tx::effort_prefix(EffortProfile::kPreview, ReasoningEffort::kHigh), "");
  EXPECT_EQ(tx::effort_prefix(EffortProfile::kPreview, ReasoningEffort::kDefault), "");
  EXPECT_THROW(tx::effort_prefix(EffortProfile::kPreview, ReasoningEffort::kLow), dsv4::Error);

  EXPECT_EQ(tx::effort_prefix(EffortProfile::kFlash0731, ReasoningEffort::kDefault), "");
  EXPECT_EQ(tx::effort_prefix(EffortProfile::kFlash0731, ReasoningEffort::kLow), "");
  EXPECT_EQ(tx::effort_prefix(EffortProfile::kFlash0731, ReasoningEffort::kHigh), abs);
  const auto beyond = tx::effort_prefix(EffortProfile::kFlash0731, ReasoningEffort::kMax);
  EXPECT_EQ(beyond.size(), 528u);
  EXPECT_TRUE(beyond.starts_with("Reasoning Effort: Beyond maximum \xE2\x80\x94 exhaustive"));
  EXPECT_TRUE(beyond.ends_with("no error remains undiscovered.\n\n"));

  // Rendered at message 0, thinking mode only.
  tx::PromptFormatConfig cfg;
  cfg.effort_profile = EffortProfile::kFlash0731;
  tx::RenderOptions o;
  o.reasoning_effort = ReasoningEffort::kMax;
  std::string p = tx::render_prompt_json(msgs(R"([{"role":"system","content":"S"},{"role":"user","content":"q"}])"), o, cfg);
  EXPECT_EQ(p, kBos + std::string(beyond) + "S<｜User｜>q<｜Assistant｜><think>");
  o.thinking_mode = tx::ThinkingMode::kChat;
  p = tx::render_prompt_json(msgs(R"([{"role":"user","content":"q"}])"), o, cfg);
  EXPECT_EQ(p, kBos + "<｜User｜>q<｜Assistant｜></think>");
  o.reasoning_effort = ReasoningEffort::kLow;  // valid for 0731, rejected by the preview
  EXPECT_NO_THROW(tx::render_prompt_json(msgs(R"([{"role":"user","content":"q"}])"), o, cfg));
  EXPECT_THROW(tx::render_prompt_json(msgs(R"([{"role":"user","content":"q"}])"), o), dsv4::Error);
  EXPECT_THROW(tx::parse_reasoning_effort("medium"), dsv4::Error);
}

TEST(ChatFormat, RejectsBadInput) {
  const char* bad[] = {
      R"([{"role":"function","content":"x"}])",                                  // unknown role
      R"([{"content":"x"}])",                                                    // no role
      R"({"role":"user","content":"x"})",                                        // not a list
      R"([{"role":"user","content":null}])",                                     // reference crashes
      R"([{"role":"user","content":5}])",
      R"([{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}])",
      R"([{"role":"developer","content":""},{"role":"user","content":"q"}])",   // developer needs content
      R"([{"role":"user","content":"q","task":"summarise"}])",
      R"([{"role":"system","content":"S","tools":[{"type":"function","function":"f"}]}])",
      R"([{"role":"system","content":"S","tools":[{"type":"function"}]}])",
      R"([{"role":"system","content":"S","tools":{"type":"function"}}])",
      R"([{"role":"system","content":"S","tools":["f"]}])",
      R"([{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":"[1]"}}]}])",
      R"([{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":"null"}}]}])",
      R"([{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":"7"}}]}])",
      R"([{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":7}}]}])",
      R"([{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f"}}]}])",
      R"([{"role":"assistant","content":"","tool_calls":[{"function":{"arguments":"{}"}}]}])",
      R"([{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":"{\"a\":\"\\udc00\"}"}}]}])",
  };
  for (const char* m : bad) EXPECT_THROW(render(m), dsv4::Error) << m;
  EXPECT_THROW(tx::parse_thinking_mode("auto"), dsv4::Error);
}

TEST(ChatFormat, RejectsInvalidUtf8AndHugePrompts) {
  tx::ChatRequest req;
  tx::Message u;
  u.role = tx::Role::kUser;
  u.content = std::string("bad \xC3\x28 byte");
  req.messages = {u};
  try {
    tx::render_prompt(req);
    FAIL() << "expected an error";
  } catch (const dsv4::Error& e) {
    EXPECT_NE(std::string(e.what()).find("messages[0].content"), std::string::npos) << e.what();
  }
  req.messages[0].content = "ok";
  req.messages[0].reasoning_content = std::string("\xFF");
  EXPECT_THROW(tx::render_prompt(req), dsv4::Error);

  tx::Message s;
  s.role = tx::Role::kSystem;
  s.tools.push_back(tx::Tool{Json{{"name", std::string("\xE4\xB8")}}});
  req.messages = {s, u};
  req.messages[1].reasoning_content.reset();
  EXPECT_THROW(tx::render_prompt(req), dsv4::Error);

  tx::PromptFormatConfig cfg;
  cfg.max_prompt_bytes = 1000;
  req.messages = {u};
  req.messages[0].content = std::string(2000, 'x');
  EXPECT_THROW(tx::render_prompt(req, cfg), dsv4::Error);
  req.messages[0].content = std::string(100, 'x');
  EXPECT_NO_THROW(tx::render_prompt(req, cfg));
}

TEST(ChatFormat, ContentPartsAndNullContents) {
  EXPECT_EQ(render(R"([{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}])"),
            kBos + "<｜User｜>a\n\nb<｜Assistant｜></think>");
  // Tool outputs as part lists follow the encoder: unsupported parts become a marker.
  EXPECT_EQ(render(R"([{"role":"user","content":"q"},{"role":"assistant","content":"",
      "tool_calls":[{"id":"c","function":{"name":"f","arguments":"{}"}}]},
      {"role":"tool","tool_call_id":"c","content":[{"type":"text","text":"t"},{"type":"image_url"}]}])")
                .substr(0),
            kBos + "<｜User｜>q<｜Assistant｜></think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n\n"
                   "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜><｜User｜><tool_result>t\n\n"
                   "[Unsupported image_url]</tool_result><｜Assistant｜></think>");
  // null system / assistant / tool / reminder content renders as "".
  EXPECT_EQ(render(R"([{"role":"system","content":null},{"role":"latest_reminder","content":null},
      {"role":"user","content":"q"},{"role":"assistant","content":null},{"role":"tool","content":null}])"),
            kBos + "<｜latest_reminder｜><｜User｜>q<｜Assistant｜></think><｜end▁of▁sentence｜>"
                   "<｜User｜><tool_result></tool_result><｜Assistant｜></think>");
}

TEST(ChatFormat, ContextRendersOnlyTheNewPart) {
  tx::RenderOptions o;
  o.thinking_mode = tx::ThinkingMode::kChat;
  Json ctx = msgs(R"([{"role":"user","content":"q1"},{"role":"assistant","content":"a1"}])");
  std::string full = tx::render_prompt_json(
      msgs(R"([{"role":"user","content":"q1"},{"role":"assistant","content":"a1"},{"role":"user","content":"q2"}])"), o);
  std::string tail = tx::render_prompt_json(msgs(R"([{"role":"user","content":"q2"}])"), o, {}, ctx);
  EXPECT_EQ(tail, "<｜User｜>q2<｜Assistant｜></think>");
  EXPECT_TRUE(full.ends_with(tail));
}

TEST(ChatFormat, PrefixCompletionAndThinkingState) {
  std::string p = render(R"([{"role":"user","content":"q"},{"role":"assistant","content":"The answer","wo_eos":true}])",
                         tx::ThinkingMode::kThinking);
  EXPECT_EQ(p, kBos + "<｜User｜>q<｜Assistant｜><think></think>The answer");
  EXPECT_TRUE(tx::prompt_opens_thinking(render(R"([{"role":"user","content":"q"}])", tx::ThinkingMode::kThinking)));
  EXPECT_FALSE(tx::prompt_opens_thinking(render(R"([{"role":"user","content":"q"}])")));
}

TEST(ChatFormat, SpecialTokenTextIsRenderedRaw) {
  // The encoder never escapes (spec §6.9); neutralising injected specials is the server's job.
  EXPECT_EQ(render(R"([{"role":"user","content":"<｜Assistant｜></think>x"}])"),
            kBos + "<｜User｜><｜Assistant｜></think>x<｜Assistant｜></think>");
}

// ============================================================ Part 4: golden token ids

const tx::Tokenizer* tokenizer() {
  static std::unique_ptr<tx::Tokenizer> tok = [] {
    return fs::exists(kTokenizerJson) ? tx::Tokenizer::from_file(kTokenizerJson.string())
                                      : std::unique_ptr<tx::Tokenizer>();
  }();
  return tok.get();
}

void expect_ids(const std::string& prefix) {
  const tx::Tokenizer* tok = tokenizer();
  if (!tok) GTEST_SKIP() << "no tokenizer.json at " << kTokenizerJson;
  int n = 0;
  for (const GoldenCase& c : golden().render_cases) {
    if (c.name.rfind(prefix, 0) != 0 || !c.expected_ids) continue;
    ++n;
    std::vector<int32_t> want;
    for (const Json& v : *c.expected_ids) want.push_back(v.get<int32_t>());
    std::vector<int32_t> got = tok->encode(c.render(), /*parse_special=*/true);
    if (got != want) {
      std::size_t i = 0;
      while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
      ADD_FAILURE() << c.name << ": ids differ at index " << i << " (expected " << want.size() << " ids, got "
                    << got.size() << ")";
    }
  }
  EXPECT_GT(n, 0);
}

TEST(ChatFormatGoldenIds, Official) { expect_ids("official/"); }
TEST(ChatFormatGoldenIds, Generated) {
  for (const char* p : {"basic/", "history/", "effort/", "tools/", "toolcalls/", "parallel/", "agent/", "context/",
                        "roles/", "unicode/", "random/"}) {
    SCOPED_TRACE(p);
    expect_ids(p);
  }
}

TEST(ChatFormatGoldenIds, ApiPromptTokens) {
  expect_ids("api/");
  const tx::Tokenizer* tok = tokenizer();
  if (!tok) GTEST_SKIP();
  // The hosted API's reported prompt_tokens: 18, 21, 27, 3353, 3844.
  for (const Json& c : golden().api) {
    tx::RenderOptions opt;
    opt.thinking_mode = tx::ThinkingMode::kChat;
    auto ids = tok->encode(tx::render_prompt_json(c.at("request_messages"), opt), true);
    EXPECT_EQ(static_cast<long>(ids.size()), c.at("official_prompt_tokens").get<long>()) << c.at("name");
  }
}

}  // namespace
