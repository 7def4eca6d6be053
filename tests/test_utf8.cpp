// UTF-8 helpers (src/text/utf8.h) and the Unicode class table (src/text/unicode.h).
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "text/unicode.h"
#include "text/utf8.h"

namespace u8 = dsv4::text::utf8;
using dsv4::text::CpClass;
using dsv4::text::cp_class;

namespace {

const std::string R = "\xEF\xBF\xBD";  // U+FFFD

std::string enc(char32_t cp) {
  std::string s;
  u8::append(s, cp);
  return s;
}

}  // namespace

TEST(Utf8, AppendEncodesAllLengths) {
  EXPECT_EQ(enc(U'A'), "A");
  EXPECT_EQ(enc(0xE9), "\xC3\xA9");
  EXPECT_EQ(enc(0x20AC), "\xE2\x82\xAC");
  EXPECT_EQ(enc(0x1F600), "\xF0\x9F\x98\x80");
  EXPECT_EQ(enc(0x10FFFF), "\xF4\x8F\xBF\xBF");
  EXPECT_EQ(enc(0xD800), R);     // surrogates are not encodable
  EXPECT_EQ(enc(0x110000), R);   // beyond Unicode
}

TEST(Utf8, DecodeValidAndInvalid) {
  auto d = u8::decode("\xF0\x9F\x98\x80", 0);
  EXPECT_EQ(d.cp, 0x1F600u);
  EXPECT_EQ(d.len, 4);
  d = u8::decode("\xC0\x80", 0);  // C0 can never start a sequence
  EXPECT_EQ(d.len, -1);
  d = u8::decode("\xE0\x80\x80", 0);  // overlong: E0 needs A0..BF next
  EXPECT_EQ(d.len, -1);
  d = u8::decode("\xED\xA0\x80", 0);  // surrogate
  EXPECT_EQ(d.len, -1);
  d = u8::decode("\xF4\x90\x80\x80", 0);  // > U+10FFFF
  EXPECT_EQ(d.len, -1);
  d = u8::decode("\xE2\x82", 0);  // truncated at end
  EXPECT_EQ(d.len, -2);
  EXPECT_TRUE(d.incomplete);
  d = u8::decode("\xE2\x82x", 0);  // broken by an ASCII byte
  EXPECT_EQ(d.len, -2);
  EXPECT_FALSE(d.incomplete);
}

TEST(Utf8, Validate) {
  EXPECT_TRUE(u8::is_valid(""));
  EXPECT_TRUE(u8::is_valid("plain ascii text that is longer than eight bytes"));
  EXPECT_TRUE(u8::is_valid("caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\x98\x80"));
  EXPECT_EQ(u8::valid_prefix_length("abcdefghij\x80xyz"), 10u);
  EXPECT_EQ(u8::valid_prefix_length("ab\xC3"), 2u);
  EXPECT_FALSE(u8::is_valid("\xED\xBF\xBF"));
  EXPECT_FALSE(u8::is_valid("\xF5\x80\x80\x80"));
  EXPECT_FALSE(u8::is_valid("\xFF"));
  EXPECT_TRUE(u8::is_valid(std::string("a\0b", 3)));  // NUL is valid UTF-8
}

TEST(Utf8, LossyUsesMaximalSubparts) {
  EXPECT_EQ(u8::to_valid_lossy("ok"), "ok");
  EXPECT_EQ(u8::to_valid_lossy("\xF0\x9F\x98"), R);                 // one truncated sequence
  EXPECT_EQ(u8::to_valid_lossy("\xF0\x9F\x98x"), R + "x");
  EXPECT_EQ(u8::to_valid_lossy("\xC0\x80"), R + R);                // each byte on its own
  EXPECT_EQ(u8::to_valid_lossy("\xED\xA0\x80"), R + R + R);        // surrogate: 3 subparts
  EXPECT_EQ(u8::to_valid_lossy("\xE0\x80\xBF"), R + R + R);        // overlong
  EXPECT_EQ(u8::to_valid_lossy("\xF4\x90\x80\x80"), R + R + R + R);  // > U+10FFFF
  EXPECT_EQ(u8::to_valid_lossy("\xE2\x82\xE2\x82\xAC"), R + "\xE2\x82\xAC");
  EXPECT_EQ(u8::to_valid_lossy("\x80\x80"), R + R);
  EXPECT_EQ(u8::to_valid_lossy("a\xFF" "b"), "a" + R + "b");
}

TEST(Utf8, IncompleteSuffix) {
  EXPECT_EQ(u8::incomplete_suffix_length(""), 0u);
  EXPECT_EQ(u8::incomplete_suffix_length("abc"), 0u);
  EXPECT_EQ(u8::incomplete_suffix_length("a\xF0"), 1u);
  EXPECT_EQ(u8::incomplete_suffix_length("a\xF0\x9F"), 2u);
  EXPECT_EQ(u8::incomplete_suffix_length("a\xF0\x9F\x98"), 3u);
  EXPECT_EQ(u8::incomplete_suffix_length("a\xF0\x9F\x98\x80"), 0u);  // complete
  EXPECT_EQ(u8::incomplete_suffix_length("a\xE2\x82"), 2u);
  EXPECT_EQ(u8::incomplete_suffix_length("a\xC3"), 1u);
  EXPECT_EQ(u8::incomplete_suffix_length("a\xED\xA0"), 0u);  // can never complete: surrogate
  EXPECT_EQ(u8::incomplete_suffix_length("a\xC0"), 0u);      // invalid lead
  EXPECT_EQ(u8::incomplete_suffix_length("a\x80"), 0u);      // stray continuation
}

TEST(Utf8, CountCodePoints) {
  EXPECT_EQ(u8::count_code_points(""), 0u);
  EXPECT_EQ(u8::count_code_points("a\xC3\xA9\xF0\x9F\x98\x80"), 3u);
  EXPECT_EQ(u8::count_code_points("\xC0\x80"), 2u);
}

// Random byte strings: lossy output is valid, and valid input passes through unchanged.
TEST(Utf8, LossyRandomIsAlwaysValid) {
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 20000; ++iter) {
    std::string s(rng() % 12, '\0');
    for (char& c : s) c = static_cast<char>(rng() & 0xFF);
    const std::string out = u8::to_valid_lossy(s);
    ASSERT_TRUE(u8::is_valid(out));
    if (u8::is_valid(s)) {
      ASSERT_EQ(out, s);
    }
  }
}

TEST(Unicode, AsciiFastTableMatchesGeneratedRanges) {
  const auto* r = dsv4::text::unicode_data::kClassRanges;
  for (uint32_t cp = 0; cp < 128; ++cp) {
    unsigned i = 0;
    while (r[i].hi < cp) ++i;
    EXPECT_EQ(static_cast<int>(dsv4::text::detail::kAsciiClass[cp]), static_cast<int>(r[i].cls)) << "U+" << cp;
  }
  // Ranges are sorted, contiguous and cover all of Unicode.
  const unsigned n = dsv4::text::unicode_data::kClassRangeCount;
  EXPECT_EQ(r[0].lo, 0u);
  EXPECT_EQ(r[n - 1].hi, 0x10FFFFu);
  for (unsigned i = 1; i < n; ++i) ASSERT_EQ(r[i].lo, r[i - 1].hi + 1);
}

TEST(Unicode, Classes) {
  EXPECT_EQ(cp_class('a'), CpClass::kLetter);
  EXPECT_EQ(cp_class(0xE9), CpClass::kLetter);     // é
  EXPECT_EQ(cp_class(0x65E5), CpClass::kLetter);   // 日
  EXPECT_EQ(cp_class(0x0301), CpClass::kMark);     // combining acute
  EXPECT_EQ(cp_class(0x0663), CpClass::kNumber);   // Arabic-Indic three
  EXPECT_EQ(cp_class(0x00B2), CpClass::kNumber);   // superscript two (No)
  EXPECT_EQ(cp_class(0x2026), CpClass::kPunct);    // …
  EXPECT_EQ(cp_class(0x2014), CpClass::kPunct);    // —
  EXPECT_EQ(cp_class(0x201C), CpClass::kPunct);    // “
  EXPECT_EQ(cp_class(0xFF01), CpClass::kPunct);    // fullwidth !
  EXPECT_EQ(cp_class(0x1F600), CpClass::kSymbol);  // 😀
  EXPECT_EQ(cp_class(0xFFFD), CpClass::kSymbol);
  EXPECT_EQ(cp_class(0x00A0), CpClass::kSpace);
  EXPECT_EQ(cp_class(0x0085), CpClass::kSpace);
  EXPECT_EQ(cp_class(0x2028), CpClass::kSpace);
  EXPECT_EQ(cp_class(0x3000), CpClass::kSpace);
  EXPECT_EQ(cp_class(0x200B), CpClass::kOther);    // ZWSP is Cf, not White_Space
  EXPECT_EQ(cp_class(0x200D), CpClass::kOther);    // ZWJ
  EXPECT_EQ(cp_class(0xFEFF), CpClass::kOther);    // BOM
  EXPECT_EQ(cp_class(0xE000), CpClass::kOther);    // private use
  EXPECT_EQ(cp_class(0x10FFFF), CpClass::kOther);  // noncharacter
  EXPECT_EQ(cp_class(0x110000), CpClass::kOther);
}
