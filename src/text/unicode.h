// Unicode code-point classes for the tokenizer's pre-tokenizer regexes (\p{L} \p{M} \p{N} \p{P}
// \p{S} \s). Data: src/text/unicode_tables.cpp, generated from ICU (see scripts/gen-unicode-tables.sh).
#pragma once
#include <cstdint>

namespace dsv4::text {

enum class CpClass : uint8_t {
  kOther = 0,   // Cc (non-space), Cf, Cs, Co, Cn
  kLetter = 1,  // Lu Ll Lt Lm Lo
  kMark = 2,    // Mn Mc Me
  kNumber = 3,  // Nd Nl No
  kPunct = 4,   // Pc Pd Ps Pe Pi Pf Po
  kSymbol = 5,  // Sm Sc Sk So
  kSpace = 6,   // White_Space property (regex \s)
};

namespace unicode_data {
struct ClassRange {
  uint32_t lo, hi;
  uint8_t cls;
};
extern const char* const kUnicodeVersion;
extern const ClassRange kClassRanges[];
extern const unsigned kClassRangeCount;
}  // namespace unicode_data

namespace detail {
// Two-stage lookup table (256-code-point blocks, identical blocks shared), built once on first use.
struct ClassTable {
  const uint16_t* stage1;  // 0x1100 entries: block index per 256-code-point block
  const uint8_t* stage2;   // blocks of 256 classes
};
const ClassTable& class_table();
extern const uint8_t kAsciiClass[128];
}  // namespace detail

// Class of a code point; anything above U+10FFFF is kOther.
inline CpClass cp_class(uint32_t cp) {
  if (cp < 128) return static_cast<CpClass>(detail::kAsciiClass[cp]);
  if (cp > 0x10FFFF) return CpClass::kOther;
  const detail::ClassTable& t = detail::class_table();
  return static_cast<CpClass>(t.stage2[(static_cast<uint32_t>(t.stage1[cp >> 8]) << 8) | (cp & 0xFF)]);
}

// Same with the table fetched once by the caller (hot loops).
inline CpClass cp_class(const detail::ClassTable& t, uint32_t cp) {
  if (cp < 128) return static_cast<CpClass>(detail::kAsciiClass[cp]);
  if (cp > 0x10FFFF) return CpClass::kOther;
  return static_cast<CpClass>(t.stage2[(static_cast<uint32_t>(t.stage1[cp >> 8]) << 8) | (cp & 0xFF)]);
}

inline const char* unicode_version() { return unicode_data::kUnicodeVersion; }

}  // namespace dsv4::text
