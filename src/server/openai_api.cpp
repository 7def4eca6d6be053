#include "server/openai_api.h"

#include "core/error.h"
#include "text/json_py.h"

namespace dsv4::server {

namespace json_py = text::json_py;

namespace {

using namespace fields;

// Only the fields the chat surface defines reach the renderer: the encoder also reads internal
// fields (task, wo_eos, tools on messages) that clients must not be able to inject.
Json sanitize_message(const Json& m, std::size_t i, bool last, bool& prefix) {
  const std::string path = "messages[" + std::to_string(i) + "]";
  if (!m.is_object()) throw bad_request(path + ": message must be an object", "messages");
  auto role_it = m.find("role");
  if (role_it == m.end() || !role_it->is_string()) throw bad_request(path + ".role: missing or not a string", "messages");
  std::string role = role_it->get<std::string>();
  if (role == "developer") role = "system";  // the encoder's developer role is DeepSeek-internal
  if (role != "system" && role != "user" && role != "assistant" && role != "tool")
    throw bad_request(path + ".role: unknown role '" + role + "' (expected system, user, assistant, tool)", "messages");
  Json out = Json::object();
  out["role"] = role;
  for (const char* k : {"content", "reasoning_content", "tool_calls", "tool_call_id"})
    if (auto it = m.find(k); it != m.end()) out[k] = *it;
  if (role == "assistant" && m.contains("prefix") && json_py::truthy(m["prefix"])) {
    if (!last) throw bad_request(path + ".prefix: only the last message can be a prefix", "messages");
    out["wo_eos"] = true;
    prefix = true;
  }
  return out;
}

}  // namespace

CanonicalRequest parse_openai_chat(const Json& body, const ServerOptions& opt) {
  CanonicalRequest r;
  r.model = model_of_body(body, opt, Surface::kOpenAI, &r.requested_model);

  const Json* msgs = get(body, "messages");
  if (!msgs || !msgs->is_array() || msgs->empty())
    throw bad_request("messages: must be a non-empty array of messages", "messages");
  Json clean = Json::array();
  bool prefix = false;
  for (std::size_t i = 0; i < msgs->size(); ++i)
    clean.push_back(sanitize_message((*msgs)[i], i, i + 1 == msgs->size(), prefix));
  try {
    r.messages = text::messages_from_json(clean, "messages");
  } catch (const dsv4::Error& e) {
    throw bad_request(e.what(), "messages");
  }

  // Thinking: the model name forces it; then thinking.type; then chat_template_kwargs; then
  // reasoning_effort "none"; default on (as the hosted V4 API).
  std::optional<bool> thinking;
  if (const Json* t = get(body, "thinking")) {
    if (!t->is_object()) throw bad_request("thinking: must be an object like {\"type\": \"enabled\"}", "thinking");
    auto type = get_string(*t, "type");
    if (type == "enabled" || type == "adaptive" || type == "auto") thinking = true;
    else if (type == "disabled") thinking = false;
    else if (type) throw invalid_param("thinking.type: expected 'enabled' or 'disabled', got '" + *type + "'", "thinking");
  }
  if (const Json* k = get(body, "chat_template_kwargs")) {
    if (!k->is_object()) throw bad_request("chat_template_kwargs: must be an object", "chat_template_kwargs");
    for (const char* key : {"thinking", "enable_thinking"})
      if (const Json* v = get(*k, key); v && !thinking) {
        if (!v->is_boolean()) throw bad_request(std::string("chat_template_kwargs.") + key + ": must be a boolean", "chat_template_kwargs");
        thinking = v->get<bool>();
      }
  }
  if (auto effort = get_string(body, "reasoning_effort")) {
    auto e = map_effort(*effort, opt.prompt.effort_profile, "reasoning_effort");
    if (!e) {
      if (!thinking) thinking = false;
    } else {
      r.effort = *e;
    }
  }
  r.thinking = r.model.thinking.value_or(thinking.value_or(true));
  if (opt.strict_reasoning && r.thinking) {
    for (std::size_t i = 0; i < clean.size(); ++i)
      if (clean[i]["role"] == "assistant" && clean[i].contains("tool_calls") && !clean[i].contains("reasoning_content"))
        throw bad_request("The `reasoning_content` in the thinking mode must be passed back to the API.");
  }
  (void)prefix;

  auto mt = get_int(body, "max_tokens", 1, opt.max_tokens_limit);
  auto mct = get_int(body, "max_completion_tokens", 1, opt.max_tokens_limit);
  if (mt) r.max_tokens = static_cast<int>(*mt);
  else if (mct) r.max_tokens = static_cast<int>(*mct);

  if (auto v = get_number(body, "temperature", 0.0, 2.0)) r.sampling.temperature = static_cast<float>(*v);
  if (auto v = get_number(body, "top_p", 0.0, 1.0)) r.sampling.top_p = static_cast<float>(*v);
  if (auto v = get_number(body, "presence_penalty", -2.0, 2.0)) r.sampling.presence_penalty = static_cast<float>(*v);
  if (auto v = get_number(body, "frequency_penalty", -2.0, 2.0)) r.sampling.frequency_penalty = static_cast<float>(*v);
  if (auto v = get_int(body, "seed", INT64_MIN, INT64_MAX)) r.sampling.seed = static_cast<uint64_t>(*v);
  get_int(body, "n", 1, 128);  // validated, ignored: always one choice

  r.stop = get_string_list(body, "stop", 16);
  r.stream = get_bool(body, "stream", false);
  if (const Json* so = get(body, "stream_options")) {
    if (!so->is_object()) throw bad_request("stream_options: must be an object", "stream_options");
    r.include_usage = get_bool(*so, "include_usage", false);
  }
  const bool logprobs = get_bool(body, "logprobs", false);
  auto top = get_int(body, "top_logprobs", 0, 20);
  if (top && !logprobs) throw bad_request("top_logprobs: requires logprobs to be true", "top_logprobs");
  if (logprobs) r.top_logprobs = static_cast<int>(top.value_or(0));

  if (const Json* rf = get(body, "response_format")) {
    if (!rf->is_object()) throw bad_request("response_format: must be an object", "response_format");
    auto type = get_string(*rf, "type");
    if (type == "json_object") r.response_format = Json{{"type", "json_object"}};
    else if (type != "text" && type != "json_schema")  // json_schema: accepted and ignored, as hosted
      throw invalid_param("response_format.type: expected 'text' or 'json_object'", "response_format");
  }

  if (const Json* tools = get(body, "tools")) {
    if (!tools->is_array()) throw bad_request("tools: must be an array", "tools");
    if (tools->size() > 128) throw invalid_param("tools: at most 128 functions", "tools");
    for (std::size_t i = 0; i < tools->size(); ++i) {
      const Json& t = (*tools)[i];
      const std::string p = "tools[" + std::to_string(i) + "]";
      if (!t.is_object()) throw bad_request(p + ": must be an object", "tools");
      if (auto type = get_string(t, "type"); type && *type != "function")
        throw bad_request(p + ".type: only 'function' tools are supported", "tools");
      const Json* fn = get(t, "function");
      if (!fn || !fn->is_object()) throw bad_request(p + ".function: must be an object", "tools");
      auto name = get_string(*fn, "name");
      if (!name || name->empty()) throw bad_request(p + ".function.name: required", "tools");
      if (const Json* params = get(*fn, "parameters"); params && !params->is_object())
        throw bad_request(p + ".function.parameters: must be a JSON schema object", "tools");
      r.tools.push_back(text::Tool{*fn});
      r.tool_schemas[*name] = fn->contains("parameters") ? (*fn)["parameters"] : Json(nullptr);
    }
  }
  if (const Json* tc = get(body, "tool_choice")) {
    if (tc->is_string()) {
      const std::string& s = tc->get_ref<const std::string&>();
      if (s == "none") r.tools_allowed = false;
      else if (s != "auto" && s != "required")
        throw invalid_param("tool_choice: expected none, auto, required or a named function", "tool_choice");
      if (s == "required" && r.tools.empty()) throw bad_request("tool_choice 'required' needs tools", "tool_choice");
      r.tool_required = s == "required";
    } else if (tc->is_object()) {
      const Json* fn = get(*tc, "function");
      auto name = fn && fn->is_object() ? get_string(*fn, "name") : std::nullopt;
      if (!name) throw bad_request("tool_choice.function.name: required", "tool_choice");
      if (!r.tool_schemas.count(*name)) throw bad_request("tool_choice: no tool named '" + *name + "' in tools", "tool_choice");
      r.forced_tool = *name;
    } else {
      throw bad_request("tool_choice: must be a string or an object", "tool_choice");
    }
  }
  // tool_choice none: the tools block is not rendered at all (api.md §11.14).
  if (!r.tools_allowed) r.tools.clear();
  return r;
}

Json openai_chat_response(const std::string& id, const std::string& model, int64_t created,
                          const std::string& fingerprint, bool thinking, const text::ParsedMessage& msg,
                          const Outcome& outcome, const std::vector<Json>* logprobs) {
  Json message = Json::object();
  message["role"] = "assistant";
  message["content"] = msg.content;
  if (thinking) message["reasoning_content"] = msg.reasoning_content;
  Json calls = Json::array();
  for (const auto& c : msg.tool_calls) {
    if (!c.complete) continue;
    calls.push_back({{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments}}}});
  }
  if (!calls.empty()) message["tool_calls"] = calls;
  Json choice = Json::object();
  choice["index"] = 0;
  choice["message"] = message;
  choice["logprobs"] = logprobs ? Json{{"content", *logprobs}} : Json(nullptr);
  choice["finish_reason"] = outcome.finish_reason;
  return openai_object(id, "chat.completion", created, model, fingerprint, std::move(choice),
                       openai_usage(outcome.usage, thinking));
}

Json openai_model_entry(const std::string& id, int64_t created, int64_t context_length, int max_output) {
  return Json{{"id", id},
              {"object", "model"},
              {"created", created},
              {"owned_by", "deepseek"},
              {"context_length", context_length},
              {"max_completion_tokens", max_output}};
}

Json openai_models_list(const ServerOptions& opt, int64_t created, int64_t context_length) {
  Json data = Json::array();
  for (const auto& n : listed_models(opt))
    data.push_back(openai_model_entry(n, created, context_length, opt.max_tokens_limit));
  return Json{{"object", "list"}, {"data", data}};
}

// ---------------------------------------------------------------- streaming

OpenAIStream::OpenAIStream(std::string id, std::string model, int64_t created, std::string fingerprint, bool thinking)
    : id_(std::move(id)), model_(std::move(model)), fingerprint_(std::move(fingerprint)), created_(created),
      thinking_(thinking) {}

std::string OpenAIStream::chunk(Json delta, const Json& finish_reason, Json usage, Json logprobs) {
  Json choice = Json::object();
  choice["index"] = 0;
  choice["delta"] = std::move(delta);
  choice["logprobs"] = std::move(logprobs);
  choice["finish_reason"] = finish_reason;
  const Json c = openai_object(id_, "chat.completion.chunk", created_, model_, fingerprint_, std::move(choice),
                               std::move(usage));
  return "data: " + c.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n\n";
}

std::string OpenAIStream::begin(const Usage&) {
  Json d = Json::object();
  d["role"] = "assistant";
  d["content"] = thinking_ ? Json(nullptr) : Json("");
  if (thinking_) d["reasoning_content"] = "";
  return chunk(std::move(d));
}

std::string OpenAIStream::events(const std::vector<text::OutputEvent>& events, std::vector<Json> logprobs) {
  using T = text::EventType;
  for (auto& l : logprobs) pending_logprobs_.push_back(std::move(l));
  std::string out;
  for (const auto& e : text::coalesce(events)) {
    Json d = Json::object();
    switch (e.type) {
      case T::kReasoningDelta:
        d["content"] = nullptr;
        d["reasoning_content"] = e.text;
        out += chunk(std::move(d));
        break;
      case T::kContentDelta: {
        d["content"] = e.text;
        if (thinking_) d["reasoning_content"] = nullptr;
        // The logprobs of the tokens that produced this text ride on its chunk.
        Json lp = pending_logprobs_.empty() ? Json(nullptr) : Json{{"content", std::exchange(pending_logprobs_, {})}};
        out += chunk(std::move(d), nullptr, nullptr, std::move(lp));
        break;
      }
      case T::kToolCallBegin:
        d["tool_calls"] = Json::array({Json{{"index", e.tool_index},
                                            {"id", e.tool_id},
                                            {"type", "function"},
                                            {"function", {{"name", e.tool_name}, {"arguments", ""}}}}});
        out += chunk(std::move(d));
        break;
      case T::kToolCallArguments:
        d["tool_calls"] = Json::array({Json{{"index", e.tool_index}, {"function", {{"arguments", e.text}}}}});
        out += chunk(std::move(d));
        break;
      case T::kToolCallEnd:
      case T::kMessageEnd:
        break;
    }
  }
  return out;
}

std::string OpenAIStream::end(const Outcome& outcome) {
  Json d = Json::object();
  d["content"] = "";
  if (thinking_) d["reasoning_content"] = nullptr;
  // Usage rides on the finish chunk (hosted behaviour), with or without include_usage.
  std::string out = chunk(std::move(d), outcome.finish_reason, openai_usage(outcome.usage, thinking_));
  return out + "data: [DONE]\n\n";
}

std::string OpenAIStream::error(const ApiError& e) {
  return "data: " + openai_error_body(e).dump(-1, ' ', false, Json::error_handler_t::replace) + "\n\ndata: [DONE]\n\n";
}

}  // namespace dsv4::server
