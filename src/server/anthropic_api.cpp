#include "server/anthropic_api.h"

#include "core/error.h"
#include "text/json_py.h"

namespace dsv4::server {

namespace json_py = text::json_py;

namespace {

using namespace fields;

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

std::string block_type(const Json& b, const std::string& path) {
  if (!b.is_object()) throw bad_request(path + ": content block must be an object");
  auto t = get_string(b, "type");
  if (!t) throw bad_request(path + ".type: required");
  return *t;
}

std::string block_text(const Json& b, const std::string& path) {
  auto t = get_string(b, "text");
  (void)path;
  return t.value_or("");
}

// tool_result content: a string or blocks; text is used, anything else is named (api.md §9.3).
std::string tool_result_text(const Json& b, const std::string& path) {
  const Json* c = get(b, "content");
  if (!c) return "";
  if (c->is_string()) return c->get<std::string>();
  if (!c->is_array()) throw bad_request(path + ".content: must be a string or an array of blocks");
  std::string out;
  for (std::size_t k = 0; k < c->size(); ++k) {
    const std::string p = path + ".content[" + std::to_string(k) + "]";
    const std::string type = block_type((*c)[k], p);
    if (k) out += "\n\n";
    if (type == "text") out += block_text((*c)[k], p);
    else out += "[Unsupported " + type + "]";
  }
  return out;
}

void add_user_blocks(const Json& content, const std::string& path, std::vector<text::Message>& out) {
  std::optional<std::string> text;
  auto flush = [&] {
    if (!text) return;
    text::Message m;
    m.role = text::Role::kUser;
    m.content = std::move(*text);
    out.push_back(std::move(m));
    text.reset();
  };
  for (std::size_t k = 0; k < content.size(); ++k) {
    const Json& b = content[k];
    const std::string p = path + ".content[" + std::to_string(k) + "]";
    const std::string type = block_type(b, p);
    if (type == "text") {
      text = text ? *text + "\n\n" + block_text(b, p) : block_text(b, p);
    } else if (type == "tool_result") {
      flush();
      text::Message m;
      m.role = text::Role::kTool;
      m.tool_call_id = get_string(b, "tool_use_id").value_or("");
      m.content = tool_result_text(b, p);
      out.push_back(std::move(m));
    } else if (type == "image") {
      throw bad_request(p + ": image input is not supported (this model reads text only)", "messages");
    }
    // document, server-tool blocks, …: not supported by the model; dropped (api.md §9.3).
  }
  flush();
}

void add_assistant_blocks(const Json& content, const std::string& path, std::vector<text::Message>& out) {
  text::Message m;
  m.role = text::Role::kAssistant;
  std::string reasoning, answer;
  bool has_reasoning = false;
  for (std::size_t k = 0; k < content.size(); ++k) {
    const Json& b = content[k];
    const std::string p = path + ".content[" + std::to_string(k) + "]";
    const std::string type = block_type(b, p);
    if (type == "thinking") {
      reasoning += get_string(b, "thinking").value_or("");
      has_reasoning = true;
    } else if (type == "text") {
      answer += block_text(b, p);
    } else if (type == "tool_use") {
      text::ToolCall tc;
      tc.id = get_string(b, "id").value_or("");
      auto name = get_string(b, "name");
      if (!name) throw bad_request(p + ".name: required", "messages");
      tc.name = *name;
      const Json* input = get(b, "input");
      try {
        tc.arguments = json_py::dumps(input ? *input : Json::object());
      } catch (const dsv4::Error& e) {
        throw bad_request(p + ".input: " + e.what(), "messages");
      }
      m.tool_calls.push_back(std::move(tc));
    }
    // redacted_thinking and anything else: accepted and dropped.
  }
  m.content = answer;
  if (has_reasoning) m.reasoning_content = reasoning;
  out.push_back(std::move(m));
}

}  // namespace

CanonicalRequest parse_anthropic_messages(const Json& body, const ServerOptions& opt, bool count_tokens) {
  CanonicalRequest r;
  r.model = model_of_body(body, opt, Surface::kAnthropic, &r.requested_model);

  // system: a string or text blocks; blocks starting with "x-anthropic-" are per-request volatile
  // headers (Claude Code billing) that would defeat prefix caching (api.md §11.6).
  if (const Json* sys = get(body, "system")) {
    std::string text;
    bool any = false;
    if (sys->is_string()) {
      text = sys->get<std::string>();
      any = true;
    } else if (sys->is_array()) {
      for (std::size_t k = 0; k < sys->size(); ++k) {
        const std::string p = "system[" + std::to_string(k) + "]";
        if (block_type((*sys)[k], p) != "text") continue;
        std::string t = block_text((*sys)[k], p);
        if (starts_with(t, "x-anthropic-")) continue;
        if (any) text += "\n\n";
        text += t;
        any = true;
      }
    } else {
      throw bad_request("system: must be a string or an array of text blocks", "system");
    }
    if (any) {
      text::Message m;
      m.role = text::Role::kSystem;
      m.content = text;
      r.messages.push_back(std::move(m));
    }
  }

  const Json* msgs = get(body, "messages");
  if (!msgs || !msgs->is_array() || msgs->empty()) throw bad_request("messages: must be a non-empty array", "messages");
  for (std::size_t i = 0; i < msgs->size(); ++i) {
    const Json& m = (*msgs)[i];
    const std::string path = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw bad_request(path + ": must be an object", "messages");
    auto role = get_string(m, "role");
    if (role != "user" && role != "assistant")
      throw bad_request(path + ".role: must be 'user' or 'assistant'", "messages");
    const Json* content = get(m, "content");
    if (!content) throw bad_request(path + ".content: required", "messages");
    if (content->is_string()) {
      text::Message tm;
      tm.role = *role == "user" ? text::Role::kUser : text::Role::kAssistant;
      tm.content = content->get<std::string>();
      r.messages.push_back(std::move(tm));
    } else if (content->is_array()) {
      if (*role == "user") add_user_blocks(*content, path, r.messages);
      else add_assistant_blocks(*content, path, r.messages);
    } else {
      throw bad_request(path + ".content: must be a string or an array of content blocks", "messages");
    }
  }

  if (const Json* tools = get(body, "tools")) {
    if (!tools->is_array()) throw bad_request("tools: must be an array", "tools");
    for (std::size_t i = 0; i < tools->size(); ++i) {
      const Json& t = (*tools)[i];
      const std::string p = "tools[" + std::to_string(i) + "]";
      if (!t.is_object()) throw bad_request(p + ": must be an object", "tools");
      auto type = get_string(t, "type");
      // Server tools (web_search_…, bash_…) have a versioned type and no schema: not ours to run.
      if (type && *type != "custom" && !t.contains("input_schema")) continue;
      auto name = get_string(t, "name");
      if (!name || name->empty()) throw bad_request(p + ".name: required", "tools");
      Json fn = Json::object();
      fn["name"] = *name;
      if (auto d = get_string(t, "description")) fn["description"] = *d;
      const Json* schema = get(t, "input_schema");
      if (schema && !schema->is_object()) throw bad_request(p + ".input_schema: must be an object", "tools");
      fn["parameters"] = schema ? *schema : Json{{"type", "object"}, {"properties", Json::object()}};
      r.tool_schemas[*name] = fn["parameters"];
      r.tools.push_back(text::Tool{std::move(fn)});
    }
  }
  if (const Json* tc = get(body, "tool_choice")) {
    if (!tc->is_object()) throw bad_request("tool_choice: must be an object", "tool_choice");
    auto type = get_string(*tc, "type");
    if (type == "none") {
      r.tools_allowed = false;
    } else if (type == "tool") {
      auto name = get_string(*tc, "name");
      if (!name || !r.tool_schemas.count(*name)) throw bad_request("tool_choice.name: must name one of the tools", "tool_choice");
      r.forced_tool = *name;
    } else if (type == "any") {
      r.tool_required = true;
    } else if (type != "auto") {
      throw bad_request("tool_choice.type: expected auto, any, tool or none", "tool_choice");
    }
  }
  if (!r.tools_allowed) r.tools.clear();

  std::optional<bool> thinking;
  if (const Json* t = get(body, "thinking")) {
    if (!t->is_object()) throw bad_request("thinking: must be an object", "thinking");
    auto type = get_string(*t, "type");
    if (type == "enabled" || type == "adaptive") thinking = true;
    else if (type == "disabled") thinking = false;
    else throw bad_request("thinking.type: expected 'enabled' or 'disabled'", "thinking");
    get_int(*t, "budget_tokens", 0, INT64_MAX);  // accepted, not used
  }
  if (const Json* oc = get(body, "output_config"); oc && oc->is_object()) {
    if (auto effort = get_string(*oc, "effort")) {
      auto e = map_effort(*effort, opt.prompt.effort_profile, "output_config.effort");
      if (!e) {
        if (!thinking) thinking = false;
      } else {
        r.effort = *e;
      }
    }
  }
  r.thinking = r.model.thinking.value_or(thinking.value_or(true));

  if (!count_tokens) {
    if (auto mt = get_int(body, "max_tokens", 1, opt.max_tokens_limit)) r.max_tokens = static_cast<int>(*mt);
    r.stop = get_string_list(body, "stop_sequences", 256);
    if (auto v = get_number(body, "temperature", 0.0, 2.0)) r.sampling.temperature = static_cast<float>(*v);
    if (auto v = get_number(body, "top_p", 0.0, 1.0)) r.sampling.top_p = static_cast<float>(*v);
    if (auto v = get_int(body, "top_k", 0, 1 << 30)) r.sampling.top_k = static_cast<int>(*v);
    r.stream = get_bool(body, "stream", false);
    if (const Json* md = get(body, "metadata"); md && !md->is_object())
      throw bad_request("metadata: must be an object", "metadata");
  }
  return r;
}

Json anthropic_usage(const Usage& u) {
  Json j = Json::object();
  j["input_tokens"] = u.prompt_tokens - u.cached_tokens;  // Anthropic: excludes cache reads
  j["cache_creation_input_tokens"] = 0;
  j["cache_read_input_tokens"] = u.cached_tokens;
  j["output_tokens"] = u.completion_tokens;
  return j;
}

Json anthropic_response(const std::string& id, const std::string& model, const text::ParsedMessage& msg,
                        const Outcome& outcome) {
  Json content = Json::array();
  if (!msg.reasoning_content.empty())
    content.push_back({{"type", "thinking"}, {"thinking", msg.reasoning_content}, {"signature", ""}});
  if (!msg.content.empty()) content.push_back({{"type", "text"}, {"text", msg.content}});
  for (const auto& c : msg.tool_calls) {
    if (!c.complete) continue;
    Json input = Json::object();
    try {
      Json parsed = json_py::parse(c.arguments);
      if (parsed.is_object()) input = parsed;
    } catch (const dsv4::Error&) {
    }
    content.push_back({{"type", "tool_use"}, {"id", c.id}, {"name", c.name}, {"input", input}});
  }
  if (content.empty()) content.push_back({{"type", "text"}, {"text", ""}});
  Json r = Json::object();
  r["id"] = id;
  r["type"] = "message";
  r["role"] = "assistant";
  r["model"] = model;
  r["content"] = content;
  r["stop_reason"] = anthropic_stop_reason(outcome.finish_reason, outcome.stop_sequence.has_value());
  r["stop_sequence"] = outcome.stop_sequence ? Json(*outcome.stop_sequence) : Json(nullptr);
  r["usage"] = anthropic_usage(outcome.usage);
  return r;
}

// ---------------------------------------------------------------- streaming

std::string sse_event(const std::string& type, const Json& data) {
  return "event: " + type + "\ndata: " + data.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n\n";
}

AnthropicStream::AnthropicStream(std::string id, std::string model) : id_(std::move(id)), model_(std::move(model)) {}

std::string AnthropicStream::begin(const Usage& u) {
  Json usage = Json::object();
  usage["input_tokens"] = u.prompt_tokens;
  usage["cache_creation_input_tokens"] = 0;
  usage["cache_read_input_tokens"] = 0;
  usage["output_tokens"] = 0;
  Json msg = Json::object();
  msg["id"] = id_;
  msg["type"] = "message";
  msg["role"] = "assistant";
  msg["model"] = model_;
  msg["content"] = Json::array();
  msg["stop_reason"] = nullptr;
  msg["stop_sequence"] = nullptr;
  msg["usage"] = usage;
  return sse_event("message_start", Json{{"type", "message_start"}, {"message", msg}});
}

std::string AnthropicStream::open(Block b, Json content_block) {
  std::string out = close();
  block_ = b;
  ++index_;
  return out + sse_event("content_block_start", Json{{"type", "content_block_start"},
                                                     {"index", index_},
                                                     {"content_block", std::move(content_block)}});
}

std::string AnthropicStream::close() {
  std::string out;
  if (block_ == Block::kNone) return out;
  if (block_ == Block::kThinking)
    out += sse_event("content_block_delta",
                     Json{{"type", "content_block_delta"},
                          {"index", index_},
                          {"delta", {{"type", "signature_delta"}, {"signature", ""}}}});
  out += sse_event("content_block_stop", Json{{"type", "content_block_stop"}, {"index", index_}});
  block_ = Block::kNone;
  return out;
}

std::string AnthropicStream::events(const std::vector<text::OutputEvent>& events, std::vector<Json>) {
  using T = text::EventType;
  std::string out;
  auto delta = [&](Json d) {
    out += sse_event("content_block_delta",
                     Json{{"type", "content_block_delta"}, {"index", index_}, {"delta", std::move(d)}});
  };
  for (const auto& e : text::coalesce(events)) {
    switch (e.type) {
      case T::kReasoningDelta:
        if (block_ != Block::kThinking)
          out += open(Block::kThinking, Json{{"type", "thinking"}, {"thinking", ""}, {"signature", ""}});
        delta(Json{{"type", "thinking_delta"}, {"thinking", e.text}});
        break;
      case T::kContentDelta:
        if (block_ != Block::kText) out += open(Block::kText, Json{{"type", "text"}, {"text", ""}});
        delta(Json{{"type", "text_delta"}, {"text", e.text}});
        break;
      case T::kToolCallBegin:
        out += open(Block::kToolUse,
                    Json{{"type", "tool_use"}, {"id", e.tool_id}, {"name", e.tool_name}, {"input", Json::object()}});
        break;
      case T::kToolCallArguments:
        if (block_ == Block::kToolUse) delta(Json{{"type", "input_json_delta"}, {"partial_json", e.text}});
        break;
      case T::kToolCallEnd:
        if (block_ == Block::kToolUse) out += close();
        break;
      case T::kMessageEnd:
        break;
    }
  }
  return out;
}

std::string AnthropicStream::end(const Outcome& outcome) {
  std::string out = close();
  Json d = Json::object();
  d["stop_reason"] = anthropic_stop_reason(outcome.finish_reason, outcome.stop_sequence.has_value());
  d["stop_sequence"] = outcome.stop_sequence ? Json(*outcome.stop_sequence) : Json(nullptr);
  out += sse_event("message_delta", Json{{"type", "message_delta"}, {"delta", d}, {"usage", anthropic_usage(outcome.usage)}});
  out += sse_event("message_stop", Json{{"type", "message_stop"}});
  return out;
}

std::string AnthropicStream::keepalive() { return sse_event("ping", Json{{"type", "ping"}}); }

std::string AnthropicStream::error(const ApiError& e) { return sse_event("error", anthropic_error_body(e)); }

}  // namespace dsv4::server
