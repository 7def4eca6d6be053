// FIM / text completions (/completions) without an engine or sockets: request validation, the FIM
// prompt layout, the text pipeline (EOS, stop strings at every split), text_completion shapes; and
// tool_choice enforcement (the forced DSML opening for required / named tools on both surfaces).
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "api_test_support.h"
#include "server/anthropic_api.h"
#include "server/api_common.h"
#include "server/completions_api.h"
#include "server/openai_api.h"
#include "text/json_py.h"
#include "text/tokenizer.h"

namespace {

using namespace dsv4::server;
using namespace api_test;

const dsv4::text::Tokenizer& tok() {
  static auto t = dsv4::text::Tokenizer::from_file(std::string(DSV4_SHARED_DIR) + "/golden/tokenizer/tokenizer.json");
  return *t;
}

int32_t id_of(const char* s) { return *tok().token_id(s); }

// Status of parse_fim_request on `{"model": "deepseek-v4-flash", "prompt": "x"<extra>}` (0 = ok).
int fim_status(const std::string& json) {
  return status_of([&] { parse_fim_request(body(json), opts()); });
}
int st(const std::string& extra) { return fim_status(R"({"model": "deepseek-v4-flash", "prompt": "x")" + extra + "}"); }

TokenEvent tokev(int32_t id, std::string text) {
  TokenEvent t;
  t.id = id;
  t.text = std::move(text);
  return t;
}

}  // namespace

TEST(FimRequest, Mapping) {
  FimRequest r = parse_fim_request(body(R"({"model": "deepseek-chat", "prompt": "def f(", "suffix": "\n  return x",
    "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "stop": ["\n\n"], "stream": true,
    "stream_options": {"include_usage": true}, "seed": 7, "echo": false, "logprobs": null, "n": 1,
    "presence_penalty": 0.5, "frequency_penalty": -0.5, "user": "u", "unknown_field": 1})"),
                                   opts());
  EXPECT_EQ(r.model.id, "deepseek-v4-flash");
  EXPECT_EQ(r.prompt, "def f(");
  ASSERT_TRUE(r.suffix);
  EXPECT_EQ(*r.suffix, "\n  return x");
  EXPECT_EQ(r.max_tokens, 64);
  EXPECT_FLOAT_EQ(r.sampling.temperature, 0.2f);
  EXPECT_FLOAT_EQ(r.sampling.top_p, 0.9f);
  EXPECT_FLOAT_EQ(r.sampling.presence_penalty, 0.5f);
  EXPECT_EQ(r.sampling.seed, 7u);
  EXPECT_EQ(r.stop, std::vector<std::string>{"\n\n"});
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_FALSE(r.echo);

  FimRequest plain = parse_fim_request(body(R"({"model": "deepseek-v4-flash", "prompt": ["one"], "suffix": null, "echo": true})"), opts());
  EXPECT_EQ(plain.prompt, "one");
  EXPECT_FALSE(plain.suffix);
  EXPECT_FALSE(plain.max_tokens);
  EXPECT_TRUE(plain.echo);
}

TEST(FimRequest, Validation) {
  EXPECT_EQ(st(""), 0);
  EXPECT_EQ(fim_status(R"({"model": "deepseek-v4-flash"})"), 400);                   // prompt missing
  EXPECT_EQ(fim_status(R"({"model": "deepseek-v4-flash", "prompt": null})"), 400);   // prompt null
  EXPECT_EQ(fim_status(R"({"prompt": "x"})"), 400);                                  // model missing
  EXPECT_EQ(fim_status(R"({"model": "gpt-9", "prompt": "x"})"), 404);
  EXPECT_EQ(fim_status(R"([1])"), 400);
  EXPECT_EQ(fim_status(R"({"model": "deepseek-v4-flash", "prompt": 5})"), 400);
  EXPECT_EQ(fim_status(R"({"model": "deepseek-v4-flash", "prompt": [1, 2, 3]})"), 400);  // token ids
  EXPECT_EQ(fim_status(R"({"model": "deepseek-v4-flash", "prompt": ["a", "b"]})"), 400);  // several prompts
  EXPECT_EQ(st(R"(, "suffix": 3)"), 400);
  EXPECT_EQ(st(R"(, "max_tokens": "9")"), 400);
  EXPECT_EQ(st(R"(, "max_tokens": 0)"), 422);
  EXPECT_EQ(st(R"(, "max_tokens": 393217)"), 422);
  EXPECT_EQ(st(R"(, "temperature": 2.5)"), 422);
  EXPECT_EQ(st(R"(, "temperature": "hot")"), 400);
  EXPECT_EQ(st(R"(, "top_p": 1.5)"), 422);
  EXPECT_EQ(st(R"(, "stop": 3)"), 400);
  EXPECT_EQ(st(R"(, "stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q"])"), 422);
  EXPECT_EQ(st(R"(, "stream": "yes")"), 400);
  EXPECT_EQ(st(R"(, "stream_options": 1)"), 400);
  EXPECT_EQ(st(R"(, "echo": 1)"), 400);
  EXPECT_EQ(st(R"(, "seed": 1.5)"), 400);
  EXPECT_EQ(st(R"(, "logprobs": 2)"), 0);
  EXPECT_EQ(st(R"(, "logprobs": 21)"), 422);
  EXPECT_EQ(st(R"(, "logprobs": "x")"), 400);
  EXPECT_EQ(st(R"(, "logprobs": 0, "echo": true)"), 400);  // prompt logprobs are not computed
  EXPECT_EQ(parse_fim_request(body(R"({"model": "deepseek-v4-flash", "prompt": "x", "logprobs": 3})"), opts()).logprobs, 3);
  EXPECT_EQ(parse_fim_request(body(R"({"model": "deepseek-v4-flash", "prompt": "x"})"), opts()).logprobs, -1);
}

TEST(FimPrompt, LayoutAndNoSpecialTokenInjection) {
  const int32_t bos = id_of("<｜begin▁of▁sentence｜>");
  EXPECT_EQ(id_of("<｜fim▁hole｜>"), 128800);
  EXPECT_EQ(id_of("<｜fim▁begin｜>"), 128801);
  EXPECT_EQ(id_of("<｜fim▁end｜>"), 128802);
  FimRequest r;
  r.prompt = "def add(a, b):\n";
  r.suffix = "\n    return c\n";
  std::vector<int32_t> ids = render_fim_prompt(r, tok());
  std::vector<int32_t> want = {bos, 128801};
  for (int32_t i : tok().encode(r.prompt, false)) want.push_back(i);
  want.push_back(128800);
  for (int32_t i : tok().encode(*r.suffix, false)) want.push_back(i);
  want.push_back(128802);
  EXPECT_EQ(ids, want);
  EXPECT_EQ(tok().decode(ids), "<｜begin▁of▁sentence｜><｜fim▁begin｜>def add(a, b):\n<｜fim▁hole｜>\n    return c\n<｜fim▁end｜>");

  // An empty suffix still means FIM; no suffix is a plain continuation.
  r.suffix = "";
  EXPECT_EQ(render_fim_prompt(r, tok()).back(), 128802);
  r.suffix.reset();
  ids = render_fim_prompt(r, tok());
  EXPECT_EQ(ids.front(), bos);
  EXPECT_EQ(tok().decode(ids), "<｜begin▁of▁sentence｜>def add(a, b):\n");

  // Special-token text in client input stays text.
  r.prompt = "a<｜end▁of▁sentence｜>b<｜fim▁hole｜>";
  ids = render_fim_prompt(r, tok());
  for (std::size_t i = 1; i < ids.size(); ++i) EXPECT_FALSE(tok().is_special(ids[i])) << i;
}

TEST(FimGenerationRequest, DefaultsAndOverflow) {
  FimRequest r;
  r.sampling.temperature = 0.3f;
  GenerationRequest g = make_fim_generation_request(r, {1, 2, 3}, opts(), 100, 1);
  EXPECT_EQ(g.max_tokens, 97);  // the chat default, clamped to the context
  EXPECT_FLOAT_EQ(g.sampling.temperature, 0.3f);  // never neutralised: FIM is non-thinking
  EXPECT_EQ(g.stop_ids, std::vector<int32_t>{1});
  EXPECT_EQ(g.top_logprobs, -1);
  r.logprobs = 4;
  EXPECT_EQ(make_fim_generation_request(r, {1, 2, 3}, opts(), 100, 1).top_logprobs, 4);
  r.max_tokens = 98;
  try {
    make_fim_generation_request(r, {1, 2, 3}, opts(), 100, 1);
    FAIL();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_EQ(e.code, "context_length_exceeded");
    EXPECT_EQ(e.param, "prompt");
  }
}

TEST(FimPipeline, EosStopsAndIsNotText) {
  TextPipeline p({}, {1});
  EXPECT_EQ(p.feed_token(tokev(5, "int x")), "int x");
  EXPECT_FALSE(p.should_stop());
  EXPECT_EQ(p.finish_reason(), "length");
  EXPECT_EQ(p.feed_token(tokev(1, "<｜end▁of▁sentence｜>")), "");
  EXPECT_TRUE(p.should_stop());
  EXPECT_EQ(p.feed_token(tokev(5, "more")), "");
  EXPECT_EQ(p.finish(), "");
  EXPECT_EQ(p.finish_reason(), "stop");
}

TEST(FimPipeline, StopStringsAtEverySplit) {
  const std::string text = "abc\n\ndef";
  for (std::size_t cut = 0; cut <= text.size(); ++cut) {
    TextPipeline p({"\n\n", ""}, {1});
    std::string out = p.feed_token(tokev(5, text.substr(0, cut)));
    out += p.feed_token(tokev(6, text.substr(cut)));
    out += p.finish();
    EXPECT_EQ(out, "abc") << cut;
    EXPECT_EQ(p.finish_reason(), "stop");
  }
  // A held-back partial match is released at EOS and at the end.
  TextPipeline q({"\n\n"}, {1});
  EXPECT_EQ(q.feed_token(tokev(5, "x\n")), "x");
  EXPECT_EQ(q.feed_token(tokev(1, "")), "\n");
  TextPipeline r({"\n\n"}, {1});
  EXPECT_EQ(r.feed_token(tokev(5, "y\n")), "y");
  EXPECT_EQ(r.finish(), "\n");
  EXPECT_EQ(r.finish_reason(), "length");
}

TEST(FimPipeline, LogprobsLegacyShapeAndOffsets) {
  auto ev = [](int32_t id, std::string text, float lp) {
    TokenEvent t = tokev(id, std::move(text));
    t.logprob = lp;
    t.top = {{id, lp}, {id_of("x"), -3.0f}};
    return t;
  };
  const int32_t a = tok().encode("é", false).at(0), b = tok().encode(" b", false).at(0), eos = id_of("<｜end▁of▁sentence｜>");
  TextPipeline p({"STOP"}, {eos}, &tok());
  EXPECT_EQ(p.feed_token(ev(a, "é", -0.5f)), "é");
  EXPECT_EQ(p.feed_token(ev(b, " b", -1.0f)), " b");
  EXPECT_EQ(p.feed_token(ev(b, "ST", -0.25f)), "");  // held: could start "STOP"
  Json lp = p.take_logprobs();
  EXPECT_EQ(lp["tokens"], Json::parse(R"(["é", " b"])"));
  EXPECT_EQ(lp["token_logprobs"], Json::parse("[-0.5, -1.0]"));
  EXPECT_EQ(lp["text_offset"], Json::parse("[0, 1]"));  // code points
  EXPECT_EQ(lp["top_logprobs"][0]["é"], -0.5);
  EXPECT_EQ(lp["top_logprobs"][0]["x"], -3.0);
  EXPECT_EQ(p.take_logprobs()["tokens"].size(), 0u);
  // "STOP" matches: the token that started it is never reported, nor is anything after.
  EXPECT_EQ(p.feed_token(ev(b, "OP", -0.1f)), "");
  EXPECT_EQ(p.finish(), "");
  EXPECT_EQ(p.take_logprobs()["tokens"].size(), 0u);

  // EOS is not an entry; a held-back tail released at EOS brings its entry.
  TextPipeline q({"STOP"}, {eos}, &tok());
  EXPECT_EQ(q.feed_token(ev(b, "ST", -0.25f)), "");
  EXPECT_EQ(q.feed_token(ev(eos, "", -0.1f)), "ST");
  lp = q.take_logprobs();
  EXPECT_EQ(lp["token_logprobs"], Json::parse("[-0.25]"));

  // A byte token that is not UTF-8 on its own is written as OpenAI does ("bytes:\\xNN").
  TextPipeline r({}, {eos}, &tok());
  const int32_t byte_tok = *tok().token_id("\u00C3");
  r.feed_token(ev(byte_tok, "", -1.0f));
  r.feed_token(ev(*tok().token_id("\u00A9"), "é", -1.0f));
  lp = r.take_logprobs();
  EXPECT_EQ(lp["tokens"][0], "bytes:\\xc3");
  EXPECT_EQ(lp["text_offset"], Json::parse("[0, 0]"));

  EXPECT_TRUE(TextPipeline({}, {eos}).take_logprobs().is_null());
}

TEST(FimResponse, ShapesStreamingAndNot) {
  Outcome o;
  o.finish_reason = "stop";
  o.usage = {10, 4, 3, 0};
  Json r = fim_response("cmpl-1", "deepseek-v4-flash", 5, "fp", "return a + b", o);
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["choices"][0].dump(), R"({"text":"return a + b","index":0,"logprobs":null,"finish_reason":"stop"})");
  EXPECT_EQ(r["usage"]["total_tokens"], 13);
  EXPECT_EQ(r["usage"]["prompt_cache_hit_tokens"], 4);
  EXPECT_FALSE(r["usage"].contains("completion_tokens_details"));
  EXPECT_EQ(r["system_fingerprint"], "fp");

  FimStream s("cmpl-1", "deepseek-v4-flash", 5, "fp");
  EXPECT_EQ(s.text(""), "");
  auto c = sse_data(s.text("ret"));
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0]["object"], "text_completion");
  EXPECT_EQ(c[0]["choices"][0].dump(), R"({"text":"ret","index":0,"logprobs":null,"finish_reason":null})");
  EXPECT_TRUE(c[0]["usage"].is_null());
  const std::string end = s.end(o);
  EXPECT_NE(end.find("data: [DONE]\n\n"), std::string::npos);
  auto e = sse_data(end);
  ASSERT_EQ(e.size(), 1u);
  EXPECT_EQ(e[0]["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(e[0]["choices"][0]["text"], "");
  EXPECT_EQ(e[0]["usage"]["completion_tokens"], 3);
  Json lp = Json::parse(R"({"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [{}], "text_offset": [0]})");
  EXPECT_EQ(sse_data(s.text("a", lp))[0]["choices"][0]["logprobs"], lp);
  EXPECT_EQ(sse_data(s.text("a", Json::parse(R"({"tokens": []})")))[0]["choices"][0]["logprobs"], Json(nullptr));
  EXPECT_EQ(fim_response("c", "m", 1, "fp", "a", o, lp)["choices"][0]["logprobs"], lp);
  auto err = sse_data(s.error(ApiError(500, "boom", "internal_error")));
  EXPECT_EQ(err[0]["error"]["message"], "boom");
}

// ---------------------------------------------------------------- tool_choice enforcement

namespace {

const char* kTools = R"("tools": [
  {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
  {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}])";

std::string decoded(const ForcedOutput& f) { return tok().decode(f.tokens); }

ForcedOutput forced_openai(const std::string& extra, bool thinking = false) {
  CanonicalRequest r = parse_openai_chat(
      body(std::string(R"({"model": ")") + (thinking ? "deepseek-reasoner" : "deepseek-chat") +
           R"(", "messages": [{"role": "user", "content": "x"}], )" + extra + "}"),
      opts());
  PreparedPrompt p = prepare_prompt(r, opts(), tok());
  return forced_tool_call(r, p, tok(), id_of("<｜end▁of▁sentence｜>"));
}

}  // namespace

TEST(ApiToolChoice, ForcedOpeningOpenAI) {
  const std::string open = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"";
  // auto / none / no tool_choice: nothing forced.
  EXPECT_TRUE(forced_openai(kTools).tokens.empty());
  EXPECT_TRUE(forced_openai(std::string(kTools) + R"(, "tool_choice": "auto")").tokens.empty());
  EXPECT_TRUE(forced_openai(std::string(kTools) + R"(, "tool_choice": "none")").tokens.empty());

  // required, several tools: the block and the invoke are opened, the model picks the name.
  ForcedOutput f = forced_openai(std::string(kTools) + R"(, "tool_choice": "required")");
  EXPECT_EQ(decoded(f), open);
  EXPECT_EQ(f.after, -1);  // non-thinking: from the first token

  // named tool with parameters: the invoke with that name; the model writes the arguments.
  f = forced_openai(std::string(kTools) + R"(, "tool_choice": {"type": "function", "function": {"name": "get_weather"}})");
  EXPECT_EQ(decoded(f), open + "get_weather\">\n");

  // named tool without parameters: the whole call, then EOS.
  f = forced_openai(std::string(kTools) + R"(, "tool_choice": {"type": "function", "function": {"name": "ping"}})");
  EXPECT_EQ(decoded(f), open + "ping\">\n\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>");
  EXPECT_EQ(f.tokens.back(), id_of("<｜end▁of▁sentence｜>"));

  // required with exactly one tool = that tool.
  f = forced_openai(R"("tools": [{"type": "function", "function": {"name": "only"}}], "tool_choice": "required")");
  EXPECT_EQ(decoded(f), open + "only\">\n\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>");

  // Thinking: after "</think>".
  f = forced_openai(std::string(kTools) + R"(, "tool_choice": "required")", true);
  EXPECT_EQ(f.after, id_of("</think>"));
  EXPECT_EQ(decoded(f), open);
}

TEST(ApiToolChoice, ForcedOpeningAnthropic) {
  auto forced = [](const std::string& tc) {
    CanonicalRequest r = parse_anthropic_messages(
        body(R"({"model": "claude-sonnet-4", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
          "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                    {"name": "ping"}], "tool_choice": )" + tc + "}"),
        opts());
    return forced_tool_call(r, prepare_prompt(r, opts(), tok()), tok(), id_of("<｜end▁of▁sentence｜>"));
  };
  const std::string open = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"";
  ForcedOutput f = forced(R"({"type": "any"})");
  EXPECT_EQ(decoded(f), open);
  EXPECT_EQ(f.after, id_of("</think>"));  // Anthropic: thinking on by default
  EXPECT_EQ(decoded(forced(R"({"type": "tool", "name": "get_weather"})")), open + "get_weather\">\n");
  EXPECT_EQ(decoded(forced(R"({"type": "tool", "name": "ping"})")),
            open + "ping\">\n\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>");
  EXPECT_TRUE(forced(R"({"type": "auto"})").tokens.empty());
  EXPECT_TRUE(forced(R"({"type": "none"})").tokens.empty());
}

// The forced text followed by what the model writes parses as a tool call (pipeline end to end).
TEST(ApiToolChoice, ForcedTextParsesAsToolCall) {
  ForcedOutput f = forced_openai(std::string(kTools) + R"(, "tool_choice": {"type": "function", "function": {"name": "get_weather"}})");
  PipelineOptions po;
  po.start = dsv4::text::OutputStart::kContent;
  po.tool_schemas["get_weather"] = body(R"({"type": "object", "properties": {"city": {"type": "string"}}})");
  CompletionPipeline pipe(po);
  std::vector<dsv4::text::OutputEvent> ev;
  pipe.feed_text(decoded(f) + "<｜DSML｜parameter name=\"city\" string=\"true\">Paris</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>", ev);
  pipe.finish(ev);
  dsv4::text::MessageAssembler a;
  a.apply(ev);
  ASSERT_EQ(a.message().tool_calls.size(), 1u);
  EXPECT_EQ(a.message().tool_calls[0].name, "get_weather");
  EXPECT_EQ(a.message().tool_calls[0].arguments, R"({"city": "Paris"})");
  EXPECT_EQ(a.message().content, "");
  EXPECT_EQ(pipe.finish_reason(), "tool_calls");
}
