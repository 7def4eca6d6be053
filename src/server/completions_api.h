// OpenAI (legacy) Completions surface used for DeepSeek FIM, `POST /beta/completions` (also
// `/completions`, `/v1/completions`; shared/spec/api.md §8): request validation, the FIM prompt,
// the text output pipeline (EOS, stop strings), the text_completion object and its SSE chunks.
// No thinking, no tools. Pure (no I/O), unit-tested in tests/test_fim.cpp.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/api_common.h"

namespace dsv4::server {

struct FimRequest {
  ModelChoice model;
  std::string requested_model;
  std::string prompt;
  std::optional<std::string> suffix;  // absent / null: plain continuation of `prompt`
  std::optional<int> max_tokens;
  SamplingParams sampling;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;
  bool echo = false;
  int logprobs = -1;  // -1: none; 0..20: the sampled token's logprob + that many alternatives
};

// Validates a /completions body (parsed with json_py::parse). Throws ApiError: 400 for wrong types,
// a missing prompt, token-array prompts, several prompts, `echo` with `logprobs` (prompt logprobs are
// not computed); 422 for values out of range (`logprobs` 0..20); 404 for unknown models.
FimRequest parse_fim_request(const Json& body, const ServerOptions& opt);

// The prompt (api.md §8, assumption: the V3 / Coder convention):
//   with a suffix: BOS <｜fim▁begin｜> prompt <｜fim▁hole｜> suffix <｜fim▁end｜>
//   without:       BOS prompt
// `prompt` and `suffix` are tokenized as plain text: special-token strings in them are not read
// as special tokens. Throws ApiError 400 when the tokenizer lacks the FIM tokens or BOS.
std::vector<int32_t> render_fim_prompt(const FimRequest& req, const text::Tokenizer& tok);

// The engine request: max_tokens defaulted (ServerOptions::default_max_tokens_chat, clamped to the context) and checked
// against the context (400 context_length_exceeded, param "prompt"); EOS stops.
GenerationRequest make_fim_generation_request(const FimRequest& req, std::vector<int32_t> prompt_ids,
                                              const ServerOptions& opt, int64_t max_context, int32_t eos_id);

// Generated tokens -> completion text: generation ends at a stop token (not part of the text) or
// a stop string (not returned); text that could start a stop string is held back. With `tok`, the
// tokens' logprobs are kept in the legacy Completions shape.
class TextPipeline {
 public:
  TextPipeline(std::vector<std::string> stop, std::vector<int32_t> stop_ids, const text::Tokenizer* logprobs_tok = nullptr);
  // One generated token; returns the text it releases.
  std::string feed_token(const TokenEvent& token);
  // Generation ended (any cause): the held-back tail. Idempotent.
  std::string finish();
  bool should_stop() const { return stop_token_seen_ || stops_.matched(); }
  // "stop" (stop token or stop string) or "length" (max_tokens, context, script end, cancel).
  std::string finish_reason() const { return should_stop() ? "stop" : "length"; }
  // {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset} of the tokens whose text
  // starts inside what was released so far and that were not taken yet (text_offset in code points
  // of the completion text); null without logprobs. Tokens cut by a stop string are left out, and
  // so is the stop token.
  Json take_logprobs();

 private:
  std::string released(std::string text);
  struct Entry {
    std::string token;
    float logprob;
    Json top;
    int64_t offset;
  };
  StopMatcher stops_;
  std::vector<int32_t> stop_ids_;
  const text::Tokenizer* tok_;
  bool stop_token_seen_ = false;
  bool finished_ = false;
  int64_t fed_chars_ = 0;       // code points of all token text fed
  int64_t released_chars_ = 0;  // code points handed out
  std::vector<Entry> entries_;  // not yet taken
};

// Non-streaming text_completion object; usage as on the chat surface (no reasoning tokens).
Json fim_response(const std::string& id, const std::string& model, int64_t created, const std::string& fingerprint,
                  const std::string& text, const Outcome& outcome, Json logprobs = nullptr);

// text_completion chunks: `choices: [{text, index, logprobs: null, finish_reason}]`; the finish
// chunk has `text: ""`, `finish_reason` and `usage` (always, like the chat surface); then
// `data: [DONE]`. Every chunk carries `system_fingerprint` and `"usage": null` until the last.
class FimStream {
 public:
  FimStream(std::string id, std::string model, int64_t created, std::string fingerprint);
  // "" for an empty delta without logprobs.
  std::string text(std::string_view delta, Json logprobs = nullptr);
  std::string end(const Outcome& outcome);
  std::string keepalive() const { return ": keep-alive\n\n"; }
  std::string error(const ApiError& e) const;

 private:
  std::string chunk(std::string_view text, const Json& finish_reason, Json usage, Json logprobs = nullptr);
  std::string id_, model_, fingerprint_;
  int64_t created_;
};

}  // namespace dsv4::server
