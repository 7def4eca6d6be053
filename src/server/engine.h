// The generation engine behind `dsv4 serve` (and `dsv4 chat`): a request queue served by one
// engine thread that owns the model and decodes up to max_batch requests together (continuous
// batching), retained sequences with prefix reuse, sampling, and cancellation. The HTTP layer
// renders and tokenizes a request, submits it here, and turns the token stream into API events
// (src/text/output_parser.h) on its own threads.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/model.h"
#include "text/tokenizer.h"

namespace dsv4::server {

struct SamplingParams {
  float temperature = 1.0f;  // 0 = greedy
  float top_p = 1.0f;
  int top_k = 0;                  // 0 = off (Anthropic top_k)
  float presence_penalty = 0.0f;  // OpenAI semantics, over the completion tokens so far
  float frequency_penalty = 0.0f;
  std::optional<uint64_t> seed;   // unset: a fresh random seed per request
};

struct GenerationRequest {
  std::vector<int32_t> prompt;  // rendered prompt, tokenized (BOS included by the renderer)
  int max_tokens = 4096;        // completion tokens (reasoning included); <= 0: up to the context limit
  SamplingParams sampling;
  int top_logprobs = -1;        // -1: no logprobs; 0..20: sampled token's logprob + that many alternatives
  std::vector<int32_t> stop_ids;  // token ids that end generation (EOS is always one)
  // Test-only: when non-empty, these tokens are "sampled" in order instead of the sampler (the
  // forward pass still runs), so thinking / tool-call streaming can be tested deterministically.
  // Generation ends at a stop token, or with kMaxTokens when the script runs out.
  std::vector<int32_t> scripted_tokens;
  // Forced output (tool_choice required / named): these tokens are emitted in order, instead of the
  // sampler or the script, as soon as `force_after` has been generated (-1: from the first
  // completion token). A stop token generated before `force_after` is replaced by `force_after`, so
  // the model cannot end without the forced part (e.g. EOS inside reasoning becomes "</think>").
  // Forced tokens count as completion tokens and go through the usual stop / max_tokens checks.
  std::vector<int32_t> forced_tokens;
  int32_t force_after = -1;
  // JSON mode (response_format json_object): once `json_after` has been generated (-1: from the
  // first completion token) the sampler only picks tokens whose bytes keep the rest of the output a
  // prefix of one JSON object (whitespace before it allowed, no special tokens inside), and EOS is
  // forced right after the object closes. Candidates are tried in the sampler's own order (after
  // penalties / temperature / top-k / top-p), so most steps test a handful of tokens. A stop token
  // generated before `json_after` is replaced by it (EOS inside the reasoning becomes "</think>").
  // With json_allow_tool_calls the answer may instead open a tool-call block (whitespace, then
  // "<｜DSML｜tool_calls>"), after which nothing is constrained. Ignored with forced tokens; scripted
  // tokens (tests) are proposals, each taken when the constraint accepts it, else sampled instead.
  bool json_object = false;
  int32_t json_after = -1;
  bool json_allow_tool_calls = false;
  // Set by the caller to stop generation (client disconnect, server shutdown); checked every token.
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
};

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.0f;
};

struct TokenEvent {
  int32_t id = 0;
  std::string text;  // detokenized UTF-8 delta (complete characters only; may be empty)
  float logprob = 0.0f;                 // filled when top_logprobs >= 0
  std::vector<TokenLogprob> top;        // top_logprobs alternatives
};

enum class FinishCause { kStopToken, kMaxTokens, kContextFull, kCancelled, kError };

struct GenerationStats {
  int prompt_tokens = 0;
  int cached_tokens = 0;  // prompt tokens whose state was reused (prompt_cache_hit_tokens)
  int completion_tokens = 0;
  double queue_seconds = 0, prefill_seconds = 0, decode_seconds = 0;
  double time_to_first_token = 0;  // from submit
};

struct GenerationResult {
  FinishCause cause = FinishCause::kStopToken;
  std::string error;  // kError: what went wrong (becomes a 500 / error event)
  GenerationStats stats;
};

struct EngineOptions {
  int threads = 0;            // model worker threads (0 = all cores)
  int64_t max_context = 0;    // per-sequence token limit (0 = model maximum)
  int max_queue = 64;         // pending requests beyond this are refused (HTTP 429/503)
  // Requests generating at once: their tokens run through the model together, one decode step
  // for all (each weight read once per step). 1 = one request at a time.
  int max_batch = 4;
  // While others decode, a newly admitted prompt is prefilled at most this many tokens (in
  // chunks at multiples of it) between two decode steps, so a long prompt does not stall their
  // streams; with nothing decoding it runs to its end. 0 = always to its end (the others wait).
  int interleave_chunk = 256;
  int retained_sequences = 4; // live sequences kept for prefix reuse
  int checkpoint_interval = 1024;  // prompt positions at which a reusable state snapshot is kept
  // Added with the engine (docs/prefix-cache.md):
  int max_checkpoints = 32;   // per retained sequence; beyond it the closest-spaced one is dropped
  int64_t cache_bytes = 0;    // retained states + checkpoints; LRU sequences go first (0 = no limit)
  // Prompt tokens per forward call (kPrefillChunkTokens: longer chunks feed the routed experts
  // more rows); progress and cancellation are checked after every block of a chunk anyway.
  int prefill_chunk = kPrefillChunkTokens;
};

// Called on the engine thread for every generated token; return false to stop (client gone).
// A stop token (EOS or one of stop_ids) is delivered too, as the last event, so the output parser
// sees e.g. "<｜end▁of▁sentence｜>"; it counts as a completion token.
using TokenCallback = std::function<bool(const TokenEvent&)>;
// Called exactly once when the request ends (any cause), on the engine thread.
using DoneCallback = std::function<void(const GenerationResult&)>;
// Prefill progress (tokens done, tokens total), for keep-alives; on the engine thread.
using ProgressCallback = std::function<void(int64_t done, int64_t total)>;

class Engine {
 public:
  Engine(std::shared_ptr<Model> model, std::shared_ptr<const text::Tokenizer> tokenizer, EngineOptions options);
  ~Engine();  // cancels queued and running requests, joins the engine thread
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request. Returns false (and calls nothing) when the queue is full. Throws dsv4::Error
  // for requests that can never run (empty prompt, prompt + max_tokens over the context limit,
  // token ids outside the vocabulary) so the API layer can answer 400.
  bool submit(GenerationRequest request, TokenCallback on_token, DoneCallback on_done,
              ProgressCallback on_progress = {});

  // Tokenizes a rendered prompt for submit(), reusing a retained sequence's exact tokens where its
  // text is a prefix of `rendered` (api.md §11 items 5 and 8): sampled tokens often differ from
  // what encode() gives for the same text, which would otherwise defeat the prefix cache after
  // every assistant turn. The reused part ends at a safe boundary (an added token such as
  // "<｜end▁of▁sentence｜>" before or after it) and the rest is encoded as usual, so without a match
  // this is tokenizer().encode(rendered, true). Thread-safe; throws like encode().
  std::vector<int32_t> encode_prompt(const std::string& rendered) const;

  int64_t max_context() const;
  int queued() const;
  bool busy() const;
  const ModelConfig& config() const;
  const text::Tokenizer& tokenizer() const;

  // Stops accepting work, cancels everything, joins. Idempotent.
  void shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv4::server
