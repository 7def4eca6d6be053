// Provisioning of the DeepSeek-V4 tokenizer.json, which is not shipped with this project: V4 uses
// DeepSeek-V3's byte-level BPE unchanged, with its own added-token table (prompt-format.md §1, §10).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv4::text {

struct AddedTokenSpec {
  int32_t id;
  std::string content;
  bool special;     // dropped by decode(skip_special=true)
  bool normalized;  // matched in the second added-token pass (no effect with the empty normalizer)
};

// V4's complete added-token table (1,283 entries: ids 0, 1, 2 and 128000..129279), generated from
// its rules: the V3 placeholders, the named protocol tokens and the multimodal placeholders.
std::vector<AddedTokenSpec> deepseek_v4_added_tokens();

// Builds V4's tokenizer.json text from DeepSeek-V3's: the V3 BPE (vocab, merges, pre-tokenizer,
// decoder) kept as is, added_tokens replaced by deepseek_v4_added_tokens(). Checks that the input
// is the V3 byte-level BPE and that its added tokens agree with V4's for the ids both define.
// Output layout follows the Hugging Face serializer (2-space indent, vocab in id order).
// Throws dsv4::Error naming `source_name` on bad input.
std::string build_deepseek_v4_tokenizer_json(std::string_view v3_tokenizer_json, const std::string& source_name);

// V4's tokenizer_config.json (add_bos_token / add_eos_token false, no chat template).
std::string deepseek_v4_tokenizer_config_json();

}  // namespace dsv4::text
