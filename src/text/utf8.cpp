#include "text/utf8.h"

namespace dsv4::text::utf8 {

size_t valid_prefix_length(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      __builtin_memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const Decoded d = decode(s, i);
    if (d.len < 0) return i;
    i += static_cast<size_t>(d.len);
  }
  return n;
}

void append(std::string& out, char32_t cp) {
  if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) cp = kReplacement;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

void append_lossy(std::string& out, std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const size_t valid = valid_prefix_length(s.substr(i));
    out.append(s.data() + i, valid);
    i += valid;
    if (i >= s.size()) break;
    const Decoded d = decode(s, i);
    out.append(kReplacementUtf8);
    i += static_cast<size_t>(-d.len);
  }
}

size_t incomplete_suffix_length(std::string_view s) {
  // A lead byte at most 3 bytes from the end, followed only by fitting continuation bytes.
  const size_t n = s.size();
  for (size_t k = 1; k <= 3 && k <= n; ++k) {
    const auto b = static_cast<unsigned char>(s[n - k]);
    if (b >= 0x80 && b < 0xC0) continue;  // continuation byte: keep looking for the lead
    const int len = sequence_length(b);
    if (len <= static_cast<int>(k)) return 0;  // ASCII, invalid lead, or already complete
    const Decoded d = decode(s, n - k);
    return d.incomplete ? k : 0;
  }
  return 0;
}

size_t count_code_points(std::string_view s) {
  size_t count = 0;
  for (size_t i = 0; i < s.size(); ++count) {
    const Decoded d = decode(s, i);
    i += static_cast<size_t>(d.len > 0 ? d.len : -d.len);
  }
  return count;
}

}  // namespace dsv4::text::utf8
