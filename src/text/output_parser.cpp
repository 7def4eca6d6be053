// Streaming DeepSeek-V4 output parser; see output_parser.h and docs/output-parsing.md.
//
// Design: the unconsumed text sits in one buffer. Each state has a small set of labels (special
// tokens, DSML tags, attribute markers). A scan finds the earliest complete label; text before it is
// payload. Text that could still become a label (a suffix of the buffer that is a proper prefix of
// one) is held back, so the result never depends on how the text was split. This mirrors the
// reference parser, which repeatedly looks for the earliest of a list of stop strings.
#include "text/output_parser.h"

#include <algorithm>
#include <array>
#include <random>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "text/json_py.h"

namespace dsv4::text {

namespace {

constexpr std::string_view kEos = "<｜end▁of▁sentence｜>";
constexpr std::string_view kBos = "<｜begin▁of▁sentence｜>";
constexpr std::string_view kDsmlOpen = "<｜DSML｜";

// ---- UTF-8 repair (the detokenizer guarantees valid UTF-8; this is defence in depth) ----

// Length of the sequence a lead byte starts (0: never a lead byte).
int utf8_len(unsigned char b) {
  if (b < 0x80) return 1;
  if (b < 0xC2) return 0;
  if (b < 0xE0) return 2;
  if (b < 0xF0) return 3;
  if (b < 0xF5) return 4;
  return 0;
}

// Whether `c` may follow lead byte `lead` as continuation number `k` (1-based); excludes overlongs,
// surrogates and code points above U+10FFFF.
bool utf8_cont_ok(unsigned char lead, int k, unsigned char c) {
  if (k == 1) {
    if (lead == 0xE0) return c >= 0xA0 && c <= 0xBF;
    if (lead == 0xED) return c >= 0x80 && c <= 0x9F;
    if (lead == 0xF0) return c >= 0x90 && c <= 0xBF;
    if (lead == 0xF4) return c >= 0x80 && c <= 0x8F;
  }
  return c >= 0x80 && c <= 0xBF;
}

// Appends the valid part of `s` to out, each maximal invalid subpart as U+FFFD. Returns the number
// of trailing bytes that form an incomplete (so far valid) sequence, which are not appended unless
// `final`.
std::size_t append_utf8_lossy(std::string& out, std::string_view s, bool final) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  std::size_t i = 0;
  while (i < s.size()) {
    const auto lead = static_cast<unsigned char>(s[i]);
    const int n = utf8_len(lead);
    if (n == 1) {
      out.push_back(s[i++]);
      continue;
    }
    if (n == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    int k = 1;
    while (k < n && i + k < s.size() && utf8_cont_ok(lead, k, static_cast<unsigned char>(s[i + k]))) ++k;
    if (k == n) {
      out.append(s.substr(i, n));
      i += n;
    } else if (i + k == s.size() && !final) {
      return s.size() - i;  // may still complete
    } else {
      out += kReplacement;
      i += k;
    }
  }
  return 0;
}

// Python's str.isspace() (what `\s` matches in the reference's regexes), for the code point at s[i];
// returns its byte length or 0.
std::size_t py_space_len(std::string_view s, std::size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) return (b >= 0x09 && b <= 0x0D) || (b >= 0x1C && b <= 0x20) ? 1 : 0;
  const int n = utf8_len(b);
  if (n < 2 || i + n > s.size()) return 0;
  char32_t cp = b & (0xFF >> (n + 1));
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  const bool space = cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
                     cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
  return space ? static_cast<std::size_t>(n) : 0;
}

// Index of the first byte where `got` stops being a prefix of `sep` (npos while it still is); the
// error text is cut there so it does not depend on how far the stream had been read.
std::size_t separator_mismatch(std::string_view got, std::string_view sep) {
  for (std::size_t i = 0; i < got.size(); ++i)
    if (i >= sep.size() || got[i] != sep[i]) return i;
  return std::string_view::npos;
}

// `got` up to and including the first mismatching character.
std::string_view cut_at_mismatch(std::string_view got, std::string_view sep) {
  std::size_t i = separator_mismatch(got, sep);
  if (i == std::string_view::npos) return got;
  ++i;
  while (i < got.size() && (static_cast<unsigned char>(got[i]) & 0xC0) == 0x80) ++i;
  return got.substr(0, i);
}

bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

std::string_view trim_ascii(std::string_view s) {
  while (!s.empty() && is_ascii_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_ascii_space(s.back())) s.remove_suffix(1);
  return s;
}

// Reference: re.findall(r'^\s*name="(.*?)">\n$', header, DOTALL). `$` also matches before a final
// newline, which is what lets an argument-less invoke carry its blank line.
bool strict_invoke_name(std::string_view h, std::string& name) {
  std::size_t i = 0;
  while (i < h.size()) {
    const std::size_t n = py_space_len(h, i);
    if (n == 0) break;
    i += n;
  }
  constexpr std::string_view kPrefix = "name=\"";
  if (h.substr(i, kPrefix.size()) != kPrefix) return false;
  std::string_view rest = h.substr(i + kPrefix.size());
  for (std::string_view suffix : {std::string_view("\">\n"), std::string_view("\">\n\n")}) {
    if (rest.size() >= suffix.size() && rest.substr(rest.size() - suffix.size()) == suffix) {
      name = std::string(rest.substr(0, rest.size() - suffix.size()));
      return true;
    }
  }
  return false;
}

// Lenient fallback: `name="NAME"` with any whitespace around and an optional '>'.
bool lenient_invoke_name(std::string_view h, std::string& name) {
  h = trim_ascii(h);
  constexpr std::string_view kPrefix = "name=\"";
  if (h.substr(0, kPrefix.size()) != kPrefix) return false;
  h.remove_prefix(kPrefix.size());
  const std::size_t q = h.find('"');
  if (q == std::string_view::npos) return false;
  std::string_view rest = trim_ascii(h.substr(q + 1));
  if (!rest.empty() && rest != ">") return false;
  name = std::string(h.substr(0, q));
  return true;
}

// Lenient: `>` followed by whitespace is the only filler that may sit between a value's closer and
// the next tag; anything else means the closer text belonged to the value.
bool after_param_filler_ok(std::string_view f) {
  if (f.empty()) return true;
  if (f.front() != '>') return false;
  return std::all_of(f.begin() + 1, f.end(), is_ascii_space);
}

std::string default_tool_call_id() {
  static constexpr std::string_view kAlnum =
      "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) id.push_back(kAlnum[rng() % kAlnum.size()]);
  return id;
}

std::string quote_for_error(std::string_view s) {
  constexpr std::size_t kMax = 200;
  std::string out = "'";
  out.append(s.substr(0, kMax));
  if (s.size() > kMax) out += "...";
  out += "'";
  return out;
}

}  // namespace

// ---- labels ----

struct detail::OutputLabel {
  enum class Act {
    kThinkEnd,      // "</think>"
    kOpener,        // newlines + "<｜DSML｜tool_calls"
    kEos,
    kStray,         // BOS / "<think>" / "</think>" in the wrong place: strict error, lenient drops
    kDsml,          // "｜DSML｜" in reasoning/content: strict error
    kInvoke,
    kBlockClose,
    kParam,
    kInvokeClose,
    kMarkTrue,
    kMarkFalse,
    kCloser,        // "</｜DSML｜parameter" or "<\n/｜DSML｜parameter" (reference strips the '<' / "<\n")
    kCloserBare,    // "/｜DSML｜parameter" without '<': strict error
  };
  std::string_view text;
  Act act;
};

namespace {

using Label = detail::OutputLabel;

const Label kLThinkEnd{"</think>", Label::Act::kThinkEnd};
const Label kLOpen2{"\n\n<｜DSML｜tool_calls", Label::Act::kOpener};
const Label kLOpen1{"\n<｜DSML｜tool_calls", Label::Act::kOpener};
const Label kLOpen0{"<｜DSML｜tool_calls", Label::Act::kOpener};
const Label kLEos{kEos, Label::Act::kEos};
const Label kLBos{kBos, Label::Act::kStray};
const Label kLThinkStart{"<think>", Label::Act::kStray};
const Label kLStrayThinkEnd{"</think>", Label::Act::kStray};
const Label kLDsml{"｜DSML｜", Label::Act::kDsml};
const Label kLInvoke{"<｜DSML｜invoke", Label::Act::kInvoke};
const Label kLBlockClose{"</｜DSML｜tool_calls>", Label::Act::kBlockClose};
const Label kLParam{"<｜DSML｜parameter", Label::Act::kParam};
const Label kLInvokeClose{"</｜DSML｜invoke", Label::Act::kInvokeClose};
const Label kLMarkTrue{"\" string=\"true\">", Label::Act::kMarkTrue};
const Label kLMarkFalse{"\" string=\"false\">", Label::Act::kMarkFalse};
const Label kLCloseLt{"</｜DSML｜parameter", Label::Act::kCloser};
const Label kLCloseLtNl{"<\n/｜DSML｜parameter", Label::Act::kCloser};
const Label kLCloseBare{"/｜DSML｜parameter", Label::Act::kCloserBare};

using LabelSet = std::vector<const Label*>;

}  // namespace

std::vector<const detail::OutputLabel*> const& OutputParser::labels() const {
  // Order breaks ties between labels starting at the same byte (none of these can, but keep the
  // reference's order anyway).
  static const LabelSet kReasoningStrict{&kLThinkEnd, &kLOpen2, &kLEos, &kLBos, &kLThinkStart, &kLDsml};
  static const LabelSet kReasoningLenient{&kLThinkEnd, &kLOpen2, &kLOpen1, &kLOpen0,
                                          &kLEos,      &kLBos,   &kLThinkStart};
  static const LabelSet kContentStrict{&kLEos, &kLOpen2, &kLBos, &kLThinkStart, &kLStrayThinkEnd, &kLDsml};
  static const LabelSet kContentLenient{&kLEos, &kLOpen2,      &kLOpen1,        &kLOpen0,
                                        &kLBos, &kLThinkStart, &kLStrayThinkEnd};
  static const LabelSet kBlockStrict{&kLInvoke, &kLBlockClose};
  static const LabelSet kBlockLenient{&kLInvoke, &kLBlockClose, &kLEos};
  static const LabelSet kInvokeStrict{&kLParam, &kLInvokeClose};
  static const LabelSet kInvokeLenient{&kLParam, &kLInvokeClose, &kLEos};
  static const LabelSet kParamHeaderStrict{&kLMarkTrue, &kLMarkFalse, &kLCloseLt, &kLCloseLtNl, &kLCloseBare};
  static const LabelSet kParamHeaderLenient{&kLMarkTrue, &kLMarkFalse, &kLCloseLt,
                                            &kLCloseLtNl, &kLCloseBare, &kLEos};
  static const LabelSet kParamHeaderBroken{&kLCloseLt, &kLCloseLtNl, &kLCloseBare, &kLEos};
  static const LabelSet kValueStrict{&kLCloseLt, &kLCloseLtNl, &kLCloseBare};
  static const LabelSet kValueLenient{&kLCloseLt, &kLCloseLtNl, &kLCloseBare, &kLEos};
  static const LabelSet kRawInvoke{&kLInvokeClose, &kLEos};
  static const LabelSet kAfterBlock{&kLEos};
  static const LabelSet kNone{};

  const bool s = strict();
  switch (state_) {
    case State::kReasoning: return s ? kReasoningStrict : kReasoningLenient;
    case State::kContent: return s ? kContentStrict : kContentLenient;
    case State::kBlock: return s ? kBlockStrict : kBlockLenient;
    case State::kInvokeHeader:
    case State::kAfterParam: return s ? kInvokeStrict : kInvokeLenient;
    case State::kParamHeader:
      if (s) return kParamHeaderStrict;
      return header_broken_ ? kParamHeaderBroken : kParamHeaderLenient;
    case State::kParamValue: return s ? kValueStrict : kValueLenient;
    case State::kRawInvoke: return kRawInvoke;
    case State::kAfterBlock: return kAfterBlock;
    case State::kDone: return kNone;
  }
  return kNone;
}

// ---- parser core ----

OutputParser::OutputParser(OutputParserOptions options)
    : opt_(std::move(options)),
      state_(opt_.start == OutputStart::kReasoning ? State::kReasoning : State::kContent) {}

std::string_view OutputParser::buffer() const {
  return std::string_view(in_).substr(pos_);
}

void OutputParser::consume(std::size_t n) {
  pos_ += n;
  searched_ = 0;
  if (pos_ == in_.size()) {
    in_.clear();
    pos_ = 0;
  } else if (pos_ >= 4096) {
    in_.erase(0, pos_);
    pos_ = 0;
  }
}

void OutputParser::set_state(State s) {
  state_ = s;
  searched_ = 0;
}

OutputParser::Scan OutputParser::scan() {
  const auto& set = labels();
  const std::string_view buf = buffer();
  std::size_t max_len = 0;
  std::array<bool, 256> first{};
  for (const Label* l : set) {
    max_len = std::max(max_len, l->text.size());
    first[static_cast<unsigned char>(l->text.front())] = true;
  }

  Scan r;
  std::size_t best = std::string_view::npos;
  for (const Label* l : set) {
    const std::size_t p = buf.find(l->text, searched_);
    if (p < best) {
      best = p;
      r.hit = l;
    }
  }
  // Earliest position whose suffix may still grow into a label: text from there on waits.
  // At the end of text nothing can grow any more, but callers still use `hold` to drop a cut tag.
  std::size_t hold = buf.size();
  const std::size_t from = buf.size() >= max_len ? buf.size() - max_len + 1 : 0;
  for (std::size_t p = from; p < buf.size() && hold == buf.size(); ++p) {
    if (!first[static_cast<unsigned char>(buf[p])]) continue;
    const std::string_view tail = buf.substr(p);
    for (const Label* l : set) {
      if (l->text.size() > tail.size() && l->text.substr(0, tail.size()) == tail) {
        hold = p;
        break;
      }
    }
  }
  r.hold = hold;
  if (r.hit != nullptr && (final_ || best < hold)) {
    r.safe = best;
    return r;
  }
  r.hit = nullptr;
  r.safe = final_ ? buf.size() : hold;
  if (max_len > 0 && buf.size() >= max_len) searched_ = buf.size() - max_len + 1;
  return r;
}

void OutputParser::feed(std::string_view delta, std::vector<OutputEvent>& out) {
  if (ended_ || failed_ || final_ || delta.empty()) return;
  std::string_view s = delta;
  std::string joined;
  if (!utf8_tail_.empty()) {
    joined = utf8_tail_ + std::string(delta);
    s = joined;
  }
  const std::size_t keep = append_utf8_lossy(in_, s, false);
  utf8_tail_ = std::string(s.substr(s.size() - keep));
  pump(out);
}

std::vector<OutputEvent> OutputParser::feed(std::string_view delta) {
  std::vector<OutputEvent> out;
  feed(delta, out);
  return out;
}

void OutputParser::finish(std::vector<OutputEvent>& out) {
  if (ended_ || failed_ || final_) return;
  final_ = true;
  if (!utf8_tail_.empty()) {
    append_utf8_lossy(in_, utf8_tail_, true);
    utf8_tail_.clear();
  }
  searched_ = 0;
  pump(out);
  if (!ended_ && !failed_) {
    // Every state decides at the end of text; reaching this is a bug, never a silent success.
    if (strict()) {
      fail("internal error: parser did not resolve the end of text");
    } else {
      end(FinishReason::kLength, out);
    }
  }
}

std::vector<OutputEvent> OutputParser::finish() {
  std::vector<OutputEvent> out;
  finish(out);
  return out;
}

void OutputParser::pump(std::vector<OutputEvent>& out) {
  while (!ended_ && !failed_ && step(out)) {
  }
}

bool OutputParser::step(std::vector<OutputEvent>& out) {
  switch (state_) {
    case State::kReasoning:
    case State::kContent: return step_text(out);
    case State::kBlock: return step_block(out);
    case State::kInvokeHeader: return step_invoke_header(out);
    case State::kParamHeader: return step_param_header(out);
    case State::kParamValue: return step_param_value(out);
    case State::kAfterParam: return step_after_param(out);
    case State::kRawInvoke: return step_raw_invoke(out);
    case State::kAfterBlock: return step_after_block(out);
    case State::kDone: return step_done(out);
  }
  return false;
}

void OutputParser::fail(std::string message) {
  failed_ = true;
  error_ = std::move(message);
}

FinishReason OutputParser::natural_finish() const {
  return calls_complete_ > 0 ? FinishReason::kToolCalls : FinishReason::kStop;
}

void OutputParser::end(FinishReason reason, std::vector<OutputEvent>& out) {
  if (call_open_) {
    OutputEvent e;
    e.type = EventType::kToolCallEnd;
    e.tool_index = calls_begun_ - 1;
    e.tool_complete = false;
    out.push_back(std::move(e));
    call_open_ = false;
  }
  if (!strict() && opt_.unclosed_reasoning_as_content && state_ == State::kReasoning &&
      reason == FinishReason::kStop && !reasoning_.empty()) {
    emit_text(EventType::kContentDelta, reasoning_, out);
  }
  OutputEvent e;
  e.type = EventType::kMessageEnd;
  e.finish = reason;
  out.push_back(std::move(e));
  ended_ = true;
}

void OutputParser::emit_text(EventType type, std::string_view text, std::vector<OutputEvent>& out) {
  if (text.empty()) return;
  if (type == EventType::kReasoningDelta && opt_.unclosed_reasoning_as_content) reasoning_.append(text);
  OutputEvent e;
  e.type = type;
  e.text = std::string(text);
  out.push_back(std::move(e));
}

void OutputParser::emit_args(std::string_view text, std::vector<OutputEvent>& out) {
  if (text.empty()) return;
  OutputEvent e;
  e.type = EventType::kToolCallArguments;
  e.tool_index = calls_begun_ - 1;
  e.text = std::string(text);
  out.push_back(std::move(e));
}

void OutputParser::emit_value(std::string_view raw, std::vector<OutputEvent>& out) {
  if (raw.empty()) return;
  switch (value_kind_) {
    case ValueKind::kString: {
      std::string frag;
      append_json_string(frag, raw, false);
      emit_args(frag, out);
      break;
    }
    case ValueKind::kRaw: emit_args(raw, out); break;
    case ValueKind::kAuto: value_buf_.append(raw); break;
    case ValueKind::kNone: break;
  }
}

// Lenient: text found where only tag separators belong is returned as content, never dropped.
// After markup passed through raw, its closing '>' is part of that markup and stays with it.
void OutputParser::emit_junk(std::string_view filler, std::vector<OutputEvent>& out) {
  if (!filler.empty() && filler.front() == '>') {
    if (raw_tag_open_) emit_text(EventType::kContentDelta, ">", out);
    filler.remove_prefix(1);
  }
  raw_tag_open_ = false;
  emit_text(EventType::kContentDelta, trim_ascii(filler), out);
}

void OutputParser::begin_call(std::string name, std::vector<OutputEvent>& out) {
  OutputEvent e;
  e.type = EventType::kToolCallBegin;
  e.tool_index = calls_begun_;
  e.tool_id = opt_.make_tool_call_id ? opt_.make_tool_call_id(calls_begun_) : default_tool_call_id();
  e.tool_name = std::move(name);
  out.push_back(std::move(e));
  ++calls_begun_;
  call_open_ = true;
  param_keys_.clear();
}

bool OutputParser::begin_param(std::string key, ValueKind kind, std::vector<OutputEvent>& out) {
  if (strict() && std::find(param_keys_.begin(), param_keys_.end(), key) != param_keys_.end()) {
    fail("Duplicate parameter name: " + quote_for_error(key));
    return false;
  }
  std::string frag = param_keys_.empty() ? "{" : ", ";
  append_json_string(frag, key);
  frag += ": ";
  if (kind == ValueKind::kString) frag += '"';
  emit_args(frag, out);
  param_keys_.push_back(std::move(key));
  value_kind_ = kind;
  return true;
}

void OutputParser::close_param(std::vector<OutputEvent>& out) {
  switch (value_kind_) {
    case ValueKind::kString: emit_args("\"", out); break;
    case ValueKind::kAuto: {
      // Missing string="..." attribute: JSON stays JSON, anything else becomes a JSON string.
      std::string key = std::move(value_key_);
      std::string value = std::move(value_buf_);
      begin_param(std::move(key), ValueKind::kAuto, out);
      if (nlohmann::json::accept(value)) {
        emit_args(value, out);
      } else {
        std::string quoted;
        append_json_string(quoted, value);
        emit_args(quoted, out);
      }
      break;
    }
    case ValueKind::kRaw:
    case ValueKind::kNone: break;
  }
  value_kind_ = ValueKind::kNone;
  value_key_.clear();
  value_buf_.clear();
}

void OutputParser::close_call(std::vector<OutputEvent>& out) {
  emit_args(param_keys_.empty() ? "{}" : "}", out);
  OutputEvent e;
  e.type = EventType::kToolCallEnd;
  e.tool_index = calls_begun_ - 1;
  e.tool_complete = true;
  out.push_back(std::move(e));
  ++calls_complete_;
  call_open_ = false;
  param_keys_.clear();
}

// ---- states ----

bool OutputParser::step_text(std::vector<OutputEvent>& out) {
  const bool reasoning = state_ == State::kReasoning;
  const EventType type = reasoning ? EventType::kReasoningDelta : EventType::kContentDelta;
  const Scan s = scan();
  const std::string_view buf = buffer();
  if (s.hit == nullptr) {
    emit_text(type, buf.substr(0, s.hold), out);
    if (!final_) {
      consume(s.hold);
      return false;
    }
    if (strict()) {
      fail(reasoning ? "Invalid thinking format: missing </think>" : "Invalid format: missing EOS token");
      return false;
    }
    // Cut off: a held-back tail is text unless a tool-call block had visibly started.
    const std::string_view held = buf.substr(s.hold);
    if (held.find(kDsmlOpen) == std::string_view::npos) emit_text(type, held, out);
    consume(buf.size());
    end(FinishReason::kLength, out);
    return false;
  }
  emit_text(type, buf.substr(0, s.safe), out);
  consume(s.safe + s.hit->text.size());
  switch (s.hit->act) {
    case Label::Act::kThinkEnd: set_state(State::kContent); return true;
    case Label::Act::kOpener:
      if (reasoning && strict()) {
        fail("Invalid thinking format: missing </think>");
        return false;
      }
      set_state(State::kBlock);
      return true;
    case Label::Act::kEos:
      if (strict()) {
        if (reasoning) {
          fail("Invalid thinking format: missing </think>");
          return false;
        }
        set_state(State::kDone);
        return true;
      }
      end(natural_finish(), out);
      return false;
    case Label::Act::kStray:
    case Label::Act::kDsml:
      if (strict()) {
        fail("Unexpected special token '" + std::string(s.hit->text) + "' in " +
             (reasoning ? "reasoning" : "content"));
        return false;
      }
      return true;  // lenient: control tokens carry no text
    default: break;
  }
  fail("internal error: unexpected label in text");
  return false;
}

bool OutputParser::step_block(std::vector<OutputEvent>& out) {
  const Scan s = scan();
  const std::string_view buf = buffer();
  const std::string_view filler = buf.substr(0, s.safe);
  constexpr std::string_view kSep = ">\n";
  const auto bad_separator = [&](std::string_view got) {
    fail("Tool call format error: expected '>\\n' but got " + quote_for_error(cut_at_mismatch(got, kSep)));
    return false;
  };
  if (strict() && (filler.size() > kSep.size() || kSep.substr(0, filler.size()) != filler))
    return bad_separator(filler);
  if (s.hit == nullptr) {
    if (!final_) return false;
    if (strict()) {
      // The reference accepts text that stops right after a tag here (its loop just ends).
      if (!buf.empty()) {
        if (buf == kSep) {
          fail("Missing special token in tool calls");
          return false;
        }
        return bad_separator(buf);
      }
      end(FinishReason::kLength, out);
      return false;
    }
    emit_junk(buf.substr(0, s.hold), out);  // a partial tag at the very end is dropped
    end(FinishReason::kLength, out);
    return false;
  }
  if (strict() && filler != kSep) return bad_separator(filler);
  if (!strict()) emit_junk(filler, out);
  consume(s.safe + s.hit->text.size());
  switch (s.hit->act) {
    case Label::Act::kInvoke: set_state(State::kInvokeHeader); return true;
    case Label::Act::kBlockClose:
      saw_block_close_ = true;
      if (strict()) {
        set_state(State::kAfterBlock);
        return true;
      }
      end(natural_finish(), out);
      return false;
    case Label::Act::kEos: end(natural_finish(), out); return false;
    default: break;
  }
  fail("internal error: unexpected label in tool-call block");
  return false;
}

bool OutputParser::step_invoke_header(std::vector<OutputEvent>& out) {
  const Scan s = scan();
  const std::string_view buf = buffer();
  std::string name;
  if (s.hit == nullptr) {
    if (!final_) return false;
    if (strict()) {
      // Reference quirk: an invoke header at the very end of the text still counts as a call.
      if (!strict_invoke_name(buf, name)) {
        fail("Tool name format error: " + quote_for_error(buf));
        return false;
      }
      begin_call(std::move(name), out);
      close_call(out);
    }
    end(FinishReason::kLength, out);  // lenient: the partial header is dropped
    return false;
  }
  if (s.hit->act == Label::Act::kEos) {
    end(natural_finish(), out);
    return false;
  }
  const std::string_view header = buf.substr(0, s.safe);
  bool ok = strict_invoke_name(header, name);
  if (!ok && !strict()) ok = lenient_invoke_name(header, name);
  if (!ok) {
    if (strict()) {
      fail("Tool name format error: " + quote_for_error(header));
      return false;
    }
    // Unparseable invoke: passed through verbatim as content.
    emit_text(EventType::kContentDelta, std::string("<｜DSML｜invoke").append(header).append(s.hit->text), out);
    raw_tag_open_ = s.hit->act == Label::Act::kInvokeClose;
    consume(s.safe + s.hit->text.size());
    set_state(s.hit->act == Label::Act::kInvokeClose ? State::kBlock : State::kRawInvoke);
    return true;
  }
  begin_call(std::move(name), out);
  consume(s.safe + s.hit->text.size());
  if (s.hit->act == Label::Act::kInvokeClose) {
    close_call(out);
    set_state(State::kBlock);
  } else {
    header_broken_ = false;
    set_state(State::kParamHeader);
  }
  return true;
}

bool OutputParser::step_param_header(std::vector<OutputEvent>& out) {
  const Scan s = scan();
  const std::string_view buf = buffer();
  if (s.hit == nullptr) {
    if (!final_) return false;
    if (strict()) {
      fail("Parameter format error: " + quote_for_error(buf));
      return false;
    }
    end(FinishReason::kLength, out);
    return false;
  }
  const std::string_view header = buf.substr(0, s.safe);
  switch (s.hit->act) {
    case Label::Act::kEos: end(natural_finish(), out); return false;
    case Label::Act::kMarkTrue:
    case Label::Act::kMarkFalse: {
      // Reference: ^ name="(.*?)" string="(true|false)">(.*?)<$, so the key ends at the first marker.
      constexpr std::string_view kPrefix = " name=\"";
      std::string_view key;
      if (header.substr(0, kPrefix.size()) == kPrefix) {
        key = header.substr(kPrefix.size());
      } else if (!strict()) {
        const std::string_view t = trim_ascii(header);
        if (t.substr(0, kPrefix.size() - 1) == kPrefix.substr(1)) key = t.substr(kPrefix.size() - 1);
        else header_broken_ = true;
      } else {
        fail("Parameter format error: " + quote_for_error(header));
        return false;
      }
      if (header_broken_) {
        set_state(State::kParamHeader);  // rescan for the closer only
        return true;
      }
      const ValueKind kind = s.hit->act == Label::Act::kMarkTrue ? ValueKind::kString : ValueKind::kRaw;
      std::string key_str(key);
      consume(s.safe + s.hit->text.size());
      if (!begin_param(std::move(key_str), kind, out)) return false;
      set_state(State::kParamValue);
      return true;
    }
    case Label::Act::kCloser:
    case Label::Act::kCloserBare: {
      if (strict()) {
        fail("Parameter format error: " + quote_for_error(header));
        return false;
      }
      // No string="true|false": recover name="KEY" ...> VALUE and type the value at the end.
      const std::string_view t = header;
      std::size_t i = 0;
      while (i < t.size() && is_ascii_space(t[i])) ++i;
      constexpr std::string_view kName = "name=\"";
      bool ok = false;
      if (t.substr(i, kName.size()) == kName) {
        const std::size_t q = t.find('"', i + kName.size());
        const std::size_t gt = q == std::string_view::npos ? q : t.find('>', q);
        if (gt != std::string_view::npos) {
          value_key_ = std::string(t.substr(i + kName.size(), q - i - kName.size()));
          value_buf_ = std::string(t.substr(gt + 1));
          ok = true;
        }
      }
      closer_raw_ = std::string(s.hit->text);
      if (ok) {
        value_kind_ = ValueKind::kAuto;
      } else {
        emit_text(EventType::kContentDelta,
                  std::string("<｜DSML｜parameter").append(header).append(s.hit->text), out);
        raw_tag_open_ = true;
        value_kind_ = ValueKind::kNone;
      }
      consume(s.safe + s.hit->text.size());
      set_state(State::kAfterParam);
      return true;
    }
    default: break;
  }
  fail("internal error: unexpected label in parameter header");
  return false;
}

bool OutputParser::step_param_value(std::vector<OutputEvent>& out) {
  const Scan s = scan();
  const std::string_view buf = buffer();
  emit_value(buf.substr(0, s.hit != nullptr ? s.safe : s.hold), out);  // a cut closer is dropped
  if (s.hit == nullptr) {
    consume(s.hold);
    if (!final_) return false;
    if (strict()) {
      fail("Parameter format error: value not closed by </｜DSML｜parameter>");
      return false;
    }
    end(FinishReason::kLength, out);  // the open call is reported incomplete
    return false;
  }
  if (s.hit->act == Label::Act::kEos) {
    consume(s.safe + s.hit->text.size());
    end(natural_finish(), out);
    return false;
  }
  if (s.hit->act == Label::Act::kCloserBare && strict()) {
    fail("Parameter format error: expected '<' before '/｜DSML｜parameter'");
    return false;
  }
  closer_raw_ = std::string(s.hit->text);
  consume(s.safe + s.hit->text.size());
  set_state(State::kAfterParam);
  return true;
}

bool OutputParser::step_after_param(std::vector<OutputEvent>& out) {
  const Scan s = scan();
  const std::string_view buf = buffer();
  // Lenient: a tag cut at the end of text is not evidence that the closer belonged to the value.
  const std::string_view filler = buf.substr(0, s.hit != nullptr || strict() ? s.safe : s.hold);
  constexpr std::string_view kSep = ">\n";
  const auto bad_separator = [&](std::string_view got) {
    fail("Parameter format error: expected '>\\n' but got " + quote_for_error(cut_at_mismatch(got, kSep)));
    return false;
  };
  if (strict()) {
    if (filler.size() > kSep.size() || kSep.substr(0, filler.size()) != filler) return bad_separator(filler);
  } else if (value_kind_ != ValueKind::kNone && !after_param_filler_ok(filler)) {
    // The closer was part of the value (the reference encoder does not escape values).
    emit_value(closer_raw_, out);
    set_state(State::kParamValue);
    return true;
  }
  if (s.hit == nullptr) {
    if (!final_) return false;
    if (strict()) {
      // Reference quirk: a call cut right after a parameter line still parses.
      if (buf != kSep) return bad_separator(buf);
      close_param(out);
      close_call(out);
    }
    end(FinishReason::kLength, out);
    return false;
  }
  if (strict() && filler != kSep) return bad_separator(filler);
  if (s.hit->act == Label::Act::kEos) {
    end(natural_finish(), out);
    return false;
  }
  if (!strict() && value_kind_ == ValueKind::kNone) emit_junk(filler, out);
  close_param(out);
  consume(s.safe + s.hit->text.size());
  if (s.hit->act == Label::Act::kParam) {
    header_broken_ = false;
    set_state(State::kParamHeader);
  } else {
    close_call(out);
    set_state(State::kBlock);
  }
  return true;
}

bool OutputParser::step_raw_invoke(std::vector<OutputEvent>& out) {
  const Scan s = scan();
  const std::string_view buf = buffer();
  emit_text(EventType::kContentDelta, buf.substr(0, s.hit != nullptr ? s.safe : s.hold), out);
  if (s.hit == nullptr) {
    consume(s.hold);
    if (final_) end(FinishReason::kLength, out);
    return false;
  }
  if (s.hit->act == Label::Act::kEos) {
    end(natural_finish(), out);
    return false;
  }
  emit_text(EventType::kContentDelta, s.hit->text, out);
  raw_tag_open_ = true;
  consume(s.safe + s.hit->text.size());
  set_state(State::kBlock);
  return true;
}

bool OutputParser::step_after_block(std::vector<OutputEvent>& out) {
  const Scan s = scan();
  const std::string_view buf = buffer();
  if (s.safe > 0 || (final_ && !buf.empty() && s.hit == nullptr)) {
    fail("Unexpected content after tool calls");
    return false;
  }
  if (s.hit == nullptr) {
    if (final_) end(natural_finish(), out);
    return false;
  }
  consume(s.hit->text.size());
  set_state(State::kDone);
  return true;
}

bool OutputParser::step_done(std::vector<OutputEvent>& out) {
  if (!buffer().empty()) {
    fail("Unexpected content at end");
    return false;
  }
  if (final_) end(natural_finish(), out);
  return false;
}

// ---- helpers ----

OutputStart output_start_for(std::string_view thinking_mode) {
  if (thinking_mode == "thinking") return OutputStart::kReasoning;
  if (thinking_mode == "chat") return OutputStart::kContent;
  throw dsv4::Error("invalid thinking_mode '" + std::string(thinking_mode) + "' (expected thinking or chat)");
}

const char* to_string(FinishReason r) {
  switch (r) {
    case FinishReason::kStop: return "stop";
    case FinishReason::kLength: return "length";
    case FinishReason::kToolCalls: return "tool_calls";
    case FinishReason::kNone: break;
  }
  return "";
}

void append_json_string(std::string& out, std::string_view s, bool quoted) {
  json_py::append_escaped_string(out, s, quoted);
}

void MessageAssembler::apply(const OutputEvent& e) {
  switch (e.type) {
    case EventType::kReasoningDelta: msg_.reasoning_content += e.text; break;
    case EventType::kContentDelta: msg_.content += e.text; break;
    case EventType::kToolCallBegin:
      if (msg_.tool_calls.size() <= e.tool_index) msg_.tool_calls.resize(e.tool_index + 1);
      msg_.tool_calls[e.tool_index].id = e.tool_id;
      msg_.tool_calls[e.tool_index].name = e.tool_name;
      msg_.tool_calls[e.tool_index].complete = false;
      break;
    case EventType::kToolCallArguments:
      if (e.tool_index < msg_.tool_calls.size()) msg_.tool_calls[e.tool_index].arguments += e.text;
      break;
    case EventType::kToolCallEnd:
      if (e.tool_index < msg_.tool_calls.size()) msg_.tool_calls[e.tool_index].complete = e.tool_complete;
      break;
    case EventType::kMessageEnd: msg_.finish_reason = e.finish; break;
  }
}

ParsedMessage parse_completion(std::string_view text, OutputStart start, bool strict,
                               const OutputParserOptions& base) {
  OutputParserOptions opt = base;
  opt.start = start;
  opt.mode = strict ? ParseMode::kStrict : ParseMode::kLenient;
  OutputParser parser(std::move(opt));
  std::vector<OutputEvent> events;
  parser.feed(text, events);
  parser.finish(events);
  if (parser.failed()) throw dsv4::Error("model output rejected: " + parser.error());
  MessageAssembler a;
  a.apply(events);
  return a.message();
}

ParsedMessage parse_completion(std::string_view text, std::string_view thinking_mode, bool strict) {
  return parse_completion(text, output_start_for(thinking_mode), strict);
}

std::vector<OutputEvent> coalesce(const std::vector<OutputEvent>& events) {
  std::vector<OutputEvent> out;
  for (const auto& e : events) {
    const bool mergeable = e.type == EventType::kReasoningDelta || e.type == EventType::kContentDelta ||
                           e.type == EventType::kToolCallArguments;
    if (mergeable && !out.empty() && out.back().type == e.type && out.back().tool_index == e.tool_index) {
      out.back().text += e.text;
    } else {
      out.push_back(e);
    }
  }
  return out;
}

}  // namespace dsv4::text
