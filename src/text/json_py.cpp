#include "text/json_py.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <locale.h>  // newlocale / strtod_l (glibc)
#include <vector>

namespace dsv4::text::json_py {

// ---------------------------------------------------------------- UTF-8

std::size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  std::size_t i = 0;
  while (i < n) {
    unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;       // overlong
      if (c == 0xED) hi = 0x9F;       // UTF-16 surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;       // overlong
      if (c == 0xF4) hi = 0x8F;       // > U+10FFFF
    } else {
      return i;
    }
    if (i + len > n) return i;
    if (p[i + 1] < lo || p[i + 1] > hi) return i;
    for (std::size_t k = 2; k < len; ++k)
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    i += len;
  }
  return std::string_view::npos;
}

bool is_valid_utf8(std::string_view s) { return find_invalid_utf8(s) == std::string_view::npos; }

// ---------------------------------------------------------------- big ints

Json make_big_int(std::string digits) {
  return Json::binary(std::vector<std::uint8_t>(digits.begin(), digits.end()), kBigIntSubtype);
}

bool is_big_int(const Json& v) {
  return v.is_binary() && v.get_binary().has_subtype() && v.get_binary().subtype() == kBigIntSubtype;
}

// ---------------------------------------------------------------- parse

namespace {

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

double parse_double_c_locale(const std::string& text) {
  // strtod is correctly rounded and gives Python's results on overflow (inf) and underflow
  // (0.0 / subnormal); the explicit C locale keeps '.' as the decimal point.
  static locale_t c_locale = newlocale(LC_ALL_MASK, "C", static_cast<locale_t>(0));
  return strtod_l(text.c_str(), nullptr, c_locale);
}

class Parser {
 public:
  Parser(std::string_view s, const ParseLimits& limits) : s_(s), limits_(limits) {}

  Json run() {
    skip_ws();
    Json v = value(0);
    skip_ws();
    if (i_ != s_.size()) syntax("Extra data");
    return v;
  }

 private:
  [[noreturn]] void syntax(const char* what) const {
    throw SyntaxError(std::string("invalid JSON: ") + what + " at offset " + std::to_string(i_));
  }
  bool at(char c) const { return i_ < s_.size() && s_[i_] == c; }
  bool lit(std::string_view w) const { return s_.substr(i_, w.size()) == w; }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }

  Json value(int depth) {
    if (i_ >= s_.size()) syntax("Expecting value");
    char c = s_[i_];
    switch (c) {
      case '"': return Json(string());
      case '{': return object(depth + 1);
      case '[': return array(depth + 1);
      case 'n':
        if (lit("null")) { i_ += 4; return Json(nullptr); }
        break;
      case 't':
        if (lit("true")) { i_ += 4; return Json(true); }
        break;
      case 'f':
        if (lit("false")) { i_ += 5; return Json(false); }
        break;
      case 'N':
        if (lit("NaN")) { i_ += 3; return Json(std::nan("")); }
        break;
      case 'I':
        if (lit("Infinity")) { i_ += 8; return Json(HUGE_VAL); }
        break;
      default:
        break;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
      if (c == '-' && lit("-Infinity")) { i_ += 9; return Json(-HUGE_VAL); }
      return number();
    }
    syntax("Expecting value");
  }

  void enter(int depth) {
    if (depth > limits_.max_depth)
      throw dsv4::Error("JSON nested deeper than " + std::to_string(limits_.max_depth) + " levels");
  }

  Json object(int depth) {
    enter(depth);
    ++i_;  // '{'
    Json obj = Json::object();
    skip_ws();
    if (at('}')) { ++i_; return obj; }
    for (;;) {
      if (!at('"')) syntax("Expecting property name enclosed in double quotes");
      std::string key = string();
      skip_ws();
      if (!at(':')) syntax("Expecting ':' delimiter");
      ++i_;
      skip_ws();
      Json v = value(depth);
      // ordered_map's operator[] keeps the first position and takes the last value, like dict().
      obj[key] = std::move(v);
      skip_ws();
      if (at(',')) { ++i_; skip_ws(); continue; }
      if (at('}')) { ++i_; return obj; }
      syntax("Expecting ',' delimiter");
    }
  }

  Json array(int depth) {
    enter(depth);
    ++i_;  // '['
    Json arr = Json::array();
    skip_ws();
    if (at(']')) { ++i_; return arr; }
    for (;;) {
      arr.push_back(value(depth));
      skip_ws();
      if (at(',')) { ++i_; skip_ws(); continue; }
      if (at(']')) { ++i_; return arr; }
      syntax("Expecting ',' delimiter");
    }
  }

  int hex4(std::size_t pos) const {
    if (pos + 4 > s_.size()) return -1;
    int v = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      char h = s_[pos + k];
      int d;
      if (h >= '0' && h <= '9') d = h - '0';
      else if (h >= 'a' && h <= 'f') d = h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') d = h - 'A' + 10;
      else return -1;
      v = v * 16 + d;
    }
    return v;
  }

  std::string string() {
    ++i_;  // opening quote
    std::string out;
    for (;;) {
      if (i_ >= s_.size()) syntax("Unterminated string");
      unsigned char c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') { ++i_; return out; }
      if (c < 0x20) syntax("Invalid control character");  // Python's strict mode
      if (c != '\\') { out += static_cast<char>(c); ++i_; continue; }
      ++i_;
      if (i_ >= s_.size()) syntax("Unterminated string");
      char e = s_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          int u = hex4(i_);
          if (u < 0) syntax("Invalid \\uXXXX escape");
          i_ += 4;
          std::uint32_t cp = static_cast<std::uint32_t>(u);
          if (cp >= 0xD800 && cp <= 0xDBFF && lit("\\u")) {
            int lo = hex4(i_ + 2);
            if (lo < 0) { i_ += 2; syntax("Invalid \\uXXXX escape"); }
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (static_cast<std::uint32_t>(lo) - 0xDC00);
              i_ += 6;
            }
          }
          // A lone surrogate is kept, as Python does, in its 3-byte (WTF-8) form: invalid UTF-8
          // that dumps() and the renderer refuse if it ever reaches output (Python could not
          // encode such a prompt either), while a value overwritten by a duplicate key is harmless.
          append_utf8(out, cp);
          break;
        }
        default:
          --i_;
          syntax("Invalid \\escape");
      }
    }
  }

  Json number() {
    const std::size_t start = i_;
    if (at('-')) ++i_;
    if (at('0')) {
      ++i_;
    } else if (i_ < s_.size() && s_[i_] >= '1' && s_[i_] <= '9') {
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    } else {
      i_ = start;
      syntax("Expecting value");
    }
    const std::size_t int_end = i_;
    bool is_float = false;
    // Optional groups count only when complete, as in Python's NUMBER_RE.
    if (at('.') && i_ + 1 < s_.size() && s_[i_ + 1] >= '0' && s_[i_ + 1] <= '9') {
      i_ += 2;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      is_float = true;
    }
    if (at('e') || at('E')) {
      std::size_t j = i_ + 1;
      if (j < s_.size() && (s_[j] == '+' || s_[j] == '-')) ++j;
      if (j < s_.size() && s_[j] >= '0' && s_[j] <= '9') {
        while (j < s_.size() && s_[j] >= '0' && s_[j] <= '9') ++j;
        i_ = j;
        is_float = true;
      }
    }
    std::string_view text = s_.substr(start, i_ - start);
    if (is_float) return Json(parse_double_c_locale(std::string(text)));

    std::string_view digits = s_.substr(start, int_end - start);
    const bool neg = digits[0] == '-';
    if (digits.size() - (neg ? 1 : 0) > limits_.max_int_digits)
      syntax("integer has too many digits");  // CPython raises ValueError: json.loads fails
    std::int64_t i64;
    auto r = std::from_chars(digits.data(), digits.data() + digits.size(), i64);
    if (r.ec == std::errc() && r.ptr == digits.data() + digits.size()) return Json(i64);
    if (!neg) {
      std::uint64_t u64;
      auto ru = std::from_chars(digits.data(), digits.data() + digits.size(), u64);
      if (ru.ec == std::errc() && ru.ptr == digits.data() + digits.size()) return Json(u64);
    }
    return make_big_int(std::string(digits));
  }

  std::string_view s_;
  const ParseLimits& limits_;
  std::size_t i_ = 0;
};

}  // namespace

Json parse(std::string_view text, const ParseLimits& limits) {
  std::size_t bad = find_invalid_utf8(text);
  if (bad != std::string_view::npos)
    throw dsv4::Error("JSON text is not valid UTF-8 (byte offset " + std::to_string(bad) + ")");
  return Parser(text, limits).run();
}

// ---------------------------------------------------------------- dumps

std::string float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  // Shortest round-trip digits in d.ddde±XX form; then lay them out the way repr() does.
  auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string_view sci(buf, static_cast<std::size_t>(r.ptr - buf));
  std::string out;
  if (sci[0] == '-') {
    out += '-';
    sci.remove_prefix(1);
  }
  const std::size_t epos = sci.find('e');
  std::string digits;
  for (char c : sci.substr(0, epos))
    if (c != '.') digits += c;
  int exp10 = 0;
  std::string_view es = sci.substr(epos + 1);
  if (!es.empty() && es[0] == '+') es.remove_prefix(1);
  std::from_chars(es.data(), es.data() + es.size(), exp10);

  if (exp10 < -4 || exp10 >= 16) {
    out += digits[0];
    if (digits.size() > 1) {
      out += '.';
      out.append(digits, 1, std::string::npos);
    }
    out += 'e';
    out += exp10 < 0 ? '-' : '+';
    const int a = exp10 < 0 ? -exp10 : exp10;
    if (a < 10) out += '0';
    out += std::to_string(a);
    return out;
  }
  const int decpt = exp10 + 1;  // digits before the decimal point
  const int nd = static_cast<int>(digits.size());
  if (decpt <= 0) {
    out += "0.";
    out.append(static_cast<std::size_t>(-decpt), '0');
    out += digits;
  } else if (decpt >= nd) {
    out += digits;
    out.append(static_cast<std::size_t>(decpt - nd), '0');
    out += ".0";
  } else {
    out.append(digits, 0, static_cast<std::size_t>(decpt));
    out += '.';
    out.append(digits, static_cast<std::size_t>(decpt), std::string::npos);
  }
  return out;
}

void append_escaped_string(std::string& out, std::string_view s, bool quoted) {
  static constexpr char kHex[] = "0123456789abcdef";
  if (quoted) out += '"';
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xF];
        } else {
          out += ch;  // DEL, '/', U+2028/9 and all non-ASCII stay raw (ensure_ascii=False)
        }
    }
  }
  if (quoted) out += '"';
}

namespace {

void dump_string(std::string& out, const std::string& s) {
  std::size_t bad = find_invalid_utf8(s);
  if (bad != std::string::npos)
    throw dsv4::Error("string is not valid UTF-8 or has a lone surrogate (byte offset " + std::to_string(bad) + ")");
  append_escaped_string(out, s, true);
}

void dump_rec(std::string& out, const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: out += "null"; break;
    case Json::value_t::boolean: out += v.get<bool>() ? "true" : "false"; break;
    case Json::value_t::number_integer: out += std::to_string(v.get<std::int64_t>()); break;
    case Json::value_t::number_unsigned: out += std::to_string(v.get<std::uint64_t>()); break;
    case Json::value_t::number_float: out += float_repr(v.get<double>()); break;
    case Json::value_t::string: dump_string(out, v.get_ref<const std::string&>()); break;
    case Json::value_t::array: {
      out += '[';
      bool first = true;
      for (const auto& e : v) {
        if (!first) out += ", ";
        first = false;
        dump_rec(out, e);
      }
      out += ']';
      break;
    }
    case Json::value_t::object: {
      out += '{';
      bool first = true;
      for (const auto& [k, e] : v.items()) {
        if (!first) out += ", ";
        first = false;
        dump_string(out, k);
        out += ": ";
        dump_rec(out, e);
      }
      out += '}';
      break;
    }
    case Json::value_t::binary:
      if (is_big_int(v)) {
        const auto& b = v.get_binary();
        out.append(b.begin(), b.end());
        break;
      }
      throw dsv4::Error("binary value cannot be serialised as JSON");
    case Json::value_t::discarded:
      throw dsv4::Error("discarded value cannot be serialised as JSON");
  }
}

}  // namespace

void dump_to(std::string& out, const Json& value) { dump_rec(out, value); }

std::string dumps(const Json& value) {
  std::string out;
  dump_rec(out, value);
  return out;
}

bool truthy(const Json& v) {
  switch (v.type()) {
    case Json::value_t::null: return false;
    case Json::value_t::boolean: return v.get<bool>();
    case Json::value_t::number_integer: return v.get<std::int64_t>() != 0;
    case Json::value_t::number_unsigned: return v.get<std::uint64_t>() != 0;
    case Json::value_t::number_float: return v.get<double>() != 0.0;  // NaN is truthy
    case Json::value_t::string: return !v.get_ref<const std::string&>().empty();
    case Json::value_t::array:
    case Json::value_t::object: return !v.empty();
    case Json::value_t::binary: return true;  // big ints are never zero
    case Json::value_t::discarded: return false;
  }
  return false;
}

}  // namespace dsv4::text::json_py
