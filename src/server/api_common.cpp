#include "server/api_common.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "core/error.h"
#include "text/json_py.h"

namespace dsv4::server {

namespace json_py = text::json_py;

ApiError bad_request(const std::string& message, const std::string& param) {
  return ApiError(400, message, "invalid_request_error", param);
}

ApiError invalid_param(const std::string& message, const std::string& param) {
  return ApiError(422, message, "invalid_request_error", param, "invalid_parameter");
}

Json openai_error_body(const ApiError& e) {
  Json err = Json::object();
  err["message"] = e.what();
  err["type"] = e.type;
  err["param"] = e.param.empty() ? Json(nullptr) : Json(e.param);
  err["code"] = e.code.empty() ? e.type : e.code;
  for (auto it = e.extra.begin(); it != e.extra.end(); ++it) err[it.key()] = it.value();
  return Json{{"error", err}};
}

Json anthropic_error_body(const ApiError& e) {
  std::string type;
  switch (e.status) {
    case 401: type = "authentication_error"; break;
    case 403: type = "permission_error"; break;
    case 404: type = "not_found_error"; break;
    case 413: type = "request_too_large"; break;
    case 429: type = "rate_limit_error"; break;
    case 503:
    case 529: type = "overloaded_error"; break;
    default: type = e.status >= 500 ? "api_error" : "invalid_request_error";
  }
  return Json{{"type", "error"}, {"error", {{"type", type}, {"message", e.what()}}}};
}

std::string default_served_name(const ModelConfig& config) {
  std::string f = config.family_name();
  return f == "deepseek-v4-pro" ? f : "deepseek-v4-flash";
}

namespace {

bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

const std::string& primary(const ServerOptions& opt) {
  static const std::string fallback = "deepseek-v4-flash";
  return opt.served_names.empty() ? fallback : opt.served_names.front();
}

}  // namespace

std::vector<std::string> listed_models(const ServerOptions& opt) {
  std::vector<std::string> out = opt.served_names;
  if (out.empty()) out.push_back(primary(opt));
  for (const char* alias : {"deepseek-chat", "deepseek-reasoner"})
    if (std::find(out.begin(), out.end(), alias) == out.end()) out.push_back(alias);
  return out;
}

ModelChoice model_of_body(const Json& body, const ServerOptions& opt, Surface surface, std::string* requested) {
  if (!body.is_object()) throw bad_request("request body must be a JSON object");
  auto model = fields::get_string(body, "model");
  if (!model) throw bad_request("model: required", "model");
  *requested = *model;
  return resolve_model(opt, *model, surface);
}

ModelChoice resolve_model(const ServerOptions& opt, const std::string& requested, Surface surface) {
  const std::string& main = primary(opt);
  if (requested == "deepseek-chat") return {main, false};
  if (requested == "deepseek-reasoner") return {main, true};
  for (const auto& n : opt.served_names)
    if (n == requested) return {n, std::nullopt};
  // V4.1-era and family names all mean "the loaded model".
  if (requested == main || requested == "deepseek-flash" || requested == "deepseek-v4") return {main, std::nullopt};
  if (surface == Surface::kAnthropic && opt.claude_aliases && starts_with(requested, "claude")) return {main, std::nullopt};
  if (opt.accept_any_model) return {main, std::nullopt};
  ApiError e(404, "The model `" + requested + "` does not exist. Served models: " + main +
                      ", deepseek-chat, deepseek-reasoner",
             "invalid_request_error", "model", "model_not_found");
  throw e;
}

bool api_key_ok(const ServerOptions& opt, const std::string& authorization, const std::string& x_api_key) {
  if (opt.api_keys.empty()) return true;
  std::string key = x_api_key;
  if (key.empty() && authorization.size() > 7) {
    std::string scheme = authorization.substr(0, 7);
    std::transform(scheme.begin(), scheme.end(), scheme.begin(), [](unsigned char c) { return std::tolower(c); });
    if (scheme == "bearer ") key = authorization.substr(7);
  }
  if (key.empty()) return false;
  for (const auto& k : opt.api_keys)
    if (k == key) return true;
  return false;
}

namespace {
std::mt19937_64& rng() {
  // Ids must be unguessable across restarts and threads: seeded from the OS per thread.
  thread_local std::mt19937_64 g{(static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}()};
  return g;
}
std::string random_from(std::string_view alphabet, std::size_t n) {
  std::uniform_int_distribution<std::size_t> d(0, alphabet.size() - 1);
  std::string s(n, ' ');
  for (auto& c : s) c = alphabet[d(rng())];
  return s;
}
}  // namespace

std::string random_alnum(std::size_t n) {
  return random_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", n);
}
std::string random_hex(std::size_t n) { return random_from("0123456789abcdef", n); }

// ---------------------------------------------------------------- tool arguments

namespace {

std::string schema_type(const Json* schema) {
  if (!schema || !schema->is_object()) return "";
  auto it = schema->find("type");
  if (it == schema->end()) return "";
  if (it->is_string()) return it->get<std::string>();
  // ["integer", "null"] style: the first non-null type decides.
  if (it->is_array())
    for (const auto& t : *it)
      if (t.is_string() && t.get<std::string>() != "null") return t.get<std::string>();
  return "";
}

bool type_matches(const Json& v, const std::string& type) {
  if (type == "integer") return v.is_number_integer() || json_py::is_big_int(v);
  if (type == "number") return v.is_number() || json_py::is_big_int(v);
  if (type == "boolean") return v.is_boolean();
  if (type == "object") return v.is_object();
  if (type == "array") return v.is_array();
  if (type == "null") return v.is_null();
  if (type == "string") return v.is_string();
  return true;
}

Json coerce_value(const Json& v, const Json* schema) {
  const std::string type = schema_type(schema);
  if (type.empty() || type_matches(v, type)) {
    // Recurse into objects with properties.
    if (v.is_object() && schema && schema->contains("properties") && (*schema)["properties"].is_object()) {
      Json out = Json::object();
      const Json& props = (*schema)["properties"];
      for (auto it = v.begin(); it != v.end(); ++it) {
        auto p = props.find(it.key());
        out[it.key()] = coerce_value(it.value(), p == props.end() ? nullptr : &*p);
      }
      return out;
    }
    if (v.is_array() && schema && schema->contains("items") && (*schema)["items"].is_object()) {
      Json out = Json::array();
      for (const auto& x : v) out.push_back(coerce_value(x, &(*schema)["items"]));
      return out;
    }
    return v;
  }
  if (v.is_string() && type != "string") {
    // The model wrote string="true" for a typed parameter: parse the text as that type.
    try {
      Json parsed = json_py::parse(v.get_ref<const std::string&>());
      if (type == "number" && parsed.is_number()) return parsed;
      if (type_matches(parsed, type)) return coerce_value(parsed, schema);
    } catch (const dsv4::Error&) {
    }
    return v;
  }
  if (type == "string" && !v.is_string()) return Json(json_py::dumps(v));
  return v;
}

}  // namespace

std::string coerce_tool_arguments(const std::string& arguments, const Json* schema) {
  Json args;
  try {
    args = json_py::parse(arguments);
  } catch (const dsv4::Error&) {
    return arguments;
  }
  if (!args.is_object()) return arguments;
  const Json* props = nullptr;
  if (schema && schema->is_object()) {
    auto it = schema->find("properties");
    if (it != schema->end() && it->is_object()) props = &*it;
  }
  // {"arguments": {...}} / {"input": {...}} around the real arguments, when the schema has no such key.
  if (args.size() == 1) {
    const std::string key = args.begin().key();
    if ((key == "arguments" || key == "input") && !(props && props->contains(key))) {
      Json inner = args.begin().value();
      if (inner.is_string()) {
        try {
          inner = json_py::parse(inner.get_ref<const std::string&>());
        } catch (const dsv4::Error&) {
        }
      }
      if (inner.is_object()) args = inner;
    }
  }
  Json out = schema ? coerce_value(args, schema) : args;
  try {
    return json_py::dumps(out);
  } catch (const dsv4::Error&) {
    return arguments;
  }
}

// ---------------------------------------------------------------- streamed tool arguments

ToolArgumentStreamer::ToolArgumentStreamer(const Json* schema) : schema_(schema) {
  if (schema_ && schema_->is_object()) {
    auto it = schema_->find("properties");
    if (it != schema_->end() && it->is_object()) wrapper_props_ = &*it;
  }
  const std::string type = schema_type(schema_);
  if (!type.empty() && type != "object") {
    hold_ = true;  // coerce_value would treat the whole object: nothing is final before the end
  } else if (wrapper_props_) {
    props_ = wrapper_props_;
  }
}

std::string ToolArgumentStreamer::emit(std::string s) {
  sent_ += s;
  return s;
}

namespace {
bool json_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// An escape sequence exactly as json.dumps(ensure_ascii=False) would write the character.
bool canonical_escape(std::string_view esc) {
  std::string ch;
  if (esc.size() == 2) {
    switch (esc[1]) {
      case '"': ch = "\""; break;
      case '\\': ch = "\\"; break;
      case '/': ch = "/"; break;
      case 'b': ch = "\b"; break;
      case 'f': ch = "\f"; break;
      case 'n': ch = "\n"; break;
      case 'r': ch = "\r"; break;
      case 't': ch = "\t"; break;
      default: return false;
    }
  } else if (esc.size() == 6 && esc.substr(0, 4) == "\\u00") {
    const unsigned v = static_cast<unsigned>(std::stoul(std::string(esc.substr(4)), nullptr, 16));
    if (v >= 0x80) return false;
    ch = std::string(1, static_cast<char>(v));
  } else {
    return false;
  }
  std::string again;
  json_py::append_escaped_string(again, ch, false);
  return again == esc;
}
}  // namespace

std::string ToolArgumentStreamer::feed(std::string_view raw) {
  using M = JsonPrefixValidator::Mode;
  raw_ += raw;
  std::string out;
  for (; !hold_ && scanned_ < raw_.size(); ++scanned_) {
    const std::size_t i = scanned_;
    const char c = raw_[i];
    const M before = v_.mode();
    const int depth = v_.depth();
    if (!v_.feed(static_cast<unsigned char>(c))) {
      hold_ = true;
      break;
    }
    if (depth == 1 && (before == M::kObjFirst || before == M::kObjKey) && c == '"') key_start_ = i;
    if (depth == 1 && before == M::kString && v_.mode() == M::kColon) {
      try {
        key_ = json_py::parse(raw_.substr(key_start_, i + 1 - key_start_)).get<std::string>();
      } catch (const std::exception&) {
        hold_ = true;
        break;
      }
    }
    if (depth == 1 && before == M::kValue && !json_ws(c)) {
      // A top-level value starts: what precedes it ({"key": or , "key": ) is final.
      if (first_key_ && (key_ == "arguments" || key_ == "input") && !(wrapper_props_ && wrapper_props_->contains(key_))) {
        hold_ = true;  // maybe a wrapper that coerce_tool_arguments removes
        break;
      }
      first_key_ = false;
      out += emit(raw_.substr(done_, i - done_));
      done_ = i;
      in_value_ = true;
      value_start_ = i;
      value_sent_.clear();
      value_schema_ = nullptr;
      if (props_) {
        auto p = props_->find(key_);
        if (p != props_->end()) value_schema_ = &*p;
      }
      const std::string type = schema_type(value_schema_);
      value_number_ = c == '-' || (c >= '0' && c <= '9');
      value_stream_ = c == '"' && (type.empty() || type == "string");
      esc_start_ = std::string::npos;
      continue;
    }
    if (!in_value_) {
      if (v_.complete()) {  // the closing brace
        out += emit(raw_.substr(done_, i + 1 - done_));
        done_ = i + 1;
      }
      continue;
    }
    const M now = v_.mode();
    if (v_.depth() <= 1 && (now == M::kObjNext || now == M::kObjKey || now == M::kDone)) {
      // The value is complete: send it as coerce_tool_arguments will write it.
      const std::size_t end = value_number_ ? i : i + 1;
      std::string canonical;
      try {
        canonical = json_py::dumps(coerce_value(json_py::parse(raw_.substr(value_start_, end - value_start_)), value_schema_));
      } catch (const std::exception&) {
        hold_ = true;
        break;
      }
      if (canonical.compare(0, value_sent_.size(), value_sent_) != 0) {
        hold_ = true;
        break;
      }
      out += emit(canonical.substr(value_sent_.size()));
      done_ = end;
      in_value_ = false;
      if (v_.complete()) {  // a number ended by the closing brace
        out += emit(raw_.substr(done_, i + 1 - done_));
        done_ = i + 1;
      }
      continue;
    }
    if (value_stream_ && v_.depth() == 1) {
      // Inside a streamed string: send up to here unless an escape is open or was not canonical.
      if (c == '\\' && esc_start_ == std::string::npos) {
        esc_start_ = i;
      } else if (esc_start_ != std::string::npos) {
        const std::size_t len = i + 1 - esc_start_;
        const bool unicode = raw_[esc_start_ + 1] == 'u';
        if (len == 2 && !unicode) {
          if (!canonical_escape(std::string_view(raw_).substr(esc_start_, 2))) value_stream_ = false;
          esc_start_ = std::string::npos;
        } else if (unicode && len == 6) {
          if (!canonical_escape(std::string_view(raw_).substr(esc_start_, 6))) value_stream_ = false;
          esc_start_ = std::string::npos;
        }
      }
      if (value_stream_ && esc_start_ == std::string::npos) {
        std::string piece = raw_.substr(done_, i + 1 - done_);
        value_sent_ += piece;
        out += emit(std::move(piece));
        done_ = i + 1;
      }
    }
  }
  return out;
}

std::string ToolArgumentStreamer::finish(bool complete) {
  const std::string final_args = complete ? coerce_tool_arguments(raw_, schema_) : raw_;
  std::string rest;
  if (final_args.compare(0, sent_.size(), sent_) == 0) {
    rest = final_args.substr(sent_.size());
  } else {
    rest = raw_.substr(std::min(done_, raw_.size()));  // cannot take back what was sent
  }
  sent_ += rest;
  return rest;
}

// ---------------------------------------------------------------- prompt

std::optional<text::ReasoningEffort> map_effort(std::string_view name, text::EffortProfile profile,
                                                const std::string& param) {
  using E = text::ReasoningEffort;
  const bool preview = profile == text::EffortProfile::kPreview;
  if (name == "none") return std::nullopt;
  if (name == "minimal" || name == "low") return preview ? E::kDefault : E::kLow;
  if (name == "medium") return preview ? E::kDefault : E::kHigh;
  if (name == "high") return E::kHigh;
  if (name == "xhigh") return preview ? E::kMax : E::kHigh;  // never max on 0731 (api.md §11.3)
  if (name == "max" || name == "ultra") return E::kMax;
  throw invalid_param("invalid reasoning effort '" + std::string(name) +
                          "' (expected none, minimal, low, medium, high, xhigh or max)",
                      param);
}

PreparedPrompt prepare_prompt(const CanonicalRequest& req, const ServerOptions& opt, const text::Tokenizer& tok,
                              const PromptEncoder& encode) {
  if (req.messages.empty()) throw bad_request("messages: must be a non-empty array", "messages");
  text::ChatRequest cr;
  cr.messages = req.messages;
  cr.tools = req.tools;
  if (!req.forced_tool.empty()) {
    // A named tool_choice renders only that tool: the model cannot call anything else.
    cr.tools.clear();
    for (const auto& t : req.tools)
      if (t.function.value("name", std::string()) == req.forced_tool) cr.tools.push_back(t);
  }
  if (json_py::truthy(req.response_format)) {
    auto it = std::find_if(cr.messages.begin(), cr.messages.end(), [](const text::Message& m) {
      return m.role == text::Role::kSystem || m.role == text::Role::kDeveloper;
    });
    if (it == cr.messages.end()) {
      text::Message sys;
      sys.role = text::Role::kSystem;
      sys.content = "";
      it = cr.messages.insert(cr.messages.begin(), std::move(sys));
    }
    it->response_format = req.response_format;
  }
  cr.options.thinking_mode = req.thinking ? text::ThinkingMode::kThinking : text::ThinkingMode::kChat;
  cr.options.reasoning_effort = req.thinking ? req.effort : text::ReasoningEffort::kDefault;
  PreparedPrompt p;
  try {
    p.text = text::render_prompt(cr, opt.prompt);
    p.ids = encode ? encode(p.text) : tok.encode(p.text, true);
  } catch (const dsv4::Error& e) {
    throw bad_request(e.what(), "messages");
  }
  p.opens_thinking = text::prompt_opens_thinking(p.text);
  return p;
}

GenerationRequest make_generation_request(const CanonicalRequest& req, const PreparedPrompt& prompt,
                                          const ServerOptions& opt, int64_t max_context, int32_t eos_id) {
  GenerationRequest g;
  g.prompt = prompt.ids;
  const int64_t n = static_cast<int64_t>(prompt.ids.size());
  auto overflow = [&](const std::string& msg) {
    ApiError e(400, msg, "invalid_request_error", "messages", "context_length_exceeded");
    e.extra["n_prompt_tokens"] = n;
    e.extra["n_ctx"] = max_context;
    return e;
  };
  if (max_context > 0 && n >= max_context)
    throw overflow("Prompt has " + std::to_string(n) + " tokens, but the configured context size is " +
                   std::to_string(max_context) + " tokens");
  if (req.max_tokens) {
    if (max_context > 0 && n + *req.max_tokens > max_context)
      throw overflow("Prompt has " + std::to_string(n) + " tokens and max_tokens is " +
                     std::to_string(*req.max_tokens) + ", but the configured context size is " +
                     std::to_string(max_context) + " tokens");
    g.max_tokens = *req.max_tokens;
  } else {
    int64_t d = req.thinking ? opt.default_max_tokens_thinking : opt.default_max_tokens_chat;
    if (max_context > 0) d = std::min<int64_t>(d, max_context - n);
    g.max_tokens = static_cast<int>(std::max<int64_t>(d, 1));
  }
  g.sampling = req.sampling;
  if (req.thinking && !opt.sampling_in_thinking) {
    // As the hosted API: accepted, no effect in thinking mode.
    g.sampling.temperature = 1.0f;
    g.sampling.top_p = 1.0f;
    g.sampling.presence_penalty = 0.0f;
    g.sampling.frequency_penalty = 0.0f;
  }
  g.top_logprobs = req.top_logprobs;
  if (eos_id >= 0) g.stop_ids.push_back(eos_id);
  return g;
}

bool json_mode(const CanonicalRequest& req, const PreparedPrompt& prompt, const text::Tokenizer& tok,
               GenerationRequest& g) {
  if (!req.response_format.is_object() || req.response_format.value("type", std::string()) != "json_object")
    return false;
  g.json_object = true;
  g.json_after = -1;
  if (prompt.opens_thinking) {
    auto id = tok.token_id(text::tokens::kThinkEnd);
    if (!id) return g.json_object = false;
    g.json_after = *id;
  }
  g.json_allow_tool_calls = req.tools_allowed && !req.tools.empty();
  return true;
}

ForcedOutput forced_tool_call(const CanonicalRequest& req, const PreparedPrompt& prompt, const text::Tokenizer& tok,
                              int32_t eos_id) {
  ForcedOutput f;
  if (!req.tools_allowed || req.tools.empty() || (req.forced_tool.empty() && !req.tool_required)) return f;
  std::string name = req.forced_tool;
  if (name.empty() && req.tools.size() == 1) name = req.tools.front().function.value("name", std::string());
  auto add = [&](std::string_view text, bool special) {
    std::vector<int32_t> ids = tok.encode(text, special);
    f.tokens.insert(f.tokens.end(), ids.begin(), ids.end());
  };
  // The block opener exactly as the encoder renders it (prompt-format §7.2), "\n\n" included.
  add("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"", true);
  if (!name.empty()) {
    add(name, false);  // client text: never read as special tokens
    add("\">\n", true);
    // No parameters: `{}` is the only valid call, so the invoke and the block are closed too.
    auto it = req.tool_schemas.find(name);
    const Json* props = nullptr;
    if (it != req.tool_schemas.end() && it->second.is_object()) {
      auto p = it->second.find("properties");
      if (p != it->second.end()) props = &*p;
    }
    if (!props || (props->is_object() && props->empty())) {
      add("\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>", true);
      if (eos_id >= 0) f.tokens.push_back(eos_id);
    }
  }
  if (prompt.opens_thinking) {
    auto id = tok.token_id(text::tokens::kThinkEnd);
    if (!id) return {};
    f.after = *id;
  }
  return f;
}

std::vector<int32_t> script_tokens(const std::string& header_value, const text::Tokenizer& tok) {
  std::string text = header_value;
  if (!text.empty() && text.front() == '"') {
    try {
      Json j = json_py::parse(text);
      if (j.is_string()) text = j.get<std::string>();
    } catch (const dsv4::Error&) {
      throw bad_request("x-dsv4-test-script: not a valid JSON string literal");
    }
  }
  try {
    return tok.encode(text, true);
  } catch (const dsv4::Error& e) {
    throw bad_request(std::string("x-dsv4-test-script: ") + e.what());
  }
}

Json openai_usage(const Usage& u, bool thinking) {
  Json j = Json::object();
  j["prompt_tokens"] = u.prompt_tokens;
  j["completion_tokens"] = u.completion_tokens;
  j["total_tokens"] = u.prompt_tokens + u.completion_tokens;
  j["prompt_tokens_details"] = {{"cached_tokens", u.cached_tokens}};
  if (thinking || u.reasoning_tokens > 0) j["completion_tokens_details"] = {{"reasoning_tokens", u.reasoning_tokens}};
  j["prompt_cache_hit_tokens"] = u.cached_tokens;
  j["prompt_cache_miss_tokens"] = u.prompt_tokens - u.cached_tokens;
  return j;
}

Json openai_object(const std::string& id, const char* object, int64_t created, const std::string& model,
                   const std::string& fingerprint, Json choice, Json usage) {
  Json r = Json::object();
  r["id"] = id;
  r["object"] = object;
  r["created"] = created;
  r["model"] = model;
  r["system_fingerprint"] = fingerprint;
  r["choices"] = Json::array({std::move(choice)});
  r["usage"] = std::move(usage);
  return r;
}

std::string anthropic_stop_reason(const std::string& finish, bool stop_sequence) {
  if (stop_sequence) return "stop_sequence";
  if (finish == "length") return "max_tokens";
  if (finish == "tool_calls") return "tool_use";
  return "end_turn";
}

// ---------------------------------------------------------------- pipeline

namespace {
text::OutputParserOptions parser_options(const PipelineOptions& o) {
  text::OutputParserOptions p;
  p.start = o.start;
  p.mode = text::ParseMode::kLenient;
  p.unclosed_reasoning_as_content = o.unclosed_reasoning_as_content;
  const std::string prefix = o.tool_id_prefix;
  const bool indexed = o.indexed_tool_ids;
  p.make_tool_call_id = [prefix, indexed](std::size_t i) {
    if (!indexed) return prefix + random_alnum(24);
    char idx[8];
    std::snprintf(idx, sizeof idx, "%02zu_", i % 100);
    return prefix + idx + random_alnum(24);
  };
  return p;
}
}  // namespace

namespace {
text::OutputEvent content_event(std::string text) {
  text::OutputEvent e;
  e.type = text::EventType::kContentDelta;
  e.text = std::move(text);
  return e;
}
}  // namespace

CompletionPipeline::CompletionPipeline(PipelineOptions options)
    : opt_(std::move(options)),
      parser_(parser_options(opt_)),
      in_reasoning_(opt_.start == text::OutputStart::kReasoning),
      stops_(opt_.stop) {}

void CompletionPipeline::feed_token(const TokenEvent& token, const text::Tokenizer* tok,
                                    std::vector<text::OutputEvent>& out) {
  const bool was_reasoning = in_reasoning_;
  const std::size_t before = out.size();
  raw_.clear();
  parser_.feed(token.text, raw_);
  process(raw_, out);
  bool produced_answer = false;
  for (std::size_t i = before; i < out.size(); ++i)
    if (out[i].type != text::EventType::kReasoningDelta) produced_answer = true;
  if (token.id == opt_.think_end_id) {
    ++reasoning_tokens_;
    in_reasoning_ = false;
  } else if (produced_answer) {
    in_reasoning_ = false;
  } else if (was_reasoning) {
    ++reasoning_tokens_;
  }
  if (opt_.logprobs && !was_reasoning && tok) {
    auto entry = [&](int32_t id, float lp) {
      std::string bytes;
      try {
        bytes = tok->token_bytes(id);
      } catch (const dsv4::Error&) {
      }
      Json b = Json::array();
      for (unsigned char c : bytes) b.push_back(static_cast<int>(c));
      // Token text must be valid UTF-8 in JSON; partial characters show as U+FFFD.
      std::string t = json_py::is_valid_utf8(bytes) ? bytes : std::string("\xEF\xBF\xBD");
      return Json{{"token", t}, {"logprob", lp}, {"bytes", b}};
    };
    Json e = entry(token.id, token.logprob);
    Json top = Json::array();
    for (const auto& alt : token.top) top.push_back(entry(alt.id, alt.logprob));
    e["top_logprobs"] = top;
    logprobs_.push_back(std::move(e));
  }
}

void CompletionPipeline::feed_text(std::string_view text, std::vector<text::OutputEvent>& out) {
  raw_.clear();
  parser_.feed(text, raw_);
  process(raw_, out);
}

void CompletionPipeline::finish(std::vector<text::OutputEvent>& out) {
  if (finished_) return;
  finished_ = true;
  raw_.clear();
  parser_.finish(raw_);
  process(raw_, out);
}

std::vector<Json> CompletionPipeline::take_logprobs() { return std::exchange(logprobs_, {}); }

std::string CompletionPipeline::finish_reason() const {
  if (stops_.matched()) return "stop";
  switch (parser_finish_) {
    case text::FinishReason::kToolCalls: return saw_tool_call_ ? "tool_calls" : "stop";
    case text::FinishReason::kLength: return "length";
    default: return "stop";
  }
}

void CompletionPipeline::content(std::string_view text, std::vector<text::OutputEvent>& out) {
  std::string released = stops_.feed(text);
  if (!released.empty()) out.push_back(content_event(std::move(released)));
}

void CompletionPipeline::flush_content(std::vector<text::OutputEvent>& out) {
  std::string rest = stops_.flush();
  if (!rest.empty()) out.push_back(content_event(std::move(rest)));
}

StopMatcher::StopMatcher(std::vector<std::string> stop) : stop_(std::move(stop)) {
  // Empty stop strings would match everywhere; the hosted API discards them.
  stop_.erase(std::remove(stop_.begin(), stop_.end(), std::string()), stop_.end());
}

std::string StopMatcher::feed(std::string_view text) {
  if (matched_) return {};
  if (stop_.empty()) return std::string(text);
  held_ += text;
  // Earliest match of any stop string wins.
  std::size_t best = std::string::npos;
  const std::string* which = nullptr;
  for (const auto& s : stop_) {
    std::size_t p = held_.find(s);
    if (p != std::string::npos && p < best) best = p, which = &s;
  }
  if (which) {
    std::string out = held_.substr(0, best);
    held_.clear();
    matched_ = *which;
    return out;
  }
  // Hold back the longest tail that could still grow into a stop string.
  std::size_t keep = 0;
  for (const auto& s : stop_)
    for (std::size_t k = std::min(s.size() - 1, held_.size()); k > keep; --k)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::flush() {
  std::string out = matched_ ? std::string() : std::move(held_);
  held_.clear();
  return out;
}

void CompletionPipeline::process(std::vector<text::OutputEvent>& raw, std::vector<text::OutputEvent>& out) {
  using T = text::EventType;
  for (auto& e : raw) {
    switch (e.type) {
      case T::kReasoningDelta:
        if (!e.text.empty()) out.push_back(std::move(e));
        break;
      case T::kContentDelta:
        content(e.text, out);
        break;
      case T::kToolCallBegin: {
        if (!opt_.tools_allowed || stops_.matched()) break;
        flush_content(out);
        auto it = opt_.tool_schemas.find(e.tool_name);  // (map nodes are stable: the pointer stays valid)
        call_args_.emplace(it == opt_.tool_schemas.end() ? nullptr : &it->second);
        saw_tool_call_ = true;
        out.push_back(std::move(e));
        break;
      }
      case T::kToolCallArguments: {
        if (!opt_.tools_allowed || stops_.matched() || !call_args_) break;
        std::string piece = call_args_->feed(e.text);
        if (!piece.empty()) {
          e.text = std::move(piece);
          out.push_back(std::move(e));
        }
        break;
      }
      case T::kToolCallEnd: {
        if (!opt_.tools_allowed || stops_.matched() || !call_args_) break;
        text::OutputEvent a;
        a.type = T::kToolCallArguments;
        a.tool_index = e.tool_index;
        a.text = call_args_->finish(e.tool_complete);
        call_args_.reset();
        if (!a.text.empty()) out.push_back(std::move(a));
        out.push_back(std::move(e));
        break;
      }
      case T::kMessageEnd:
        flush_content(out);
        parser_finish_ = e.finish;
        out.push_back(std::move(e));
        break;
    }
  }
}

}  // namespace dsv4::server

namespace dsv4::server::fields {

namespace {
std::string type_name(const Json& v) { return json_py::is_big_int(v) ? "number" : v.type_name(); }
}  // namespace

const Json* get(const Json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

bool get_bool(const Json& obj, const char* key, bool def) {
  const Json* v = get(obj, key);
  if (!v) return def;
  if (!v->is_boolean()) throw bad_request(std::string(key) + ": must be a boolean, got " + type_name(*v), key);
  return v->get<bool>();
}

std::optional<double> get_number(const Json& obj, const char* key, double lo, double hi) {
  const Json* v = get(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) throw bad_request(std::string(key) + ": must be a number, got " + type_name(*v), key);
  const double d = v->get<double>();
  if (!(d >= lo && d <= hi))
    throw invalid_param(std::string(key) + ": " + json_py::float_repr(d) + " is out of range [" +
                            json_py::float_repr(lo) + ", " + json_py::float_repr(hi) + "]",
                        key);
  return d;
}

std::optional<int64_t> get_int(const Json& obj, const char* key, int64_t lo, int64_t hi) {
  const Json* v = get(obj, key);
  if (!v) return std::nullopt;
  if (json_py::is_big_int(*v)) throw invalid_param(std::string(key) + ": out of range", key);
  if (!v->is_number_integer())
    throw bad_request(std::string(key) + ": must be an integer, got " + type_name(*v), key);
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    throw invalid_param(std::string(key) + ": out of range", key);
  const int64_t i = v->get<int64_t>();
  if (i < lo || i > hi)
    throw invalid_param(std::string(key) + ": " + std::to_string(i) + " is out of range [" + std::to_string(lo) +
                            ", " + std::to_string(hi) + "]",
                        key);
  return i;
}

std::optional<std::string> get_string(const Json& obj, const char* key) {
  const Json* v = get(obj, key);
  if (!v) return std::nullopt;
  if (!v->is_string()) throw bad_request(std::string(key) + ": must be a string, got " + type_name(*v), key);
  return v->get<std::string>();
}

std::vector<std::string> get_string_list(const Json& obj, const char* key, std::size_t max_items) {
  const Json* v = get(obj, key);
  std::vector<std::string> out;
  if (!v) return out;
  if (v->is_string()) {
    out.push_back(v->get<std::string>());
  } else if (v->is_array()) {
    for (const auto& s : *v) {
      if (!s.is_string()) throw bad_request(std::string(key) + ": must be a string or a list of strings", key);
      out.push_back(s.get<std::string>());
    }
  } else {
    throw bad_request(std::string(key) + ": must be a string or a list of strings, got " + type_name(*v), key);
  }
  if (out.size() > max_items)
    throw invalid_param(std::string(key) + ": at most " + std::to_string(max_items) + " entries", key);
  return out;
}

}  // namespace dsv4::server::fields
