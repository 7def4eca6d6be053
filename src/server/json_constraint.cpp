#include "server/json_constraint.h"

namespace dsv4::server {

namespace {
bool is_ws(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
int hex_value(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

bool JsonPrefixValidator::feed(std::string_view s) {
  for (char c : s)
    if (!feed(static_cast<unsigned char>(c))) return false;
  return true;
}

bool JsonPrefixValidator::close_container() {
  stack_.pop_back();
  value_done();
  return true;
}

void JsonPrefixValidator::value_done() {
  if (stack_.empty()) {
    mode_ = Mode::kDone;
  } else {
    mode_ = stack_.back() == '{' ? Mode::kObjNext : Mode::kArrNext;
  }
}

bool JsonPrefixValidator::begin_value(unsigned char c) {
  if (mode_ == Mode::kStart && object_only_ && c != '{') return fail();
  switch (c) {
    case '{':
      stack_.push_back('{');
      mode_ = Mode::kObjFirst;
      return true;
    case '[':
      stack_.push_back('[');
      mode_ = Mode::kArrFirst;
      return true;
    case '"':
      mode_ = Mode::kString;
      key_ = false;
      esc_ = 0;
      want_low_ = false;
      utf8_left_ = 0;
      return true;
    case '-':
      mode_ = Mode::kNumber;
      num_ = 0;
      return true;
    case 't':
    case 'f':
    case 'n':
      mode_ = Mode::kLiteral;
      lit_ = c == 't' ? "true" : c == 'f' ? "false" : "null";
      lit_pos_ = 1;
      return true;
    default:
      if (!is_digit(c)) return fail();
      mode_ = Mode::kNumber;
      num_ = c == '0' ? 1 : 2;
      return true;
  }
}

bool JsonPrefixValidator::string_byte(unsigned char c) {
  if (esc_ == 1) {  // after '\'
    if (want_low_) {
      if (c != 'u') return fail();
      esc_ = 2;
      hex_ = 0;
      return true;
    }
    switch (c) {
      case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        esc_ = 0;
        return true;
      case 'u':
        esc_ = 2;
        hex_ = 0;
        return true;
      default:
        return fail();
    }
  }
  if (esc_ >= 2) {  // \uXXXX
    const int h = hex_value(c);
    if (h < 0) return fail();
    hex_ = static_cast<uint16_t>(hex_ * 16 + h);
    if (++esc_ < 6) return true;
    esc_ = 0;
    const bool high = hex_ >= 0xD800 && hex_ <= 0xDBFF, low = hex_ >= 0xDC00 && hex_ <= 0xDFFF;
    if (want_low_) {
      if (!low) return fail();
      want_low_ = false;
    } else if (high) {
      want_low_ = true;
    } else if (low) {
      return fail();  // a lone low surrogate
    }
    return true;
  }
  if (want_low_) {  // a high surrogate must be followed by "\uDC00".."\uDFFF"
    if (c != '\\') return fail();
    esc_ = 1;
    return true;
  }
  if (utf8_left_ > 0) {
    if (c < utf8_lo_ || c > utf8_hi_) return fail();
    --utf8_left_;
    utf8_lo_ = 0x80;
    utf8_hi_ = 0xBF;
    return true;
  }
  if (c == '"') {
    if (key_) {
      mode_ = Mode::kColon;
    } else {
      value_done();
    }
    return true;
  }
  if (c == '\\') {
    esc_ = 1;
    return true;
  }
  if (c < 0x20) return fail();
  if (c < 0x80) return true;
  // UTF-8 lead bytes: no overlong forms, no surrogates, nothing above U+10FFFF.
  if (c >= 0xC2 && c <= 0xDF) {
    utf8_left_ = 1;
  } else if (c == 0xE0) {
    utf8_left_ = 2;
    utf8_lo_ = 0xA0;
  } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
    utf8_left_ = 2;
  } else if (c == 0xED) {
    utf8_left_ = 2;
    utf8_hi_ = 0x9F;
  } else if (c == 0xF0) {
    utf8_left_ = 3;
    utf8_lo_ = 0x90;
  } else if (c >= 0xF1 && c <= 0xF3) {
    utf8_left_ = 3;
  } else if (c == 0xF4) {
    utf8_left_ = 3;
    utf8_hi_ = 0x8F;
  } else {
    return fail();
  }
  return true;
}

bool JsonPrefixValidator::number_byte(unsigned char c) {
  const bool d = is_digit(c), e = c == 'e' || c == 'E';
  switch (num_) {
    case 0:  // after '-'
      if (!d) return fail();
      num_ = c == '0' ? 1 : 2;
      return true;
    case 1:  // a leading '0': no more integer digits
      if (c == '.') return num_ = 3, true;
      if (e) return num_ = 5, true;
      break;
    case 2:
      if (d) return true;
      if (c == '.') return num_ = 3, true;
      if (e) return num_ = 5, true;
      break;
    case 3:  // after '.'
      if (!d) return fail();
      num_ = 4;
      return true;
    case 4:
      if (d) return true;
      if (e) return num_ = 5, true;
      break;
    case 5:  // after 'e'
      if (c == '+' || c == '-') return num_ = 6, true;
      if (!d) return fail();
      num_ = 7;
      return true;
    case 6:  // after the exponent sign
      if (!d) return fail();
      num_ = 7;
      return true;
    default:  // exponent digits
      if (d) return true;
      break;
  }
  // The byte ends a complete number: the enclosing container reads it.
  value_done();
  return feed(c);
}

// A whitespace byte outside strings: accepted unless it exceeds the configured run.
bool JsonPrefixValidator::ws() {
  ++ws_run_;
  const int limit = mode_ == Mode::kStart ? max_leading_ws_ : max_ws_run_;
  if (limit > 0 && ws_run_ > limit) return fail();
  return true;
}

bool JsonPrefixValidator::feed(unsigned char c) {
  if (mode_ != Mode::kString && mode_ != Mode::kNumber && mode_ != Mode::kLiteral && !is_ws(c)) ws_run_ = 0;
  switch (mode_) {
    case Mode::kDone:
    case Mode::kFailed:
      return fail();
    case Mode::kStart:
    case Mode::kValue:
      if (is_ws(c)) return ws();
      return begin_value(c);
    case Mode::kArrFirst:
      if (is_ws(c)) return ws();
      if (c == ']') return close_container();
      return begin_value(c);
    case Mode::kArrNext:
      if (is_ws(c)) return ws();
      if (c == ',') return mode_ = Mode::kValue, true;
      if (c == ']') return close_container();
      return fail();
    case Mode::kObjFirst:
    case Mode::kObjKey:
      if (is_ws(c)) return ws();
      if (c == '"') {
        mode_ = Mode::kString;
        key_ = true;
        esc_ = 0;
        want_low_ = false;
        utf8_left_ = 0;
        return true;
      }
      if (c == '}' && mode_ == Mode::kObjFirst) return close_container();
      return fail();
    case Mode::kColon:
      if (is_ws(c)) return ws();
      if (c == ':') return mode_ = Mode::kValue, true;
      return fail();
    case Mode::kObjNext:
      if (is_ws(c)) return ws();
      if (c == ',') return mode_ = Mode::kObjKey, true;
      if (c == '}') return close_container();
      return fail();
    case Mode::kString:
      return string_byte(c);
    case Mode::kNumber:
      return number_byte(c);
    case Mode::kLiteral:
      if (c != static_cast<unsigned char>(lit_[lit_pos_])) return fail();
      if (lit_[++lit_pos_] == '\0') value_done();
      return true;
  }
  return fail();
}

}  // namespace dsv4::server
