// libFuzzer target for the tokenizer. The first input byte picks a mode, the rest is the payload:
//   0/1: encode the bytes (parse_special on/off). Invalid UTF-8 must throw dsv4::Error; valid text
//        must round-trip through decode and pre_tokenize must tile it exactly.
//   2:   decode the bytes as little-endian uint16 ids (some out of range): the result is valid
//        UTF-8, equals the StreamDecoder output, and bad ids throw dsv4::Error only.
// Tokenizer: $DSV4_TOKENIZER, else the golden V4 tokenizer.json under DSV4_SHARED_DIR.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

namespace {

const dsv4::text::Tokenizer* g_tok = nullptr;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "fuzz_tokenizer: invariant violated: %s\n", what);
  std::abort();
}

void fuzz_encode(const std::string& text, bool parse_special) {
  const bool valid = dsv4::text::utf8::is_valid(text);
  std::vector<int32_t> ids;
  try {
    ids = g_tok->encode(text, parse_special);
  } catch (const dsv4::Error&) {
    if (valid) die("encode threw on valid UTF-8");
    return;
  }
  if (!valid) die("encode accepted invalid UTF-8");
  if (g_tok->decode(ids) != text) die("decode(encode(text)) != text");
  std::string joined;
  for (std::string_view p : dsv4::text::pre_tokenize(text)) {
    if (p.empty()) die("empty pre-token piece");
    joined += p;
  }
  if (joined != text) die("pre_tokenize pieces do not tile the text");
}

void fuzz_decode(const uint8_t* data, size_t size) {
  std::vector<int32_t> ids;
  bool out_of_range = false;
  for (size_t i = 0; i + 1 < size; i += 2) {
    const int32_t id = static_cast<int32_t>(data[i] | (data[i + 1] << 8)) * 2;  // reaches past the vocab end
    out_of_range |= id >= g_tok->vocab_size();
    ids.push_back(id);
  }
  for (bool skip : {false, true}) {
    std::string text;
    try {
      text = g_tok->decode(ids, skip);
    } catch (const dsv4::Error&) {
      if (!out_of_range) die("decode threw on valid ids");
      continue;
    }
    if (out_of_range && !skip) die("decode accepted an out-of-range id");
    if (!dsv4::text::utf8::is_valid(text)) die("decode produced invalid UTF-8");
    dsv4::text::StreamDecoder sd(*g_tok, skip);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string chunk = sd.push(id);
      if (!dsv4::text::utf8::is_valid(chunk)) die("stream chunk is invalid UTF-8");
      streamed += chunk;
    }
    streamed += sd.finish();
    if (streamed != text) die("StreamDecoder output != decode()");
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* env = std::getenv("DSV4_TOKENIZER");
  const std::string path = env ? env : std::string(DSV4_SHARED_DIR) + "/golden/tokenizer/tokenizer.json";
  static std::unique_ptr<dsv4::text::Tokenizer> tok = dsv4::text::Tokenizer::from_file(path);
  g_tok = tok.get();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 3;
  const std::string payload(reinterpret_cast<const char*>(data + 1), size - 1);
  if (mode == 2) {
    fuzz_decode(data + 1, size - 1);
  } else {
    fuzz_encode(payload, mode == 0);
  }
  return 0;
}
