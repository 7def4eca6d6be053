// libFuzzer target for the streaming output parser. Input layout: byte 0 = flags (mode, start,
// unclosed-reasoning option), bytes 1..8 = chunk sizes (cycled), rest = model text (any bytes).
// Checks beyond "does not crash": lenient mode always ends a message, and the coalesced event
// stream and strict verdict are the same for the chunked feed and a single feed.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "text/output_parser.h"

namespace {

using dsv4::text::OutputEvent;
using dsv4::text::OutputParser;
using dsv4::text::OutputParserOptions;

struct Result {
  std::vector<OutputEvent> events;
  bool failed;
  bool ended;
  std::string error;
};

Result run(const OutputParserOptions& o, std::string_view text, const uint8_t* sizes, std::size_t n_sizes) {
  OutputParser p(o);
  Result r;
  std::size_t pos = 0, k = 0;
  while (pos < text.size()) {
    const std::size_t len = n_sizes == 0 ? text.size() : std::max<std::size_t>(1, sizes[k++ % n_sizes]);
    p.feed(text.substr(pos, len), r.events);
    pos += len;
  }
  p.finish(r.events);
  p.finish(r.events);  // idempotent
  r.failed = p.failed();
  r.ended = p.ended();
  r.error = p.error();
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const uint8_t flags = data[0];
  const std::size_t n_sizes = std::min<std::size_t>(8, size - 1);
  const uint8_t* sizes = data + 1;
  const std::string_view text(reinterpret_cast<const char*>(data + 1 + n_sizes), size - 1 - n_sizes);

  OutputParserOptions o;
  o.mode = (flags & 1) ? dsv4::text::ParseMode::kStrict : dsv4::text::ParseMode::kLenient;
  o.start = (flags & 2) ? dsv4::text::OutputStart::kContent : dsv4::text::OutputStart::kReasoning;
  o.unclosed_reasoning_as_content = (flags & 4) != 0;
  o.make_tool_call_id = [](std::size_t i) { return std::to_string(i); };

  const Result whole = run(o, text, nullptr, 0);
  const Result split = run(o, text, sizes, flags & 8 ? 1 : n_sizes);  // flag 8: every chunk sizes[0]
  if (o.mode == dsv4::text::ParseMode::kLenient && (whole.failed || !whole.ended)) std::abort();
  if (whole.failed != split.failed || whole.error != split.error) std::abort();
  if (whole.ended != split.ended) std::abort();
  if (dsv4::text::coalesce(whole.events) != dsv4::text::coalesce(split.events)) std::abort();

  dsv4::text::MessageAssembler a;
  a.apply(whole.events);
  (void)a.message();
  return 0;
}
