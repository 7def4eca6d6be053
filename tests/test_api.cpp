// Server API layer without an engine or sockets: request validation and mapping (OpenAI and
// Anthropic), model names, auth, tool-argument coercion, the output pipeline (stop strings, tool
// buffering, reasoning counts) and event -> SSE conversion for both surfaces.
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "api_test_support.h"
#include "server/anthropic_api.h"
#include "server/api_common.h"
#include "server/openai_api.h"
#include "text/json_py.h"

namespace {

using namespace dsv4::server;
using dsv4::text::EventType;
using dsv4::text::OutputEvent;
using dsv4::text::Role;
namespace json_py = dsv4::text::json_py;
using namespace api_test;

const std::string kEos = "<｜end▁of▁sentence｜>";
const std::string kD = "｜DSML｜";

std::string tool_call_text(const std::string& name, const std::string& params) {
  return "\n\n<" + kD + "tool_calls>\n<" + kD + "invoke name=\"" + name + "\">\n" + params + "</" + kD + "invoke>\n</" +
         kD + "tool_calls>" + kEos;
}
std::string param(const std::string& k, const std::string& v, bool str) {
  return "<" + kD + "parameter name=\"" + k + "\" string=\"" + (str ? "true" : "false") + "\">" + v + "</" + kD +
         "parameter>\n";
}

TEST(ApiModels, NamesAliasesAndUnknown) {
  ServerOptions o = opts();
  EXPECT_EQ(resolve_model(o, "deepseek-v4-flash", Surface::kOpenAI).id, "deepseek-v4-flash");
  EXPECT_FALSE(resolve_model(o, "deepseek-v4-flash", Surface::kOpenAI).thinking.has_value());
  EXPECT_EQ(resolve_model(o, "deepseek-chat", Surface::kOpenAI).thinking, false);
  EXPECT_EQ(resolve_model(o, "deepseek-reasoner", Surface::kOpenAI).thinking, true);
  EXPECT_EQ(resolve_model(o, "claude-opus-4-1", Surface::kAnthropic).id, "deepseek-v4-flash");
  EXPECT_EQ(status_of([&] { resolve_model(o, "claude-opus-4-1", Surface::kOpenAI); }), 404);
  EXPECT_EQ(status_of([&] { resolve_model(o, "gpt-4o", Surface::kOpenAI); }), 404);
  o.claude_aliases = false;
  EXPECT_EQ(status_of([&] { resolve_model(o, "claude-x", Surface::kAnthropic); }), 404);
  o.accept_any_model = true;
  EXPECT_EQ(resolve_model(o, "gpt-4o", Surface::kOpenAI).id, "deepseek-v4-flash");
  auto listed = listed_models(opts());
  EXPECT_EQ(listed, (std::vector<std::string>{"deepseek-v4-flash", "deepseek-chat", "deepseek-reasoner"}));
}

TEST(ApiAuth, BearerAndXApiKey) {
  ServerOptions o = opts();
  EXPECT_TRUE(api_key_ok(o, "", ""));  // no keys configured: open
  o.api_keys = {"k1", "k2"};
  EXPECT_TRUE(api_key_ok(o, "Bearer k2", ""));
  EXPECT_TRUE(api_key_ok(o, "bearer k1", ""));
  EXPECT_TRUE(api_key_ok(o, "", "k1"));
  EXPECT_FALSE(api_key_ok(o, "Bearer nope", ""));
  EXPECT_FALSE(api_key_ok(o, "", ""));
  EXPECT_FALSE(api_key_ok(o, "Basic k1", ""));
}

TEST(ApiErrors, Shapes) {
  ApiError e(400, "too long", "invalid_request_error", "messages", "context_length_exceeded");
  e.extra["n_ctx"] = 64;
  Json o = openai_error_body(e);
  EXPECT_EQ(o["error"]["message"], "too long");
  EXPECT_EQ(o["error"]["param"], "messages");
  EXPECT_EQ(o["error"]["code"], "context_length_exceeded");
  EXPECT_EQ(o["error"]["n_ctx"], 64);
  EXPECT_TRUE(openai_error_body(bad_request("x"))["error"]["param"].is_null());
  EXPECT_EQ(anthropic_error_body(ApiError(401, "k"))["error"]["type"], "authentication_error");
  EXPECT_EQ(anthropic_error_body(ApiError(404, "k"))["error"]["type"], "not_found_error");
  EXPECT_EQ(anthropic_error_body(ApiError(503, "k"))["error"]["type"], "overloaded_error");
  EXPECT_EQ(anthropic_error_body(ApiError(413, "k"))["type"], "error");
}

TEST(ApiOpenAIRequest, ThinkingToggles) {
  ServerOptions o = opts();
  const std::string msgs = R"("messages": [{"role": "user", "content": "hi"}])";
  EXPECT_TRUE(parse_openai_chat(body(R"({"model": "deepseek-v4-flash", )" + msgs + "}"), o).thinking);
  EXPECT_FALSE(parse_openai_chat(body(R"({"model": "deepseek-chat", )" + msgs + "}"), o).thinking);
  EXPECT_FALSE(parse_openai_chat(body(R"({"model": "deepseek-chat", "thinking": {"type": "enabled"}, )" + msgs + "}"), o).thinking);
  EXPECT_TRUE(parse_openai_chat(body(R"({"model": "deepseek-reasoner", "thinking": {"type": "disabled"}, )" + msgs + "}"), o).thinking);
  EXPECT_FALSE(parse_openai_chat(body(R"({"model": "deepseek-v4-flash", "thinking": {"type": "disabled"}, )" + msgs + "}"), o).thinking);
  EXPECT_FALSE(parse_openai_chat(body(R"({"model": "deepseek-v4-flash", "chat_template_kwargs": {"enable_thinking": false}, )" + msgs + "}"), o).thinking);
  EXPECT_FALSE(parse_openai_chat(body(R"({"model": "deepseek-v4-flash", "reasoning_effort": "none", )" + msgs + "}"), o).thinking);
  auto r = parse_openai_chat(body(R"({"model": "deepseek-v4-flash", "reasoning_effort": "max", )" + msgs + "}"), o);
  EXPECT_TRUE(r.thinking);
  EXPECT_EQ(r.effort, dsv4::text::ReasoningEffort::kMax);
  EXPECT_EQ(status_of([&] { parse_openai_chat(body(R"({"model": "deepseek-v4-flash", "reasoning_effort": "huge", )" + msgs + "}"), o); }), 422);
}

TEST(ApiOpenAIRequest, EffortProfiles) {
  using E = dsv4::text::ReasoningEffort;
  using P = dsv4::text::EffortProfile;
  EXPECT_EQ(map_effort("high", P::kPreview, "x"), E::kHigh);
  EXPECT_EQ(map_effort("xhigh", P::kPreview, "x"), E::kMax);
  EXPECT_EQ(map_effort("low", P::kPreview, "x"), E::kDefault);  // preview has no low tier
  EXPECT_EQ(map_effort("low", P::kFlash0731, "x"), E::kLow);
  EXPECT_EQ(map_effort("xhigh", P::kFlash0731, "x"), E::kHigh);  // never max on 0731
  EXPECT_EQ(map_effort("max", P::kFlash0731, "x"), E::kMax);
  EXPECT_FALSE(map_effort("none", P::kFlash0731, "x").has_value());
}

TEST(ApiOpenAIRequest, FieldValidation) {
  ServerOptions o = opts();
  auto st = [&](const std::string& extra) {
    return status_of([&] {
      parse_openai_chat(body(R"({"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}])" + extra + "}"), o);
    });
  };
  EXPECT_EQ(st(""), 0);
  EXPECT_EQ(st(R"(, "temperature": 2.5)"), 422);
  EXPECT_EQ(st(R"(, "temperature": "hot")"), 400);
  EXPECT_EQ(st(R"(, "top_p": 1.5)"), 422);
  EXPECT_EQ(st(R"(, "presence_penalty": -3)"), 422);
  EXPECT_EQ(st(R"(, "max_tokens": 0)"), 422);
  EXPECT_EQ(st(R"(, "max_tokens": 1.5)"), 400);
  EXPECT_EQ(st(R"(, "stop": [1])"), 400);
  EXPECT_EQ(st(R"(, "stop": ["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"])"), 422);
  EXPECT_EQ(st(R"(, "top_logprobs": 3)"), 400);  // needs logprobs
  EXPECT_EQ(st(R"(, "logprobs": true, "top_logprobs": 21)"), 422);
  EXPECT_EQ(st(R"(, "stream": "yes")"), 400);
  EXPECT_EQ(st(R"(, "response_format": {"type": "xml"})"), 422);
  EXPECT_EQ(st(R"(, "response_format": {"type": "json_schema", "json_schema": {}})"), 0);  // accepted, ignored
  EXPECT_EQ(st(R"(, "tools": [{"type": "function", "function": {}}])"), 400);
  EXPECT_EQ(st(R"(, "tool_choice": "required")"), 400);  // no tools
  EXPECT_EQ(st(R"(, "tool_choice": "sometimes")"), 422);
  EXPECT_EQ(st(R"(, "n": 2, "user": "u", "unknown_field": {"x": 1})"), 0);  // lenient: ignored
  EXPECT_EQ(status_of([&] { parse_openai_chat(body(R"({"messages": [{"role": "user", "content": "hi"}]})"), o); }), 400);
  EXPECT_EQ(status_of([&] { parse_openai_chat(body(R"({"model": "deepseek-chat", "messages": []})"), o); }), 400);
  EXPECT_EQ(status_of([&] { parse_openai_chat(body(R"({"model": "deepseek-chat", "messages": [{"role": "wizard", "content": "x"}]})"), o); }), 400);
  EXPECT_EQ(status_of([&] {
              parse_openai_chat(body(R"({"model": "deepseek-chat", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})"), o);
            }), 400);
  EXPECT_EQ(status_of([&] { parse_openai_chat(body("[1]"), o); }), 400);
}

TEST(ApiOpenAIRequest, Mapping) {
  ServerOptions o = opts();
  auto r = parse_openai_chat(body(R"({"model": "deepseek-v4-flash",
    "messages": [{"role": "developer", "content": "sys", "task": "query"},
                 {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                 {"role": "assistant", "content": "```py\n", "prefix": true}],
    "max_completion_tokens": 77, "stop": "X", "seed": 5, "temperature": 0.3, "logprobs": true, "top_logprobs": 2,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}], "tool_choice": "none",
    "response_format": {"type": "json_object"}, "stream": true, "stream_options": {"include_usage": true}})"), o);
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[0].role, Role::kSystem);        // developer -> system
  EXPECT_FALSE(r.messages[0].task.has_value());        // internal fields are not injectable
  EXPECT_EQ(*r.messages[1].content, "a\n\nb");
  EXPECT_TRUE(r.messages[2].wo_eos);                   // prefix completion
  EXPECT_EQ(r.max_tokens, 77);
  EXPECT_EQ(r.stop, std::vector<std::string>{"X"});
  EXPECT_EQ(r.sampling.seed, 5u);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.3f);
  EXPECT_EQ(r.top_logprobs, 2);
  EXPECT_TRUE(r.tools.empty());                        // tool_choice none: not rendered
  EXPECT_FALSE(r.tools_allowed);
  EXPECT_EQ(r.response_format["type"], "json_object");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_EQ(status_of([&] {
              parse_openai_chat(body(R"({"model": "deepseek-chat", "messages": [{"role": "assistant", "content": "p", "prefix": true}, {"role": "user", "content": "x"}]})"), o);
            }), 400);
}

TEST(ApiOpenAIRequest, NamedToolChoiceMustExist) {
  ServerOptions o = opts();
  const std::string base = R"({"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}],
    "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": ")";
  EXPECT_EQ(parse_openai_chat(body(base + R"(f"}}})"), o).forced_tool, "f");
  EXPECT_EQ(status_of([&] { parse_openai_chat(body(base + R"(g"}}})"), o); }), 400);
}

TEST(ApiAnthropicRequest, Mapping) {
  ServerOptions o = opts();
  auto r = parse_anthropic_messages(body(R"({"model": "claude-sonnet-4-5", "max_tokens": 100,
    "system": [{"type": "text", "text": "x-anthropic-billing-header: abc"}, {"type": "text", "text": "S1"}, {"type": "text", "text": "S2"}],
    "messages": [
      {"role": "user", "content": "q"},
      {"role": "assistant", "content": [{"type": "thinking", "thinking": "th", "signature": "sig"},
                                        {"type": "redacted_thinking", "data": "zz"},
                                        {"type": "text", "text": "calling"},
                                        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}]},
      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "r1"}, {"type": "image", "source": {}}], "is_error": true},
                                   {"type": "text", "text": "more"}]}],
    "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}},
              {"type": "web_search_20250305", "name": "web_search"}],
    "tool_choice": {"type": "any"}, "thinking": {"type": "enabled", "budget_tokens": 2048},
    "stop_sequences": ["##"], "temperature": 0.2, "top_k": 5, "metadata": {"user_id": "u"}, "stream": true})"), o);
  ASSERT_EQ(r.messages.size(), 5u);
  EXPECT_EQ(r.messages[0].role, Role::kSystem);
  EXPECT_EQ(*r.messages[0].content, "S1\n\nS2");
  EXPECT_EQ(r.messages[2].role, Role::kAssistant);
  EXPECT_EQ(*r.messages[2].reasoning_content, "th");
  EXPECT_EQ(*r.messages[2].content, "calling");
  ASSERT_EQ(r.messages[2].tool_calls.size(), 1u);
  EXPECT_EQ(r.messages[2].tool_calls[0].arguments, R"({"a": 1})");
  EXPECT_EQ(r.messages[3].role, Role::kTool);
  EXPECT_EQ(r.messages[3].tool_call_id, "toolu_1");
  EXPECT_EQ(*r.messages[3].content, "r1\n\n[Unsupported image]");
  EXPECT_EQ(*r.messages[4].content, "more");
  ASSERT_EQ(r.tools.size(), 1u);  // server tool dropped
  EXPECT_EQ(json_py::dumps(r.tools[0].function),
            R"({"name": "f", "description": "d", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}})");
  EXPECT_TRUE(r.thinking);
  EXPECT_EQ(r.max_tokens, 100);
  EXPECT_EQ(r.stop, std::vector<std::string>{"##"});
  EXPECT_EQ(r.sampling.top_k, 5);
  EXPECT_TRUE(r.stream);
}

TEST(ApiAnthropicRequest, Validation) {
  ServerOptions o = opts();
  auto st = [&](const std::string& s) { return status_of([&] { parse_anthropic_messages(body(s), o); }); };
  EXPECT_EQ(st(R"({"model": "claude-3", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]})"), 400);
  EXPECT_EQ(st(R"({"model": "claude-3", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]})"), 400);
  EXPECT_EQ(st(R"({"model": "claude-3", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]})"), 422);
  EXPECT_EQ(st(R"({"model": "claude-3", "messages": [{"role": "user", "content": "x"}], "thinking": {"type": "maybe"}})"), 400);
  EXPECT_EQ(st(R"({"model": "claude-3", "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool", "name": "nope"}})"), 400);
  EXPECT_EQ(st(R"({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]})"), 404);
  EXPECT_EQ(st(R"({"model": "claude-3", "messages": [{"role": "user", "content": [{"type": "document", "source": {}}, {"type": "text", "text": "x"}]}]})"), 0);
  auto none = parse_anthropic_messages(body(R"({"model": "claude-3", "messages": [{"role": "user", "content": "x"}],
    "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": {"type": "none"}, "thinking": {"type": "disabled"}})"), o);
  EXPECT_TRUE(none.tools.empty());
  EXPECT_FALSE(none.thinking);
}

TEST(ApiToolArguments, Coercion) {
  Json schema = body(R"({"type": "object", "properties": {"n": {"type": "integer"}, "x": {"type": "number"},
    "b": {"type": "boolean"}, "s": {"type": "string"}, "o": {"type": "object", "properties": {"k": {"type": "integer"}}},
    "l": {"type": "array", "items": {"type": "integer"}}, "u": {"type": ["integer", "null"]}}})");
  EXPECT_EQ(coerce_tool_arguments(R"({"n": "3", "x": "2.5", "b": "true", "s": 7, "o": "{\"k\": \"4\"}", "l": ["1", 2], "u": "9"})", &schema),
            R"({"n": 3, "x": 2.5, "b": true, "s": "7", "o": {"k": 4}, "l": [1, 2], "u": 9})");
  EXPECT_EQ(coerce_tool_arguments(R"({"n": "three"})", &schema), R"({"n": "three"})");  // not a number: kept
  EXPECT_EQ(coerce_tool_arguments(R"({"arguments": {"n": "1"}})", &schema), R"({"n": 1})");  // wrapper unwrapped
  EXPECT_EQ(coerce_tool_arguments(R"({"input": "{\"n\": 2}"})", &schema), R"({"n": 2})");
  Json with_input = body(R"({"type": "object", "properties": {"input": {"type": "object"}}})");
  EXPECT_EQ(coerce_tool_arguments(R"({"input": {"a": 1}})", &with_input), R"({"input": {"a": 1}})");
  EXPECT_EQ(coerce_tool_arguments("{\"a\": oops}", &schema), "{\"a\": oops}");  // unparsable: unchanged
  EXPECT_EQ(coerce_tool_arguments(R"({"a":1})", nullptr), R"({"a": 1})");
}

TEST(ApiGenerationRequest, ContextAndSampling) {
  ServerOptions o = opts();
  CanonicalRequest r;
  r.thinking = true;
  r.sampling.temperature = 0.1f;
  r.sampling.top_p = 0.5f;
  PreparedPrompt p;
  p.ids.assign(10, 5);
  auto g = make_generation_request(r, p, o, 100, 1);
  EXPECT_EQ(g.max_tokens, 90);  // default clamped to the context
  EXPECT_FLOAT_EQ(g.sampling.temperature, 1.0f);  // ignored in thinking mode
  EXPECT_FLOAT_EQ(g.sampling.top_p, 1.0f);
  EXPECT_EQ(g.stop_ids, std::vector<int32_t>{1});
  r.thinking = false;
  EXPECT_FLOAT_EQ(make_generation_request(r, p, o, 100, 1).sampling.temperature, 0.1f);
  r.max_tokens = 95;
  try {
    make_generation_request(r, p, o, 100, 1);
    FAIL() << "expected overflow";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.code, "context_length_exceeded");
    EXPECT_EQ(e.extra["n_prompt_tokens"], 10);
  }
  p.ids.assign(100, 5);
  r.max_tokens.reset();
  EXPECT_EQ(status_of([&] { make_generation_request(r, p, o, 100, 1); }), 400);
}

PipelineOptions pipe_opts(bool reasoning = true) {
  PipelineOptions o;
  o.start = reasoning ? dsv4::text::OutputStart::kReasoning : dsv4::text::OutputStart::kContent;
  return o;
}

std::vector<OutputEvent> run(CompletionPipeline& p, const std::string& text, std::size_t step = 1) {
  std::vector<OutputEvent> out;
  for (std::size_t i = 0; i < text.size(); i += step) p.feed_text(text.substr(i, step), out);
  p.finish(out);
  return dsv4::text::coalesce(out);
}

TEST(ApiPipeline, ReasoningContentAndTokens) {
  PipelineOptions o = pipe_opts();
  o.think_end_id = 99;
  CompletionPipeline p(o);
  std::vector<OutputEvent> out;
  p.feed_token({1, "Think", 0, {}}, nullptr, out);
  p.feed_token({2, " more", 0, {}}, nullptr, out);
  p.feed_token({99, "</think>", 0, {}}, nullptr, out);
  p.feed_token({3, "Answer", 0, {}}, nullptr, out);
  p.feed_token({4, kEos, 0, {}}, nullptr, out);
  EXPECT_TRUE(p.should_stop());
  p.finish(out);
  out = dsv4::text::coalesce(out);
  ASSERT_GE(out.size(), 3u);
  EXPECT_EQ(out[0].type, EventType::kReasoningDelta);
  EXPECT_EQ(out[0].text, "Think more");
  EXPECT_EQ(out[1].type, EventType::kContentDelta);
  EXPECT_EQ(out[1].text, "Answer");
  EXPECT_EQ(p.reasoning_tokens(), 3);
  EXPECT_EQ(p.finish_reason(), "stop");
}

TEST(ApiPipeline, StopStringsOnContentOnlyAtEverySplit) {
  const std::string text = "a STOP in reasoning</think>content ST then STOP after" + kEos;
  for (std::size_t step : {1u, 2u, 3u, 7u, 100u}) {
    PipelineOptions o = pipe_opts();
    o.stop = {"STOP", ""};
    CompletionPipeline p(o);
    auto ev = run(p, text, step);
    std::string reasoning, content;
    for (auto& e : ev) {
      if (e.type == EventType::kReasoningDelta) reasoning += e.text;
      if (e.type == EventType::kContentDelta) content += e.text;
    }
    EXPECT_EQ(reasoning, "a STOP in reasoning") << step;
    EXPECT_EQ(content, "content ST then ") << step;
    EXPECT_EQ(p.matched_stop(), "STOP");
    EXPECT_EQ(p.finish_reason(), "stop");
    EXPECT_TRUE(p.should_stop());
  }
}

TEST(ApiPipeline, StopStringNotInToolArguments) {
  PipelineOptions o = pipe_opts(false);
  o.stop = {"Paris"};
  CompletionPipeline p(o);
  auto ev = run(p, "x" + tool_call_text("f", param("city", "Paris", true)), 3);
  std::string args;
  for (auto& e : ev)
    if (e.type == EventType::kToolCallArguments) args += e.text;
  EXPECT_EQ(args, R"({"city": "Paris"})");
  EXPECT_EQ(p.finish_reason(), "tool_calls");
}

TEST(ApiPipeline, ToolCallsBufferedCoercedAndIds) {
  PipelineOptions o = pipe_opts();
  o.tool_schemas["f"] = body(R"({"type": "object", "properties": {"n": {"type": "integer"}}})");
  CompletionPipeline p(o);
  const std::string text = "hmm</think>" + tool_call_text("f", param("n", "42", true)).substr(0, std::string::npos);
  auto ev = run(p, text, 5);
  std::vector<EventType> types;
  for (auto& e : ev) types.push_back(e.type);
  ASSERT_EQ(types, (std::vector<EventType>{EventType::kReasoningDelta, EventType::kToolCallBegin,
                                           EventType::kToolCallArguments, EventType::kToolCallEnd,
                                           EventType::kMessageEnd}));
  EXPECT_EQ(ev[1].tool_name, "f");
  EXPECT_EQ(ev[1].tool_id.substr(0, 8), "call_00_");
  EXPECT_EQ(ev[1].tool_id.size(), 8u + 24u);
  EXPECT_EQ(ev[2].text, R"({"n": 42})");
  EXPECT_EQ(p.finish_reason(), "tool_calls");

  PipelineOptions a = pipe_opts();
  a.tool_id_prefix = "toolu_";
  a.indexed_tool_ids = false;
  CompletionPipeline pa(a);
  auto eva = run(pa, text, 100);
  EXPECT_EQ(eva[1].tool_id.substr(0, 6), "toolu_");
  EXPECT_EQ(eva[1].tool_id.size(), 6u + 24u);
}

TEST(ApiPipeline, ToolChoiceNoneDropsCalls) {
  PipelineOptions o = pipe_opts(false);
  o.tools_allowed = false;
  CompletionPipeline p(o);
  auto ev = run(p, "text" + tool_call_text("f", param("a", "1", false)), 4);
  for (auto& e : ev) {
    EXPECT_NE(e.type, EventType::kToolCallBegin);
    if (e.type == EventType::kContentDelta) {
      EXPECT_EQ(e.text, "text");
    }
  }
  EXPECT_EQ(p.finish_reason(), "stop");
}

TEST(ApiPipeline, LengthAndUnclosedReasoning) {
  CompletionPipeline p(pipe_opts());
  run(p, "still thinking");
  EXPECT_EQ(p.finish_reason(), "length");
  PipelineOptions o = pipe_opts();
  o.unclosed_reasoning_as_content = true;
  CompletionPipeline q(o);
  auto ev = run(q, "only reasoning" + kEos);
  bool content = false;
  for (auto& e : ev) content |= e.type == EventType::kContentDelta && e.text == "only reasoning";
  EXPECT_TRUE(content);
}

TEST(ApiOpenAIStream, ChunkShapes) {
  OpenAIStream s("id1", "deepseek-v4-flash", 123, "fp", true);
  auto first = sse_data(s.begin({}));
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0]["choices"][0]["delta"].dump(), R"({"role":"assistant","content":null,"reasoning_content":""})");
  EXPECT_EQ(first[0]["object"], "chat.completion.chunk");
  EXPECT_EQ(first[0]["system_fingerprint"], "fp");
  EXPECT_TRUE(first[0]["usage"].is_null());

  OutputEvent r;
  r.type = EventType::kReasoningDelta;
  r.text = "th";
  OutputEvent c;
  c.type = EventType::kContentDelta;
  c.text = "ans";
  OutputEvent b;
  b.type = EventType::kToolCallBegin;
  b.tool_index = 0;
  b.tool_id = "call_00_x";
  b.tool_name = "f";
  OutputEvent a;
  a.type = EventType::kToolCallArguments;
  a.tool_index = 0;
  a.text = R"({"k": 1})";
  auto chunks = sse_data(s.events({r, c, b, a}, {Json{{"token", "ans"}, {"logprob", -0.5}}}));
  ASSERT_EQ(chunks.size(), 4u);
  EXPECT_EQ(chunks[0]["choices"][0]["delta"].dump(), R"({"content":null,"reasoning_content":"th"})");
  EXPECT_EQ(chunks[1]["choices"][0]["delta"].dump(), R"({"content":"ans","reasoning_content":null})");
  EXPECT_EQ(chunks[1]["choices"][0]["logprobs"]["content"][0]["logprob"], -0.5);
  EXPECT_EQ(chunks[2]["choices"][0]["delta"].dump(),
            R"({"tool_calls":[{"index":0,"id":"call_00_x","type":"function","function":{"name":"f","arguments":""}}]})");
  EXPECT_EQ(chunks[3]["choices"][0]["delta"].dump(), R"({"tool_calls":[{"index":0,"function":{"arguments":"{\"k\": 1}"}}]})");

  Outcome o;
  o.finish_reason = "tool_calls";
  o.usage = {100, 64, 20, 5};
  std::string end = s.end(o);
  EXPECT_NE(end.find("data: [DONE]\n\n"), std::string::npos);
  auto last = sse_data(end);
  ASSERT_EQ(last.size(), 1u);
  EXPECT_EQ(last[0]["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(last[0]["choices"][0]["delta"].dump(), R"({"content":"","reasoning_content":null})");
  const Json& u = last[0]["usage"];
  EXPECT_EQ(u["prompt_tokens"], 100);
  EXPECT_EQ(u["total_tokens"], 120);
  EXPECT_EQ(u["prompt_cache_hit_tokens"], 64);
  EXPECT_EQ(u["prompt_cache_miss_tokens"], 36);
  EXPECT_EQ(u["prompt_tokens_details"]["cached_tokens"], 64);
  EXPECT_EQ(u["completion_tokens_details"]["reasoning_tokens"], 5);

  OpenAIStream chat("id2", "m", 1, "fp", false);
  EXPECT_EQ(sse_data(chat.begin({}))[0]["choices"][0]["delta"].dump(), R"({"role":"assistant","content":""})");
  EXPECT_EQ(sse_data(chat.events({c}, {}))[0]["choices"][0]["delta"].dump(), R"({"content":"ans"})");
  EXPECT_EQ(s.keepalive(), ": keep-alive\n\n");
  auto err = s.error(ApiError(500, "boom", "internal_error"));
  EXPECT_EQ(sse_data(err)[0]["error"]["message"], "boom");
  EXPECT_NE(err.find("[DONE]"), std::string::npos);
}

TEST(ApiOpenAIResponse, NonStreaming) {
  dsv4::text::ParsedMessage m;
  m.content = "hi";
  m.reasoning_content = "r";
  m.tool_calls.push_back({"call_1", "f", R"({"a": 1})", true});
  m.tool_calls.push_back({"call_2", "g", R"({"a": )", false});  // cut off: not returned
  Outcome o;
  o.finish_reason = "tool_calls";
  o.usage = {10, 0, 3, 1};
  Json r = openai_chat_response("id", "deepseek-v4-flash", 5, "fp", true, m, o, nullptr);
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["choices"][0]["message"]["reasoning_content"], "r");
  ASSERT_EQ(r["choices"][0]["message"]["tool_calls"].size(), 1u);
  EXPECT_EQ(r["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], R"({"a": 1})");
  EXPECT_TRUE(r["choices"][0]["logprobs"].is_null());
  Json chat = openai_chat_response("id", "m", 5, "fp", false, m, o, nullptr);
  EXPECT_FALSE(chat["choices"][0]["message"].contains("reasoning_content"));
}

TEST(ApiAnthropicStream, EventSequence) {
  AnthropicStream s("msg_1", "claude-x");
  std::string all = s.begin({50, 0, 0, 0});
  OutputEvent r;
  r.type = EventType::kReasoningDelta;
  r.text = "th";
  OutputEvent c;
  c.type = EventType::kContentDelta;
  c.text = "ans";
  OutputEvent b;
  b.type = EventType::kToolCallBegin;
  b.tool_id = "toolu_x";
  b.tool_name = "f";
  OutputEvent a;
  a.type = EventType::kToolCallArguments;
  a.text = R"({"k": 1})";
  OutputEvent e;
  e.type = EventType::kToolCallEnd;
  all += s.events({r, c, b, a, e}, {});
  all += s.keepalive();
  Outcome o;
  o.finish_reason = "tool_calls";
  o.usage = {50, 32, 9, 2};
  all += s.end(o);
  EXPECT_EQ(sse_events(all),
            (std::vector<std::string>{"message_start", "content_block_start", "content_block_delta", "content_block_delta",
                                      "content_block_stop", "content_block_start", "content_block_delta",
                                      "content_block_stop", "content_block_start", "content_block_delta",
                                      "content_block_stop", "ping", "message_delta", "message_stop"}));
  auto data = sse_data(all);
  EXPECT_EQ(data[0]["message"]["usage"]["input_tokens"], 50);
  EXPECT_EQ(data[1]["content_block"].dump(), R"({"type":"thinking","thinking":"","signature":""})");
  EXPECT_EQ(data[3]["delta"].dump(), R"({"type":"signature_delta","signature":""})");
  EXPECT_EQ(data[5]["index"], 1);
  EXPECT_EQ(data[8]["content_block"].dump(), R"({"type":"tool_use","id":"toolu_x","name":"f","input":{}})");
  EXPECT_EQ(data[9]["delta"].dump(), R"({"type":"input_json_delta","partial_json":"{\"k\": 1}"})");
  EXPECT_EQ(data[12]["delta"]["stop_reason"], "tool_use");
  EXPECT_EQ(data[12]["usage"]["input_tokens"], 18);  // excludes cache reads
  EXPECT_EQ(data[12]["usage"]["cache_read_input_tokens"], 32);
  EXPECT_EQ(data[12]["usage"]["output_tokens"], 9);
  EXPECT_EQ(sse_events(s.error(ApiError(529, "busy"))), std::vector<std::string>{"error"});
}

TEST(ApiAnthropicResponse, StopReasonsAndBlocks) {
  EXPECT_EQ(anthropic_stop_reason("stop", false), "end_turn");
  EXPECT_EQ(anthropic_stop_reason("stop", true), "stop_sequence");
  EXPECT_EQ(anthropic_stop_reason("length", false), "max_tokens");
  EXPECT_EQ(anthropic_stop_reason("tool_calls", false), "tool_use");
  dsv4::text::ParsedMessage m;
  m.reasoning_content = "r";
  m.tool_calls.push_back({"toolu_1", "f", R"({"a": [1, 2]})", true});
  Outcome o;
  o.finish_reason = "tool_calls";
  Json r = anthropic_response("msg_1", "claude", m, o);
  ASSERT_EQ(r["content"].size(), 2u);
  EXPECT_EQ(r["content"][0].dump(), R"({"type":"thinking","thinking":"r","signature":""})");
  EXPECT_EQ(r["content"][1]["input"].dump(), R"({"a":[1,2]})");
  EXPECT_EQ(r["stop_reason"], "tool_use");
  EXPECT_TRUE(r["stop_sequence"].is_null());
}

}  // namespace

// ---------------------------------------------------------------- JSON mode validator

namespace {
bool json_prefix_ok(std::string_view s) {
  dsv4::server::JsonPrefixValidator v;
  return v.feed(s);
}
bool json_complete(std::string_view s) {
  dsv4::server::JsonPrefixValidator v;
  return v.feed(s) && v.complete();
}
}  // namespace

TEST(ApiJsonValidator, EveryPrefixOfValidObjects) {
  const std::vector<std::string> docs = {
      "{}",
      " \n\t\r{ }",
      R"({"a": 1})",
      R"({"a":[1,-0.5e+10,0,-0,1E-3,2.25,true,false,null,{"b":"x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"}],"c":{}})",
      "{\"\xC3\xA9\xF0\x9F\x98\x80\": \"\xE6\x97\xA5\xE6\x9C\xAC\", \"k\": [[], [[]], {\"z\": -12.5e3}]}",
      R"({"n": 12})",
      R"({"t": true , "f" : false	,"z":null})",
  };
  for (const auto& d : docs) {
    dsv4::server::JsonPrefixValidator v;
    for (std::size_t i = 0; i < d.size(); ++i) {
      ASSERT_TRUE(v.feed(static_cast<unsigned char>(d[i]))) << d << " at " << i;
      EXPECT_EQ(v.complete(), i + 1 == d.size()) << d << " at " << i;
    }
    // Cross-check with the JSON parser: a complete document parses as an object.
    EXPECT_TRUE(Json::parse(d).is_object()) << d;
  }
}

TEST(ApiJsonValidator, RejectsInvalid) {
  const std::vector<std::string> bad = {
      "[1]", "\"a\"", "1", "true", "x",                 // the top level must be an object
      "{\"a\" 1}", "{a:1}", "{'a':1}", "{,}", "{\"a\":1,}", "{\"a\":[1,]}", "{\"a\":[,1]}",
      "{\"a\":01}", "{\"a\":1.}", "{\"a\":.5}", "{\"a\":-}", "{\"a\":1e}", "{\"a\":1e+}", "{\"a\":+1}",
      "{\"a\":trux", "{\"a\":nul}", "{\"a\":True}",
      "{\"a\":\"\\x\"}", "{\"a\":\"\\u12G4\"}", "{\"a\":\"\\udc00\"}", "{\"a\":\"\\ud800x\"}",
      "{\"a\":\"\\ud800\\u0041\"}", "{\"a\":\"\x01\"}", "{\"a\":\"\n\"}",
      "{\"a\":\"\xC0\x80\"}", "{\"a\":\"\xED\xA0\x80\"}", "{\"a\":\"\xF4\x90\x80\x80\"}", "{\"a\":\"\x80\"}",
      "{\"a\":\"\xE6\x97x\"}", "{\"\xFF\":1}", "{\"a\":1}}", "{} ", "{}x", "{\"a\":1]", "{\"a\":[1}",
  };
  for (const auto& b : bad) EXPECT_FALSE(json_prefix_ok(b)) << b;
}

TEST(ApiJsonValidator, PrefixesAndCompletion) {
  EXPECT_TRUE(json_prefix_ok(""));
  EXPECT_TRUE(json_prefix_ok("   "));
  EXPECT_TRUE(json_prefix_ok("{\"a\": -"));
  EXPECT_TRUE(json_prefix_ok("{\"a\": \"\\u00"));
  EXPECT_TRUE(json_prefix_ok("{\"a\": \"\\ud83d\\"));
  EXPECT_TRUE(json_prefix_ok("{\"a\": \"\xF0\x9F"));  // inside a 4-byte character
  EXPECT_TRUE(json_prefix_ok("{\"a\": [{\"b\": [tr"));
  EXPECT_FALSE(json_complete("{\"a\": [1]"));
  EXPECT_FALSE(json_complete("{\"a\": 12"));  // a number is only complete once something follows
  EXPECT_TRUE(json_complete("{\"a\": 12}"));
  dsv4::server::JsonPrefixValidator v;
  ASSERT_TRUE(v.feed("{\"a\": [{\"b"));
  EXPECT_EQ(v.depth(), 3);
  EXPECT_TRUE(v.in_key());
  dsv4::server::JsonPrefixValidator any(false);  // not object-only: any value at the top level
  EXPECT_TRUE(any.feed("[1, \"x\"]"));
  EXPECT_TRUE(any.complete());
}

// ---------------------------------------------------------------- streamed tool arguments

namespace {
// Feeds `raw` in pieces of `step` bytes; returns the fragments (finish's rest last).
std::vector<std::string> stream_args(const std::string& raw, const Json* schema, std::size_t step, bool complete = true) {
  dsv4::server::ToolArgumentStreamer s(schema);
  std::vector<std::string> out;
  for (std::size_t i = 0; i < raw.size(); i += step) {
    std::string f = s.feed(std::string_view(raw).substr(i, step));
    if (!f.empty()) out.push_back(f);
  }
  std::string rest = s.finish(complete);
  if (!rest.empty()) out.push_back(rest);
  return out;
}
std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x;
  return s;
}
}  // namespace

TEST(ApiToolArgsStream, ConcatenationEqualsRepairedArgumentsAtEverySplit) {
  const Json schema = body(R"({"type": "object", "properties": {"n": {"type": "integer"}, "s": {"type": "string"},
      "o": {"type": "object", "properties": {"k": {"type": "number"}}}, "l": {"type": "array", "items": {"type": "integer"}},
      "b": {"type": "boolean"}, "t": {"type": "string"}}})");
  const std::vector<std::string> cases = {
      R"({"location": "Beijing", "unit": "celsius"})",
      R"({"n": "42", "s": "hello \"world\"\n\\ done", "l": ["1", 2], "b": "true"})",
      R"({"o": {"k": "4"}, "t": 7, "n": 3})",
      R"({"s": "a\/b\u00e9\ud83d\ude00 \u001f", "x": [1,2,{"y":1.0}], "z": -0.5e3})",
      "{\"s\": \"\xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80\", \"n\": 5}",
      R"({"arguments": {"n": "1"}})",   // wrapper: held, then unwrapped
      R"({"input": "{\"n\": 2}"})",
      R"({"q": "x", "arguments": 1})",  // not a wrapper (not the only key)
      R"({})",
      R"({"a": oops, "b": 1})",         // invalid: the rest goes out raw
  };
  for (const auto& raw : cases)
    for (const Json* sc : {&schema, static_cast<const Json*>(nullptr)})
      for (std::size_t step : {1u, 2u, 3u, 7u, 1000u}) {
        const std::string want = coerce_tool_arguments(raw, sc);
        EXPECT_EQ(join(stream_args(raw, sc, step)), want) << raw << " step " << step << (sc ? " schema" : "");
      }
}

TEST(ApiToolArgsStream, StringValuesStreamAsGenerated) {
  const Json schema = body(R"({"type": "object", "properties": {"n": {"type": "integer"}, "q": {"type": "string"}}})");
  dsv4::server::ToolArgumentStreamer s(&schema);
  EXPECT_EQ(s.feed("{\"q\": \"hel"), "{\"q\": \"hel");
  EXPECT_EQ(s.feed("lo wor"), "lo wor");
  EXPECT_EQ(s.feed("ld\\"), "ld");      // the escape is held until known
  EXPECT_EQ(s.feed("n!"), "\\n!");
  EXPECT_EQ(s.feed("\", \"n\": \"1"), "\", \"n\": ");  // a string the schema makes an integer: held
  EXPECT_EQ(s.feed("2\"}"), "12}");
  EXPECT_EQ(s.finish(true), "");
  EXPECT_EQ(s.sent(), "{\"q\": \"hello world\\n!\", \"n\": 12}");
  // A non-canonical escape stops the streaming of that value; it goes out canonical when complete.
  dsv4::server::ToolArgumentStreamer e(nullptr);
  EXPECT_EQ(e.feed("{\"q\": \"a\\u0041"), "{\"q\": \"a");
  EXPECT_EQ(e.feed("b\"}"), "Ab\"}");
  // Raw (string="false") values go out re-serialised once complete.
  dsv4::server::ToolArgumentStreamer r(nullptr);
  EXPECT_EQ(r.feed("{\"x\": [1,2"), "{\"x\": ");
  EXPECT_EQ(r.feed("]}"), "[1, 2]}");
  // Cut off (max_tokens): the raw rest is sent; clients get a truncated prefix either way.
  EXPECT_EQ(join(stream_args("{\"q\": \"abc", nullptr, 1, false)), "{\"q\": \"abc");
}

TEST(ApiPipeline, ToolArgumentsStreamBeforeTheCallCloses) {
  PipelineOptions o = pipe_opts(false);
  o.tool_schemas["f"] = body(R"({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}})");
  CompletionPipeline p(o);
  const std::string text = tool_call_text("f", param("city", "Paris is nice", true) + param("days", "3", true));
  std::vector<OutputEvent> out;
  std::vector<std::string> fragments;
  bool args_before_end = false;
  bool ended = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    out.clear();
    p.feed_text(text.substr(i, 1), out);
    for (auto& e : out) {
      if (e.type == EventType::kToolCallArguments) {
        fragments.push_back(e.text);
        if (!ended) args_before_end = true;
      }
      if (e.type == EventType::kToolCallEnd) ended = true;
    }
  }
  out.clear();
  p.finish(out);
  EXPECT_TRUE(args_before_end);
  EXPECT_GT(fragments.size(), 5u);  // streamed, not one fragment
  EXPECT_EQ(join(fragments), R"({"city": "Paris is nice", "days": 3})");
  EXPECT_EQ(p.finish_reason(), "tool_calls");
}
