// `dsv4 serve`'s HTTP layer: routes (OpenAI + Anthropic surfaces, health, models), auth, SSE
// streaming with keep-alives, cancellation on client disconnect, per-request log lines, graceful
// shutdown. Generation is delegated to server::Engine; one HTTP worker thread per open connection
// waits on its request's token stream, so the listener never blocks on the engine.
#pragma once
#include <memory>
#include <string>

#include "server/api_common.h"
#include "server/engine.h"

namespace dsv4::server {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8000;             // 0: any free port (see HttpServer::port())
  int worker_threads = 64;     // concurrent connections served (streams hold one each)
  std::size_t max_body_bytes = std::size_t{64} << 20;  // larger bodies: 413
  double keepalive_seconds = 5.0;  // SSE keep-alive cadence while prefill progresses
  double shutdown_grace_seconds = 10.0;  // how long in-flight streams get to end cleanly
};

class HttpServer {
 public:
  HttpServer(Engine& engine, ServerOptions api, HttpOptions http);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the listening socket; throws dsv4::Error when it cannot.
  void bind();
  int port() const;
  // Serves until shutdown() (blocks).
  void run();
  // Refuses new generations (503), cancels in-flight ones so their streams end with a finish chunk,
  // waits for them (bounded by shutdown_grace_seconds), then stops the listener. Thread-safe.
  void shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv4::server
