// Engine core against itself and on bad input: chunked prefill == full prefill == token-by-token
// decode, 1 thread == 2 threads, loader validation errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "core/safetensors.h"
#include "kernels/numerics.h"
#include "model/model.h"
#include "model/synth.h"
#include "temp_dir.h"
#include "tiny_model.h"

using namespace dsv4;
namespace fs = std::filesystem;

namespace {

// The shared tiny model (tiny_model.h) with a 1024-token vocabulary.
const std::string& test_model_dir() {
  static const test_support::TinyModelDir dir("dsv4_test_model", 1024, 42);
  return dir.str();
}

std::vector<int32_t> tokens(int n) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919 + 13) % 1024);
  return t;
}

double kl(const std::vector<float>& a, const std::vector<float>& b) {
  auto lse = [](const std::vector<float>& l) {
    double m = -INFINITY, s = 0;
    for (float v : l) m = std::max(m, static_cast<double>(v));
    for (float v : l) s += std::exp(v - m);
    return m + std::log(s);
  };
  const double la = lse(a), lb = lse(b);
  double k = 0;
  for (size_t i = 0; i < a.size(); ++i) k += std::exp(a[i] - la) * ((a[i] - la) - (b[i] - lb));
  return k;
}

std::string load_error(const std::string& dir) {
  try {
    Model m(dir, 1);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Model, ChunkedPrefillAndDecodeMatchFullPrefill) {
  Model m(test_model_dir(), 2);
  const int n = 300;  // crosses the window (128), CSA blocks (4) and two HCA blocks (128)
  const auto tok = tokens(n);
  const int V = m.config().vocab_size;
  std::vector<float> full(V), chunked(V), stepped(V);
  SequenceState a = m.new_state(), b = m.new_state(), c = m.new_state();
  m.forward(a, tok.data(), n, full.data());
  for (int s : {0, 37, 100, 228}) {  // uneven chunks, one longer than the window
    const int e = s == 228 ? n : (s == 0 ? 37 : s == 37 ? 100 : 228);
    m.forward(b, tok.data() + s, e - s, chunked.data());
  }
  m.forward(c, tok.data(), 200, nullptr);
  for (int p = 200; p < n; ++p) m.forward(c, tok.data() + p, 1, stepped.data());
  EXPECT_EQ(a.pos, n);
  EXPECT_EQ(b.pos, n);
  EXPECT_EQ(c.layers[2].compressed.rows(), 2);  // HCA rows for positions 0..255
  EXPECT_EQ(c.layers[1].compressed.rows(), n / 4);
  EXPECT_EQ(c.layers[1].index_keys.rows(), n / 4);
  // Only the 64-entry blocking of the online softmax differs between call shapes.
  EXPECT_LT(kl(full, chunked), 1e-3);
  EXPECT_LT(kl(full, stepped), 1e-3);
  EXPECT_EQ(std::max_element(full.begin(), full.end()) - full.begin(),
            std::max_element(stepped.begin(), stepped.end()) - stepped.begin());
}

// A chunk longer than the attention pieces (512 tokens) runs attention piece by piece and the
// MoE on the whole chunk: the same bits as shorter calls, once past position 0.
TEST(Model, LongChunkMatchesShortCallsExactly) {
  Model m(test_model_dir(), 2);
  const int n = 1200;
  ASSERT_LE(n + 1, m.config().max_position_embeddings);
  const auto tok = tokens(n + 1);
  const int V = m.config().vocab_size;
  std::vector<float> one_call(V), pieces(V);
  SequenceState a = m.new_state(), b = m.new_state();
  m.forward(a, tok.data(), 1, nullptr);
  m.forward(b, tok.data(), 1, nullptr);
  m.forward(a, tok.data() + 1, n, one_call.data());
  for (int s = 1; s <= n; s += 300) m.forward(b, tok.data() + s, std::min(300, n + 1 - s), pieces.data());
  EXPECT_EQ(a.pos, b.pos);
  EXPECT_EQ(0, std::memcmp(one_call.data(), pieces.data(), sizeof(float) * static_cast<size_t>(V)));
}

// A forward call stopped by its layer callback leaves the state as before the call: what follows
// computes the same bits as if the call had never been made.
TEST(Model, StoppedForwardRestoresTheState) {
  Model m(test_model_dir(), 2);
  const int V = m.config().vocab_size, layers = m.config().n_layers;
  const auto tok = tokens(400);
  std::vector<float> want(V), got(V);
  SequenceState a = m.new_state(), b = m.new_state();
  m.forward(a, tok.data(), 1, nullptr);
  m.forward(a, tok.data() + 1, 199, nullptr);
  m.forward(a, tok.data() + 200, 200, want.data());
  m.forward(b, tok.data(), 1, nullptr);
  m.forward(b, tok.data() + 1, 199, nullptr);
  std::vector<int> seen;
  // Past the window and an HCA block boundary: ring, compressors and compressed rows all move.
  const bool finished = m.forward(b, tok.data() + 200, 150, got.data(), nullptr, [&](int done) {
    seen.push_back(done);
    return done < layers - 1;
  });
  EXPECT_FALSE(finished);
  EXPECT_EQ(seen.size(), static_cast<size_t>(layers - 1));
  EXPECT_EQ(b.pos, 200);
  int calls = 0;
  EXPECT_TRUE(m.forward(b, tok.data() + 200, 200, got.data(), nullptr, [&](int) { return ++calls > 0; }));
  EXPECT_EQ(calls, layers);
  EXPECT_EQ(0, std::memcmp(want.data(), got.data(), sizeof(float) * static_cast<size_t>(V)));
}

// The routed experts give a token the same bits alone (decode) as among hundreds of others split
// into several expert batches (prefill): every product is per row, and each output element adds
// its experts in increasing order. A hash-routed and a score-routed layer.
// Several sequences decoded in one step (continuous batching) get, each, exactly the logits and
// state of decoding alone: sequences at different positions (fresh, inside the first window,
// about to close an HCA block, past the window with CSA rows selected) over steps that cross
// compressor block ends. Four rows on two threads also take the indexer's one-query-per-task path.
TEST(Model, DecodeBatchMatchesDecodingEachSequenceAlone) {
  Model m(test_model_dir(), 2);
  const int V = m.config().vocab_size;
  const auto tok = tokens(400);
  const std::vector<int> prompt = {0, 1, 125, 257};
  const int B = static_cast<int>(prompt.size()), steps = 6;
  std::vector<SequenceState> alone, batched;
  for (int i = 0; i < B; ++i) {
    alone.push_back(m.new_state());
    const int n = prompt[static_cast<size_t>(i)];
    if (n > 0) m.forward(alone.back(), tok.data() + 37 * i, n, nullptr);
    batched.push_back(alone.back());
  }
  std::vector<SequenceState*> ptrs;
  for (SequenceState& s : batched) ptrs.push_back(&s);
  std::vector<int32_t> next(static_cast<size_t>(B));
  for (int i = 0; i < B; ++i) next[static_cast<size_t>(i)] = static_cast<int32_t>((101 * i + 7) % V);
  std::vector<float> want(static_cast<size_t>(B) * V), got(static_cast<size_t>(B) * V);
  for (int s = 0; s < steps; ++s) {
    for (int i = 0; i < B; ++i)
      m.forward(alone[static_cast<size_t>(i)], &next[static_cast<size_t>(i)], 1, &want[static_cast<size_t>(i) * V]);
    m.decode_batch(ptrs, next.data(), got.data());
    for (int i = 0; i < B; ++i) {
      SCOPED_TRACE("sequence " + std::to_string(i) + ", step " + std::to_string(s));
      EXPECT_EQ(batched[static_cast<size_t>(i)].pos, alone[static_cast<size_t>(i)].pos);
      EXPECT_EQ(0, std::memcmp(&want[static_cast<size_t>(i) * V], &got[static_cast<size_t>(i) * V], sizeof(float) * V));
      const float* row = &want[static_cast<size_t>(i) * V];
      next[static_cast<size_t>(i)] = static_cast<int32_t>(std::max_element(row, row + V) - row);
    }
  }
  for (int i = 0; i < B; ++i) {
    for (int l = 0; l < m.config().n_layers; ++l) {
      const LayerState& a = alone[static_cast<size_t>(i)].layers[static_cast<size_t>(l)];
      const LayerState& b = batched[static_cast<size_t>(i)].layers[static_cast<size_t>(l)];
      EXPECT_EQ(a.compressed.rows(), b.compressed.rows());
      EXPECT_EQ(a.index_keys.rows(), b.index_keys.rows());
      EXPECT_EQ(a.compressor.kv, b.compressor.kv);
      EXPECT_EQ(a.index_compressor.score, b.index_compressor.score);
    }
  }
  // Bad batches are refused before anything changes.
  const int64_t pos0 = batched[0].pos;
  SequenceState* twice[] = {&batched[0], &batched[0]};
  const int32_t two[] = {1, 2};
  EXPECT_THROW(m.decode_batch(twice, two, got.data()), Error);
  SequenceState* pair[] = {&batched[0], &batched[1]};
  const int32_t bad[] = {1, static_cast<int32_t>(V)};
  EXPECT_THROW(m.decode_batch(pair, bad, got.data()), Error);
  EXPECT_EQ(batched[0].pos, pos0);
}

TEST(Model, MoeOutputDoesNotDependOnTheBatch) {
  Model m(test_model_dir(), 2);
  const ModelConfig& c = m.config();
  const int n = 600, D = c.dim;  // 600 x 2 routed rows: more than one batch of experts
  ASSERT_GT(static_cast<int64_t>(n) * c.n_activated_experts, 1024);
  const auto tok = tokens(n);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<size_t>(n) * D);
  for (auto& v : x) v = bf16_round(nd(rng));  // MoE inputs are bf16 norm outputs
  ASSERT_GT(c.n_hash_layers, 0);
  for (int layer : {0, c.n_layers - 1}) {
    const BlockWeights& bw = m.weights().layers[static_cast<size_t>(layer)];
    std::vector<float> all(x.size()), one(static_cast<size_t>(D));
    m.moe(bw.moe, bw.layer_id, x.data(), tok.data(), n, all.data(), nullptr);
    for (int t = 0; t < n; ++t) {
      m.moe(bw.moe, bw.layer_id, &x[static_cast<size_t>(t) * D], &tok[static_cast<size_t>(t)], 1, one.data(), nullptr);
      if (std::memcmp(one.data(), &all[static_cast<size_t>(t) * D], sizeof(float) * static_cast<size_t>(D)) != 0) {
        ADD_FAILURE() << "layer " << layer << ": token " << t << " differs alone and in the batch";
        break;
      }
    }
  }
}

TEST(Model, ThreadCountDoesNotChangeResults) {
  const auto tok = tokens(150);
  std::vector<float> l1, l2;
  for (int threads : {1, 2}) {
    Model m(test_model_dir(), threads);
    std::vector<float> logits(static_cast<size_t>(m.config().vocab_size));
    SequenceState s = m.new_state();
    m.forward(s, tok.data(), 150, nullptr);
    m.forward(s, tok.data(), 1, logits.data());
    (threads == 1 ? l1 : l2) = logits;
  }
  EXPECT_EQ(l1, l2);
}

TEST(Model, MtpRunsOnMainStreams) {
  Model m(test_model_dir(), 2);
  const auto tok = tokens(20);
  std::vector<float> logits(static_cast<size_t>(m.config().vocab_size)), streams;
  SequenceState s = m.new_state(), ms = m.new_mtp_state();
  m.forward(s, tok.data(), 19, logits.data(), &streams);
  ASSERT_EQ(streams.size(), static_cast<size_t>(19 * m.config().hc_mult * m.config().dim));
  m.mtp_forward(ms, streams.data(), tok.data() + 1, 19, logits.data());
  EXPECT_EQ(ms.pos, 19);
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
}

TEST(Model, RejectsBadTokensAndOverflow) {
  Model m(test_model_dir(), 1);
  SequenceState s = m.new_state();
  const int32_t bad[] = {5, 1024};
  try {
    m.forward(s, bad, 2, nullptr);
    FAIL() << "out-of-range token accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos);
  }
  s.pos = m.config().max_position_embeddings;
  const int32_t ok[] = {5};
  EXPECT_THROW(m.forward(s, ok, 1, nullptr), Error);
}

TEST(Model, LoaderNamesMissingWrongAndUnknownTensors) {
  const fs::path src = test_model_dir();
  const test_support::TempDir bad("dsv4_test_badmodel");
  const fs::path& d = bad.path();
  fs::create_directories(d);
  fs::copy_file(src / "config.json", d / "config.json");
  TensorStore s = TensorStore::open_dir(src.string());
  auto rewrite = [&](const std::function<void(std::vector<TensorToWrite>&)>& edit) {
    std::vector<TensorToWrite> ts;
    for (const auto& [name, t] : s.all()) ts.push_back({name, t->dtype, t->shape, std::vector<uint8_t>(t->data, t->data + t->nbytes)});
    edit(ts);
    write_safetensors((d / "model.safetensors").string(), ts);
  };
  rewrite([](auto& ts) { std::erase_if(ts, [](const auto& t) { return t.name == "layers.1.attn.wkv.scale"; }); });
  EXPECT_NE(load_error(d.string()).find("missing tensor 'layers.1.attn.wkv.scale'"), std::string::npos);
  rewrite([](auto& ts) {
    for (auto& t : ts)
      if (t.name == "norm.weight") {
        t.shape = {128};
        t.bytes.resize(256);
      }
  });
  EXPECT_NE(load_error(d.string()).find("'norm.weight' has shape [128], expected [256]"), std::string::npos);
  rewrite([](auto& ts) { ts.push_back({"layers.0.extra", DType::F32, {1}, {0, 0, 0, 0}}); });
  EXPECT_NE(load_error(d.string()).find("unexpected tensor 'layers.0.extra'"), std::string::npos);
  rewrite([](auto& ts) {
    for (auto& t : ts)
      if (t.name == "layers.0.ffn.gate.tid2eid") std::memcpy(t.bytes.data() + 8, t.bytes.data(), 8);  // duplicate id
  });
  EXPECT_NE(load_error(d.string()).find("repeats expert"), std::string::npos);
  // Truncated file.
  rewrite([](auto&) {});
  fs::resize_file(d / "model.safetensors", fs::file_size(d / "model.safetensors") - 100);
  EXPECT_NE(load_error(d.string()).find("outside the data section"), std::string::npos);
  // Config missing a key.
  { std::ofstream(d / "config.json") << R"({"vocab_size": 1024})"; }
  EXPECT_NE(load_error(d.string()).find("missing key 'hidden_size'"), std::string::npos);
}
