// Helpers shared by the server API tests (test_api.cpp, test_fim.cpp): options, request bodies,
// error statuses and SSE parsing.
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "server/api_common.h"
#include "text/json_py.h"

namespace api_test {

using dsv4::server::ApiError;
using dsv4::server::Json;

inline dsv4::server::ServerOptions opts() {
  dsv4::server::ServerOptions o;
  o.served_names = {"deepseek-v4-flash"};
  return o;
}

inline Json body(const std::string& s) { return dsv4::text::json_py::parse(s); }

// HTTP status of the ApiError `f` throws (0 = none).
inline int status_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ApiError& e) {
    return e.status;
  }
  return 0;
}

// The `data:` JSON payloads of an SSE byte string (comments and [DONE] skipped).
inline std::vector<Json> sse_data(const std::string& s) {
  std::vector<Json> out;
  std::size_t p = 0;
  while ((p = s.find("data: ", p)) != std::string::npos) {
    std::size_t e = s.find("\n\n", p);
    std::string payload = s.substr(p + 6, e - p - 6);
    if (payload != "[DONE]") out.push_back(Json::parse(payload));
    p = e;
  }
  return out;
}

// The `event:` names of an SSE byte string, in order.
inline std::vector<std::string> sse_events(const std::string& s) {
  std::vector<std::string> out;
  std::size_t p = 0;
  while ((p = s.find("event: ", p)) != std::string::npos) {
    std::size_t e = s.find('\n', p);
    out.push_back(s.substr(p + 7, e - p - 7));
    p = e;
  }
  return out;
}

}  // namespace api_test
