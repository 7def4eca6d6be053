// JSON mode (`response_format: {"type": "json_object"}`): an incremental validator that says whether
// a byte string is a prefix of one JSON object (RFC 8259: strings with escapes and surrogate pairs,
// strict UTF-8, numbers, nesting, literals), used by the engine to constrain sampling token by token,
// and by the tool-call pipeline to find value boundaries in streamed arguments.
#pragma once
#include <cstdint>
#include <string_view>
#include <vector>

namespace dsv4::server {

class JsonPrefixValidator {
 public:
  // Where the validator is. Containers are on a stack (depth() of them open).
  enum class Mode : uint8_t {
    kStart,      // before the top-level value (whitespace, then '{' or any value when !object_only)
    kValue,      // a value is expected (after ':' or ',' in an array)
    kObjFirst,   // after '{': key or '}'
    kObjKey,     // after ',' in an object: key
    kColon,      // after a key: ':'
    kObjNext,    // after a member value: ',' or '}'
    kArrFirst,   // after '[': value or ']'
    kArrNext,    // after an element: ',' or ']'
    kString,     // inside a string (key or value)
    kNumber,     // inside a number
    kLiteral,    // inside true / false / null
    kDone,       // the top-level value is complete: no byte is accepted
    kFailed,     // a byte was rejected
  };

  // object_only: the top-level value must be an object (JSON mode); else any value.
  explicit JsonPrefixValidator(bool object_only = true) : object_only_(object_only) {}

  // Generation policy, not JSON validity: at most this many consecutive whitespace bytes outside
  // strings (0 = no limit), so a model cannot pad forever; before the top-level value at most
  // `max_leading_ws`. JSON mode uses 64 / 8.
  void limit_whitespace(int max_run, int max_leading) {
    max_ws_run_ = max_run;
    max_leading_ws_ = max_leading;
  }

  // Consumes one byte; false (and failed()) when the text can no longer be a JSON prefix.
  bool feed(unsigned char c);
  // All bytes; false at the first rejected one.
  bool feed(std::string_view s);

  bool failed() const { return mode_ == Mode::kFailed; }
  // The top-level value is complete (only EOS may follow in JSON mode).
  bool complete() const { return mode_ == Mode::kDone; }
  Mode mode() const { return mode_; }
  int depth() const { return static_cast<int>(stack_.size()); }
  // Inside a string that is an object key.
  bool in_key() const { return mode_ == Mode::kString && key_; }

 private:
  bool fail() {
    mode_ = Mode::kFailed;
    return false;
  }
  bool begin_value(unsigned char c);
  void value_done();
  bool close_container();  // ']' or '}' ends the innermost container
  bool string_byte(unsigned char c);
  bool number_byte(unsigned char c);

  bool ws();

  bool object_only_;
  int max_ws_run_ = 0, max_leading_ws_ = 0;
  int ws_run_ = 0;
  Mode mode_ = Mode::kStart;
  std::vector<char> stack_;  // '{' or '['
  // kString
  bool key_ = false;
  uint8_t esc_ = 0;          // 0 none, 1 after '\', 2..5 hex digits of \u read so far + 1
  uint16_t hex_ = 0;         // \u value being read
  bool want_low_ = false;    // a high surrogate escape was read: "\uDC00".."\uDFFF" must follow
  uint8_t utf8_left_ = 0;    // continuation bytes still expected
  uint8_t utf8_lo_ = 0x80, utf8_hi_ = 0xBF;  // allowed range of the next continuation byte
  // kNumber: 0 after '-', 1 after leading '0', 2 integer digits, 3 after '.', 4 fraction digits,
  // 5 after 'e', 6 after exponent sign, 7 exponent digits
  uint8_t num_ = 0;
  // kLiteral
  const char* lit_ = nullptr;
  uint8_t lit_pos_ = 0;
};

}  // namespace dsv4::server
