#include "server/completions_api.h"

#include <cstdio>

#include "core/error.h"
#include "text/chat_format.h"
#include "text/json_py.h"

namespace dsv4::server {

namespace {

using namespace fields;

// FIM special tokens inherited from DeepSeek-V3 (prompt-format §2 table: 128800-128802).
constexpr std::string_view kFimHole = "<｜fim▁hole｜>";
constexpr std::string_view kFimBegin = "<｜fim▁begin｜>";
constexpr std::string_view kFimEnd = "<｜fim▁end｜>";

std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// A string, or a list holding exactly one string (what SDKs send for a single prompt).
std::optional<std::string> one_text(const Json& body, const char* key, bool required) {
  const Json* v = get(body, key);
  if (!v) {
    if (required) throw bad_request(std::string(key) + ": required (a string)", key);
    return std::nullopt;
  }
  if (v->is_string()) return v->get<std::string>();
  if (v->is_array() && v->size() == 1 && (*v)[0].is_string()) return (*v)[0].get<std::string>();
  if (v->is_array() && !v->empty() && ((*v)[0].is_number_integer() || (*v)[0].is_array()))
    throw bad_request(std::string(key) + ": token-id prompts are not supported; send the text as a string", key);
  if (v->is_array())
    throw bad_request(std::string(key) + ": exactly one prompt per request is supported (a string)", key);
  throw bad_request(std::string(key) + ": must be a string, got " + std::string(v->type_name()), key);
}

}  // namespace

FimRequest parse_fim_request(const Json& body, const ServerOptions& opt) {
  FimRequest r;
  r.model = model_of_body(body, opt, Surface::kOpenAI, &r.requested_model);  // thinking is never used for FIM

  r.prompt = *one_text(body, "prompt", true);
  if (const Json* s = get(body, "suffix")) {
    if (!s->is_string()) throw bad_request("suffix: must be a string, got " + std::string(s->type_name()), "suffix");
    r.suffix = s->get<std::string>();
  }
  if (auto mt = get_int(body, "max_tokens", 1, opt.max_tokens_limit)) r.max_tokens = static_cast<int>(*mt);
  if (auto v = get_number(body, "temperature", 0.0, 2.0)) r.sampling.temperature = static_cast<float>(*v);
  if (auto v = get_number(body, "top_p", 0.0, 1.0)) r.sampling.top_p = static_cast<float>(*v);
  if (auto v = get_number(body, "presence_penalty", -2.0, 2.0)) r.sampling.presence_penalty = static_cast<float>(*v);
  if (auto v = get_number(body, "frequency_penalty", -2.0, 2.0)) r.sampling.frequency_penalty = static_cast<float>(*v);
  if (auto v = get_int(body, "seed", INT64_MIN, INT64_MAX)) r.sampling.seed = static_cast<uint64_t>(*v);
  get_int(body, "n", 1, 128);        // validated, ignored: always one choice (as chat)
  get_int(body, "best_of", 1, 128);  // validated, ignored
  r.stop = get_string_list(body, "stop", 16);
  r.stream = get_bool(body, "stream", false);
  r.echo = get_bool(body, "echo", false);
  if (const Json* so = get(body, "stream_options")) {
    if (!so->is_object()) throw bad_request("stream_options: must be an object", "stream_options");
    r.include_usage = get_bool(*so, "include_usage", false);
  }
  if (auto lp = get_int(body, "logprobs", 0, 20)) r.logprobs = static_cast<int>(*lp);
  if (r.logprobs >= 0 && r.echo)
    throw bad_request("logprobs with echo: prompt-token logprobs are not supported by dsv4 serve", "logprobs");
  return r;
}

std::vector<int32_t> render_fim_prompt(const FimRequest& req, const text::Tokenizer& tok) {
  auto id = [&](std::string_view t) {
    auto i = tok.token_id(t);
    if (!i) throw bad_request("this checkpoint's tokenizer has no " + std::string(t) + " token", "prompt");
    return *i;
  };
  std::vector<int32_t> ids;
  auto text = [&](const std::string& s, const char* what) {
    try {
      std::vector<int32_t> t = tok.encode(s, false);
      ids.insert(ids.end(), t.begin(), t.end());
    } catch (const dsv4::Error& e) {
      throw bad_request(std::string(what) + ": " + e.what(), what);
    }
  };
  ids.push_back(id(text::tokens::kBos));
  if (req.suffix) {
    ids.push_back(id(kFimBegin));
    text(req.prompt, "prompt");
    ids.push_back(id(kFimHole));
    text(*req.suffix, "suffix");
    ids.push_back(id(kFimEnd));
  } else {
    text(req.prompt, "prompt");
  }
  return ids;
}

GenerationRequest make_fim_generation_request(const FimRequest& req, std::vector<int32_t> prompt_ids,
                                              const ServerOptions& opt, int64_t max_context, int32_t eos_id) {
  CanonicalRequest c;
  c.thinking = false;
  c.max_tokens = req.max_tokens;
  c.sampling = req.sampling;
  c.top_logprobs = req.logprobs;
  PreparedPrompt p;
  p.ids = std::move(prompt_ids);
  try {
    return make_generation_request(c, p, opt, max_context, eos_id);
  } catch (ApiError& e) {
    e.param = "prompt";
    throw;
  }
}

namespace {

int64_t code_points(std::string_view s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// A token's text for logprobs: its bytes when they are valid UTF-8, else OpenAI's "bytes:\xNN…" form.
std::string token_text(const text::Tokenizer& tok, int32_t id) {
  std::string b;
  try {
    b = tok.token_bytes(id);
  } catch (const dsv4::Error&) {
  }
  if (text::json_py::is_valid_utf8(b)) return b;
  std::string out = "bytes:";
  char hex[8];
  for (unsigned char c : b) {
    std::snprintf(hex, sizeof hex, "\\x%02x", c);
    out += hex;
  }
  return out;
}

}  // namespace

TextPipeline::TextPipeline(std::vector<std::string> stop, std::vector<int32_t> stop_ids, const text::Tokenizer* tok)
    : stops_(std::move(stop)), stop_ids_(std::move(stop_ids)), tok_(tok) {}

std::string TextPipeline::released(std::string text) {
  released_chars_ += code_points(text);
  return text;
}

std::string TextPipeline::feed_token(const TokenEvent& token) {
  if (should_stop() || finished_) return {};
  for (int32_t s : stop_ids_)
    if (token.id == s) {
      stop_token_seen_ = true;
      return released(stops_.flush());
    }
  if (tok_) {
    Json top = Json::object();
    for (const auto& alt : token.top) top[token_text(*tok_, alt.id)] = alt.logprob;
    entries_.push_back({token_text(*tok_, token.id), token.logprob, std::move(top), fed_chars_});
  }
  fed_chars_ += code_points(token.text);
  return released(stops_.feed(token.text));
}

std::string TextPipeline::finish() {
  if (finished_) return {};
  finished_ = true;
  return released(stops_.flush());
}

Json TextPipeline::take_logprobs() {
  if (!tok_) return nullptr;
  Json tokens = Json::array(), lps = Json::array(), tops = Json::array(), offsets = Json::array();
  std::size_t n = 0;
  for (; n < entries_.size() && entries_[n].offset < released_chars_; ++n) {
    tokens.push_back(entries_[n].token);
    lps.push_back(entries_[n].logprob);
    tops.push_back(std::move(entries_[n].top));
    offsets.push_back(entries_[n].offset);
  }
  entries_.erase(entries_.begin(), entries_.begin() + static_cast<std::ptrdiff_t>(n));
  // After the end, what was never released (cut by a stop string) is dropped.
  if (finished_ || should_stop()) entries_.clear();
  Json j = Json::object();
  j["tokens"] = std::move(tokens);
  j["token_logprobs"] = std::move(lps);
  j["top_logprobs"] = std::move(tops);
  j["text_offset"] = std::move(offsets);
  return j;
}

Json fim_response(const std::string& id, const std::string& model, int64_t created, const std::string& fingerprint,
                  const std::string& text, const Outcome& outcome, Json logprobs) {
  Json choice = Json::object();
  choice["text"] = text;
  choice["index"] = 0;
  choice["logprobs"] = std::move(logprobs);
  choice["finish_reason"] = outcome.finish_reason;
  return openai_object(id, "text_completion", created, model, fingerprint, std::move(choice),
                       openai_usage(outcome.usage, false));
}

FimStream::FimStream(std::string id, std::string model, int64_t created, std::string fingerprint)
    : id_(std::move(id)), model_(std::move(model)), fingerprint_(std::move(fingerprint)), created_(created) {}

std::string FimStream::chunk(std::string_view text, const Json& finish_reason, Json usage, Json logprobs) {
  Json choice = Json::object();
  choice["text"] = std::string(text);
  choice["index"] = 0;
  choice["logprobs"] = std::move(logprobs);
  choice["finish_reason"] = finish_reason;
  return "data: " +
         dump(openai_object(id_, "text_completion", created_, model_, fingerprint_, std::move(choice), std::move(usage))) +
         "\n\n";
}

std::string FimStream::text(std::string_view delta, Json logprobs) {
  const bool has_logprobs = logprobs.is_object() && !logprobs["tokens"].empty();
  if (delta.empty() && !has_logprobs) return {};
  return chunk(delta, nullptr, nullptr, has_logprobs ? std::move(logprobs) : Json(nullptr));
}

std::string FimStream::end(const Outcome& outcome) {
  return chunk("", outcome.finish_reason, openai_usage(outcome.usage, false)) + "data: [DONE]\n\n";
}

std::string FimStream::error(const ApiError& e) const {
  return "data: " + dump(openai_error_body(e)) + "\n\ndata: [DONE]\n\n";
}

}  // namespace dsv4::server
