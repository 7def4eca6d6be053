// Byte-level BPE tokenizer for DeepSeek-V3/V4 tokenizer.json files. See docs/tokenizer.md.
#include "text/tokenizer.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <string>
#include <unordered_map>

#include "core/error.h"
#include "text/unicode.h"
#include "text/utf8.h"

namespace dsv4::text {

namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer: the three Split(Isolated) regexes of the DeepSeek tokenizer.json, hand-coded.
// The loader checks that the file's patterns are exactly these strings.

constexpr std::string_view kSplitDigits = "\\p{N}{1,3}";
constexpr std::string_view kSplitCjk =
    "[\xE4\xB8\x80-\xE9\xBE\xA5\xE3\x81\x80-\xE3\x82\x9F\xE3\x82\xA0-\xE3\x83\xBF]+";  // [一-龥぀-ゟ゠-ヿ]+
constexpr std::string_view kSplitWords =
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+"
    "|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*"
    "|\\s*[\r\n]+"
    "|\\s+(?!\\S)"
    "|\\s+";

inline bool is_lm(CpClass c) { return c == CpClass::kLetter || c == CpClass::kMark; }
inline bool is_ps(CpClass c) { return c == CpClass::kPunct || c == CpClass::kSymbol; }
inline bool is_crlf(uint32_t c) { return c == '\r' || c == '\n'; }
inline bool is_ascii_alpha(uint32_t c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
inline bool is_ascii_punct(uint32_t c) {
  return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') || (c >= '{' && c <= '~');
}
inline bool is_cjk(uint32_t c) {
  return (c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x30FF);
}

// The splitter works on byte offsets of valid UTF-8, decoding on the fly (no per-text buffers).
// Each Split step sees only the piece produced by the previous step, so every scan is bounded by
// its piece's end `e` (this matters for the (?!\S) lookahead and the optional leading char).
class Splitter {
 public:
  explicit Splitter(std::string_view text)
      : s_(reinterpret_cast<const unsigned char*>(text.data())), table_(detail::class_table()) {}

  template <typename Emit>
  void run(size_t b, size_t e, Emit&& emit) {
    // Step 1: \p{N}{1,3}
    size_t gap = b, i = b;
    while (i < e) {
      Ch c = at(i);
      if (c.cls != CpClass::kNumber) {
        i += c.len;
        continue;
      }
      size_t j = i + c.len;
      for (int k = 1; k < 3 && j < e; ++k) {
        const Ch d = at(j);
        if (d.cls != CpClass::kNumber) break;
        j += d.len;
      }
      if (gap < i) step2(gap, i, emit);
      step2(i, j, emit);
      i = gap = j;
    }
    if (gap < e) step2(gap, e, emit);
  }

 private:
  struct Ch {
    uint32_t cp;
    uint32_t len;
    CpClass cls;
  };
  // Hot: force inlining, the call overhead otherwise dominates the splitter.
  [[gnu::always_inline]] Ch at(size_t pos) const {
    const unsigned char b = s_[pos];
    if (b < 0x80) return {b, 1, static_cast<CpClass>(detail::kAsciiClass[b])};
    int len;
    const char32_t cp = utf8::decode_valid(s_ + pos, len);
    return {cp, static_cast<uint32_t>(len), cp_class(table_, cp)};
  }
  // Length of the run of characters satisfying pred starting at pos (bounded by e), in bytes.
  template <typename Pred>
  [[gnu::always_inline]] size_t run_end(size_t pos, size_t e, Pred&& pred) const {
    while (pos < e) {
      const Ch c = at(pos);
      if (!pred(c)) break;
      pos += c.len;
    }
    return pos;
  }

  // Step 2: [一-龥぀-ゟ゠-ヿ]+
  template <typename Emit>
  void step2(size_t b, size_t e, Emit& emit) {
    size_t gap = b, i = b;
    while (i < e) {
      const Ch c = at(i);
      if (!is_cjk(c.cp)) {
        i += c.len;
        continue;
      }
      const size_t j = run_end(i + c.len, e, [](const Ch& d) { return is_cjk(d.cp); });
      if (gap < i) step3(gap, i, emit);
      step3(i, j, emit);  // not always one piece: the kana blocks hold P, S and unassigned code points
      i = gap = j;
    }
    if (gap < e) step3(gap, e, emit);
  }

  // Step 3: the word regex; matches and the gaps between them are pieces.
  template <typename Emit>
  void step3(size_t b, size_t e, Emit& emit) {
    size_t gap = b, i = b;
    while (i < e) {
      size_t len1 = 0;
      const size_t m = match_words(i, e, len1);
      if (m == 0) {
        i += len1;
        continue;
      }
      if (gap < i) emit(gap, i);
      emit(i, m);
      i = gap = m;
    }
    if (gap < e) emit(gap, e);
  }

  // End of the step-3 match at byte i (piece ends at e), or 0 when no alternative matches here;
  // len1 gets the byte length of the character at i. Mirrors backtracking leftmost-first alternation.
  size_t match_words(size_t i, size_t e, size_t& len1) const {
    const Ch c = at(i);
    len1 = c.len;
    const size_t i1 = i + c.len;
    const Ch n = i1 < e ? at(i1) : Ch{0, 0, CpClass::kOther};
    const bool has_next = i1 < e;
    // (a) [ASCII punctuation][A-Za-z]+
    if (c.cp < 128 && is_ascii_punct(c.cp) && has_next && is_ascii_alpha(n.cp)) {
      return run_end(i1, e, [](const Ch& d) { return is_ascii_alpha(d.cp); });
    }
    // (b) [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ : with the optional char first, then without.
    if (!is_crlf(c.cp) && c.cls != CpClass::kLetter && !is_ps(c.cls) && has_next && is_lm(n.cls)) {
      return run_end(i1, e, [](const Ch& d) { return is_lm(d.cls); });
    }
    if (is_lm(c.cls)) return run_end(i1, e, [](const Ch& d) { return is_lm(d.cls); });
    // (c) ' '?[\p{P}\p{S}]+[\r\n]*
    if ((c.cp == ' ' && has_next && is_ps(n.cls)) || is_ps(c.cls)) {
      const size_t j = run_end(i1, e, [](const Ch& d) { return is_ps(d.cls); });
      return run_end(j, e, [](const Ch& d) { return is_crlf(d.cp); });
    }
    if (c.cls != CpClass::kSpace) return 0;
    size_t j = i, last = i, after_last_crlf = 0, count = 0;
    while (j < e) {
      const Ch d = at(j);
      if (d.cls != CpClass::kSpace) break;
      last = j;
      j += d.len;
      ++count;
      if (is_crlf(d.cp)) after_last_crlf = j;
    }
    // (d) \s*[\r\n]+ : backtracking ends the match right after the run's last CR/LF.
    if (after_last_crlf) return after_last_crlf;
    // (e) \s+(?!\S) : the whole run at the end of the piece, else all but its last char (if >= 2).
    if (j == e) return j;
    if (count >= 2) return last;
    // (f) \s+
    return j;
  }

  const unsigned char* s_;
  const detail::ClassTable& table_;
};

// Pieces of `text` (valid UTF-8, no added tokens), in order, as views into text.
template <typename Emit>
void for_each_piece(std::string_view text, Emit&& emit) {
  Splitter sp(text);
  sp.run(0, text.size(), [&](size_t b, size_t e) { emit(text.substr(b, e - b)); });
}

// ---------------------------------------------------------------------------------------------
// Byte-level alphabet (GPT-2 bytes_to_unicode): printable Latin-1 bytes map to themselves, the other
// 68 bytes to U+0100.. in byte order.

struct ByteAlphabet {
  std::array<uint32_t, 256> byte_to_cp{};
  std::array<int16_t, 324> cp_to_byte{};  // all mapped code points are below U+0144; -1 = unmapped
  ByteAlphabet() {
    cp_to_byte.fill(-1);
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      byte_to_cp[b] = printable ? b : next++;
      cp_to_byte[byte_to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet a;
  return a;
}

// Maps a token string from the byte-level alphabet back to raw bytes; false when some character is
// outside the alphabet (then, like the reference ByteLevel decoder, the token is its own UTF-8 text).
bool unmap_byte_level(std::string_view token, std::string& out) {
  const ByteAlphabet& a = byte_alphabet();
  out.clear();
  for (size_t i = 0; i < token.size();) {
    const utf8::Decoded d = utf8::decode(token, i);
    if (d.len <= 0 || d.cp >= a.cp_to_byte.size() || a.cp_to_byte[d.cp] < 0) return false;
    out.push_back(static_cast<char>(a.cp_to_byte[d.cp]));
    i += static_cast<size_t>(d.len);
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Hashing: small open-addressing tables; std::unordered_map is noticeably slower on the hot path.

inline uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

inline uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (s.size() * 0x100000001B3ull);
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = mix64(h ^ w) + 0x9E3779B97F4A7C15ull;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, s.data() + i, s.size() - i);
  return mix64(h ^ tail ^ (static_cast<uint64_t>(s.size() - i) << 56));
}

// uint64 key -> uint64 value; key ~0 is reserved as empty. Key and value share a slot so a probe
// touches one cache line (the merge table is larger than L2).
class U64Map {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots_.assign(cap, Slot{kEmpty, 0});
    mask_ = cap - 1;
    filter_.assign((size_t{1} << kFilterBits) / 64, 0);
  }
  // Returns false when the key was already present (value unchanged).
  bool insert(uint64_t key, uint64_t val) {
    const uint64_t h = mix64(key);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return false;
      if (slots_[i].key == kEmpty) {
        slots_[i] = {key, val};
        filter_[h >> (64 - kFilterBits) >> 6] |= 1ull << ((h >> (64 - kFilterBits)) & 63);
        return true;
      }
    }
  }
  const uint64_t* find(uint64_t key) const {
    const uint64_t h = mix64(key);
    // Most BPE pair lookups miss; a 256 KiB bit filter answers those without touching the table.
    if (!((filter_[h >> (64 - kFilterBits) >> 6] >> ((h >> (64 - kFilterBits)) & 63)) & 1)) return nullptr;
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i].val;
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static constexpr unsigned kFilterBits = 21;
  struct Slot {
    uint64_t key;
    uint64_t val;
  };
  std::vector<Slot> slots_;
  std::vector<uint64_t> filter_;
  size_t mask_ = 0;
};

// Raw token bytes -> id, for whole-piece lookups. Slots keep 32 bits of the hash so most misses
// are rejected without touching the token's bytes.
class BytesMap {
 public:
  void build(const std::vector<std::string>& bytes, const std::vector<uint8_t>& use) {
    size_t n = 0;
    for (uint8_t u : use) n += u;
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    slots_.assign(cap, Slot{-1, 0});
    mask_ = cap - 1;
    bytes_ = &bytes;
    for (size_t id = 0; id < bytes.size(); ++id) {
      if (!use[id]) continue;
      const uint64_t h = hash_bytes(bytes[id]);
      for (size_t i = h & mask_;; i = (i + 1) & mask_) {
        if (slots_[i].id < 0) {
          slots_[i] = {static_cast<int32_t>(id), static_cast<uint32_t>(h >> 32)};
          break;
        }
        if ((*bytes_)[static_cast<size_t>(slots_[i].id)] == bytes[id]) break;  // first id wins
      }
    }
  }
  int32_t find(std::string_view s, uint64_t h) const {
    const auto tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.id < 0) return -1;
      if (slot.tag == tag && (*bytes_)[static_cast<size_t>(slot.id)] == s) return slot.id;
    }
  }

 private:
  struct Slot {
    int32_t id;
    uint32_t tag;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  const std::vector<std::string>* bytes_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Added-token matcher: a byte trie giving the leftmost-longest match.

class TokenTrie {
 public:
  TokenTrie() { nodes_.emplace_back(); }
  void add(std::string_view s, int32_t id) {
    uint32_t n = 0;
    for (unsigned char c : s) {
      auto& kids = nodes_[n].kids;
      auto it = std::lower_bound(kids.begin(), kids.end(), c,
                                 [](const std::pair<uint8_t, uint32_t>& p, uint8_t v) { return p.first < v; });
      if (it != kids.end() && it->first == c) {
        n = it->second;
      } else {
        const auto child = static_cast<uint32_t>(nodes_.size());
        kids.insert(it, {c, child});
        nodes_.emplace_back();
        n = child;
      }
    }
    if (nodes_[n].id < 0) nodes_[n].id = id;
    first_[static_cast<unsigned char>(s[0])] = true;
    empty_ = false;
  }
  bool empty() const { return empty_; }
  // Leftmost-longest match in text[from..]: sets pos/len/id, returns false when none.
  bool find(std::string_view text, size_t from, size_t& pos, size_t& len, int32_t& id) const {
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    for (size_t i = from; i < text.size(); ++i) {
      if (!first_[s[i]]) continue;
      uint32_t n = 0;
      int32_t best = -1;
      size_t best_len = 0;
      for (size_t j = i; j < text.size(); ++j) {
        const auto& kids = nodes_[n].kids;
        auto it = std::lower_bound(kids.begin(), kids.end(), s[j],
                                   [](const std::pair<uint8_t, uint32_t>& p, uint8_t v) { return p.first < v; });
        if (it == kids.end() || it->first != s[j]) break;
        n = it->second;
        if (nodes_[n].id >= 0) {
          best = nodes_[n].id;
          best_len = j + 1 - i;
        }
      }
      if (best >= 0) {
        pos = i;
        len = best_len;
        id = best;
        return true;
      }
    }
    return false;
  }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, uint32_t>> kids;  // sorted by byte
    int32_t id = -1;
  };
  std::vector<Node> nodes_;
  std::array<bool, 256> first_{};
  bool empty_ = true;
};

// ---------------------------------------------------------------------------------------------
// tokenizer.json validation helpers.

[[noreturn]] void fail(const std::string& src, const std::string& what) { throw Error(src + ": " + what); }

const json& member(const json& obj, const char* key, const std::string& src, const std::string& where) {
  if (!obj.is_object()) fail(src, where + " is not a JSON object");
  auto it = obj.find(key);
  if (it == obj.end()) fail(src, where + " has no \"" + key + "\"");
  return *it;
}

bool null_or_empty_string(const json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() || (it->is_string() && it->get_ref<const std::string&>().empty());
}

void check_pre_tokenizer(const json& root, const std::string& src) {
  const json& pt = member(root, "pre_tokenizer", src, "tokenizer.json");
  const std::string unsupported =
      "pre_tokenizer is not the DeepSeek-V3/V4 one (Sequence of 3 Split regexes + ByteLevel) that this "
      "tokenizer implements: ";
  if (!pt.is_object() || pt.value("type", "") != "Sequence") fail(src, unsupported + "type is not Sequence");
  const json& steps = member(pt, "pretokenizers", src, "pre_tokenizer");
  if (!steps.is_array() || steps.size() != 4) fail(src, unsupported + "expected 4 steps");
  const std::string_view patterns[3] = {kSplitDigits, kSplitCjk, kSplitWords};
  for (size_t i = 0; i < 3; ++i) {
    const json& st = steps[i];
    const std::string where = "step " + std::to_string(i + 1);
    if (!st.is_object() || st.value("type", "") != "Split") fail(src, unsupported + where + " is not Split");
    const json& pat = member(st, "pattern", src, "pre_tokenizer " + where);
    if (!pat.is_object() || !pat.contains("Regex") || !pat["Regex"].is_string() ||
        pat["Regex"].get_ref<const std::string&>() != patterns[i]) {
      fail(src, unsupported + where + " has a different regex: " + pat.dump());
    }
    if (st.value("behavior", "") != "Isolated" || st.value("invert", true) != false) {
      fail(src, unsupported + where + " is not behavior Isolated / invert false");
    }
  }
  const json& bl = steps[3];
  if (!bl.is_object() || bl.value("type", "") != "ByteLevel" || bl.value("add_prefix_space", true) != false ||
      bl.value("use_regex", true) != false) {
    fail(src, unsupported + "step 4 is not ByteLevel with add_prefix_space=false, use_regex=false");
  }
}

void check_normalizer_and_decoder(const json& root, const std::string& src) {
  auto nit = root.find("normalizer");
  if (nit != root.end() && !nit->is_null()) {
    const bool empty_seq = nit->is_object() && nit->value("type", "") == "Sequence" &&
                           nit->contains("normalizers") && (*nit)["normalizers"].is_array() &&
                           (*nit)["normalizers"].empty();
    if (!empty_seq) fail(src, "unsupported normalizer (only none / an empty Sequence): " + nit->dump());
  }
  auto dit = root.find("decoder");
  if (dit != root.end() && !dit->is_null() && !(dit->is_object() && dit->value("type", "") == "ByteLevel")) {
    fail(src, "unsupported decoder (only ByteLevel): " + dit->dump());
  }
}

// ---------------------------------------------------------------------------------------------

class BpeTokenizer final : public Tokenizer {
 public:
  BpeTokenizer(const json& root, const std::string& src, const json* config);

  std::vector<int32_t> encode(std::string_view text, bool parse_special) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override;
  std::string token_bytes(int32_t id) const override {
    check_id(id);
    return bytes_[static_cast<size_t>(id)];
  }
  int32_t vocab_size() const override { return static_cast<int32_t>(bytes_.size()); }
  std::optional<int32_t> token_id(std::string_view token) const override {
    auto it = by_string_.find(std::string(token));
    if (it == by_string_.end()) return std::nullopt;
    return it->second;
  }
  bool is_special(int32_t id) const override {
    return id >= 0 && static_cast<size_t>(id) < flags_.size() && (flags_[static_cast<size_t>(id)] & kSpecial);
  }
  bool is_added(int32_t id) const override {
    return id >= 0 && static_cast<size_t>(id) < flags_.size() && (flags_[static_cast<size_t>(id)] & kAdded);
  }
  std::string token_string(int32_t id) const override {
    check_id(id);
    return strings_[static_cast<size_t>(id)];
  }
  std::optional<int32_t> bos_id() const override { return bos_; }
  std::optional<int32_t> eos_id() const override { return eos_; }
  std::optional<int32_t> pad_id() const override { return pad_; }

 private:
  static constexpr uint8_t kAdded = 1, kSpecial = 2, kInVocab = 4;
  static constexpr uint32_t kNoRank = ~0u;
  static constexpr size_t kCacheSlots = size_t{1} << 16;
  static constexpr size_t kCacheLocks = 64;
  static constexpr size_t kCacheMaxPieceBytes = 256;

  void check_id(int32_t id) const {
    if (id < 0 || id >= vocab_size()) {
      throw Error("tokenizer: token id " + std::to_string(id) + " out of range [0, " +
                  std::to_string(vocab_size()) + ")");
    }
  }
  // Merge of the pair (a, b): rank and result id, or false.
  bool lookup_merge(int32_t a, int32_t b, uint32_t& rank, int32_t& merged) const {
    const uint64_t* v = merges_.find((static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b));
    if (!v) return false;
    rank = static_cast<uint32_t>(*v >> 32);
    merged = static_cast<int32_t>(static_cast<uint32_t>(*v));
    return true;
  }
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;
  void bpe_small(std::string_view piece, std::vector<int32_t>& out) const;
  void bpe_large(std::string_view piece, std::vector<int32_t>& out) const;
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  void encode_text(std::string_view text, std::vector<int32_t>& out) const;

  std::string src_;
  std::vector<std::string> bytes_;    // raw bytes per id
  std::vector<std::string> strings_;  // token string as in the file
  std::vector<uint8_t> flags_;
  std::unordered_map<std::string, int32_t> by_string_;
  std::array<int32_t, 256> byte_id_{};
  U64Map merges_;
  BytesMap whole_;  // BPE vocab by raw bytes, for the single-token fast path
  // Whether BPE of a vocab token's own bytes gives back that single token (0 unknown, 1 yes, 2 no);
  // filled lazily, so the fast path never disagrees with real BPE.
  mutable std::unique_ptr<std::atomic<uint8_t>[]> whole_ok_;
  TokenTrie added_raw_;   // added tokens with normalized=false: matched first
  TokenTrie added_norm_;  // normalized=true: matched in what is left (empty normalizer: same text)
  std::optional<int32_t> bos_, eos_, pad_;

  // Piece cache: direct-mapped by hash, overwritten on collision (bounded memory, no rehashing, no
  // allocation once warm); slots are guarded by a striped set of mutexes.
  struct CacheSlot {
    uint64_t hash = 0;
    std::string key;
    std::vector<int32_t> ids;
  };
  mutable std::unique_ptr<CacheSlot[]> cache_ = std::make_unique<CacheSlot[]>(kCacheSlots);
  mutable std::array<std::mutex, kCacheLocks> cache_locks_;
};

BpeTokenizer::BpeTokenizer(const json& root, const std::string& src, const json* config) : src_(src) {
  if (!root.is_object()) fail(src, "top level is not a JSON object");
  check_normalizer_and_decoder(root, src);
  check_pre_tokenizer(root, src);
  const json& model = member(root, "model", src, "tokenizer.json");
  if (model.value("type", "BPE") != "BPE") fail(src, "model.type is not BPE");
  if (model.contains("byte_fallback") && model["byte_fallback"] == true) fail(src, "model.byte_fallback=true is unsupported");
  if (model.contains("dropout") && !model["dropout"].is_null()) fail(src, "model.dropout is unsupported");
  if (model.contains("ignore_merges") && model["ignore_merges"] == true) fail(src, "model.ignore_merges=true is unsupported");
  if (!null_or_empty_string(model, "continuing_subword_prefix") || !null_or_empty_string(model, "end_of_word_suffix")) {
    fail(src, "model.continuing_subword_prefix / end_of_word_suffix are unsupported");
  }
  const json& vocab = member(model, "vocab", src, "model");
  const json& merges = member(model, "merges", src, "model");
  if (!vocab.is_object() || vocab.empty()) fail(src, "model.vocab is not a non-empty object");
  if (!merges.is_array()) fail(src, "model.merges is not an array");
  const json empty_array = json::array();
  const json* added = &empty_array;
  if (auto it = root.find("added_tokens"); it != root.end() && !it->is_null()) {
    if (!it->is_array()) fail(src, "added_tokens is not an array");
    added = &*it;
  }

  // Ids: vocab and added tokens together must cover 0..N-1 without holes.
  int64_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() > INT32_MAX / 2) {
      fail(src, "model.vocab entry \"" + it.key() + "\" has a bad id " + it.value().dump());
    }
    max_id = std::max(max_id, it.value().get<int64_t>());
  }
  for (const json& a : *added) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
        !a["content"].is_string()) {
      fail(src, "added_tokens entry without integer id / string content: " + a.dump());
    }
    const int64_t id = a["id"].get<int64_t>();
    if (id < 0 || id > INT32_MAX / 2) fail(src, "added token id out of range: " + a.dump());
    max_id = std::max(max_id, id);
  }
  const auto n = static_cast<size_t>(max_id + 1);
  bytes_.resize(n);
  strings_.resize(n);
  flags_.assign(n, 0);
  std::vector<uint8_t> have(n, 0);
  std::unordered_map<std::string_view, int32_t> vocab_ids;  // views into the parsed JSON's keys
  vocab_ids.reserve(vocab.size());
  by_string_.reserve(vocab.size() + added->size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const auto id = static_cast<size_t>(it.value().get<int64_t>());
    if (have[id]) fail(src, "model.vocab has id " + std::to_string(id) + " twice");
    have[id] = 1;
    strings_[id] = it.key();
    flags_[id] |= kInVocab;
    if (!unmap_byte_level(it.key(), bytes_[id])) {
      bytes_[id] = it.key();  // not byte-level (e.g. "<｜begin▁of▁sentence｜>"): BPE can never produce it
      flags_[id] &= static_cast<uint8_t>(~kInVocab);
    }
    by_string_.emplace(it.key(), static_cast<int32_t>(id));
    vocab_ids.emplace(it.key(), static_cast<int32_t>(id));
  }
  for (const json& a : *added) {
    const auto id = static_cast<size_t>(a["id"].get<int64_t>());
    const std::string& content = a["content"].get_ref<const std::string&>();
    if (content.empty()) fail(src, "added token " + std::to_string(id) + " has empty content");
    if (!utf8::is_valid(content)) fail(src, "added token " + std::to_string(id) + " is not valid UTF-8");
    for (const char* opt : {"lstrip", "rstrip", "single_word"}) {
      if (a.value(opt, false)) fail(src, std::string("added token ") + a.dump() + ": " + opt + "=true is unsupported");
    }
    if (have[id] && strings_[id] != content) {
      fail(src, "added token " + std::to_string(id) + " \"" + content + "\" conflicts with vocab entry \"" +
                    strings_[id] + "\"");
    }
    if ((flags_[id] & kAdded) && strings_[id] != content) fail(src, "added token id " + std::to_string(id) + " used twice");
    have[id] = 1;
    strings_[id] = content;
    bytes_[id] = content;  // added tokens decode to their own text
    flags_[id] |= kAdded;
    if (a.value("special", false)) flags_[id] |= kSpecial;
    // An added token is never split by BPE, even when its string is also a vocab entry.
    flags_[id] &= static_cast<uint8_t>(~kInVocab);
    by_string_[content] = static_cast<int32_t>(id);
    (a.value("normalized", true) ? added_norm_ : added_raw_).add(content, static_cast<int32_t>(id));
  }
  for (size_t id = 0; id < n; ++id) {
    if (!have[id]) fail(src, "no token has id " + std::to_string(id) + " (ids must be contiguous)");
  }

  // Every byte must be a token: byte-level BPE starts from single bytes.
  const ByteAlphabet& alpha = byte_alphabet();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    utf8::append(s, alpha.byte_to_cp[static_cast<size_t>(b)]);
    auto it = vocab.find(s);
    if (it == vocab.end()) fail(src, "model.vocab lacks the byte token \"" + s + "\" (byte " + std::to_string(b) + ")");
    byte_id_[static_cast<size_t>(b)] = static_cast<int32_t>(it.value().get<int64_t>());
  }

  merges_.reserve(merges.size());
  std::string joined;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& m = merges[rank];
    std::string_view left, right;
    if (m.is_string()) {
      const std::string_view sv = m.get_ref<const std::string&>();
      const size_t sp = sv.find(' ');
      if (sp == std::string_view::npos || sp == 0 || sp + 1 >= sv.size() || sv.find(' ', sp + 1) != std::string_view::npos) {
        fail(src, "merge " + std::to_string(rank) + " is not \"left right\": " + m.dump());
      }
      left = sv.substr(0, sp);
      right = sv.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get_ref<const std::string&>();
      right = m[1].get_ref<const std::string&>();
    } else {
      fail(src, "merge " + std::to_string(rank) + " is neither \"left right\" nor [left, right]: " + m.dump());
    }
    joined.assign(left).append(right);
    auto l = vocab_ids.find(left), r = vocab_ids.find(right), res = vocab_ids.find(joined);
    if (l == vocab_ids.end() || r == vocab_ids.end() || res == vocab_ids.end()) {
      fail(src, "merge " + std::to_string(rank) + " (" + m.dump() + ") uses or makes a token not in model.vocab");
    }
    const auto li = static_cast<uint32_t>(l->second);
    const auto ri = static_cast<uint32_t>(r->second);
    const auto mi = static_cast<uint32_t>(res->second);
    // Duplicate pairs keep the first (lowest) rank, as the reference does.
    merges_.insert((static_cast<uint64_t>(li) << 32) | ri, (static_cast<uint64_t>(rank) << 32) | mi);
  }

  std::vector<uint8_t> use(n, 0);
  for (size_t id = 0; id < n; ++id) use[id] = (flags_[id] & kInVocab) ? 1 : 0;
  whole_.build(bytes_, use);
  whole_ok_ = std::make_unique<std::atomic<uint8_t>[]>(n);
  for (size_t id = 0; id < n; ++id) whole_ok_[id].store(0, std::memory_order_relaxed);

  if (config) {
    auto special_id = [&](const char* key) -> std::optional<int32_t> {
      auto it = config->find(key);
      if (it == config->end() || it->is_null()) return std::nullopt;
      std::string s;
      if (it->is_string()) s = it->get<std::string>();
      else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) s = (*it)["content"].get<std::string>();
      else fail(src, std::string("tokenizer_config.json: ") + key + " is neither a string nor an AddedToken");
      auto id = token_id(s);
      if (!id) fail(src, std::string("tokenizer_config.json: ") + key + " \"" + s + "\" is not a token");
      return id;
    };
    bos_ = special_id("bos_token");
    eos_ = special_id("eos_token");
    pad_ = special_id("pad_token");
  }
}

// Small pieces: repeatedly merge the lowest-ranked adjacent pair (leftmost on ties), keeping the
// pair ranks in an array so each step is one linear scan without hashing.
void BpeTokenizer::bpe_small(std::string_view piece, std::vector<int32_t>& out) const {
  constexpr size_t kMax = 64;
  int32_t ids[kMax];
  uint32_t ranks[kMax];
  int32_t results[kMax];
  size_t m = piece.size();
  for (size_t i = 0; i < m; ++i) ids[i] = byte_id_[static_cast<unsigned char>(piece[i])];
  for (size_t i = 0; i + 1 < m; ++i) {
    if (!lookup_merge(ids[i], ids[i + 1], ranks[i], results[i])) ranks[i] = kNoRank;
  }
  while (m > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < m; ++i) {
      if (ranks[i] < ranks[best]) best = i;
    }
    if (ranks[best] == kNoRank) break;
    ids[best] = results[best];
    // Remove symbol best+1 and pair slot best (now recomputed).
    for (size_t i = best + 1; i + 1 < m; ++i) ids[i] = ids[i + 1];
    for (size_t i = best + 1; i + 2 < m; ++i) {
      ranks[i] = ranks[i + 1];
      results[i] = results[i + 1];
    }
    --m;
    if (best + 1 < m) {
      if (!lookup_merge(ids[best], ids[best + 1], ranks[best], results[best])) ranks[best] = kNoRank;
    }
    if (best > 0) {
      if (!lookup_merge(ids[best - 1], ids[best], ranks[best - 1], results[best - 1])) ranks[best - 1] = kNoRank;
    }
  }
  out.insert(out.end(), ids, ids + m);
}

// Large pieces: a min-heap of (rank, position) over a linked list of symbols, O(n log n).
// Stale heap entries are detected by re-looking up the pair currently at that position.
void BpeTokenizer::bpe_large(std::string_view piece, std::vector<int32_t>& out) const {
  const size_t n = piece.size();
  struct Sym {
    int32_t id;
    int32_t prev, next;  // neighbours by original byte position; -1 at the ends
  };
  std::vector<Sym> syms(n);
  for (size_t i = 0; i < n; ++i) {
    syms[i] = {byte_id_[static_cast<unsigned char>(piece[i])], static_cast<int32_t>(i) - 1,
               i + 1 < n ? static_cast<int32_t>(i + 1) : -1};
  }
  using Entry = std::pair<uint32_t, uint32_t>;  // (rank, position): min rank, then leftmost
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap;
  uint32_t rank;
  int32_t merged;
  for (size_t i = 0; i + 1 < n; ++i) {
    if (lookup_merge(syms[i].id, syms[i + 1].id, rank, merged)) heap.push({rank, static_cast<uint32_t>(i)});
  }
  while (!heap.empty()) {
    const auto [r, pos] = heap.top();
    heap.pop();
    Sym& s = syms[pos];
    if (s.id < 0 || s.next < 0) continue;
    Sym& nx = syms[static_cast<size_t>(s.next)];
    if (!lookup_merge(s.id, nx.id, rank, merged) || rank != r) continue;  // stale
    s.id = merged;
    nx.id = -1;
    s.next = nx.next;
    if (s.next >= 0) syms[static_cast<size_t>(s.next)].prev = static_cast<int32_t>(pos);
    if (s.prev >= 0 && lookup_merge(syms[static_cast<size_t>(s.prev)].id, s.id, rank, merged)) {
      heap.push({rank, static_cast<uint32_t>(s.prev)});
    }
    if (s.next >= 0 && lookup_merge(s.id, syms[static_cast<size_t>(s.next)].id, rank, merged)) {
      heap.push({rank, pos});
    }
  }
  for (int32_t i = 0; i >= 0; i = syms[static_cast<size_t>(i)].next) out.push_back(syms[static_cast<size_t>(i)].id);
}

void BpeTokenizer::bpe(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.size() <= 64) {
    bpe_small(piece, out);
  } else {
    bpe_large(piece, out);
  }
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.size() == 1) {
    out.push_back(byte_id_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  const uint64_t h = hash_bytes(piece);
  // Fast path: the piece is one vocab token that BPE reproduces (checked once per token).
  const int32_t whole = whole_.find(piece, h);
  if (whole >= 0) {
    std::atomic<uint8_t>& ok = whole_ok_[static_cast<size_t>(whole)];
    uint8_t state = ok.load(std::memory_order_relaxed);
    if (state == 0) {
      std::vector<int32_t> tmp;
      bpe(piece, tmp);
      state = (tmp.size() == 1 && tmp[0] == whole) ? 1 : 2;
      ok.store(state, std::memory_order_relaxed);
    }
    if (state == 1) {
      out.push_back(whole);
      return;
    }
  }
  if (piece.size() > kCacheMaxPieceBytes) {
    bpe(piece, out);
    return;
  }
  const size_t idx = h & (kCacheSlots - 1);
  CacheSlot& slot = cache_[idx];
  std::mutex& mu = cache_locks_[idx % kCacheLocks];
  {
    std::lock_guard<std::mutex> lock(mu);
    if (slot.hash == h && slot.key == piece) {
      out.insert(out.end(), slot.ids.begin(), slot.ids.end());
      return;
    }
  }
  const size_t start = out.size();
  bpe(piece, out);
  std::lock_guard<std::mutex> lock(mu);
  slot.hash = h;
  slot.key.assign(piece);
  slot.ids.assign(out.begin() + static_cast<std::ptrdiff_t>(start), out.end());
}

void BpeTokenizer::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  for_each_piece(text, [&](std::string_view piece) { encode_piece(piece, out); });
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool parse_special) const {
  const size_t bad = utf8::valid_prefix_length(text);
  if (bad != text.size()) {
    throw Error("tokenizer: invalid UTF-8 in input text at byte " + std::to_string(bad));
  }
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (!parse_special) {
    encode_text(text, out);
    return out;
  }
  // Added tokens with normalized=false are extracted first over the whole text, then normalized ones
  // in the remaining gaps (the reference's two passes); BPE never crosses an added token.
  auto split_norm = [&](std::string_view seg) {
    size_t from = 0, pos, len;
    int32_t id;
    while (!added_norm_.empty() && added_norm_.find(seg, from, pos, len, id)) {
      encode_text(seg.substr(from, pos - from), out);
      out.push_back(id);
      from = pos + len;
    }
    encode_text(seg.substr(from), out);
  };
  size_t from = 0, pos, len;
  int32_t id;
  while (!added_raw_.empty() && added_raw_.find(text, from, pos, len, id)) {
    split_norm(text.substr(from, pos - from));
    out.push_back(id);
    from = pos + len;
  }
  split_norm(text.substr(from));
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special) const {
  std::string raw;
  raw.reserve(ids.size() * 4);
  for (int32_t id : ids) {
    check_id(id);
    if (skip_special && (flags_[static_cast<size_t>(id)] & kSpecial)) continue;
    raw += bytes_[static_cast<size_t>(id)];
  }
  if (utf8::is_valid(raw)) return raw;
  return utf8::to_valid_lossy(raw);
}

std::string read_file(const std::string& path, bool required) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    if (required) throw Error(path + ": cannot open file");
    return {};
  }
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw Error(path + ": read error");
  return ss.str();
}

json parse_json(std::string_view text, const std::string& src) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    throw Error(src + ": invalid JSON: " + e.what());
  }
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::from_json(std::string_view tokenizer_json, const std::string& source_name,
                                                std::string_view config_json) {
  const json root = parse_json(tokenizer_json, source_name);
  json config;
  if (!config_json.empty()) {
    config = parse_json(config_json, source_name + " (tokenizer_config.json)");
    if (!config.is_object()) throw Error(source_name + ": tokenizer_config.json is not a JSON object");
  }
  try {
    return std::make_unique<BpeTokenizer>(root, source_name, config_json.empty() ? nullptr : &config);
  } catch (const json::exception& e) {  // a field of an unexpected JSON type
    throw Error(source_name + ": malformed tokenizer.json: " + e.what());
  }
}

std::unique_ptr<Tokenizer> Tokenizer::from_file(const std::string& tokenizer_json_path) {
  const std::string text = read_file(tokenizer_json_path, true);
  std::string dir;
  if (auto slash = tokenizer_json_path.find_last_of('/'); slash != std::string::npos) {
    dir = tokenizer_json_path.substr(0, slash + 1);
  }
  const std::string config = read_file(dir + "tokenizer_config.json", false);
  return from_json(text, tokenizer_json_path, config);
}

std::vector<std::string_view> pre_tokenize(std::string_view text) {
  if (!utf8::is_valid(text)) throw Error("pre_tokenize: invalid UTF-8 input");
  std::vector<std::string_view> pieces;
  for_each_piece(text, [&](std::string_view p) { pieces.push_back(p); });
  return pieces;
}

// ---------------------------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool skip_special) : tok_(tok), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  if (skip_special_ && tok_.is_special(id)) return {};
  pending_ += tok_.token_bytes(id);
  const size_t hold = utf8::incomplete_suffix_length(pending_);
  std::string out = utf8::to_valid_lossy(std::string_view(pending_).substr(0, pending_.size() - hold));
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StreamDecoder::finish() {
  std::string out = utf8::to_valid_lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace dsv4::text
