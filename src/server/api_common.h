// What the OpenAI and Anthropic surfaces share: errors, model-name mapping, the canonical request
// both are mapped to (messages + tools + options), rendering and tokenizing it, the engine request,
// and the per-request output pipeline (parser -> stop strings -> tool-argument coercion) that turns
// generated tokens into API events. Nothing here does I/O, so all of it is unit-tested without an
// engine or a socket (tests/test_api.cpp).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "server/engine.h"
#include "server/json_constraint.h"
#include "text/chat_format.h"
#include "text/output_parser.h"
#include "text/tokenizer.h"

namespace dsv4::server {

using Json = nlohmann::ordered_json;

// An error that becomes an HTTP error response (or an SSE error event once streaming started).
struct ApiError : std::runtime_error {
  int status = 400;
  std::string type = "invalid_request_error";  // OpenAI `type`; mapped for Anthropic
  std::string param;                            // "" = null
  std::string code;                             // "" = same as type
  Json extra = Json::object();                  // extra fields in the error object
  ApiError(int status_, std::string message, std::string type_ = "invalid_request_error", std::string param_ = "",
           std::string code_ = "")
      : std::runtime_error(std::move(message)), status(status_), type(std::move(type_)), param(std::move(param_)),
        code(std::move(code_)) {}
};

// 400: the body is not what the API accepts (bad JSON, wrong types, missing fields).
ApiError bad_request(const std::string& message, const std::string& param = "");
// 422: well-formed but a value is out of range (DeepSeek's "Invalid Parameters").
ApiError invalid_param(const std::string& message, const std::string& param);

Json openai_error_body(const ApiError& e);
// Anthropic-native shape {"type": "error", "error": {"type", "message"}}.
Json anthropic_error_body(const ApiError& e);

enum class Surface { kOpenAI, kAnthropic };

struct ServerOptions {
  std::vector<std::string> api_keys;      // empty: any key (or none) is accepted
  std::vector<std::string> served_names;  // first = primary id; empty: derived from the checkpoint
  bool accept_any_model = false;          // unknown model names map to the primary id
  bool claude_aliases = true;             // Anthropic surface: claude-* map to the primary id
  bool test_script_tokens = false;        // honour the x-dsv4-test-script header (tests only)
  bool sampling_in_thinking = false;      // hosted API ignores temperature/top_p/penalties when thinking
  bool unclosed_reasoning_as_content = true;  // EOS inside reasoning: surface it as the answer too
  bool strict_reasoning = false;          // 400 when a tool-call turn lacks reasoning_content (hosted)
  text::PromptFormatConfig prompt;
  int default_max_tokens_chat = 8192;
  int default_max_tokens_thinking = 65536;
  int max_tokens_limit = 393216;
  std::string system_fingerprint = "fp_dsv4_local";
};

// `deepseek-v4-flash` / `deepseek-v4-pro` by checkpoint; any other geometry (the demo model, synthetic
// checkpoints) is served as `deepseek-v4-flash` so clients configured for the hosted API work as-is.
std::string default_served_name(const ModelConfig& config);

struct ModelChoice {
  std::string id;                 // served id (what /v1/models lists)
  std::optional<bool> thinking;   // forced by the name (deepseek-chat off, deepseek-reasoner on)
};
// Throws ApiError 404 for unknown names unless accept_any_model.
ModelChoice resolve_model(const ServerOptions& opt, const std::string& requested, Surface surface);
// The opening every request parser shares: the body must be an object with a string "model",
// which is stored in *requested and resolved for `surface`.
ModelChoice model_of_body(const Json& body, const ServerOptions& opt, Surface surface, std::string* requested);
// Ids listed by GET /v1/models: served names plus the deepseek-chat / deepseek-reasoner aliases.
std::vector<std::string> listed_models(const ServerOptions& opt);

// Bearer token or x-api-key against opt.api_keys (empty list: everything passes).
bool api_key_ok(const ServerOptions& opt, const std::string& authorization, const std::string& x_api_key);

std::string random_alnum(std::size_t n);
std::string random_hex(std::size_t n);

// Schema-driven repair of generated tool arguments (JSON text in, JSON text out, always valid JSON
// when the input parses): unwraps a spurious single {"arguments"|"input": {...}} wrapper, turns string
// values into numbers / booleans / objects / arrays where the schema asks for them, and non-string
// values into strings where it asks for a string. Unparsable input is returned unchanged.
std::string coerce_tool_arguments(const std::string& arguments, const Json* parameters_schema);

// Streams one tool call's arguments (the parser's JSON text, arriving in fragments) so that the
// fragments concatenate to exactly coerce_tool_arguments() of the whole text. Key/structure bytes
// go out as soon as a value starts; a string value the schema keeps as a string streams as it is
// generated (held at an escape until it is known to be canonical); any other value (a number,
// object, array, literal, or a string the schema converts) goes out once complete, coerced and
// re-serialised. A single leading "arguments" / "input" key that the schema does not declare (a
// possible wrapper), a schema whose top-level type is not object, or text that is not a JSON prefix
// hold the rest back until finish(), which sends what remains (of the repaired arguments when they
// extend what was sent, else the raw remainder: invalid or cut-off arguments stay as written).
class ToolArgumentStreamer {
 public:
  explicit ToolArgumentStreamer(const Json* parameters_schema = nullptr);
  // A raw fragment; returns what can be sent now (possibly empty).
  std::string feed(std::string_view raw);
  // The call ended (`complete`: the invoke closed). Returns the rest to send.
  std::string finish(bool complete);
  const std::string& sent() const { return sent_; }

 private:
  std::string emit(std::string s);

  const Json* schema_;
  const Json* props_ = nullptr;          // properties used for per-value coercion
  const Json* wrapper_props_ = nullptr;  // properties consulted for the wrapper unwrap
  std::string raw_, sent_;
  std::size_t done_ = 0;      // raw bytes accounted for by sent_
  std::size_t scanned_ = 0;   // raw bytes fed to the validator
  bool hold_ = false;
  JsonPrefixValidator v_{true};
  std::size_t key_start_ = 0;
  std::string key_;
  bool first_key_ = true;
  bool in_value_ = false;
  std::size_t value_start_ = 0;
  const Json* value_schema_ = nullptr;
  bool value_number_ = false;
  bool value_stream_ = false;  // a string value streamed as generated
  std::size_t esc_start_ = std::string::npos;  // an escape in progress in a streamed string
  std::string value_sent_;
};

// The request both surfaces are mapped to.
struct CanonicalRequest {
  ModelChoice model;
  std::string requested_model;
  std::vector<text::Message> messages;
  std::vector<text::Tool> tools;             // rendered (empty for tool_choice none)
  std::map<std::string, Json> tool_schemas;  // name -> parameters, for argument coercion
  bool tools_allowed = true;                 // tool_choice none: DSML in the output is dropped
  std::string forced_tool;                   // named tool_choice (OpenAI function / Anthropic tool)
  bool tool_required = false;                // tool_choice required (Anthropic any)
  Json response_format;                      // null or {"type": "json_object"}
  bool thinking = true;
  text::ReasoningEffort effort = text::ReasoningEffort::kDefault;
  std::optional<int> max_tokens;
  SamplingParams sampling;
  std::vector<std::string> stop;
  int top_logprobs = -1;
  bool stream = false;
  bool include_usage = false;
};

// Effort names of both surfaces -> the checkpoint's tier (api.md §3 table). "none" returns nullopt
// (thinking off). Throws ApiError 422 for unknown names.
std::optional<text::ReasoningEffort> map_effort(std::string_view name, text::EffortProfile profile,
                                                const std::string& param);

struct PreparedPrompt {
  std::string text;
  std::vector<int32_t> ids;
  bool opens_thinking = false;
};
// Renders (tools attached as the server does, response_format on the first system message) and
// tokenizes, with `encode` when given (the engine's cache-aware Engine::encode_prompt), else
// tok.encode. Rendering errors become ApiError 400.
using PromptEncoder = std::function<std::vector<int32_t>(const std::string&)>;
PreparedPrompt prepare_prompt(const CanonicalRequest& req, const ServerOptions& opt, const text::Tokenizer& tok,
                              const PromptEncoder& encode = {});

// The engine request: max_tokens defaulted and checked against the context (clear 400
// context_length_exceeded), sampling neutralised in thinking mode, EOS as the stop id.
GenerationRequest make_generation_request(const CanonicalRequest& req, const PreparedPrompt& prompt,
                                          const ServerOptions& opt, int64_t max_context, int32_t eos_id);

// tool_choice enforcement (api.md §3, prompt-format §6.3): the output is forced to open the DSML
// tool-call block, after "</think>" when the prompt opens thinking, else from the first token. With
// a named tool (or `required` with exactly one tool) the invoke with that name is forced too, and
// for a tool without parameters the whole call (then EOS), since `{}` is its only valid call.
// Returns no tokens when nothing is forced (auto / none / no tools).
struct ForcedOutput {
  std::vector<int32_t> tokens;
  int32_t after = -1;  // GenerationRequest::force_after
};
ForcedOutput forced_tool_call(const CanonicalRequest& req, const PreparedPrompt& prompt, const text::Tokenizer& tok,
                              int32_t eos_id);

// response_format {"type": "json_object"}: sets GenerationRequest::json_object (the answer is
// constrained to one JSON object during decoding), armed after "</think>" when the prompt opens
// thinking, else from the first token; a tool-call block stays possible when tools are offered.
// Returns whether JSON mode applies.
bool json_mode(const CanonicalRequest& req, const PreparedPrompt& prompt, const text::Tokenizer& tok,
               GenerationRequest& g);

// Stop strings over a stream of text: text that could be the start of a stop string is held back
// until resolved; the earliest match of any stop string wins and is not released. Empty stop
// strings are discarded (hosted behaviour).
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stop);
  // Appends `text`; returns what can be released now (nothing once a stop string matched).
  std::string feed(std::string_view text);
  // The held-back tail at the end of generation ("" after a match).
  std::string flush();
  bool matched() const { return matched_.has_value(); }
  const std::optional<std::string>& which() const { return matched_; }

 private:
  std::vector<std::string> stop_;
  std::string held_;
  std::optional<std::string> matched_;
};

// Test-only scripted output (x-dsv4-test-script): a JSON string literal (so newlines can be written
// as \n) or plain text; tokenized with special tokens recognised.
std::vector<int32_t> script_tokens(const std::string& header_value, const text::Tokenizer& tok);

struct Usage {
  int prompt_tokens = 0;
  int cached_tokens = 0;
  int completion_tokens = 0;
  int reasoning_tokens = 0;
};
Json openai_usage(const Usage& u, bool thinking);
// The object every OpenAI-surface response and chunk shares: {id, object, created, model,
// system_fingerprint, choices: [choice], usage} (usage null on chunks before the last).
Json openai_object(const std::string& id, const char* object, int64_t created, const std::string& model,
                   const std::string& fingerprint, Json choice, Json usage);

struct PipelineOptions {
  text::OutputStart start = text::OutputStart::kReasoning;
  std::vector<std::string> stop;
  std::map<std::string, Json> tool_schemas;
  bool tools_allowed = true;
  bool unclosed_reasoning_as_content = true;
  std::string tool_id_prefix = "call_";  // OpenAI "call_NN_…", Anthropic "toolu_…"
  bool indexed_tool_ids = true;          // the hosted OpenAI shape call_00_…
  int32_t think_end_id = -1;             // "</think>" token (counts as reasoning)
  bool logprobs = false;
};

// Per-request output processing on the HTTP side: tokens -> parser events with stop strings applied
// to content only, tool arguments streamed per call through ToolArgumentStreamer (so clients get id +
// name first, then fragments that concatenate to the schema-repaired arguments), reasoning tokens
// counted.
class CompletionPipeline {
 public:
  explicit CompletionPipeline(PipelineOptions options);
  // One generated token (text = its detokenized delta). Appends the API events it resolves.
  void feed_token(const TokenEvent& token, const text::Tokenizer* tok, std::vector<text::OutputEvent>& out);
  // Raw text (tests; the test script path also goes through feed_token).
  void feed_text(std::string_view text, std::vector<text::OutputEvent>& out);
  // Generation ended (any cause); ends the message. Idempotent.
  void finish(std::vector<text::OutputEvent>& out);

  // Generation can stop: EOS / tool-call block seen, or a stop string matched.
  bool should_stop() const { return parser_.ended() || stops_.matched(); }
  int reasoning_tokens() const { return reasoning_tokens_; }
  // "stop" | "length" | "tool_calls" (valid after finish()).
  std::string finish_reason() const;
  const std::optional<std::string>& matched_stop() const { return stops_.which(); }
  // Logprob entries ({token, logprob, bytes, top_logprobs}) of content tokens not yet handed out.
  std::vector<Json> take_logprobs();

 private:
  void process(std::vector<text::OutputEvent>& raw, std::vector<text::OutputEvent>& out);
  void content(std::string_view text, std::vector<text::OutputEvent>& out);
  void flush_content(std::vector<text::OutputEvent>& out);

  PipelineOptions opt_;
  text::OutputParser parser_;
  std::vector<text::OutputEvent> raw_;
  bool in_reasoning_;
  int reasoning_tokens_ = 0;
  StopMatcher stops_;  // on content only
  text::FinishReason parser_finish_ = text::FinishReason::kNone;
  bool finished_ = false;
  bool saw_tool_call_ = false;
  // Open tool call: its arguments stream through this.
  std::optional<ToolArgumentStreamer> call_args_;
  std::vector<Json> logprobs_;
};

// Anthropic stop_reason for a finish reason ("stop" + a matched stop string -> stop_sequence).
std::string anthropic_stop_reason(const std::string& finish, bool stop_sequence);

}  // namespace dsv4::server

namespace dsv4::server {

// How a generation ended, as the surfaces report it.
struct Outcome {
  std::string finish_reason = "stop";           // stop | length | tool_calls
  std::optional<std::string> stop_sequence;     // the client stop string that matched
  Usage usage;
};

// Turns pipeline events into the bytes of one surface's SSE stream. Pure (no I/O): the HTTP layer
// writes what it returns; unit tests read it.
class StreamWriter {
 public:
  virtual ~StreamWriter() = default;
  virtual std::string begin(const Usage& prompt_usage) = 0;
  virtual std::string events(const std::vector<text::OutputEvent>& events, std::vector<Json> logprobs) = 0;
  virtual std::string end(const Outcome& outcome) = 0;
  virtual std::string keepalive() = 0;
  virtual std::string error(const ApiError& e) = 0;
};

// Request-scoped field validation helpers shared by both parsers.
namespace fields {
const Json* get(const Json& obj, const char* key);  // nullptr when absent or null
bool get_bool(const Json& obj, const char* key, bool def);
std::optional<double> get_number(const Json& obj, const char* key, double lo, double hi);
std::optional<int64_t> get_int(const Json& obj, const char* key, int64_t lo, int64_t hi);
std::optional<std::string> get_string(const Json& obj, const char* key);
// A string or a list of strings (stop, stop_sequences), at most max_items.
std::vector<std::string> get_string_list(const Json& obj, const char* key, std::size_t max_items);
}  // namespace fields

}  // namespace dsv4::server
