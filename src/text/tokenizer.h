// DeepSeek-V4 tokenizer: byte-level BPE loaded from a Hugging Face tokenizer.json.
// Interface contract shared by the text layer (prompt rendering, streaming decode) and the server.
// Implementation notes (pre-tokenizer, Unicode data, added-token policy): docs/tokenizer.md.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dsv4::text {

class Tokenizer {
 public:
  // Loads tokenizer.json (and tokenizer_config.json beside it when present).
  // Throws dsv4::Error naming the file and the problem on bad input.
  static std::unique_ptr<Tokenizer> from_file(const std::string& tokenizer_json_path);
  // Same from JSON text already in memory; `source_name` is used in error messages. config_json may
  // be empty (no tokenizer_config.json).
  static std::unique_ptr<Tokenizer> from_json(std::string_view tokenizer_json, const std::string& source_name,
                                              std::string_view config_json = {});
  virtual ~Tokenizer() = default;

  // Encode UTF-8 text. With parse_special, every added-token string in the text is recognised
  // (longest match, before pre-tokenization); without, such strings are ordinary text.
  // Nothing (no BOS/EOS) is added. Invalid UTF-8 throws dsv4::Error.
  virtual std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const = 0;

  // Decode ids to text; invalid UTF-8 byte runs become U+FFFD (lossy), as the reference does.
  // An id outside [0, vocab_size()) throws dsv4::Error.
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const = 0;

  // Raw bytes of one token (byte-level alphabet mapped back; added tokens give their text).
  virtual std::string token_bytes(int32_t id) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> token_id(std::string_view token) const = 0;  // exact token string
  virtual bool is_special(int32_t id) const = 0;

  // Token string as stored in tokenizer.json (byte-level alphabet for BPE tokens, e.g. "Ġthe").
  virtual std::string token_string(int32_t id) const = 0;
  // True for ids from the added-token table (special or not); those are matched before BPE.
  virtual bool is_added(int32_t id) const = 0;
  // From tokenizer_config.json when present (bos_token / eos_token / pad_token), else empty.
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;
  virtual std::optional<int32_t> pad_id() const = 0;
};

// Streaming detokenizer: feed ids one by one, get only complete UTF-8 text back; an incomplete
// multi-byte sequence at the end is held back until it completes (or flushed lossily by finish()).
// The concatenation of all push() results and finish() equals decode() of all ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = false);
  std::string push(int32_t id);
  std::string finish();

 private:
  const Tokenizer& tok_;
  bool skip_special_;
  std::string pending_;
};

// The pre-tokenizer of the DeepSeek-V3/V4 tokenizer.json (3 regex Split steps, exactly as the
// reference splits), exposed for tests and tools. `text` must be valid UTF-8 and contain no added
// tokens; returns the pieces BPE runs on, as views into `text`.
std::vector<std::string_view> pre_tokenize(std::string_view text);

}  // namespace dsv4::text
