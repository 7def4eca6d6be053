#include "server/http_server.h"

#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <deque>
#include <mutex>
#include <set>
#include <thread>

#include "core/error.h"
#include "server/anthropic_api.h"
#include "server/completions_api.h"
#include "server/openai_api.h"
#include "text/json_py.h"

namespace dsv4::server {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

bool is_anthropic_path(const std::string& path) {
  return path.rfind("/v1/messages", 0) == 0 || path.rfind("/anthropic/", 0) == 0;
}

// Engine thread -> HTTP thread hand-off for one generation.
struct Job {
  std::mutex m;
  std::condition_variable cv;
  std::deque<TokenEvent> tokens;
  bool progressed = false;  // prefill advanced since the last look
  bool done = false;
  GenerationResult result;
  std::shared_ptr<std::atomic<bool>> cancel;
};

// What one request's log line reports.
struct LogInfo {
  std::string method, path;
  int status = 200;
  Usage usage;
  double ttft = -1, decode_seconds = 0;
  Clock::time_point start = Clock::now();
  std::string note;

  // A finished generation: its usage, timings and finish reason.
  void finished(const Usage& u, const GenerationStats& stats, const std::string& finish_reason) {
    usage = u;
    ttft = stats.time_to_first_token;
    decode_seconds = stats.decode_seconds;
    note = "finish=" + finish_reason;
  }
};

// Set by a generation handler whose stream outlives the handler: the httplib logger skips it and
// the stream logs when it ends. Handler and content provider run on the same worker thread.
thread_local bool tl_deferred_log = false;

std::mutex g_log_mutex;
void log_line(const LogInfo& l) {
  char when[32];
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
  std::string extra;
  if (l.usage.prompt_tokens || l.usage.completion_tokens) {
    char buf[256];
    const double tps = l.decode_seconds > 0 ? l.usage.completion_tokens / l.decode_seconds : 0.0;
    std::snprintf(buf, sizeof buf, " prompt=%d cached=%d completion=%d reasoning=%d ttft=%.3fs %.1f tok/s",
                  l.usage.prompt_tokens, l.usage.cached_tokens, l.usage.completion_tokens, l.usage.reasoning_tokens,
                  l.ttft < 0 ? 0.0 : l.ttft, tps);
    extra = buf;
  }
  std::lock_guard<std::mutex> lock(g_log_mutex);
  std::fprintf(stderr, "%s %s %s %d%s %.3fs%s%s\n", when, l.method.c_str(), l.path.c_str(), l.status, extra.c_str(),
               seconds_since(l.start), l.note.empty() ? "" : " ", l.note.c_str());
}

}  // namespace

struct HttpServer::Impl {
  Engine& engine;
  ServerOptions api;
  HttpOptions http;
  httplib::Server svr;
  int bound_port = -1;
  int64_t created = static_cast<int64_t>(std::time(nullptr));

  std::mutex jobs_mutex;
  std::condition_variable jobs_cv;
  std::set<std::shared_ptr<Job>> jobs;  // in flight (for shutdown)
  int active_streams = 0;                // SSE responses still being written (guarded by jobs_mutex)
  std::atomic<bool> shutting_down{false};

  Impl(Engine& e, ServerOptions a, HttpOptions h) : engine(e), api(std::move(a)), http(std::move(h)) {}

  // ------------------------------------------------------------ helpers

  void send_error(const httplib::Request& req, httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    // Overloaded / shutting down: clients (the OpenAI and Anthropic SDKs) honour Retry-After.
    if (e.status == 503 || e.status == 429) res.set_header("Retry-After", "1");
    const Json body = is_anthropic_path(req.path) ? anthropic_error_body(e) : openai_error_body(e);
    res.set_content(dump(body), "application/json");
  }

  void check_auth(const httplib::Request& req) {
    if (!api_key_ok(api, req.get_header_value("Authorization"), req.get_header_value("x-api-key")))
      throw ApiError(401, "Authentication Fails, Your api key is invalid", "authentication_error", "",
                     "invalid_api_key");
  }

  static Json parse_body(const httplib::Request& req) {
    if (req.body.empty()) throw bad_request("request body is empty (expected JSON)");
    try {
      return text::json_py::parse(req.body);
    } catch (const dsv4::Error& e) {
      throw bad_request(std::string("request body is not valid JSON: ") + e.what());
    }
  }

  // Wraps a handler: every failure becomes the surface's error object, never a crash.
  template <class F>
  httplib::Server::Handler guarded(F f) {
    return [this, f](const httplib::Request& req, httplib::Response& res) {
      try {
        f(req, res);
      } catch (const ApiError& e) {
        send_error(req, res, e);
      } catch (const dsv4::Error& e) {
        send_error(req, res, bad_request(e.what()));
      } catch (const std::exception& e) {
        send_error(req, res, ApiError(500, std::string("internal error: ") + e.what(), "internal_error"));
      }
    };
  }

  // ------------------------------------------------------------ generation

  struct Started {
    std::shared_ptr<Job> job;
    PreparedPrompt prompt;
    int64_t prompt_tokens = 0;
  };

  void check_not_shutting_down() const {
    if (shutting_down) throw ApiError(503, "server is shutting down", "server_error", "", "server_shutting_down");
  }

  // Render, tokenize, submit. Throws ApiError (400 overflow / bad input, 503 queue full or shutdown).
  Started start(const CanonicalRequest& creq, const httplib::Request& req) {
    check_not_shutting_down();
    Started s;
    s.prompt = prepare_prompt(creq, api, engine.tokenizer(),
                              [this](const std::string& text) { return engine.encode_prompt(text); });
    GenerationRequest g = make_generation_request(creq, s.prompt, api, engine.max_context(),
                                                  engine.config().eos_token_id);
    // tool_choice required / named: the tool-call opening is forced during decoding.
    ForcedOutput forced = forced_tool_call(creq, s.prompt, engine.tokenizer(), engine.config().eos_token_id);
    g.forced_tokens = std::move(forced.tokens);
    g.force_after = forced.after;
    // response_format json_object: the answer is constrained to one JSON object during decoding.
    if (g.forced_tokens.empty()) json_mode(creq, s.prompt, engine.tokenizer(), g);
    s.prompt_tokens = static_cast<int64_t>(g.prompt.size());
    s.job = submit(std::move(g), req);
    return s;
  }

  // Submits a prepared request (the test script header applied). Throws ApiError (400 for requests
  // the engine refuses, 503 queue full).
  std::shared_ptr<Job> submit(GenerationRequest g, const httplib::Request& req) {
    if (api.test_script_tokens && req.has_header("x-dsv4-test-script"))
      g.scripted_tokens = script_tokens(req.get_header_value("x-dsv4-test-script"), engine.tokenizer());
    auto job = std::make_shared<Job>();
    job->cancel = g.cancel;
    {
      std::lock_guard<std::mutex> lock(jobs_mutex);
      jobs.insert(job);
    }
    bool ok = false;
    try {
      ok = engine.submit(
          std::move(g),
          [job](const TokenEvent& t) {
            {
              std::lock_guard<std::mutex> lock(job->m);
              job->tokens.push_back(t);
            }
            job->cv.notify_all();
            return !job->cancel->load();
          },
          [this, job](const GenerationResult& r) {
            {
              std::lock_guard<std::mutex> lock(job->m);
              job->done = true;
              job->result = r;
            }
            job->cv.notify_all();
            {
              std::lock_guard<std::mutex> lock(jobs_mutex);
              jobs.erase(job);
            }
            jobs_cv.notify_all();
          },
          [job](int64_t, int64_t) {
            {
              std::lock_guard<std::mutex> lock(job->m);
              job->progressed = true;
            }
            job->cv.notify_all();
          });
    } catch (const dsv4::Error& e) {
      forget(job);
      throw ApiError(400, e.what(), "invalid_request_error", "messages",
                     std::string(e.what()).find("context") != std::string::npos ? "context_length_exceeded" : "");
    }
    if (!ok) {
      forget(job);
      throw ApiError(503, "Server overloaded: the request queue is full, retry later", "server_error", "",
                     "server_overloaded");
    }
    if (shutting_down) job->cancel->store(true);  // raced with shutdown(): end it right away
    return job;
  }

  void forget(const std::shared_ptr<Job>& job) {
    std::lock_guard<std::mutex> lock(jobs_mutex);
    jobs.erase(job);
  }

  // Waits up to wait_s for tokens, progress or the end; takes what arrived. Returns true once the
  // generation is over (`result` filled).
  static bool take(Job& job, double wait_s, std::deque<TokenEvent>& tokens, bool& progressed,
                   GenerationResult& result) {
    std::unique_lock<std::mutex> lock(job.m);
    job.cv.wait_for(lock, std::chrono::duration<double>(wait_s),
                    [&] { return !job.tokens.empty() || job.done || job.progressed; });
    tokens.swap(job.tokens);
    progressed = std::exchange(job.progressed, false);
    if (job.done) result = job.result;
    return job.done;
  }

  // One step of draining a job into the pipeline. Returns true once the generation is over.
  static bool drain(Job& job, CompletionPipeline& pipe, const text::Tokenizer& tok, double wait_s,
                    std::vector<text::OutputEvent>& out, bool& progressed, GenerationResult& result) {
    std::deque<TokenEvent> tokens;
    const bool done = take(job, wait_s, tokens, progressed, result);
    for (const auto& t : tokens) {
      pipe.feed_token(t, &tok, out);
      // EOS / end of the tool-call block / a stop string: nothing more will be shown.
      if (pipe.should_stop()) job.cancel->store(true);
    }
    if (done) pipe.finish(out);
    return done;
  }

  static Usage usage_of(const GenerationResult& r, int64_t prompt_tokens, const CompletionPipeline& pipe) {
    Usage u;
    u.prompt_tokens = r.stats.prompt_tokens > 0 ? r.stats.prompt_tokens : static_cast<int>(prompt_tokens);
    u.cached_tokens = std::min(r.stats.cached_tokens, u.prompt_tokens);
    u.completion_tokens = r.stats.completion_tokens;
    u.reasoning_tokens = std::min(pipe.reasoning_tokens(), u.completion_tokens);
    return u;
  }

  PipelineOptions pipeline_options(const CanonicalRequest& creq, const PreparedPrompt& p, Surface surface) {
    PipelineOptions o;
    o.start = p.opens_thinking ? text::OutputStart::kReasoning : text::OutputStart::kContent;
    o.stop = creq.stop;
    o.tool_schemas = creq.tool_schemas;
    o.tools_allowed = creq.tools_allowed;
    o.unclosed_reasoning_as_content = api.unclosed_reasoning_as_content;
    o.tool_id_prefix = surface == Surface::kOpenAI ? "call_" : "toolu_";
    o.indexed_tool_ids = surface == Surface::kOpenAI;
    if (auto id = engine.tokenizer().token_id(text::tokens::kThinkEnd)) o.think_end_id = *id;
    o.logprobs = creq.top_logprobs >= 0;
    return o;
  }

  // Shared by both surfaces. `respond` builds the non-streaming body; `writer` the stream.
  void generate(const httplib::Request& req, httplib::Response& res, const CanonicalRequest& creq, Surface surface,
                std::function<Json(const text::ParsedMessage&, const Outcome&, const std::vector<Json>*)> respond,
                std::unique_ptr<StreamWriter> writer) {
    Started s = start(creq, req);
    auto pipe = std::make_shared<CompletionPipeline>(pipeline_options(creq, s.prompt, surface));
    LogInfo log;
    log.method = req.method;
    log.path = req.path;

    if (!creq.stream) {
      text::MessageAssembler assembler;
      std::vector<Json> logprobs;
      GenerationResult result;
      std::vector<text::OutputEvent> events;
      bool progressed = false;
      for (;;) {
        events.clear();
        const bool done = drain(*s.job, *pipe, engine.tokenizer(), 1.0, events, progressed, result);
        assembler.apply(events);
        for (auto& l : pipe->take_logprobs()) logprobs.push_back(std::move(l));
        if (done) break;
      }
      if (result.cause == FinishCause::kError)
        throw ApiError(500, "generation failed: " + result.error, "internal_error");
      Outcome outcome;
      outcome.finish_reason = pipe->finish_reason();
      outcome.stop_sequence = pipe->matched_stop();
      outcome.usage = usage_of(result, s.prompt_tokens, *pipe);
      res.set_content(dump(respond(assembler.message(), outcome, creq.top_logprobs >= 0 ? &logprobs : nullptr)),
                      "application/json");
      tl_deferred_log = true;
      log.finished(outcome.usage, result.stats, outcome.finish_reason);
      log_line(log);
      return;
    }

    // Streaming: the provider runs on this worker thread after the handler returns, once per write.
    struct Stream {
      std::shared_ptr<Job> job;
      std::shared_ptr<CompletionPipeline> pipe;
      std::unique_ptr<StreamWriter> writer;
      int64_t prompt_tokens = 0;
      bool begun = false, ended = false;
      Clock::time_point last_write = Clock::now();
      LogInfo log;
      bool logged = false;
      std::shared_ptr<void> active;  // counts this stream in active_streams while it lives
    };
    auto st = std::make_shared<Stream>();
    {
      std::lock_guard<std::mutex> lock(jobs_mutex);
      ++active_streams;
    }
    st->active = std::shared_ptr<void>(nullptr, [this](void*) {
      {
        std::lock_guard<std::mutex> lock(jobs_mutex);
        --active_streams;
      }
      jobs_cv.notify_all();
    });
    st->job = s.job;
    st->pipe = pipe;
    st->writer = std::move(writer);
    st->prompt_tokens = s.prompt_tokens;
    st->log = log;
    tl_deferred_log = true;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    const double keepalive = http.keepalive_seconds;
    const text::Tokenizer& tok = engine.tokenizer();
    res.set_chunked_content_provider(
        "text/event-stream",
        [st, keepalive, &tok](size_t, httplib::DataSink& sink) -> bool {
          auto write = [&](const std::string& bytes) {
            if (bytes.empty()) return true;  // an empty write would end httplib's chunk loop
            st->last_write = Clock::now();
            return sink.write(bytes.data(), bytes.size());
          };
          if (!st->begun) {
            st->begun = true;
            Usage u;
            u.prompt_tokens = static_cast<int>(st->prompt_tokens);
            if (!write(st->writer->begin(u))) {
              st->job->cancel->store(true);
              return false;
            }
            return true;
          }
          std::vector<text::OutputEvent> events;
          bool progressed = false;
          GenerationResult result;
          const bool done = drain(*st->job, *st->pipe, tok, 0.5, events, progressed, result);
          std::string out = st->writer->events(events, st->pipe->take_logprobs());
          // Keep-alives only while prefill really advances, so idle watchdogs still work.
          if (out.empty() && progressed && seconds_since(st->last_write) >= keepalive) out = st->writer->keepalive();
          if (done) {
            if (result.cause == FinishCause::kError) {
              out += st->writer->error(ApiError(500, "generation failed: " + result.error, "internal_error"));
              st->log.status = 500;
            } else {
              Outcome o;
              o.finish_reason = st->pipe->finish_reason();
              o.stop_sequence = st->pipe->matched_stop();
              o.usage = usage_of(result, st->prompt_tokens, *st->pipe);
              out += st->writer->end(o);
              st->log.finished(o.usage, result.stats, o.finish_reason);
              // Cancelled by us because the answer was complete is a normal end, not worth noting.
              if (result.cause == FinishCause::kCancelled && !st->pipe->should_stop()) st->log.note += " (cancelled)";
            }
          }
          if (!write(out)) {
            st->job->cancel->store(true);  // client went away: stop generating
            return false;
          }
          if (done) {
            st->ended = true;
            sink.done();
            if (!st->logged) {
              st->logged = true;
              log_line(st->log);
            }
          }
          return true;
        },
        [st](bool success) {
          if (!success || !st->ended) {
            st->job->cancel->store(true);
            if (!st->logged) {
              st->logged = true;
              st->log.status = 499;
              st->log.note = "client disconnected";
              log_line(st->log);
            }
          }
        });
  }

  // FIM / text completion (/completions): no thinking, no tools; EOS and stop strings end it.
  void complete(const httplib::Request& req, httplib::Response& res, const FimRequest& freq) {
    check_not_shutting_down();
    const int32_t eos = engine.config().eos_token_id;
    GenerationRequest g = make_fim_generation_request(freq, render_fim_prompt(freq, engine.tokenizer()), api,
                                                      engine.max_context(), eos);
    const int64_t prompt_tokens = static_cast<int64_t>(g.prompt.size());
    std::vector<int32_t> stop_ids = g.stop_ids;
    auto job = submit(std::move(g), req);
    auto pipe = std::make_shared<TextPipeline>(freq.stop, stop_ids,
                                               freq.logprobs >= 0 ? &engine.tokenizer() : nullptr);
    const std::string id = "cmpl-" + random_hex(32);
    const int64_t now = static_cast<int64_t>(std::time(nullptr));
    auto usage = [prompt_tokens](const GenerationResult& r) {
      Usage u;
      u.prompt_tokens = r.stats.prompt_tokens > 0 ? r.stats.prompt_tokens : static_cast<int>(prompt_tokens);
      u.cached_tokens = std::min(r.stats.cached_tokens, u.prompt_tokens);
      u.completion_tokens = r.stats.completion_tokens;
      return u;
    };
    // Feeds what arrived; returns the released text and whether generation is over.
    auto step = [job, pipe](double wait_s, std::string& text, bool& progressed, GenerationResult& result) {
      std::deque<TokenEvent> tokens;
      const bool done = take(*job, wait_s, tokens, progressed, result);
      for (const auto& t : tokens) {
        text += pipe->feed_token(t);
        if (pipe->should_stop()) job->cancel->store(true);  // EOS / stop string: nothing more is shown
      }
      if (done) text += pipe->finish();
      return done;
    };
    LogInfo log;
    log.method = req.method;
    log.path = req.path;
    tl_deferred_log = true;

    if (!freq.stream) {
      std::string text = freq.echo ? freq.prompt : std::string();
      GenerationResult result;
      bool progressed = false;
      while (!step(1.0, text, progressed, result)) {
      }
      if (result.cause == FinishCause::kError) {
        tl_deferred_log = false;
        throw ApiError(500, "generation failed: " + result.error, "internal_error");
      }
      Outcome o;
      o.finish_reason = pipe->finish_reason();
      o.usage = usage(result);
      res.set_content(dump(fim_response(id, freq.model.id, now, api.system_fingerprint, text, o, pipe->take_logprobs())),
                      "application/json");
      log.finished(o.usage, result.stats, o.finish_reason);
      log_line(log);
      return;
    }

    struct Stream {
      Stream(std::shared_ptr<Job> j, FimStream w) : job(std::move(j)), writer(std::move(w)) {}
      std::shared_ptr<Job> job;
      FimStream writer;
      bool begun = false, ended = false, logged = false;
      Clock::time_point last_write = Clock::now();
      LogInfo log;
      std::shared_ptr<void> active;
    };
    auto st = std::make_shared<Stream>(job, FimStream(id, freq.model.id, now, api.system_fingerprint));
    st->log = log;
    {
      std::lock_guard<std::mutex> lock(jobs_mutex);
      ++active_streams;
    }
    st->active = std::shared_ptr<void>(nullptr, [this](void*) {
      {
        std::lock_guard<std::mutex> lock(jobs_mutex);
        --active_streams;
      }
      jobs_cv.notify_all();
    });
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    const double keepalive = http.keepalive_seconds;
    const std::string echo = freq.echo ? freq.prompt : std::string();
    res.set_chunked_content_provider(
        "text/event-stream",
        [st, keepalive, step, usage, pipe, echo](size_t, httplib::DataSink& sink) -> bool {
          auto write = [&](const std::string& bytes) {
            if (bytes.empty()) return true;  // an empty write would end httplib's chunk loop
            st->last_write = Clock::now();
            return sink.write(bytes.data(), bytes.size());
          };
          std::string out;
          if (!st->begun) {
            st->begun = true;
            out = st->writer.text(echo);
          }
          std::string text;
          bool progressed = false;
          GenerationResult result;
          const bool done = step(0.5, text, progressed, result);
          out += st->writer.text(text, pipe->take_logprobs());
          if (out.empty() && progressed && seconds_since(st->last_write) >= keepalive) out = st->writer.keepalive();
          if (done) {
            if (result.cause == FinishCause::kError) {
              out += st->writer.error(ApiError(500, "generation failed: " + result.error, "internal_error"));
              st->log.status = 500;
            } else {
              Outcome o;
              o.finish_reason = pipe->finish_reason();
              o.usage = usage(result);
              out += st->writer.end(o);
              st->log.finished(o.usage, result.stats, o.finish_reason);
            }
          }
          if (!write(out)) {
            st->job->cancel->store(true);
            return false;
          }
          if (done) {
            st->ended = true;
            sink.done();
            if (!std::exchange(st->logged, true)) log_line(st->log);
          }
          return true;
        },
        [st](bool success) {
          if (!success || !st->ended) {
            st->job->cancel->store(true);
            if (!std::exchange(st->logged, true)) {
              st->log.status = 499;
              st->log.note = "client disconnected";
              log_line(st->log);
            }
          }
        });
  }

  // ------------------------------------------------------------ routes

  void routes() {
    auto health = guarded([this](const httplib::Request&, httplib::Response& res) {
      Json j{{"status", shutting_down ? "shutting_down" : "ok"},
             {"model", listed_models(api).front()},
             {"queued", engine.queued()},
             {"busy", engine.busy()}};
      res.status = shutting_down ? 503 : 200;
      res.set_content(dump(j), "application/json");
    });
    svr.Get("/health", health);
    svr.Get("/v1/health", health);

    auto models = guarded([this](const httplib::Request& req, httplib::Response& res) {
      check_auth(req);
      res.set_content(dump(openai_models_list(api, created, engine.max_context())), "application/json");
    });
    svr.Get("/v1/models", models);
    svr.Get("/models", models);
    auto model = guarded([this](const httplib::Request& req, httplib::Response& res) {
      check_auth(req);
      const std::string id = req.matches[1];
      for (const auto& n : listed_models(api))
        if (n == id) {
          res.set_content(dump(openai_model_entry(n, created, engine.max_context(), api.max_tokens_limit)),
                          "application/json");
          return;
        }
      throw ApiError(404, "The model `" + id + "` does not exist", "invalid_request_error", "model", "model_not_found");
    });
    svr.Get(R"(/v1/models/([^/]+))", model);
    svr.Get(R"(/models/([^/]+))", model);

    svr.Get("/user/balance", guarded([this](const httplib::Request& req, httplib::Response& res) {
      check_auth(req);
      res.set_content(R"({"is_available": true, "balance_infos": [{"currency": "USD", "total_balance": "0.00", )"
                      R"("granted_balance": "0.00", "topped_up_balance": "0.00"}]})",
                      "application/json");
    }));

    auto chat = guarded([this](const httplib::Request& req, httplib::Response& res) {
      check_auth(req);
      const CanonicalRequest creq = parse_openai_chat(parse_body(req), api);
      const std::string id = random_hex(32);
      const std::string model = creq.model.id;
      const int64_t now = static_cast<int64_t>(std::time(nullptr));
      const bool thinking = creq.thinking;
      const std::string fp = api.system_fingerprint;
      generate(
          req, res, creq, Surface::kOpenAI,
          [=](const text::ParsedMessage& m, const Outcome& o, const std::vector<Json>* lp) {
            return openai_chat_response(id, model, now, fp, thinking, m, o, lp);
          },
          std::make_unique<OpenAIStream>(id, model, now, fp, thinking));
    });
    svr.Post("/v1/chat/completions", chat);
    svr.Post("/chat/completions", chat);
    svr.Post("/beta/chat/completions", chat);
    svr.Post("/beta/v1/chat/completions", chat);

    auto messages = guarded([this](const httplib::Request& req, httplib::Response& res) {
      check_auth(req);
      const CanonicalRequest creq = parse_anthropic_messages(parse_body(req), api);
      const std::string id = "msg_" + random_alnum(24);
      const std::string model = creq.requested_model;  // Anthropic clients see the name they asked for
      generate(
          req, res, creq, Surface::kAnthropic,
          [=](const text::ParsedMessage& m, const Outcome& o, const std::vector<Json>*) {
            return anthropic_response(id, model, m, o);
          },
          std::make_unique<AnthropicStream>(id, model));
    });
    svr.Post("/v1/messages", messages);
    svr.Post("/anthropic/v1/messages", messages);

    auto count = guarded([this](const httplib::Request& req, httplib::Response& res) {
      check_auth(req);
      const CanonicalRequest creq = parse_anthropic_messages(parse_body(req), api, true);
      const PreparedPrompt p = prepare_prompt(creq, api, engine.tokenizer());
      res.set_content(dump(Json{{"input_tokens", p.ids.size()}}), "application/json");
    });
    svr.Post("/v1/messages/count_tokens", count);
    svr.Post("/anthropic/v1/messages/count_tokens", count);

    auto fim = guarded([this](const httplib::Request& req, httplib::Response& res) {
      check_auth(req);
      complete(req, res, parse_fim_request(parse_body(req), api));
    });
    svr.Post("/v1/completions", fim);
    svr.Post("/completions", fim);
    svr.Post("/beta/completions", fim);
    svr.Post("/beta/v1/completions", fim);

    // Unrouted paths, oversized bodies and malformed requests get the surface's error object.
    svr.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      std::string msg;
      switch (res.status) {
        case 404: msg = "Not found: " + req.method + " " + req.path; break;
        case 413: msg = "Request body too large (limit " + std::to_string(http.max_body_bytes) + " bytes)"; break;
        case 405: msg = "Method not allowed"; break;
        case 400: msg = "Malformed HTTP request (bad request line, or a header over 8 KiB)"; break;
        default: msg = "HTTP error " + std::to_string(res.status);
      }
      ApiError e(res.status, msg, res.status >= 500 ? "internal_error" : "invalid_request_error");
      send_error(req, res, e);
      return httplib::Server::HandlerResponse::Handled;
    }));
    svr.set_exception_handler([this](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown error";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      send_error(req, res, ApiError(500, "internal error: " + what, "internal_error"));
    });
    svr.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      if (std::exchange(tl_deferred_log, false)) return;
      LogInfo l;
      l.method = req.method;
      l.path = req.path;
      l.status = res.status;
      l.start = Clock::now();
      log_line(l);
    });
  }
};

HttpServer::HttpServer(Engine& engine, ServerOptions api, HttpOptions http)
    : impl_(std::make_unique<Impl>(engine, std::move(api), std::move(http))) {
  Impl& d = *impl_;
  if (d.api.served_names.empty()) d.api.served_names.push_back(default_served_name(engine.config()));
  const int threads = std::max(4, d.http.worker_threads);
  d.svr.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  d.svr.set_payload_max_length(d.http.max_body_bytes);
  d.svr.set_keep_alive_max_count(1000);
  // Idle keep-alive connections hold a worker until this expires, also at shutdown: keep it short.
  d.svr.set_keep_alive_timeout(5);
  d.svr.set_read_timeout(60);
  d.svr.set_write_timeout(60);
  d.svr.set_tcp_nodelay(true);
  d.routes();
}

HttpServer::~HttpServer() { shutdown(); }

void HttpServer::bind() {
  Impl& d = *impl_;
  if (d.http.port == 0) {
    d.bound_port = d.svr.bind_to_any_port(d.http.host);
    if (d.bound_port < 0) throw Error("cannot bind " + d.http.host + " (any port)");
  } else {
    if (!d.svr.bind_to_port(d.http.host, d.http.port))
      throw Error("cannot bind " + d.http.host + ":" + std::to_string(d.http.port) + " (address in use?)");
    d.bound_port = d.http.port;
  }
}

int HttpServer::port() const { return impl_->bound_port; }

void HttpServer::run() { impl_->svr.listen_after_bind(); }

void HttpServer::shutdown() {
  Impl& d = *impl_;
  if (d.shutting_down.exchange(true)) {
    d.svr.stop();
    return;
  }
  {
    // Cancel everything in flight; each stream then ends with its finish chunk / message_stop.
    std::unique_lock<std::mutex> lock(d.jobs_mutex);
    for (const auto& j : d.jobs) j->cancel->store(true);
    d.jobs_cv.wait_for(lock, std::chrono::duration<double>(d.http.shutdown_grace_seconds),
                       [&] { return d.jobs.empty() && d.active_streams == 0; });
  }
  d.svr.stop();
}

}  // namespace dsv4::server
