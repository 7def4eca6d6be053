// `dsv4 generate`: render a one-turn chat prompt, prefill it, sample a completion and print it
// (reasoning dimmed on a terminal), with prefill/decode speed on stderr.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "cli/commands.h"
#include "core/error.h"
#include "model/demo.h"
#include "model/model.h"
#include "model/sampler.h"
#include "text/chat_format.h"
#include "text/output_parser.h"
#include "text/tokenizer.h"

namespace dsv4::cli {

void register_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Generate a completion for one user message");
  static std::string model_dir, prompt;
  static int n_tokens = 256, threads = 0;
  static float temperature = 1.0f, top_p = 1.0f;
  static uint64_t seed = 0;
  static bool think = false, no_think = false, raw = false;
  cmd->add_option("--model", model_dir, "Model directory (default: the built-in demo model)");
  cmd->add_option("-p,--prompt", prompt, "User message")->required();
  cmd->add_option("-n,--max-tokens", n_tokens, "Maximum tokens to generate")->capture_default_str()->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--temp", temperature, "Sampling temperature (0 = greedy)")->capture_default_str()->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-p", top_p, "Nucleus sampling mass")->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--seed", seed, "Sampling seed")->capture_default_str();
  cmd->add_option("-t,--threads", threads, "Worker threads (0 = all cores)");
  auto* t = cmd->add_flag("--think", think, "Thinking mode (default)");
  cmd->add_flag("--no-think", no_think, "Chat mode: no reasoning")->excludes(t);
  cmd->add_flag("--raw", raw, "Print the raw completion text instead of parsed reasoning/content");
  cmd->callback([] {
    const std::string dir = model_dir.empty() ? ensure_demo_model() : model_dir;
    const std::string tok_path = (std::filesystem::path(dir) / "tokenizer.json").string();
    if (!std::filesystem::exists(tok_path)) throw Error(dir + ": no tokenizer.json in the model directory");
    auto tok = text::Tokenizer::from_file(tok_path);
    Model model(dir, threads);
    model.prefault_weights(true);
    const ModelConfig& c = model.config();
    if (tok->vocab_size() > c.vocab_size)
      throw Error("tokenizer has " + std::to_string(tok->vocab_size()) + " tokens but the model only " + std::to_string(c.vocab_size));

    text::RenderOptions ro;
    ro.thinking_mode = no_think ? text::ThinkingMode::kChat : text::ThinkingMode::kThinking;
    text::OrderedJson messages = text::OrderedJson::array();
    messages.push_back({{"role", "user"}, {"content", prompt}});
    const std::string rendered = text::render_prompt_json(messages, ro);
    const std::vector<int32_t> ids = tok->encode(rendered, true);

    const bool tty = isatty(STDOUT_FILENO);
    using clock = std::chrono::steady_clock;
    SequenceState st = model.new_state();
    std::vector<float> logits(static_cast<size_t>(c.vocab_size));
    const auto t0 = clock::now();
    // Chunked prefill keeps memory bounded; a long prompt shows its progress block by block.
    const int chunk = kPrefillChunkTokens, blocks = c.n_layers;
    const bool show = ids.size() > static_cast<size_t>(chunk) / 4;
    for (size_t i = 0; i < ids.size(); i += chunk) {
      const int n = static_cast<int>(std::min<size_t>(chunk, ids.size() - i));
      model.forward(st, ids.data() + i, n, i + n == ids.size() ? logits.data() : nullptr, nullptr, [&](int done) {
        if (show) std::fprintf(stderr, "\rprefill %zu/%zu", i + static_cast<size_t>(n) * done / blocks, ids.size());
        return true;
      });
    }
    if (show) std::fprintf(stderr, "\n");
    const double prefill_s = std::chrono::duration<double>(clock::now() - t0).count();

    Sampler sampler({temperature, top_p, seed});
    text::StreamDecoder detok(*tok);
    text::OutputParserOptions po;
    po.start = text::prompt_opens_thinking(rendered) ? text::OutputStart::kReasoning : text::OutputStart::kContent;
    text::OutputParser parser(po);
    std::vector<text::OutputEvent> events;
    bool in_reasoning = false;
    auto print_events = [&] {
      for (const auto& e : events) {
        if (e.type == text::EventType::kReasoningDelta) {
          if (!in_reasoning && tty) std::fputs("\033[2m", stdout);
          in_reasoning = true;
          std::fputs(e.text.c_str(), stdout);
        } else if (e.type == text::EventType::kContentDelta) {
          if (in_reasoning) std::fputs(tty ? "\033[0m\n" : "\n", stdout);
          in_reasoning = false;
          std::fputs(e.text.c_str(), stdout);
        } else if (e.type == text::EventType::kToolCallBegin) {
          std::printf("\n[tool call %s]", e.tool_name.c_str());
        } else if (e.type == text::EventType::kToolCallArguments) {
          std::fputs(e.text.c_str(), stdout);
        }
      }
      events.clear();
      std::fflush(stdout);
    };
    const auto t1 = clock::now();
    int generated = 0;
    for (; generated < n_tokens; ++generated) {
      if (st.pos >= c.max_position_embeddings) break;
      const int32_t next = sampler.sample(logits.data(), c.vocab_size);
      const std::string piece = detok.push(next);
      if (raw) {
        std::fputs(piece.c_str(), stdout);
        std::fflush(stdout);
      } else {
        parser.feed(piece, events);
        print_events();
      }
      if (next == c.eos_token_id || (!raw && parser.ended())) {
        ++generated;
        break;
      }
      model.forward(st, &next, 1, logits.data());
    }
    const std::string tail = detok.finish();
    if (raw) {
      std::fputs(tail.c_str(), stdout);
    } else {
      parser.feed(tail, events);
      parser.finish(events);
      print_events();
    }
    if (in_reasoning && tty) std::fputs("\033[0m", stdout);
    std::fputs("\n", stdout);
    const double decode_s = std::chrono::duration<double>(clock::now() - t1).count();
    std::fprintf(stderr, "prefill %zu tokens %.1f tok/s, decode %d tokens %.1f tok/s\n", ids.size(),
                 static_cast<double>(ids.size()) / prefill_s, generated, generated / std::max(decode_s, 1e-9));
  });
}

}  // namespace dsv4::cli
