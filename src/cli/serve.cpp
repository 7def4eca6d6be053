// `dsv4 serve`: the local drop-in for the DeepSeek API (OpenAI Chat Completions + Anthropic
// Messages), see docs/server.md.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <thread>

#include "cli/commands.h"
#include "core/error.h"
#include "model/demo.h"
#include "model/model.h"
#include "server/engine.h"
#include "server/http_server.h"
#include "text/tokenizer.h"

namespace dsv4::cli {

void register_serve(CLI::App& app) {
  auto* cmd = app.add_subcommand("serve", "Serve the OpenAI-compatible (chat, FIM) and Anthropic-compatible HTTP API");
  struct Opts {
    std::string model_dir, host = "127.0.0.1", effort_profile = "preview";
    int port = 8000, threads = 0, http_threads = 64, queue = 64, prefill_chunk = kPrefillChunkTokens,
        max_batch = server::EngineOptions{}.max_batch, interleave_chunk = server::EngineOptions{}.interleave_chunk;
    double sse_keepalive = 5.0;
    int64_t ctx = 0;
    std::vector<std::string> api_keys, served_names;
    bool accept_any = false, test_script = false, sampling_in_thinking = false, strict_reasoning = false,
         no_claude_aliases = false, reasoning_stays_reasoning = false;
  };
  static Opts o;
  cmd->add_option("--model", o.model_dir, "Model directory (default: the built-in demo model)");
  cmd->add_option("--host", o.host, "Listen address")->capture_default_str();
  cmd->add_option("--port", o.port, "Listen port (0 = any free port)")->capture_default_str()->check(CLI::Range(0, 65535));
  cmd->add_option("--api-key", o.api_keys, "Accepted API key (repeatable; none = accept any)");
  cmd->add_option("--served-model-name", o.served_names,
                  "Model id(s) to serve (repeatable; default deepseek-v4-flash / deepseek-v4-pro by checkpoint)");
  cmd->add_option("--ctx", o.ctx, "Per-sequence context limit in tokens (0 = model maximum)")->check(CLI::NonNegativeNumber);
  cmd->add_option("-t,--threads", o.threads, "Model worker threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--http-threads", o.http_threads, "HTTP worker threads (concurrent connections)")->capture_default_str()->check(CLI::Range(4, 4096));
  cmd->add_option("--sse-keepalive", o.sse_keepalive,
                  "Seconds between SSE keep-alives while a long prompt is prefilled")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 3600.0));
  // (activation memory grows by ~200 KiB a token of the chunk at V4-Flash widths: 64K ~13 GB)
  cmd->add_option("--prefill-chunk", o.prefill_chunk,
                  "Prompt tokens per forward pass (longer: faster prefill, more activation memory)")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  cmd->add_option("--max-queue", o.queue, "Queued requests beyond which new ones get 503")->capture_default_str()->check(CLI::Range(1, 100000));
  cmd->add_option("--max-batch", o.max_batch,
                  "Requests generating at once, their tokens decoded together in one step (1 = one at a time)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd->add_option("--interleave-chunk", o.interleave_chunk,
                  "While other requests decode, prompt tokens prefilled between two of their steps (0 = a "
                  "prompt runs to its end, the others wait)")
      ->capture_default_str()
      ->check(CLI::Range(0, 65536));
  cmd->add_option("--effort-profile", o.effort_profile, "Reasoning-effort prompt table of the checkpoint: preview | 0731")
      ->capture_default_str()->check(CLI::IsMember({"preview", "0731"}));
  cmd->add_flag("--accept-any-model", o.accept_any, "Serve unknown model names with the loaded model instead of 404");
  cmd->add_flag("--no-claude-aliases", o.no_claude_aliases, "Anthropic surface: do not map claude-* names to the loaded model");
  cmd->add_flag("--sampling-in-thinking", o.sampling_in_thinking,
                "Honour temperature/top_p/penalties in thinking mode (the hosted API ignores them)");
  cmd->add_flag("--strict-reasoning", o.strict_reasoning,
                "Reject tool-call turns without reasoning_content in thinking mode, as the hosted API does");
  cmd->add_flag("--reasoning-stays-reasoning", o.reasoning_stays_reasoning,
                "When the model ends inside reasoning, do not also return it as the answer");
  cmd->add_flag("--test-script-tokens", o.test_script,
                "TEST ONLY: honour the x-dsv4-test-script request header (forces the generated tokens)");
  cmd->callback([] {
    // Signals go to one watcher thread: block them before any thread (model pool, HTTP pool) exists.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    signal(SIGPIPE, SIG_IGN);  // a client closing mid-write must not kill the server

    const std::string dir = o.model_dir.empty() ? ensure_demo_model() : o.model_dir;
    const std::string tok_path = (std::filesystem::path(dir) / "tokenizer.json").string();
    if (!std::filesystem::exists(tok_path)) throw Error(dir + ": no tokenizer.json in the model directory");
    std::shared_ptr<const text::Tokenizer> tok = text::Tokenizer::from_file(tok_path);
    auto model = std::make_shared<Model>(dir, o.threads);
    model->prefault_weights(true);
    if (tok->vocab_size() > model->config().vocab_size)
      throw Error("tokenizer has " + std::to_string(tok->vocab_size()) + " tokens but the model only " +
                  std::to_string(model->config().vocab_size));

    server::EngineOptions eo;
    eo.threads = o.threads;
    eo.max_context = o.ctx;
    eo.max_queue = o.queue;
    eo.max_batch = o.max_batch;
    eo.interleave_chunk = o.interleave_chunk;
    eo.prefill_chunk = o.prefill_chunk;
    server::Engine engine(model, tok, eo);

    server::ServerOptions api;
    api.api_keys = o.api_keys;
    api.served_names = o.served_names;
    api.accept_any_model = o.accept_any;
    api.claude_aliases = !o.no_claude_aliases;
    api.test_script_tokens = o.test_script;
    api.sampling_in_thinking = o.sampling_in_thinking;
    api.strict_reasoning = o.strict_reasoning;
    api.unclosed_reasoning_as_content = !o.reasoning_stays_reasoning;
    api.prompt.effort_profile = o.effort_profile == "0731" ? text::EffortProfile::kFlash0731 : text::EffortProfile::kPreview;
    if (api.served_names.empty()) api.served_names.push_back(server::default_served_name(model->config()));
    server::HttpOptions http;
    http.host = o.host;
    http.port = o.port;
    http.worker_threads = o.http_threads;
    http.keepalive_seconds = o.sse_keepalive;

    server::HttpServer srv(engine, api, http);
    srv.bind();
    const std::string base = "http://" + o.host + ":" + std::to_string(srv.port());
    std::fprintf(stderr, "dsv4 serve: %s as %s on %s (context %lld tokens)%s\n", dir.c_str(),
                 api.served_names.front().c_str(), base.c_str(), static_cast<long long>(engine.max_context()),
                 o.test_script ? " [TEST MODE: x-dsv4-test-script honoured]" : "");
    std::fprintf(stderr,
                 "example:\n  curl %s/v1/chat/completions -H 'Content-Type: application/json'%s \\\n"
                 "    -d '{\"model\": \"%s\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'\n",
                 base.c_str(), o.api_keys.empty() ? "" : " -H 'Authorization: Bearer $KEY'",
                 api.served_names.front().c_str());
    // Machine-readable line for scripts and tests that ask for --port 0.
    std::printf("listening on %s\n", base.c_str());
    std::fflush(stdout);

    std::atomic<bool> stopped{false};
    std::thread watcher([&] {
      const timespec tick{0, 200 * 1000 * 1000};
      while (!stopped) {
        siginfo_t info;
        if (sigtimedwait(&sigs, &info, &tick) > 0) {
          std::fprintf(stderr, "dsv4 serve: %s, finishing in-flight requests\n",
                       info.si_signo == SIGINT ? "SIGINT" : "SIGTERM");
          srv.shutdown();
          break;
        }
      }
    });
    srv.run();
    stopped = true;
    watcher.join();
    srv.shutdown();
    engine.shutdown();
    std::fprintf(stderr, "dsv4 serve: stopped\n");
  });
}

}  // namespace dsv4::cli
