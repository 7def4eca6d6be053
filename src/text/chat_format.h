// DeepSeek-V4 prompt format: renders a conversation byte-for-byte as DeepSeek's published encoder
// (encoding/encoding_dsv4.py) does. Spec: shared/spec/prompt-format.md §2-§6; design notes:
// docs/prompt-format.md. Two entry points: C++ structs (render_prompt) and the OpenAI-style JSON
// message list the server receives (render_prompt_json). Bad input throws dsv4::Error (HTTP 400).
#pragma once
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsv4::text {

using OrderedJson = nlohmann::ordered_json;

enum class Role { kSystem, kUser, kAssistant, kTool, kDeveloper, kLatestReminder };
enum class ThinkingMode { kChat, kThinking };
// Internal "quick instruction" tasks (their token follows the message).
enum class Task { kAction, kQuery, kAuthority, kDomain, kTitle, kReadUrl };

// Which reasoning-effort text table the checkpoint was trained with (spec §4). A property of the
// model, configured once; never inferred from a request.
enum class EffortProfile {
  kPreview,     // V4 preview (2026-04-24): default/high -> no text, max -> "Absolute maximum"; no low
  kFlash0731,   // V4-Flash-0731: default/low -> no text, high -> "Absolute maximum", max -> "Beyond maximum"
};
enum class ReasoningEffort { kDefault, kLow, kHigh, kMax };

// Model-level settings: fixed per loaded checkpoint.
struct PromptFormatConfig {
  EffortProfile effort_profile = EffortProfile::kPreview;
  // Refuse to render prompts larger than this (absurd inputs; the model's 1M-token context is
  // a few MiB of text).
  std::size_t max_prompt_bytes = std::size_t{64} << 20;
};

// Per-request settings (the encoder's keyword arguments).
struct RenderOptions {
  ThinkingMode thinking_mode = ThinkingMode::kThinking;
  ReasoningEffort reasoning_effort = ReasoningEffort::kDefault;
  bool drop_thinking = true;          // drop reasoning of turns before the last user turn
  bool add_default_bos_token = true;  // BOS is written as text (only when there is no context)
};

// One tool definition: the OpenAI `tools[i].function` object ({name, description, parameters,
// ...}); it is serialised as-is, in its key order, with Python json.dumps rules.
struct Tool {
  OrderedJson function;
};

struct ToolCall {
  std::string id;         // used only to sort tool results into call order
  std::string name;
  std::string arguments;  // the OpenAI `function.arguments` JSON string, exactly as received
};

struct Message {
  Role role = Role::kUser;
  // nullopt = JSON null. user: null is rejected (the reference crashes); system/assistant/tool/
  // latest_reminder: null renders as ""; developer: must be non-empty.
  std::optional<std::string> content;
  std::optional<std::string> reasoning_content;  // assistant
  std::vector<ToolCall> tool_calls;              // assistant
  std::string tool_call_id;                      // tool ("" = none; sorts first)
  std::vector<Tool> tools;                       // rendered on system/developer messages
  OrderedJson response_format;                   // rendered (system/developer) when truthy
  std::optional<Task> task;
  bool wo_eos = false;                           // assistant prefix without EOS (prefix completion)
};

struct ChatRequest {
  std::vector<Message> messages;
  // Messages already in the KV cache / prompt: only the new part is rendered (no BOS).
  std::vector<Message> context;
  // OpenAI top-level tools (optional). The encoder has none: they are attached to the first
  // system/developer message, or to an empty system message inserted at the start (spec §6.2).
  std::vector<Tool> tools;
  RenderOptions options;
};

// Renders the prompt text (tokenize it in one pass with special tokens recognised).
std::string render_prompt(const ChatRequest& request, const PromptFormatConfig& config = {});

// Same, from the OpenAI-style JSON message list as the encoder takes it (tools attached to
// messages, function.arguments strings, tool_call_id, task / wo_eos / mask fields). `context` is
// null or a message list. Parse request bodies with json_py::parse to keep key order and numbers.
std::string render_prompt_json(const OrderedJson& messages, const RenderOptions& options,
                               const PromptFormatConfig& config = {},
                               const OrderedJson& context = nullptr);

// JSON -> structs, with validation; errors name the offending field (`messages[2].tool_calls[0]...`).
std::vector<Message> messages_from_json(const OrderedJson& messages, std::string_view what = "messages");
Message message_from_json(const OrderedJson& message, const std::string& path);
// The golden-case `options` object: thinking_mode, drop_thinking, add_default_bos_token,
// reasoning_effort (context is separate).
RenderOptions render_options_from_json(const OrderedJson& options);

ThinkingMode parse_thinking_mode(std::string_view s);         // "chat" | "thinking"
ReasoningEffort parse_reasoning_effort(std::string_view s);   // "low" | "high" | "max"
std::optional<Task> parse_task(std::string_view s);           // nullopt if unknown
std::string_view role_name(Role r);
std::string_view task_token(Task t);

// Text emitted before message 0 in thinking mode; throws if the profile lacks that tier.
std::string_view effort_prefix(EffortProfile profile, ReasoningEffort effort);

// Attach top-level tools as the server should (spec §6.2); used by render_prompt.
void attach_tools(std::vector<Message>& context, std::vector<Message>& messages, const std::vector<Tool>& tools);

// True if the prompt ends inside an open reasoning block (generation starts in reasoning):
// the output parser's initial state must follow this, not the request flags.
bool prompt_opens_thinking(std::string_view prompt);

namespace tokens {
inline constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
inline constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
inline constexpr std::string_view kUser = "<｜User｜>";
inline constexpr std::string_view kAssistant = "<｜Assistant｜>";
inline constexpr std::string_view kLatestReminder = "<｜latest_reminder｜>";
inline constexpr std::string_view kThinkStart = "<think>";
inline constexpr std::string_view kThinkEnd = "</think>";
inline constexpr std::string_view kDsml = "｜DSML｜";
}  // namespace tokens

}  // namespace dsv4::text
