// Anthropic Messages surface (shared/spec/api.md §9): request validation and mapping to the
// canonical request, the message response, and the SSE event stream.
#pragma once
#include <string>
#include <vector>

#include "server/api_common.h"

namespace dsv4::server {

// Validates a /v1/messages (or count_tokens) body and maps it. Throws ApiError.
CanonicalRequest parse_anthropic_messages(const Json& body, const ServerOptions& opt, bool count_tokens = false);

// Non-streaming message object. Cut-off tool calls are left out.
Json anthropic_response(const std::string& id, const std::string& model, const text::ParsedMessage& msg,
                        const Outcome& outcome);

Json anthropic_usage(const Usage& u);

// message_start … message_stop, blocks opened and closed as the output moves between thinking,
// text and tool_use; thinking blocks carry a signature (empty) so clients keep them.
class AnthropicStream : public StreamWriter {
 public:
  AnthropicStream(std::string id, std::string model);
  std::string begin(const Usage& prompt_usage) override;
  std::string events(const std::vector<text::OutputEvent>& events, std::vector<Json> logprobs) override;
  std::string end(const Outcome& outcome) override;
  std::string keepalive() override;
  std::string error(const ApiError& e) override;

 private:
  enum class Block { kNone, kThinking, kText, kToolUse };
  std::string open(Block b, Json content_block);
  std::string close();
  std::string id_, model_;
  Block block_ = Block::kNone;
  int index_ = -1;
};

std::string sse_event(const std::string& type, const Json& data);

}  // namespace dsv4::server
