// `dsv4 chat`: interactive multi-turn chat in the terminal. The model state of the conversation is
// kept between turns: each new user turn is rendered incrementally (the earlier messages passed as
// the encoder's `context`) and only that suffix is prefilled into the same SequenceState.
// Design notes and the (intentional) difference from a fresh render: docs/chat.md.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/error.h"
#include "model/demo.h"
#include "model/model.h"
#include "model/sampler.h"
#include "text/chat_format.h"
#include "text/output_parser.h"
#include "text/tokenizer.h"

namespace dsv4::cli {

namespace {

namespace fs = std::filesystem;
using clock = std::chrono::steady_clock;

// SIGINT while a turn runs stops it; at the prompt it only prints a hint (the terminal already
// discarded the typed line). The handler touches nothing but these flags and write(2).
volatile std::sig_atomic_t g_busy = 0;
volatile std::sig_atomic_t g_stop = 0;
volatile std::sig_atomic_t g_prompt = 0;  // the "> " prompt is shown (stdin is a terminal)

void on_sigint(int) {
  if (g_busy) {
    g_stop = 1;
    return;
  }
  static const char kHint[] = "\n(Ctrl-C stops an answer; /quit or Ctrl-D exits)\n> ";
  if (write(STDOUT_FILENO, kHint, sizeof kHint - (g_prompt ? 1 : 3)) < 0) {
  }
}

// Installs the handler for the session and restores the previous one on exit. SA_RESTART keeps
// std::getline blocked at the prompt instead of failing with EINTR.
class SigintGuard {
 public:
  SigintGuard() {
    struct sigaction sa {};
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, &old_);
  }
  ~SigintGuard() { sigaction(SIGINT, &old_, nullptr); }
  SigintGuard(const SigintGuard&) = delete;
  SigintGuard& operator=(const SigintGuard&) = delete;

 private:
  struct sigaction old_ {};
};

// The effort texts depend on the checkpoint generation (spec prompt-format §0/§4): the 0731
// encoder shipped with the checkpoint defines REASONING_EFFORT_PROMPTS, the preview one does not.
text::EffortProfile detect_effort_profile(const std::string& dir) {
  std::ifstream in(fs::path(dir) / "encoding" / "encoding_dsv4.py");
  if (!in) return text::EffortProfile::kPreview;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str().find("REASONING_EFFORT_PROMPTS") != std::string::npos ? text::EffortProfile::kFlash0731
                                                                         : text::EffortProfile::kPreview;
}

const char* effort_name(text::ReasoningEffort e) {
  switch (e) {
    case text::ReasoningEffort::kLow: return "low";
    case text::ReasoningEffort::kHigh: return "high";
    case text::ReasoningEffort::kMax: return "max";
    case text::ReasoningEffort::kDefault: break;
  }
  return "default";
}

struct ChatOptions {
  std::string model_dir;
  int threads = 0;
  int max_tokens = 2048;
  float temperature = 1.0f, top_p = 1.0f;
  uint64_t seed = 0;
  bool no_think = false;
  int64_t max_context = 0;
};

// Prints parser events: reasoning dimmed, content plain, tool calls marked (colours on a TTY only).
// On a terminal, control characters in model output are shown, not obeyed: generated text must
// not move the cursor, clear the screen or send terminal queries.
class EventPrinter {
 public:
  explicit EventPrinter(bool tty) : tty_(tty) {}

  void put(const std::string& s) {
    if (!tty_) {
      std::fputs(s.c_str(), stdout);
      return;
    }
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
      const auto b = static_cast<unsigned char>(s[i]);
      if ((b < 0x20 && b != '\n' && b != '\t') || b == 0x7f) {
        out += '^';
        out += static_cast<char>(b ^ 0x40);  // caret notation: ESC -> ^[
      } else if (b == 0xc2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) < 0xa0) {
        out += "\xef\xbf\xbd";  // a C1 control (U+0080..U+009F): U+FFFD
        ++i;
      } else {
        out += static_cast<char>(b);
      }
    }
    std::fputs(out.c_str(), stdout);
  }

  void print(std::vector<text::OutputEvent>& events) {
    for (const auto& e : events) {
      switch (e.type) {
        case text::EventType::kReasoningDelta:
          enter(Section::kReasoning);
          put(e.text);
          break;
        case text::EventType::kContentDelta:
          enter(Section::kContent);
          put(e.text);
          break;
        case text::EventType::kToolCallBegin:
          enter(Section::kTool);
          std::fputs(tty_ ? "\033[36m[tool call " : "[tool call ", stdout);
          put(e.tool_name);
          std::fputs(tty_ ? "]\033[0m " : "] ", stdout);
          break;
        case text::EventType::kToolCallArguments:
          put(e.text);
          break;
        case text::EventType::kToolCallEnd:
          if (!e.tool_complete) std::fputs(" [cut off]", stdout);
          break;
        case text::EventType::kMessageEnd:
          break;
      }
    }
    events.clear();
    std::fflush(stdout);
  }

  // Ends the answer: resets attributes and finishes the line.
  void finish() {
    if (section_ == Section::kReasoning && tty_) std::fputs("\033[0m", stdout);
    if (section_ != Section::kNone) std::fputs("\n", stdout);
    section_ = Section::kNone;
    std::fflush(stdout);
  }

 private:
  enum class Section { kNone, kReasoning, kContent, kTool };
  void enter(Section s) {
    if (s == section_ && s != Section::kTool) return;
    if (section_ == Section::kReasoning && tty_) std::fputs("\033[0m", stdout);
    if (section_ != Section::kNone) std::fputs("\n", stdout);
    if (s == Section::kReasoning && tty_) std::fputs("\033[2m", stdout);
    section_ = s;
  }
  bool tty_;
  Section section_ = Section::kNone;
};

class ChatSession {
 public:
  ChatSession(const ChatOptions& o, Model& model, const text::Tokenizer& tok, text::PromptFormatConfig pcfg)
      : o_(o),
        model_(model),
        tok_(tok),
        pcfg_(pcfg),
        st_(model.new_state()),
        logits_(static_cast<size_t>(model.config().vocab_size)),
        sampler_({o.temperature, o.top_p, o.seed}),
        history_(text::OrderedJson::array()),
        tty_out_(isatty(STDOUT_FILENO)),
        tty_err_(isatty(STDERR_FILENO)) {
    const int64_t model_max = model.config().max_position_embeddings;
    max_ctx_ = o.max_context > 0 ? std::min(o.max_context, model_max) : model_max;
    mode_ = o.no_think ? text::ThinkingMode::kChat : text::ThinkingMode::kThinking;
  }

  // Handles one input line; returns false when the session should end.
  bool handle(const std::string& line) {
    if (line.find_first_not_of(" \t\n") == std::string::npos) return true;
    if (line[0] == '/') return command(line);
    turn(line);
    return true;
  }

 private:
  bool command(const std::string& line) {
    std::istringstream in(line);
    std::string cmd, arg, extra;
    in >> cmd >> arg >> extra;
    if (cmd == "/quit" || cmd == "/exit") return false;
    if (cmd == "/help") {
      std::printf(
          "/reset            start a new conversation (fresh model state)\n"
          "/think, /nothink  thinking mode on / off for the next turns (now %s)\n"
          "/effort LEVEL     reasoning effort: high, max%s, or default (now %s); set at the start of a conversation\n"
          "/help             this text\n"
          "/quit             exit (also Ctrl-D); Ctrl-C stops an answer\n",
          mode_ == text::ThinkingMode::kThinking ? "on" : "off",
          pcfg_.effort_profile == text::EffortProfile::kFlash0731 ? ", low" : "", effort_name(effort_));
    } else if (cmd == "/reset" && arg.empty()) {
      reset();
      std::printf("(new conversation)\n");
    } else if (cmd == "/think" && arg.empty()) {
      mode_ = text::ThinkingMode::kThinking;
      std::printf("(thinking mode on)\n");
    } else if (cmd == "/nothink" && arg.empty()) {
      mode_ = text::ThinkingMode::kChat;
      std::printf("(thinking mode off)\n");
    } else if (cmd == "/effort" && extra.empty()) {
      set_effort(arg);
    } else {
      std::printf("unknown command: %s (/help lists the commands)\n", line.c_str());
    }
    std::fflush(stdout);
    return true;
  }

  void set_effort(const std::string& arg) {
    if (arg.empty()) {
      std::printf("(reasoning effort: %s)\n", effort_name(effort_));
      return;
    }
    text::ReasoningEffort e;
    if (arg == "default") {
      e = text::ReasoningEffort::kDefault;
    } else {
      try {
        e = text::parse_reasoning_effort(arg);
        text::effort_prefix(pcfg_.effort_profile, e);  // throws if this checkpoint lacks the tier
      } catch (const Error& err) {
        std::printf("error: %s\n", err.what());
        return;
      }
    }
    effort_ = e;
    // The effort text sits before the first message (spec §4): changing it mid-conversation would
    // change the start of the prompt, i.e. re-prefill everything. It applies from the next start.
    if (st_.pos > 0)
      std::printf("(reasoning effort %s from the next conversation: /reset to start one)\n", effort_name(e));
    else
      std::printf("(reasoning effort %s)\n", effort_name(e));
  }

  void reset() {
    st_ = model_.new_state();
    history_ = text::OrderedJson::array();
    pending_.clear();
  }

  void turn(const std::string& user_text) {
    text::OrderedJson user = {{"role", "user"}, {"content", user_text}};
    text::RenderOptions ro;
    ro.thinking_mode = mode_;
    ro.reasoning_effort = effort_;

    // Render and tokenize before touching the state, so bad input leaves the session unchanged.
    std::string rendered;
    std::vector<int32_t> ids;
    try {
      if (st_.pos == 0) {
        // Fresh state: render the whole conversation (history is non-empty only after an
        // interrupted prefill discarded the state).
        text::OrderedJson all = history_;
        all.push_back(user);
        rendered = text::render_prompt_json(all, ro, pcfg_);
        ids = tok_.encode(rendered, true);
      } else {
        // Only the new suffix: what the encoder renders after the previous assistant turn, given
        // the earlier messages as context. `pending_` holds the tokens that close that turn.
        text::OrderedJson one = text::OrderedJson::array();
        one.push_back(user);
        rendered = text::render_prompt_json(one, ro, pcfg_, history_);
        ids = pending_;
        const std::vector<int32_t> suffix = tok_.encode(rendered, true);
        ids.insert(ids.end(), suffix.begin(), suffix.end());
      }
    } catch (const Error& e) {
      std::printf("error: %s (message not sent)\n", e.what());
      std::fflush(stdout);
      return;
    }
    // Room for the prompt, at least one generated token and the EOS that closes the turn.
    if (st_.pos + static_cast<int64_t>(ids.size()) + 2 > max_ctx_) {
      std::printf("error: context full: %lld tokens in the conversation + %zu new > %lld; /reset to start over\n",
                  static_cast<long long>(st_.pos), ids.size(), static_cast<long long>(max_ctx_));
      std::fflush(stdout);
      return;
    }

    g_stop = 0;
    g_busy = 1;
    const auto t0 = clock::now();
    const bool prefilled = prefill(ids);
    const double prefill_s = std::chrono::duration<double>(clock::now() - t0).count();
    if (!prefilled) {
      g_busy = 0;
      // The state holds part of the new turn and cannot be rolled back: drop it. The history is
      // kept, so the next turn re-prefills the conversation from a fresh render.
      st_ = model_.new_state();
      pending_.clear();
      std::printf("(prefill interrupted; the conversation will be prefilled again on the next turn)\n");
      std::fflush(stdout);
      return;
    }
    history_.push_back(user);

    const auto t1 = clock::now();
    const Generation g = generate(rendered);
    const double decode_s = std::chrono::duration<double>(clock::now() - t1).count();
    g_busy = 0;

    // The state now holds every generated token but the last sampled one. The encoder renders the
    // finished assistant turn as ...<EOS>, so the next suffix starts with that token (if it was
    // not the EOS itself) and the EOS.
    const int32_t eos = model_.config().eos_token_id;
    pending_.clear();
    if (g.last && *g.last != eos) pending_.push_back(*g.last);
    pending_.push_back(eos);
    remember_answer(g.message, ro);

    const char* dim = tty_err_ ? "\033[2m" : "";
    const char* off = tty_err_ ? "\033[0m" : "";
    std::fprintf(stderr, "%s[prefill %zu tokens %.1f tok/s, decode %d tokens %.1f tok/s, context %lld/%lld%s%s]%s\n",
                 dim, ids.size(), static_cast<double>(ids.size()) / std::max(prefill_s, 1e-9), g.tokens,
                 g.tokens / std::max(decode_s, 1e-9), static_cast<long long>(st_.pos + pending_.size()),
                 static_cast<long long>(max_ctx_), g.note.empty() ? "" : ", ", g.note.c_str(), off);
  }

  // Chunked prefill: bounded activation memory; the progress bar and the Ctrl-C check follow each
  // block of a chunk. Returns false when interrupted.
  bool prefill(const std::vector<int32_t>& ids) {
    const size_t chunk = kPrefillChunkTokens;
    const int blocks = model_.config().n_layers;
    const bool bar = tty_err_ && ids.size() > chunk / 8;
    for (size_t i = 0; i < ids.size(); i += chunk) {
      const int n = static_cast<int>(std::min(chunk, ids.size() - i));
      const bool last = i + static_cast<size_t>(n) == ids.size();
      const bool done = model_.forward(st_, ids.data() + i, n, last ? logits_.data() : nullptr, nullptr, [&](int layers) {
        if (bar) {
          constexpr int kWidth = 30;
          const size_t at = i + static_cast<size_t>(n) * static_cast<size_t>(layers) / static_cast<size_t>(blocks);
          const int fill = static_cast<int>(kWidth * at / ids.size());
          std::fprintf(stderr, "\rprefill [%s%s] %zu/%zu tokens", std::string(static_cast<size_t>(fill), '#').c_str(),
                       std::string(static_cast<size_t>(kWidth - fill), '.').c_str(), at, ids.size());
          std::fflush(stderr);
        }
        return !g_stop || (last && layers == blocks);  // (a finished prompt is kept)
      });
      if (!done || (g_stop && !last)) {
        if (bar) std::fputs("\r\033[K", stderr);
        return false;
      }
    }
    if (bar) std::fputs("\r\033[K", stderr);
    return true;
  }

  struct Generation {
    text::ParsedMessage message;
    int tokens = 0;
    std::optional<int32_t> last;  // the last sampled token, never fed to the model
    std::string note;             // why it stopped early, if it did
  };

  Generation generate(const std::string& rendered) {
    Generation g;
    const ModelConfig& c = model_.config();
    text::StreamDecoder detok(tok_);
    text::OutputParserOptions po;
    po.start = text::prompt_opens_thinking(rendered) ? text::OutputStart::kReasoning : text::OutputStart::kContent;
    text::OutputParser parser(po);
    text::MessageAssembler assembler;
    EventPrinter printer(tty_out_);
    std::vector<text::OutputEvent> events;
    auto flush = [&] {
      assembler.apply(events);
      printer.print(events);
    };
    while (!g_stop) {
      const int32_t next = sampler_.sample(logits_.data(), c.vocab_size);
      ++g.tokens;
      parser.feed(detok.push(next), events);
      flush();
      const bool full = st_.pos + 3 > max_ctx_;  // keep room for this token and the closing EOS
      if (next == c.eos_token_id || parser.ended() || g.tokens >= o_.max_tokens || full || g_stop) {
        g.last = next;
        if (!parser.ended() && next != c.eos_token_id)
          g.note = full ? "context full" : g.tokens >= o_.max_tokens ? "max tokens reached" : "";
        break;
      }
      model_.forward(st_, &next, 1, logits_.data());
    }
    if (g_stop && g.note.empty() && !parser.ended()) g.note = "stopped";
    parser.feed(detok.finish(), events);
    parser.finish(events);
    flush();
    printer.finish();
    g.message = assembler.message();
    return g;
  }

  // Appends the answer to the history (used as `context` for the next turns and for a re-render
  // after an interrupted prefill).
  void remember_answer(const text::ParsedMessage& m, const text::RenderOptions& ro) {
    text::OrderedJson a = {{"role", "assistant"}, {"content", m.content}, {"reasoning_content", m.reasoning_content}};
    text::OrderedJson calls = text::OrderedJson::array();
    for (const auto& tc : m.tool_calls) {
      if (!tc.complete) continue;
      calls.push_back({{"id", tc.id}, {"type", "function"}, {"function", {{"name", tc.name}, {"arguments", tc.arguments}}}});
    }
    if (!calls.empty()) {
      a["tool_calls"] = calls;
      // Generated markup must not make the history unrenderable: keep the calls only if it renders.
      try {
        text::OrderedJson probe = history_;
        probe.push_back(a);
        text::render_prompt_json(probe, ro, pcfg_);
      } catch (const Error&) {
        a.erase("tool_calls");
      }
    }
    history_.push_back(std::move(a));
  }

  const ChatOptions& o_;
  Model& model_;
  const text::Tokenizer& tok_;
  text::PromptFormatConfig pcfg_;
  SequenceState st_;
  std::vector<float> logits_;
  Sampler sampler_;
  text::OrderedJson history_;      // messages whose tokens are in st_ (modulo the documented diff)
  std::vector<int32_t> pending_;   // tokens owed to st_ before the next turn's suffix
  int64_t max_ctx_ = 0;
  text::ThinkingMode mode_ = text::ThinkingMode::kThinking;
  text::ReasoningEffort effort_ = text::ReasoningEffort::kDefault;
  bool tty_out_, tty_err_;
};

}  // namespace

void register_chat(CLI::App& app) {
  auto* cmd = app.add_subcommand("chat", "Interactive multi-turn chat in the terminal");
  static ChatOptions o;
  cmd->add_option("--model", o.model_dir, "Model directory (default: the built-in demo model)");
  cmd->add_option("-n,--max-tokens", o.max_tokens, "Maximum tokens per answer (reasoning included)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--temp", o.temperature, "Sampling temperature (0 = greedy)")->capture_default_str()->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-p", o.top_p, "Nucleus sampling mass")->capture_default_str()->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--seed", o.seed, "Sampling seed")->capture_default_str();
  cmd->add_option("-t,--threads", o.threads, "Worker threads (0 = all cores)");
  cmd->add_flag("--no-think", o.no_think, "Start in chat mode (no reasoning); /think turns it on");
  cmd->add_option("--max-context", o.max_context, "Context limit in tokens (0 = the model's maximum)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  cmd->callback([] {
    const std::string dir = o.model_dir.empty() ? ensure_demo_model() : o.model_dir;
    const std::string tok_path = (fs::path(dir) / "tokenizer.json").string();
    if (!fs::exists(tok_path)) throw Error(dir + ": no tokenizer.json in the model directory");
    auto tok = text::Tokenizer::from_file(tok_path);
    Model model(dir, o.threads);
    model.prefault_weights(true);
    const ModelConfig& c = model.config();
    if (tok->vocab_size() > c.vocab_size)
      throw Error("tokenizer has " + std::to_string(tok->vocab_size()) + " tokens but the model only " + std::to_string(c.vocab_size));
    text::PromptFormatConfig pcfg;
    pcfg.effort_profile = detect_effort_profile(dir);

    ChatSession session(o, model, *tok, pcfg);
    SigintGuard sigint;
    const bool tty_in = isatty(STDIN_FILENO);
    g_prompt = tty_in ? 1 : 0;
    std::printf("dsv4 chat: %s%s. /help lists the commands, /quit or Ctrl-D exits.\n", dir.c_str(),
                o.model_dir.empty() ? " (demo model: random weights, the answers are noise)" : "");
    // One message per line; a line ending in '\' continues on the next one, and a block between
    // two lines of just """ is one message (pasted text: each terminal line is limited to 4 KiB).
    auto read_line = [&](const char* prompt, std::string& out) {
      if (tty_in) std::fputs(prompt, stdout);
      std::fflush(stdout);
      if (!std::getline(std::cin, out)) return false;
      if (!out.empty() && out.back() == '\r') out.pop_back();
      return true;
    };
    std::string line, more;
    for (;;) {
      if (!read_line("> ", line)) break;
      if (line == "\"\"\"") {
        line.clear();
        bool first = true;
        while (read_line("... ", more) && more != "\"\"\"") {
          if (!first) line += '\n';
          line += more;
          first = false;
        }
      } else {
        while (!line.empty() && line.back() == '\\' && read_line("... ", more)) {
          line.back() = '\n';
          line += more;
        }
      }
      if (!session.handle(line)) break;
    }
    if (tty_in) std::fputs("\n", stdout);
  });
}

}  // namespace dsv4::cli
