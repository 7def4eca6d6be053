// JSON with Python `json` module semantics, as DeepSeek's prompt encoder sees it.
//
// The encoder parses tool-call arguments with json.loads and serialises tool schemas, non-string
// argument values and response_format with json.dumps(ensure_ascii=False). Prompt bytes (and so
// prefix caching and template fidelity) depend on reproducing both exactly:
//   - key order is kept (nlohmann::ordered_json); duplicate keys: first position, last value;
//   - numbers are re-serialised: ints as arbitrary-size decimal, floats as Python repr
//     (1e5 -> 100000.0, 1.50 -> 1.5, 1e16 -> 1e+16, 0.00001 -> 1e-05);
//   - NaN / Infinity / -Infinity are accepted and written back as such;
//   - separators ", " and ": ", non-ASCII kept raw, control characters as lowercase \u00xx.
//
// Integers that fit neither int64 nor uint64 are stored as a binary value with subtype
// kBigIntSubtype holding the decimal digits (nlohmann has no big-int type; binary never comes out
// of JSON text, so the marker is unambiguous). Only dumps() here understands it.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsv4::text::json_py {

using Json = nlohmann::ordered_json;

inline constexpr std::uint64_t kBigIntSubtype = 0x4249;  // "BI"

// Text that Python's json.loads would also reject (the encoder then wraps raw arguments).
// Other dsv4::Error from parse() are our own limits (nesting depth, invalid UTF-8 input).
class SyntaxError : public dsv4::Error {
 public:
  using dsv4::Error::Error;
};

struct ParseLimits {
  int max_depth = 256;          // nesting of arrays/objects
  std::size_t max_int_digits = 4300;  // CPython's default int<->str conversion limit
};

// json.loads(text). Throws SyntaxError for invalid JSON, dsv4::Error for limit violations.
// An unpaired \uD800-\uDFFF escape is kept like Python does, as its 3-byte WTF-8 form: such a
// string is not valid UTF-8, so dumps() and the prompt renderer reject it if it is ever output.
Json parse(std::string_view text, const ParseLimits& limits = {});

// json.dumps(value, ensure_ascii=False). Throws dsv4::Error on invalid UTF-8 in a string.
std::string dumps(const Json& value);
// json.dumps(ensure_ascii=False) escaping of one string (no UTF-8 validation: callers that take
// untrusted bytes validate first); with `quoted` the surrounding quotes are added too.
void append_escaped_string(std::string& out, std::string_view s, bool quoted = true);
void dump_to(std::string& out, const Json& value);

// repr(float): shortest round-trip digits, exponent form when exp < -4 or >= 16.
std::string float_repr(double v);

// Python truthiness of a JSON value (null, false, 0, 0.0, "", [], {} are false).
bool truthy(const Json& value);

Json make_big_int(std::string digits);
bool is_big_int(const Json& value);

// Strict UTF-8 check (no overlongs, no surrogates, <= U+10FFFF).
bool is_valid_utf8(std::string_view s);
// Offset of the first invalid byte, or npos.
std::size_t find_invalid_utf8(std::string_view s);

}  // namespace dsv4::text::json_py
