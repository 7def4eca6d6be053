// OpenAI Chat Completions surface (DeepSeek flavour, shared/spec/api.md §3-§7): request validation
// and mapping to the canonical request, the chat.completion response, and the SSE chunk stream.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "server/api_common.h"

namespace dsv4::server {

// Validates a /chat/completions body (parsed with json_py::parse) and maps it. Throws ApiError.
CanonicalRequest parse_openai_chat(const Json& body, const ServerOptions& opt);

// Non-streaming chat.completion object. Cut-off tool calls (complete = false) are left out.
Json openai_chat_response(const std::string& id, const std::string& model, int64_t created,
                          const std::string& fingerprint, bool thinking, const text::ParsedMessage& msg,
                          const Outcome& outcome, const std::vector<Json>* logprobs);

// GET /v1/models (and one entry for /v1/models/{id}).
Json openai_model_entry(const std::string& id, int64_t created, int64_t context_length, int max_output);
Json openai_models_list(const ServerOptions& opt, int64_t created, int64_t context_length);

// chat.completion.chunk stream: the hosted shapes (api.md §5), usage on the finish chunk.
class OpenAIStream : public StreamWriter {
 public:
  OpenAIStream(std::string id, std::string model, int64_t created, std::string fingerprint, bool thinking);
  std::string begin(const Usage& prompt_usage) override;
  std::string events(const std::vector<text::OutputEvent>& events, std::vector<Json> logprobs) override;
  std::string end(const Outcome& outcome) override;
  std::string keepalive() override { return ": keep-alive\n\n"; }
  std::string error(const ApiError& e) override;

 private:
  std::string chunk(Json delta, const Json& finish_reason = nullptr, Json usage = nullptr, Json logprobs = nullptr);
  std::string id_, model_, fingerprint_;
  int64_t created_;
  bool thinking_;
  std::vector<Json> pending_logprobs_;  // attached to the next content chunk
};

}  // namespace dsv4::server
