#include "text/tokenizer_v4.h"

#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsv4::text {

namespace {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// U+FF5C FULLWIDTH VERTICAL LINE: DeepSeek's special tokens are "<｜name｜>".
std::string fw(std::string_view name) { return "<\xEF\xBD\x9C" + std::string(name) + "\xEF\xBD\x9C>"; }
// U+2581 LOWER ONE EIGHTH BLOCK separates words inside token names.
constexpr const char* kSep = "\xE2\x96\x81";

std::string words(std::initializer_list<std::string_view> parts) {
  std::string s;
  for (std::string_view p : parts) s += (s.empty() ? "" : kSep) + std::string(p);
  return s;
}

}  // namespace

std::vector<AddedTokenSpec> deepseek_v4_added_tokens() {
  std::vector<AddedTokenSpec> t;
  t.reserve(1283);
  // Sequence markers (V3 ids 0..2, also plain vocab entries).
  t.push_back({0, fw(words({"begin", "of", "sentence"})), true, false});
  t.push_back({1, fw(words({"end", "of", "sentence"})), true, false});
  t.push_back({2, fw(std::string(kSep) + "pad" + kSep), true, false});
  // V3's 800 reserved placeholders.
  for (int i = 0; i < 800; ++i) {
    t.push_back({128000 + i, fw(words({"place", "holder", "no", std::to_string(i)})), true, false});
  }
  // 128800..128845: named tokens (V3 up to 128814, V4 from 128815). Only <|EOT|> is special.
  const std::vector<std::string> named = {
      fw(words({"fim", "hole"})), fw(words({"fim", "begin"})), fw(words({"fim", "end"})), fw("User"),
      fw("Assistant"), "<|EOT|>", fw(words({"tool", "calls", "begin"})), fw(words({"tool", "calls", "end"})),
      fw(words({"tool", "call", "begin"})), fw(words({"tool", "call", "end"})),
      fw(words({"tool", "outputs", "begin"})), fw(words({"tool", "outputs", "end"})),
      fw(words({"tool", "output", "begin"})), fw(words({"tool", "output", "end"})), fw(words({"tool", "sep"})),
      // V4 additions
      fw(words({"begin", "of", "repo", "name"})), fw(words({"end", "of", "repo", "name"})),
      fw(words({"begin", "of", "file", "name"})), fw(words({"end", "of", "file", "name"})),
      fw(words({"begin", "of", "file"})), fw(words({"end", "of", "file"})), "<think>", "</think>",
      fw(words({"place", "holder", "for", "copy"})), fw(words({"place", "holder", "for", "pointer", "replace"})),
      "\xEF\xBD\x9C" "DSML" "\xEF\xBD\x9C",  // ｜DSML｜ (no angle brackets)
      fw(words({"begin", "sys"})), fw(words({"end", "sys"})), fw("latest_reminder"), fw("action"), fw("query"),
      fw("authority"), fw("domain"), fw("task"), fw("political"), fw("entity"), fw("title"), fw("safety"),
      fw("answer"), fw("search"), "<dsml:", "</dsml:", fw(words({"search", "begin"})), fw(words({"search", "end"})),
      fw("extracted_url"), fw("read_url")};
  for (size_t i = 0; i < named.size(); ++i) {
    const bool eot = named[i] == "<|EOT|>";
    t.push_back({static_cast<int32_t>(128800 + i), named[i], eot, true});
  }
  t.push_back({128846, fw("end_of_query"), true, false});
  // Multimodal span placeholders, numbered from 21 (the name's number is id - 128826).
  for (int id = 128847; id <= 129261; ++id) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "<|place_holder_mm_span_%04d|>", id - 128826);
    t.push_back({id, buf, true, false});
  }
  // 129262..129279: image / layout markers. The table-cell ones are not special.
  const std::vector<std::pair<std::string, bool>> tail = {
      {fw("rl_image_pad"), true}, {fw("rl_image_start"), true}, {fw("image2"), false},
      {"<\xEF\xBD\x9C/table>\xEF\xBD\x9C", false},  // "<｜/table>｜": the odd spelling is the real token
      {fw("table"), false}, {fw("/td"), false}, {fw("td"), false}, {fw("/tr"), false}, {fw("tr"), false},
      {fw("/polygon"), true}, {fw("polygon"), true}, {fw("/point"), true}, {fw("point"), true},
      {fw("/box"), true}, {fw("box"), true}, {fw("/ref"), true}, {fw("ref"), true}, {fw("image"), true}};
  for (size_t i = 0; i < tail.size(); ++i) {
    t.push_back({static_cast<int32_t>(129262 + i), tail[i].first, tail[i].second, false});
  }
  return t;
}

std::string build_deepseek_v4_tokenizer_json(std::string_view v3_text, const std::string& src) {
  // Two parses: an order-preserving one without the big vocab/merges (ordered_json's map is linear),
  // and a plain one for vocab and merges.
  ojson doc;
  json full;
  try {
    ojson::parser_callback_t drop_big = [](int depth, ojson::parse_event_t ev, ojson& parsed) {
      return !(ev == ojson::parse_event_t::key && depth == 2 && (parsed == "vocab" || parsed == "merges"));
    };
    doc = ojson::parse(v3_text.begin(), v3_text.end(), drop_big);
    full = json::parse(v3_text.begin(), v3_text.end());
  } catch (const json::exception& e) {
    throw Error(src + ": invalid JSON: " + e.what());
  }
  auto fail = [&](const std::string& what) -> void { throw Error(src + ": not DeepSeek-V3's tokenizer.json: " + what); };
  if (!full.is_object() || !full.contains("model") || !full["model"].is_object()) fail("no model object");
  const json& model = full["model"];
  if (model.value("type", "") != "BPE") fail("model.type is not BPE");
  if (!model.contains("vocab") || !model["vocab"].is_object()) fail("no model.vocab object");
  if (!model.contains("merges") || !model["merges"].is_array()) fail("no model.merges array");
  const json& vocab = model["vocab"];
  const json& merges = model["merges"];
  if (vocab.size() != 128000) fail("model.vocab has " + std::to_string(vocab.size()) + " entries, expected 128000");
  if (merges.size() != 127741) fail("model.merges has " + std::to_string(merges.size()) + " entries, expected 127741");
  std::vector<const std::string*> by_id(vocab.size(), nullptr);
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) fail("vocab entry \"" + it.key() + "\" has a non-integer id");
    const int64_t id = it.value().get<int64_t>();
    if (id < 0 || id >= static_cast<int64_t>(by_id.size()) || by_id[static_cast<size_t>(id)]) {
      fail("vocab ids are not exactly 0..127999");
    }
    by_id[static_cast<size_t>(id)] = &it.key();
  }

  const std::vector<AddedTokenSpec> table = deepseek_v4_added_tokens();
  std::map<int64_t, std::string> v4_by_id;
  for (const AddedTokenSpec& a : table) v4_by_id[a.id] = a.content;
  // V3's own added tokens must be a subset of V4's table: same id, same text.
  if (full.contains("added_tokens") && full["added_tokens"].is_array()) {
    for (const json& a : full["added_tokens"]) {
      if (!a.is_object() || !a.contains("id") || !a.contains("content")) fail("malformed added_tokens entry");
      auto it = v4_by_id.find(a["id"].get<int64_t>());
      if (it == v4_by_id.end() || it->second != a["content"].get<std::string>()) {
        fail("added token " + a.dump() + " disagrees with the V4 table");
      }
    }
  }
  for (const AddedTokenSpec& a : table) {
    if (a.id < 128000 && *by_id[static_cast<size_t>(a.id)] != a.content) {
      fail("vocab id " + std::to_string(a.id) + " is not \"" + a.content + "\"");
    }
  }

  ojson added = ojson::array();
  for (const AddedTokenSpec& a : table) {
    ojson e;
    e["id"] = a.id;
    e["content"] = a.content;
    e["single_word"] = false;
    e["lstrip"] = false;
    e["rstrip"] = false;
    e["normalized"] = a.normalized;
    e["special"] = a.special;
    added.push_back(std::move(e));
  }
  doc["added_tokens"] = std::move(added);
  const std::string kVocabMark = "@@dsv4-vocab@@", kMergesMark = "@@dsv4-merges@@";
  doc["model"]["vocab"] = kVocabMark;
  doc["model"]["merges"] = kMergesMark;
  std::string out = doc.dump(2, ' ', false, ojson::error_handler_t::strict);

  // Splice in vocab (id order) and merges, indented as members of "model" (depth 2).
  std::string v = "{\n";
  for (size_t id = 0; id < by_id.size(); ++id) {
    v += "      " + json(*by_id[id]).dump() + ": " + std::to_string(id) + (id + 1 < by_id.size() ? ",\n" : "\n");
  }
  v += "    }";
  std::string m = "[\n";
  for (size_t i = 0; i < merges.size(); ++i) {
    m += "      " + merges[i].dump(-1, ' ', false, json::error_handler_t::strict) + (i + 1 < merges.size() ? ",\n" : "\n");
  }
  m += "    ]";
  for (const auto& [mark, text] : {std::pair{kVocabMark, &v}, std::pair{kMergesMark, &m}}) {
    const std::string quoted = "\"" + mark + "\"";
    const size_t at = out.find(quoted);
    if (at == std::string::npos) throw Error("build_deepseek_v4_tokenizer_json: internal splice error");
    out.replace(at, quoted.size(), *text);
  }
  return out;
}

std::string deepseek_v4_tokenizer_config_json() {
  auto added = [](const std::string& content) {
    ojson t;
    t["__type"] = "AddedToken";
    t["content"] = content;
    t["lstrip"] = false;
    t["normalized"] = true;
    t["rstrip"] = false;
    t["single_word"] = false;
    return t;
  };
  ojson c;
  c["add_bos_token"] = false;
  c["add_eos_token"] = false;
  c["bos_token"] = added(fw(words({"begin", "of", "sentence"})));
  c["clean_up_tokenization_spaces"] = false;
  c["eos_token"] = added(fw(words({"end", "of", "sentence"})));
  c["legacy"] = true;
  c["model_max_length"] = 1048576;
  c["pad_token"] = added(fw(words({"end", "of", "sentence"})));
  c["sp_model_kwargs"] = ojson::object();
  c["unk_token"] = nullptr;
  c["tokenizer_class"] = "PreTrainedTokenizerFast";
  return c.dump(2, ' ', false);
}

}  // namespace dsv4::text
