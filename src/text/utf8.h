// UTF-8 helpers shared by the text layer: validation, code-point decoding/encoding, lossy repair
// (each maximal invalid subsequence -> one U+FFFD, the "maximal subpart" rule that Rust's
// String::from_utf8_lossy and the HF tokenizers decoder use) and incomplete-tail detection for streaming.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv4::text::utf8 {

inline constexpr char32_t kReplacement = 0xFFFD;
inline constexpr std::string_view kReplacementUtf8 = "\xEF\xBF\xBD";

// Result of decoding at one position. len > 0: a valid sequence of `len` bytes encoding `cp`.
// len < 0: invalid; -len bytes (1..3) form the maximal invalid subpart to replace with one U+FFFD.
// A truncated-but-valid-so-far sequence at the end of the input is reported as invalid with
// `incomplete` set (the caller may wait for more bytes).
struct Decoded {
  char32_t cp;
  int len;
  bool incomplete;
};

// Decodes the sequence starting at s[pos] (pos < s.size()).
inline Decoded decode(std::string_view s, size_t pos);

// Offset of the first byte that is not part of a valid UTF-8 sequence, or s.size() when all is valid.
size_t valid_prefix_length(std::string_view s);
inline bool is_valid(std::string_view s) { return valid_prefix_length(s) == s.size(); }

// Appends the UTF-8 encoding of cp. Surrogates and values above U+10FFFF append U+FFFD.
void append(std::string& out, char32_t cp);

// Number of bytes the sequence starting with this lead byte should have (1..4), 0 for bytes that can
// never start a sequence (continuations, C0, C1, F5..FF).
inline int sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead < 0xC2) return 0;
  if (lead < 0xE0) return 2;
  if (lead < 0xF0) return 3;
  if (lead < 0xF5) return 4;
  return 0;
}

// Appends s to out with every maximal invalid subsequence replaced by one U+FFFD.
void append_lossy(std::string& out, std::string_view s);
inline std::string to_valid_lossy(std::string_view s) {
  std::string out;
  append_lossy(out, s);
  return out;
}

// Length (0..3) of the trailing bytes of s that form a valid but incomplete sequence, i.e. that could
// still become a character when more bytes arrive. A streaming decoder holds these back.
size_t incomplete_suffix_length(std::string_view s);

// Number of code points in valid UTF-8 (invalid subparts count as one each).
size_t count_code_points(std::string_view s);

// ---- inline definitions ----

inline Decoded decode(std::string_view s, size_t pos) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + pos;
  const size_t avail = s.size() - pos;
  const unsigned char b0 = p[0];
  if (b0 < 0x80) return {b0, 1, false};
  const int n = sequence_length(b0);
  if (n == 0) return {kReplacement, -1, false};
  // The second byte's range excludes overlongs (E0, F0), surrogates (ED) and > U+10FFFF (F4).
  unsigned char lo = b0 == 0xE0 ? 0xA0 : b0 == 0xF0 ? 0x90 : 0x80;
  unsigned char hi = b0 == 0xED ? 0x9F : b0 == 0xF4 ? 0x8F : 0xBF;
  char32_t cp = b0 & (0xFF >> (n + 1));
  for (int i = 1; i < n; ++i) {
    if (static_cast<size_t>(i) >= avail) return {kReplacement, -i, true};
    const unsigned char b = p[i];
    if (b < lo || b > hi) return {kReplacement, -i, false};
    cp = (cp << 6) | (b & 0x3F);
    lo = 0x80;
    hi = 0xBF;
  }
  return {cp, n, false};
}

// Decodes one code point of input already known to be valid UTF-8 (no checks); sets len.
inline char32_t decode_valid(const unsigned char* p, int& len) {
  const unsigned char b0 = p[0];
  if (b0 < 0x80) {
    len = 1;
    return b0;
  }
  if (b0 < 0xE0) {
    len = 2;
    return (static_cast<char32_t>(b0 & 0x1F) << 6) | (p[1] & 0x3F);
  }
  if (b0 < 0xF0) {
    len = 3;
    return (static_cast<char32_t>(b0 & 0x0F) << 12) | (static_cast<char32_t>(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
  }
  len = 4;
  return (static_cast<char32_t>(b0 & 0x07) << 18) | (static_cast<char32_t>(p[1] & 0x3F) << 12) |
         (static_cast<char32_t>(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
}

}  // namespace dsv4::text::utf8
