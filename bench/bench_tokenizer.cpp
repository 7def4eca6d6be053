// Tokenizer throughput, single-threaded, on synthetic prose / code / CJK and a mix of the three.
// Tokenizer: $DSV4_TOKENIZER, else the golden V4 tokenizer.json (../shared beside the source tree).
// Run: build/bench/dsv4_bench --benchmark_filter=Tokenizer  (reports bytes_per_second)
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "text/tokenizer.h"

namespace {

std::string tokenizer_path() {
  if (const char* env = std::getenv("DSV4_TOKENIZER")) return env;
  std::string src = __FILE__;  // .../bench/bench_tokenizer.cpp
  src = src.substr(0, src.rfind('/'));
  src = src.substr(0, src.rfind('/'));
  return src + "/../shared/golden/tokenizer/tokenizer.json";
}

const dsv4::text::Tokenizer& tok() {
  static const auto t = dsv4::text::Tokenizer::from_file(tokenizer_path());
  return *t;
}

constexpr size_t kTarget = 1 << 20;  // ~1 MiB per corpus

std::string prose() {
  static const std::vector<std::string> words = {
      "the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on",
      "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "had", "they",
      "you", "were", "their", "one", "all", "we", "can", "her", "has", "there", "been", "if", "more", "when",
      "will", "would", "who", "so", "no", "model", "attention", "tokenizer", "inference", "engine", "memory",
      "throughput", "latency", "quantization", "experts", "routing", "compression", "sequence", "context",
      "benchmark", "evaluation", "distributed", "parameters", "gradient", "architecture", "researchers",
      "reasonably", "unexpectedly", "Nevertheless", "However", "Meanwhile", "DeepSeek", "GPU", "2048",
      "1.5", "3,000", "naïve", "café", "résumé", "Zürich", "co-operate", "state-of-the-art", "e.g.", "i.e."};
  std::mt19937 rng(1);
  std::string s;
  while (s.size() < kTarget) {
    const int n = 8 + static_cast<int>(rng() % 20);
    for (int i = 0; i < n; ++i) {
      std::string w = words[rng() % words.size()];
      if (i == 0) w[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(w[0])));
      s += w;
      s += (i + 1 < n) ? (rng() % 9 == 0 ? ", " : " ") : "";
    }
    s += rng() % 5 == 0 ? "?\n\n" : ". ";
  }
  return s;
}

std::string code() {
  static const std::vector<std::string> snippets = {
      "#include <vector>\nint main(int argc, char** argv) {\n  std::vector<int> v(argc);\n",
      "    for (size_t i = 0; i < v.size(); ++i) {\n        total += v[i] * 0x1F;\n    }\n",
      "def load_weights(path: str, *, dtype=\"bf16\") -> dict[str, Tensor]:\n    return {k: t.to(dtype) for k, t in safetensors.items()}\n",
      "\tif err != nil {\n\t\treturn fmt.Errorf(\"open %s: %w\", name, err)\n\t}\r\n",
      "const result = await fetch(`${BASE_URL}/v1/chat/completions`, { method: 'POST', body });\n",
      "SELECT id, name FROM users WHERE created_at > '2024-01-01' ORDER BY id DESC LIMIT 100;\n",
      "  // TODO(perf): fuse the dequantization into the GEMM epilogue\n  x = rms_norm(x, w_norm, 1e-6f);\n",
      "}\n\n"};
  std::mt19937 rng(2);
  std::string s;
  int counter = 0;
  while (s.size() < kTarget) {
    s += snippets[rng() % snippets.size()];
    s += "var_" + std::to_string(counter++ % 997) + " = " + std::to_string(rng() % 100000) + ";\n";
  }
  return s;
}

std::string cjk() {
  // Common Chinese characters, kana and Hangul, joined into random sentences with CJK punctuation.
  static const std::vector<std::string> units = {
      "的", "一", "是", "在", "不", "了", "有", "和", "人", "这", "中", "大", "为", "上", "个", "国", "我",
      "以", "要", "他", "时", "来", "用", "们", "生", "到", "作", "地", "于", "出", "就", "分", "对", "成",
      "会", "可", "主", "发", "年", "动", "同", "工", "也", "能", "下", "过", "子", "说", "产", "种", "面",
      "而", "方", "后", "多", "定", "行", "学", "法", "所", "民", "得", "经", "模型", "推理", "注意力", "专家",
      "の", "に", "は", "を", "た", "が", "で", "て", "と", "し", "れ", "さ", "ある", "いる", "する", "テキスト",
      "日本語", "한국어", "모델", "추론"};
  static const std::vector<std::string> punct = {"，", "。", "、", "！", "？", "：", " "};
  std::mt19937 rng(3);
  std::string s;
  while (s.size() < kTarget) {
    const int n = 3 + static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i) s += units[rng() % units.size()];
    s += punct[rng() % punct.size()];
    if (rng() % 10 == 0) s += "\n";
  }
  return s;
}

void run(benchmark::State& state, const std::string& text) {
  const auto& t = tok();
  t.encode(text);  // warm the piece cache the way a long-running server would be
  size_t tokens = 0;
  for (auto _ : state) {
    auto ids = t.encode(text);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(text.size()));
  state.counters["bytes_per_token"] = static_cast<double>(text.size()) / static_cast<double>(tokens);
}

void BM_TokenizerEncodeProse(benchmark::State& state) {
  static const std::string text = prose();
  run(state, text);
}
void BM_TokenizerEncodeCode(benchmark::State& state) {
  static const std::string text = code();
  run(state, text);
}
void BM_TokenizerEncodeCjk(benchmark::State& state) {
  static const std::string text = cjk();
  run(state, text);
}
void BM_TokenizerEncodeMixed(benchmark::State& state) {
  static const std::string text = prose() + code() + cjk();
  run(state, text);
}
// Cold: a fresh tokenizer each iteration would measure loading; instead encode text the cache has
// never seen (shifted random CJK), which forces real BPE on most pieces.
void BM_TokenizerEncodeCjkColdCache(benchmark::State& state) {
  std::mt19937 rng(99);
  static const std::string base = cjk();
  const auto& t = tok();
  for (auto _ : state) {
    state.PauseTiming();
    std::string text = base.substr(0, 256 * 1024);
    for (size_t i = 0; i + 3 <= text.size(); i += 3 * (1 + rng() % 7)) {
      if (static_cast<unsigned char>(text[i]) == 0xE4) text[i + 2] = static_cast<char>(0x80 + rng() % 64);
    }
    state.ResumeTiming();
    auto ids = t.encode(text);
    benchmark::DoNotOptimize(ids.data());
    state.SetBytesProcessed(state.bytes_processed() + static_cast<int64_t>(text.size()));
  }
}
void BM_TokenizerDecodeMixed(benchmark::State& state) {
  static const std::string text = prose() + code() + cjk();
  static const std::vector<int32_t> ids = tok().encode(text);
  for (auto _ : state) {
    auto s = tok().decode(ids);
    benchmark::DoNotOptimize(s.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(text.size()));
}

}  // namespace

BENCHMARK(BM_TokenizerEncodeProse)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TokenizerEncodeCode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TokenizerEncodeCjk)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TokenizerEncodeMixed)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TokenizerEncodeCjkColdCache)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_TokenizerDecodeMixed)->Unit(benchmark::kMillisecond);
