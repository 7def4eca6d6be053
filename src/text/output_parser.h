// Streaming parser for DeepSeek-V4 model output: generated text -> reasoning, content and tool calls.
//
// The server feeds detokenized text deltas (special tokens arrive as their text, e.g.
// "<｜end▁of▁sentence｜>", "</think>", "｜DSML｜") and forwards the events. One grammar, two modes:
//   - kStrict: accepts exactly what DeepSeek's reference parser (encoding_dsv4.py,
//     parse_message_from_completion_text) accepts and produces the same message; anything else is
//     rejected (failed() / parse_completion throws dsv4::Error).
//   - kLenient: what the server streams with. Never fails; on malformed output it degrades as
//     documented in docs/output-parsing.md. On every output the strict mode accepts, it returns the
//     same message.
// Streaming guarantee: text that could still become markup (a label prefix, the newlines before a
// tool-call block, an incomplete UTF-8 sequence) is held back, never emitted early; any split of the
// same text yields the same events once adjacent deltas are coalesced (see coalesce()).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace dsv4::text {

namespace detail {
struct OutputLabel;  // a label the scanner looks for (defined in output_parser.cpp)
}

// Where generation starts (spec §7.1): after "<｜Assistant｜><think>" the model writes reasoning first
// (thinking mode); after "<｜Assistant｜></think>" it writes the answer (chat mode). Must follow how the
// prompt was rendered, not the request flags.
enum class OutputStart { kReasoning, kContent };

// "thinking" -> kReasoning, "chat" -> kContent; anything else throws dsv4::Error.
OutputStart output_start_for(std::string_view thinking_mode);

enum class ParseMode { kStrict, kLenient };

enum class FinishReason {
  kNone,       // message not ended yet
  kStop,       // EOS (no complete tool call)
  kLength,     // text ended without EOS / without the tool-call block closing (max_tokens, context)
  kToolCalls,  // the tool-call block closed (or EOS after it) with at least one complete call
};
const char* to_string(FinishReason r);  // "stop", "length", "tool_calls", "" for kNone

enum class EventType {
  kReasoningDelta,     // text: reasoning_content piece
  kContentDelta,       // text: content piece
  kToolCallBegin,      // tool_index, tool_id, tool_name
  kToolCallArguments,  // tool_index, text: a fragment of the arguments JSON string
  kToolCallEnd,        // tool_index, tool_complete (false: cut off, arguments are a truncated prefix)
  kMessageEnd,         // finish; always the last event of a message that did not fail
};

struct OutputEvent {
  EventType type = EventType::kContentDelta;
  std::string text;
  std::size_t tool_index = 0;
  std::string tool_id;
  std::string tool_name;
  bool tool_complete = true;
  FinishReason finish = FinishReason::kNone;

  bool operator==(const OutputEvent&) const = default;
};

struct OutputParserOptions {
  OutputStart start = OutputStart::kReasoning;
  ParseMode mode = ParseMode::kLenient;
  // Lenient only: when the model ends with EOS while still in reasoning (no "</think>", no tool
  // call), also emit the whole reasoning as content so clients do not get an empty answer (spec §9).
  // Off by default: the reference keeps it all in reasoning_content.
  bool unclosed_reasoning_as_content = false;
  // Tool-call ids ("call_" + 24 random alphanumerics when empty). Argument: tool index.
  std::function<std::string(std::size_t)> make_tool_call_id;
};

class OutputParser {
 public:
  explicit OutputParser(OutputParserOptions options = {});

  // Appends the events this delta resolves to `out`. Input bytes need not be valid UTF-8 or split at
  // character boundaries: incomplete sequences wait for more bytes, invalid ones become U+FFFD.
  void feed(std::string_view delta, std::vector<OutputEvent>& out);
  std::vector<OutputEvent> feed(std::string_view delta);

  // No more text will come (EOS consumed, max_tokens, context full, client stop). Resolves held-back
  // text and ends the message. Idempotent.
  void finish(std::vector<OutputEvent>& out);
  std::vector<OutputEvent> finish();

  // kMessageEnd was emitted; later input is ignored (lenient stops at EOS and at the end of the
  // tool-call block: the server can stop generating as soon as this turns true).
  bool ended() const { return ended_; }
  // Strict mode rejected the text; no further events come. error() says why.
  bool failed() const { return failed_; }
  const std::string& error() const { return error_; }
  std::size_t tool_call_count() const { return calls_begun_; }

 private:
  enum class State {
    kReasoning,
    kContent,
    kBlock,         // inside the tool-call block, between invokes
    kInvokeHeader,  // after "<｜DSML｜invoke", collecting ` name="...">\n`
    kParamHeader,   // after "<｜DSML｜parameter", collecting ` name="..." string="...">`
    kParamValue,    // streaming a parameter value
    kAfterParam,    // after the value's closer, expecting ">\n" and the next tag
    kRawInvoke,     // lenient: an invoke whose header did not parse, passed through as content
    kAfterBlock,    // strict: after "</｜DSML｜tool_calls>", only EOS may follow
    kDone,          // strict: after the final EOS, nothing may follow
  };
  enum class ValueKind { kNone, kString, kRaw, kAuto };
  using Label = detail::OutputLabel;
  struct Scan {
    std::size_t safe = 0;          // bytes of the buffer that are payload for certain
    const Label* hit = nullptr;    // the label that starts at `safe`, when resolved
    std::size_t hold = 0;          // start of a tail that is a proper prefix of a label (or size)
  };

  void pump(std::vector<OutputEvent>& out);
  bool step(std::vector<OutputEvent>& out);
  bool step_text(std::vector<OutputEvent>& out);
  bool step_block(std::vector<OutputEvent>& out);
  bool step_invoke_header(std::vector<OutputEvent>& out);
  bool step_param_header(std::vector<OutputEvent>& out);
  bool step_param_value(std::vector<OutputEvent>& out);
  bool step_after_param(std::vector<OutputEvent>& out);
  bool step_raw_invoke(std::vector<OutputEvent>& out);
  bool step_after_block(std::vector<OutputEvent>& out);
  bool step_done(std::vector<OutputEvent>& out);

  std::vector<const Label*> const& labels() const;
  Scan scan();
  std::string_view buffer() const;
  void consume(std::size_t n);
  void set_state(State s);
  bool strict() const { return opt_.mode == ParseMode::kStrict; }

  void fail(std::string message);
  void end(FinishReason reason, std::vector<OutputEvent>& out);
  FinishReason natural_finish() const;
  void emit_text(EventType type, std::string_view text, std::vector<OutputEvent>& out);
  void emit_args(std::string_view text, std::vector<OutputEvent>& out);
  void emit_value(std::string_view raw, std::vector<OutputEvent>& out);
  void emit_junk(std::string_view filler, std::vector<OutputEvent>& out);
  void begin_call(std::string name, std::vector<OutputEvent>& out);
  bool begin_param(std::string key, ValueKind kind, std::vector<OutputEvent>& out);
  void close_param(std::vector<OutputEvent>& out);
  void close_call(std::vector<OutputEvent>& out);

  OutputParserOptions opt_;
  State state_;
  std::string in_;             // valid UTF-8 not yet consumed, from pos_
  std::size_t pos_ = 0;
  std::size_t searched_ = 0;   // buffer bytes already searched without a label hit
  std::string utf8_tail_;      // incomplete UTF-8 sequence at the end of the input
  bool final_ = false;
  bool ended_ = false;
  bool failed_ = false;
  std::string error_;

  std::string reasoning_;      // kept only for unclosed_reasoning_as_content
  bool saw_block_close_ = false;
  std::size_t calls_begun_ = 0;
  std::size_t calls_complete_ = 0;
  bool call_open_ = false;
  std::vector<std::string> param_keys_;  // of the open call
  bool header_broken_ = false;           // lenient: parameter header has no usable string="..."
  ValueKind value_kind_ = ValueKind::kNone;
  std::string value_key_;                // kAuto: key and buffered value, emitted when it closes
  std::string value_buf_;
  std::string closer_raw_;               // the closer text consumed after the value (lenient revert)
  bool raw_tag_open_ = false;            // lenient: raw markup went to content without its '>'
};

// Builds the non-streaming message from events.
struct ParsedToolCall {
  std::string id;
  std::string name;
  std::string arguments;   // JSON text in the reference format: {"key": value, ...}
  bool complete = true;    // false: cut off (finish kLength / EOS inside the call), never execute
};

struct ParsedMessage {
  std::string content;
  std::string reasoning_content;
  std::vector<ParsedToolCall> tool_calls;
  FinishReason finish_reason = FinishReason::kNone;
};

class MessageAssembler {
 public:
  void apply(const OutputEvent& e);
  void apply(const std::vector<OutputEvent>& events) {
    for (const auto& e : events) apply(e);
  }
  const ParsedMessage& message() const { return msg_; }

 private:
  ParsedMessage msg_;
};

// Non-streaming helper. Strict: throws dsv4::Error when the reference parser would reject the text.
// Lenient: never throws.
ParsedMessage parse_completion(std::string_view text, OutputStart start, bool strict,
                               const OutputParserOptions& base = {});
ParsedMessage parse_completion(std::string_view text, std::string_view thinking_mode, bool strict);

// Merges adjacent reasoning/content deltas and adjacent argument fragments of the same call.
std::vector<OutputEvent> coalesce(const std::vector<OutputEvent>& events);

// Python json.dumps(s, ensure_ascii=False) of a string, appended to out (with the quotes when
// `quoted`). The reference encodes keys and string="true" values this way.
void append_json_string(std::string& out, std::string_view s, bool quoted = true);

}  // namespace dsv4::text
