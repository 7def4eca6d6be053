// Generation engine: queueing, cancellation, sampling, detokenization, limits, and prefix reuse
// (a cache hit must give exactly the cold output), plus state checkpoints on the model directly.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <condition_variable>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/synth.h"
#include "server/engine.h"
#include "server/json_constraint.h"
#include "text/tokenizer.h"
#include "text/utf8.h"

using namespace dsv4;
using namespace dsv4::server;
namespace fs = std::filesystem;

namespace {

// One tiny model (every attention kind) with the real vocabulary, shared by all tests; engines
// are used one at a time (Model::forward is not re-entrant).
struct Shared {
  std::shared_ptr<Model> model;
  std::shared_ptr<const text::Tokenizer> tok;
};

Shared& shared() {
  static Shared s = [] {
    const fs::path d = fs::temp_directory_path() / ("dsv4_test_engine_" + std::to_string(::getpid()));
    ModelConfig c = synth_config("tiny", 0, 0);
    c.vocab_size = 129280;
    synthesize_model(c, 7, d.string());
    Shared r;
    r.model = std::make_shared<Model>(d.string(), 2);
    r.tok = text::Tokenizer::from_file(std::string(DSV4_SHARED_DIR) + "/golden/tokenizer/tokenizer.json");
    fs::remove_all(d);  // the mapping stays valid after unlink
    return r;
  }();
  return s;
}

std::unique_ptr<Engine> make_engine(EngineOptions o = {}) {
  if (o.checkpoint_interval == 1024) o.checkpoint_interval = 64;  // exercise interval checkpoints on short prompts
  return std::make_unique<Engine>(shared().model, shared().tok, o);
}

// Deterministic "random" ordinary token ids.
std::vector<int32_t> prompt_ids(int n, int salt) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<size_t>(i)] = 1000 + static_cast<int32_t>((i * 7919 + salt * 104729 + 13) % 100000);
  return t;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

struct Outcome {
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  std::vector<TokenEvent> events;
  std::string text;
  GenerationResult res;
  int done_calls = 0;
};

GenerationRequest greedy(std::vector<int32_t> prompt, int max_tokens) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0.0f;
  return r;
}

// Submits and waits for on_done. `cb` (optional) sees each event with its 1-based index.
Outcome run(Engine& e, GenerationRequest r, std::function<bool(const TokenEvent&, int)> cb = {}) {
  auto out = std::make_shared<Outcome>();
  std::promise<void> done;
  auto fut = done.get_future();
  const bool ok = e.submit(
      std::move(r),
      [out, cb](const TokenEvent& ev) {
        out->ids.push_back(ev.id);
        out->logprobs.push_back(ev.logprob);
        out->events.push_back(ev);
        out->text += ev.text;
        return cb ? cb(ev, static_cast<int>(out->ids.size())) : true;
      },
      [out, &done](const GenerationResult& res) {
        out->res = res;
        if (++out->done_calls == 1) done.set_value();
      });
  EXPECT_TRUE(ok);
  if (!ok) return {};
  fut.wait();
  return *out;
}

// Waits (bounded) for a condition set from the engine thread.
struct Latch {
  std::mutex mu;
  std::condition_variable cv;
  bool set = false;
  void open() {
    std::lock_guard<std::mutex> lk(mu);
    set = true;
    cv.notify_all();
  }
  bool wait(double s = 20) {
    std::unique_lock<std::mutex> lk(mu);
    return cv.wait_for(lk, std::chrono::duration<double>(s), [&] { return set; });
  }
};

double since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

// The property prefix reuse relies on: after a 1-token chunk at position 0, any split of the
// rest (chunks, token-by-token, a restored or forked checkpoint) gives bit-identical logits.
TEST(Engine, CheckpointRestoreAndForkAreExact) {
  Model& m = *shared().model;
  const int V = m.config().vocab_size, n = 150;  // past the window (128) and many CSA blocks
  const auto tok = prompt_ids(n, 1);
  std::vector<float> a(V), b(V), c(V), d(V);
  SequenceState s1 = m.new_state(), s2 = m.new_state();
  m.forward(s1, tok.data(), 1, nullptr);
  m.forward(s1, tok.data() + 1, n - 1, a.data());
  m.forward(s2, tok.data(), 1, nullptr);
  m.forward(s2, tok.data() + 1, 60, nullptr);
  const StateCheckpoint cp61 = take_checkpoint(s2);
  for (int p = 61; p < 131; ++p) m.forward(s2, tok.data() + p, 1, nullptr);
  const StateCheckpoint cp131 = take_checkpoint(s2);  // mid-HCA-block, ring wrapped
  m.forward(s2, tok.data() + 131, n - 131, b.data());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), sizeof(float) * V));

  SequenceState f = m.new_state();
  fork_state(s2, cp131, f);
  m.forward(f, tok.data() + 131, n - 131, c.data());
  EXPECT_EQ(0, std::memcmp(a.data(), c.data(), sizeof(float) * V));

  restore_checkpoint(s2, cp61);
  EXPECT_EQ(s2.pos, 61);
  m.forward(s2, tok.data() + 61, n - 61, d.data());
  EXPECT_EQ(0, std::memcmp(a.data(), d.data(), sizeof(float) * V));
  SequenceState fresh = m.new_state();
  EXPECT_THROW(restore_checkpoint(fresh, cp61), Error);  // a state behind the snapshot
}

TEST(Engine, CheckpointSizes) {
  const ModelConfig f = flash_config();
  // Window ring (43 layers x 128 x 583 B) + CSA partial blocks; HCA partials grow within a block.
  EXPECT_EQ(checkpoint_bytes_at(f, 1024), 43u * 128 * 583 + 21u * (65536 + 16384));
  EXPECT_GT(checkpoint_bytes_at(f, 1023), checkpoint_bytes_at(f, 1024));
}

TEST(Engine, GreedyIsDeterministicWithLogprobs) {
  auto e1 = make_engine({.retained_sequences = 0});
  auto e2 = make_engine();
  auto r = greedy(prompt_ids(40, 2), 8);
  r.top_logprobs = 3;
  const Outcome a = run(*e1, r), b = run(*e2, r);
  ASSERT_EQ(a.ids.size(), 8u);
  EXPECT_EQ(a.res.cause, FinishCause::kMaxTokens);
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(a.logprobs, b.logprobs);
  for (const TokenEvent& ev : a.events) {
    ASSERT_EQ(ev.top.size(), 3u);
    EXPECT_EQ(ev.top[0].id, ev.id);  // greedy picks the most likely token
    EXPECT_EQ(ev.top[0].logprob, ev.logprob);
    EXPECT_LE(ev.logprob, 0.0f);
    EXPECT_GE(ev.top[0].logprob, ev.top[1].logprob);
    EXPECT_GE(ev.top[1].logprob, ev.top[2].logprob);
  }
  EXPECT_EQ(a.res.stats.prompt_tokens, 40);
  EXPECT_EQ(a.res.stats.completion_tokens, 8);
  EXPECT_GT(a.res.stats.prefill_seconds, 0.0);
  EXPECT_GT(a.res.stats.decode_seconds, 0.0);
  EXPECT_GE(a.res.stats.time_to_first_token, a.res.stats.prefill_seconds);
}

TEST(Engine, SeededSamplingIsReproducible) {
  auto e = make_engine();
  GenerationRequest r = greedy(prompt_ids(30, 3), 10);
  r.sampling.temperature = 0.9f;
  r.sampling.top_p = 0.95f;
  r.sampling.seed = 1234;
  const Outcome a = run(*e, r), b = run(*e, r);  // the second run also reuses the cached prefix
  EXPECT_EQ(a.ids, b.ids);
  EXPECT_EQ(b.res.stats.cached_tokens, 29);
  r.sampling.seed = 99;
  EXPECT_NE(run(*e, r).ids, a.ids);

  r.sampling.top_p = 1.0f;
  r.sampling.top_k = 3;
  r.top_logprobs = 3;
  const Outcome k = run(*e, r);
  for (const TokenEvent& ev : k.events) {
    const bool in_top = ev.id == ev.top[0].id || ev.id == ev.top[1].id || ev.id == ev.top[2].id;
    EXPECT_TRUE(in_top);
  }
}

TEST(Engine, PresencePenaltyAvoidsRepeats) {
  auto e = make_engine();
  GenerationRequest r = greedy(prompt_ids(20, 4), 24);
  r.sampling.presence_penalty = 1e4f;
  const Outcome o = run(*e, r);
  std::vector<int32_t> s = o.ids;
  std::sort(s.begin(), s.end());
  EXPECT_EQ(std::adjacent_find(s.begin(), s.end()), s.end());
}

// Cache hits of every kind (live end, interval checkpoint with a fork, the checkpoint before the
// last prompt token) give bit-identical greedy tokens and logprobs to a cold engine.
TEST(Engine, PrefixCacheHitsEqualColdRuns) {
  auto hot = make_engine({.retained_sequences = 4, .checkpoint_interval = 64, .prefill_chunk = 512});
  auto cold = make_engine({.retained_sequences = 0});
  auto req = [](std::vector<int32_t> p) {
    auto r = greedy(std::move(p), 6);
    r.top_logprobs = 2;
    return r;
  };
  const auto p1 = prompt_ids(300, 5);
  const Outcome a = run(*hot, req(p1));
  EXPECT_EQ(a.res.stats.cached_tokens, 0);

  // B extends A's conversation (prompt + 5 forwarded completion tokens) past a 512 chunk boundary.
  const auto p2 = concat(concat(p1, std::vector<int32_t>(a.ids.begin(), a.ids.begin() + 5)), prompt_ids(260, 6));
  int64_t last_done = 0, total = 0;
  std::promise<void> done_b;
  Outcome b;
  hot->submit(
      req(p2), [&](const TokenEvent& ev) { b.ids.push_back(ev.id), b.logprobs.push_back(ev.logprob); return true; },
      [&](const GenerationResult& r) { b.res = r, done_b.set_value(); },
      [&](int64_t d, int64_t t) { last_done = d, total = t; });
  done_b.get_future().wait();
  EXPECT_EQ(b.res.stats.cached_tokens, 305);
  EXPECT_EQ(last_done, static_cast<int64_t>(p2.size()));
  EXPECT_EQ(total, static_cast<int64_t>(p2.size()));
  const Outcome b_cold = run(*cold, req(p2));
  EXPECT_EQ(b.ids, b_cold.ids);
  EXPECT_EQ(b.logprobs, b_cold.logprobs);

  // C shares only the first 200 tokens: resumes at the interval checkpoint 192 (a fork).
  const auto p3 = concat(std::vector<int32_t>(p1.begin(), p1.begin() + 200), prompt_ids(50, 7));
  const Outcome c = run(*hot, req(p3));
  EXPECT_EQ(c.res.stats.cached_tokens, 192);
  const Outcome c_cold = run(*cold, req(p3));
  EXPECT_EQ(c.ids, c_cold.ids);
  EXPECT_EQ(c.logprobs, c_cold.logprobs);

  // B again (a regenerate): the snapshot just before B's last prompt token; B's sequence survived
  // the fork.
  const Outcome b2 = run(*hot, req(p2));
  EXPECT_EQ(b2.res.stats.cached_tokens, static_cast<int>(p2.size()) - 1);
  EXPECT_EQ(b2.ids, b_cold.ids);
  EXPECT_EQ(b2.logprobs, b_cold.logprobs);

  // A conversation that starts shorter than the window (128): its first chunk would lay out the
  // attention index list differently from the longer cold prefill without the 1-token first chunk.
  const auto s1 = prompt_ids(40, 9);
  const Outcome s = run(*hot, req(s1));
  const auto s2 = concat(concat(s1, std::vector<int32_t>(s.ids.begin(), s.ids.begin() + 5)), prompt_ids(100, 10));
  const Outcome t = run(*hot, req(s2));
  EXPECT_EQ(t.res.stats.cached_tokens, 45);
  const Outcome t_cold = run(*cold, req(s2));
  EXPECT_EQ(t.ids, t_cold.ids);
  EXPECT_EQ(t.logprobs, t_cold.logprobs);

  // C's conversation continues from its live end.
  const auto p4 = concat(concat(p3, std::vector<int32_t>(c.ids.begin(), c.ids.begin() + 5)), prompt_ids(10, 8));
  const Outcome d = run(*hot, req(p4));
  EXPECT_EQ(d.res.stats.cached_tokens, 255);
  EXPECT_EQ(d.ids, run(*cold, req(p4)).ids);
}

TEST(Engine, LeastRecentlyUsedSequenceIsEvicted) {
  auto e = make_engine({.retained_sequences = 2});
  const auto x = prompt_ids(20, 10), y = prompt_ids(20, 11), z = prompt_ids(20, 12);
  run(*e, greedy(x, 1));
  run(*e, greedy(y, 1));
  EXPECT_GT(run(*e, greedy(concat(x, prompt_ids(3, 13)), 1)).res.stats.cached_tokens, 0);  // touches x
  run(*e, greedy(z, 1));  // evicts y
  EXPECT_EQ(run(*e, greedy(concat(x, prompt_ids(4, 14)), 1)).res.stats.cached_tokens, 19);
  EXPECT_EQ(run(*e, greedy(concat(y, prompt_ids(4, 14)), 1)).res.stats.cached_tokens, 0);

  // A byte budget keeps only the most recent sequence.
  auto small = make_engine({.retained_sequences = 4, .cache_bytes = 1});
  run(*small, greedy(x, 1));
  run(*small, greedy(y, 1));
  EXPECT_EQ(run(*small, greedy(concat(x, prompt_ids(3, 13)), 1)).res.stats.cached_tokens, 0);
  EXPECT_EQ(run(*small, greedy(concat(x, prompt_ids(3, 13)), 1)).res.stats.cached_tokens, 22);
}

TEST(Engine, CancelStopsWithinOneToken) {
  auto e = make_engine();
  // The client goes away: on_token returns false.
  Outcome a = run(*e, greedy(prompt_ids(20, 20), 0), [](const TokenEvent&, int i) { return i < 3; });
  EXPECT_EQ(a.res.cause, FinishCause::kCancelled);
  EXPECT_EQ(a.ids.size(), 3u);
  EXPECT_EQ(a.done_calls, 1);

  // The flag, set during token 2: no token 3.
  GenerationRequest r = greedy(prompt_ids(20, 21), 0);
  auto flag = r.cancel;
  Outcome b = run(*e, r, [flag](const TokenEvent&, int i) {
    if (i == 2) flag->store(true);
    return true;
  });
  EXPECT_EQ(b.res.cause, FinishCause::kCancelled);
  EXPECT_EQ(b.ids.size(), 2u);

  // The flag from another thread, while generating without a token limit.
  GenerationRequest r2 = greedy(prompt_ids(20, 22), 0);
  auto flag2 = r2.cancel;
  Latch first, done;
  std::atomic<int> n{0};
  GenerationResult res;
  ASSERT_TRUE(e->submit(r2, [&](const TokenEvent&) { if (++n == 1) first.open(); return true; },
                        [&](const GenerationResult& g) { res = g, done.open(); }));
  ASSERT_TRUE(first.wait());
  const auto t = std::chrono::steady_clock::now();
  flag2->store(true);
  ASSERT_TRUE(done.wait());
  EXPECT_LT(since(t), 2.0);
  EXPECT_EQ(res.cause, FinishCause::kCancelled);
}

// Cancelled inside a prefill chunk (the flag is seen after a block): the request ends, and the
// retained sequence is back at its last chunk boundary, so reusing it gives a cold run's tokens.
TEST(Engine, CancelInsidePrefillChunkKeepsTheSequenceExact) {
  auto e = make_engine({.retained_sequences = 2});
  auto cold = make_engine({.retained_sequences = 0});
  const auto p = prompt_ids(300, 23);
  GenerationRequest r = greedy(p, 4);
  auto flag = r.cancel;
  std::vector<int64_t> progress;
  std::promise<void> done;
  GenerationResult res;
  int tokens = 0;
  ASSERT_TRUE(e->submit(
      r, [&](const TokenEvent&) { return ++tokens > 0; }, [&](const GenerationResult& g) { res = g, done.set_value(); },
      [&](int64_t d, int64_t) {
        progress.push_back(d);
        if (d > 1) flag->store(true);  // the first block of the 299-token chunk is done
      }));
  done.get_future().wait();
  EXPECT_EQ(res.cause, FinishCause::kCancelled);
  EXPECT_EQ(tokens, 0);
  // Progress moves block by block and never back; the last report is inside the second chunk
  // (positions 1 .. 298; it would report 299 had the chunk run to its end).
  ASSERT_FALSE(progress.empty());
  EXPECT_TRUE(std::is_sorted(progress.begin(), progress.end()));
  EXPECT_GT(progress.back(), 1);
  EXPECT_LT(progress.back(), 299);
  const Outcome again = run(*e, greedy(p, 4));
  EXPECT_EQ(again.res.stats.cached_tokens, 1);
  const Outcome want = run(*cold, greedy(p, 4));
  EXPECT_EQ(again.ids, want.ids);
  EXPECT_EQ(again.logprobs, want.logprobs);
}

TEST(Engine, QueueLimitAndQueuedCancel) {
  auto e = make_engine({.max_queue = 1, .max_batch = 1});
  Latch started, a_done, b_done;
  GenerationRequest a = greedy(prompt_ids(20, 30), 0);
  auto a_cancel = a.cancel;
  GenerationResult ra, rb;
  ASSERT_TRUE(e->submit(a, [&](const TokenEvent&) {
    started.open();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return true;
  }, [&](const GenerationResult& g) { ra = g, a_done.open(); }));
  ASSERT_TRUE(started.wait());
  GenerationRequest b = greedy(prompt_ids(20, 31), 4);
  auto b_cancel = b.cancel;
  EXPECT_TRUE(e->submit(b, {}, [&](const GenerationResult& g) { rb = g, b_done.open(); }));
  EXPECT_EQ(e->queued(), 1);
  EXPECT_FALSE(e->submit(greedy(prompt_ids(20, 32), 4), {}, {}));  // full
  // A cancelled queued request is answered at once and frees its place, while A keeps going.
  b_cancel->store(true);
  ASSERT_TRUE(b_done.wait());
  EXPECT_EQ(rb.cause, FinishCause::kCancelled);
  EXPECT_TRUE(e->busy());
  EXPECT_EQ(e->queued(), 0);
  a_cancel->store(true);
  ASSERT_TRUE(a_done.wait());
  EXPECT_EQ(ra.cause, FinishCause::kCancelled);
}

TEST(Engine, LimitsAndValidation) {
  auto e = make_engine({.max_context = 40});
  EXPECT_EQ(e->max_context(), 40);
  const Outcome m = run(*e, greedy(prompt_ids(10, 40), 3));
  EXPECT_EQ(m.res.cause, FinishCause::kMaxTokens);
  EXPECT_EQ(m.ids.size(), 3u);
  // No max_tokens: runs until prompt + completion fills the context.
  const Outcome c = run(*e, greedy(prompt_ids(37, 41), 0));
  EXPECT_EQ(c.res.cause, FinishCause::kContextFull);
  EXPECT_EQ(c.ids.size(), 3u);

  auto error_of = [&](GenerationRequest r) -> std::string {
    try {
      e->submit(std::move(r), {}, {});
    } catch (const Error& err) {
      return err.what();
    }
    return "";
  };
  EXPECT_NE(error_of(greedy(prompt_ids(37, 42), 4)).find("maximum context length is 40"), std::string::npos);
  EXPECT_NE(error_of(greedy(prompt_ids(40, 42), 0)).find("context limit"), std::string::npos);
  EXPECT_NE(error_of(greedy({}, 4)).find("empty"), std::string::npos);
  EXPECT_NE(error_of(greedy({5, 129280}, 4)).find("outside the vocabulary"), std::string::npos);
  EXPECT_NE(error_of(greedy({-1}, 4)).find("outside the vocabulary"), std::string::npos);

  // A stop id ends generation; the stop token itself is delivered last.
  const Outcome g = run(*e, greedy(prompt_ids(10, 43), 6));
  GenerationRequest s = greedy(prompt_ids(10, 43), 6);
  s.stop_ids = {g.ids[2]};
  const Outcome st = run(*e, s);
  EXPECT_EQ(st.res.cause, FinishCause::kStopToken);
  EXPECT_EQ(st.ids, std::vector<int32_t>(g.ids.begin(), g.ids.begin() + 3));
}

TEST(Engine, ScriptedTokensStreamCompleteUtf8) {
  auto e = make_engine();
  const text::Tokenizer& tok = *shared().tok;
  const std::string body = "<think>héllo 世界</think>Answer";
  const int32_t eos = *tok.token_id("<｜end▁of▁sentence｜>");
  GenerationRequest r = greedy(prompt_ids(10, 50), 100);
  r.scripted_tokens = concat(tok.encode(body), {eos});
  const Outcome o = run(*e, r);
  EXPECT_EQ(o.ids, r.scripted_tokens);
  EXPECT_EQ(o.res.cause, FinishCause::kStopToken);
  EXPECT_EQ(o.text, body + "<｜end▁of▁sentence｜>");
  bool saw_close = false;
  for (const TokenEvent& ev : o.events) saw_close |= ev.text == "</think>";
  EXPECT_TRUE(saw_close);

  // "é" as its two byte tokens: nothing until the character is complete; the script running out
  // ends like a length limit.
  GenerationRequest r2 = greedy(prompt_ids(10, 51), 100);
  r2.scripted_tokens = {*tok.token_id("\u00C3"), *tok.token_id("\u00A9")};
  const Outcome o2 = run(*e, r2);
  ASSERT_EQ(o2.events.size(), 2u);
  EXPECT_EQ(o2.events[0].text, "");
  EXPECT_EQ(o2.events[1].text, "é");
  EXPECT_EQ(o2.res.cause, FinishCause::kMaxTokens);
  // A character cut off at the end is flushed lossily with the last token.
  r2.scripted_tokens = {*tok.token_id("\u00C3")};
  EXPECT_EQ(run(*e, r2).text, "\xEF\xBF\xBD");
}

TEST(Engine, ConcurrentSubmitsAllComplete) {
  auto e = make_engine({.max_queue = 64});
  std::mutex mu;
  std::condition_variable cv;
  int done = 0, calls = 0;
  std::vector<int> tokens(12, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int k = 0; k < 3; ++k) {
        const int i = t * 3 + k;
        ASSERT_TRUE(e->submit(greedy(prompt_ids(12 + i, 60 + i), 3), [&, i](const TokenEvent&) { ++tokens[static_cast<size_t>(i)]; return true; },
                              [&](const GenerationResult& g) {
                                std::lock_guard<std::mutex> lk(mu);
                                ++calls;
                                done += g.cause == FinishCause::kMaxTokens ? 1 : 0;
                                cv.notify_all();
                              }));
      }
    });
  for (auto& th : threads) th.join();
  std::unique_lock<std::mutex> lk(mu);
  ASSERT_TRUE(cv.wait_for(lk, std::chrono::seconds(30), [&] { return calls == 12; }));
  EXPECT_EQ(done, 12);
  for (int n : tokens) EXPECT_EQ(n, 3);
}

// Requests submitted together decode in one step each token (continuous batching), and each
// gets exactly the tokens and logprobs it gets alone: greedy and seeded sampling, two prompt
// lengths, one request cancelled halfway while the others go on. The same prompt twice at once
// must not share a sequence (the second forks from a checkpoint of the first).
TEST(Engine, BatchedRequestsEqualSoloRuns) {
  auto req = [](int i) {
    GenerationRequest r = greedy(prompt_ids(30 + 17 * i, 90 + i), 20);
    if (i == 1) {
      r.sampling.temperature = 0.8f;
      r.sampling.seed = 5;
    }
    if (i == 3) r.prompt = prompt_ids(30, 90);  // request 0's prompt again
    r.top_logprobs = 2;
    return r;
  };
  constexpr int kN = 4;
  std::vector<Outcome> solo;
  {
    auto e = make_engine({.max_batch = 1});
    for (int i = 0; i < kN; ++i) solo.push_back(run(*e, req(i)));
  }
  ASSERT_EQ(solo[0].ids, solo[3].ids);
  auto e = make_engine({.max_batch = kN});
  Latch all_queued, finished;
  std::mutex mu;
  std::vector<int> order;  // request of each token event, in delivery order
  std::vector<Outcome> got(kN);
  int done = 0;
  auto cancel2 = std::make_shared<std::atomic<bool>>(false);
  for (int i = 0; i < kN; ++i) {
    GenerationRequest r = req(i);
    if (i == 2) r.cancel = cancel2;
    ASSERT_TRUE(e->submit(
        std::move(r),
        [&, i](const TokenEvent& ev) {
          if (i == 0 && got[0].ids.empty()) all_queued.wait();  // hold the engine until every request waits
          std::lock_guard<std::mutex> lk(mu);
          order.push_back(i);
          got[static_cast<size_t>(i)].ids.push_back(ev.id);
          got[static_cast<size_t>(i)].logprobs.push_back(ev.logprob);
          if (i == 2 && got[2].ids.size() == 5) cancel2->store(true);
          return true;
        },
        [&, i](const GenerationResult& g) {
          std::lock_guard<std::mutex> lk(mu);
          got[static_cast<size_t>(i)].res = g;
          if (++done == kN) finished.open();
        }));
  }
  all_queued.open();
  ASSERT_TRUE(finished.wait(60));
  for (int i = 0; i < kN; ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    const Outcome& g = got[static_cast<size_t>(i)];
    if (i == 2) {
      EXPECT_EQ(g.res.cause, FinishCause::kCancelled);
      ASSERT_GE(g.ids.size(), 5u);
      ASSERT_LE(g.ids.size(), 6u);  // the flag is seen before the next token
      EXPECT_TRUE(std::equal(g.ids.begin(), g.ids.end(), solo[2].ids.begin()));
      continue;
    }
    EXPECT_EQ(g.res.cause, FinishCause::kMaxTokens);
    EXPECT_EQ(g.ids, solo[static_cast<size_t>(i)].ids);
    EXPECT_EQ(g.logprobs, solo[static_cast<size_t>(i)].logprobs);
  }
  // Batched, not one after another: request 3 (admitted last) had tokens before request 0's last.
  const auto first3 = std::find(order.begin(), order.end(), 3);
  const auto last0 = std::find(order.rbegin(), order.rend(), 0).base();
  EXPECT_LT(first3 - order.begin(), last0 - order.begin());
}

// A long prompt admitted while another request decodes is prefilled a chunk at a time between
// that request's decode steps (interleave_chunk), and both give exactly their solo tokens; with
// interleave_chunk = 0 the prompt runs in one go and the other request's stream waits.
TEST(Engine, LongPromptPrefillsBetweenDecodeSteps) {
  const GenerationRequest decoding = greedy(prompt_ids(20, 11), 40), longer = greedy(prompt_ids(300, 12), 5);
  Outcome solo_decoding, solo_longer;
  {
    auto e = make_engine({.max_batch = 1});
    solo_decoding = run(*e, decoding);
    solo_longer = run(*e, longer);
  }
  for (int interleave : {64, 0}) {
    SCOPED_TRACE("interleave_chunk " + std::to_string(interleave));
    auto e = make_engine({.max_batch = 2, .interleave_chunk = interleave});
    Latch second_queued, finished;
    std::mutex mu;
    std::vector<char> order;  // 't': a token of the decoding request, 'p' / 'P': the prompt's progress / its end
    Outcome got[2];
    int done = 0;
    auto on_done = [&](int i) {
      return [&, i](const GenerationResult& g) {
        std::lock_guard<std::mutex> lk(mu);
        got[i].res = g;
        if (++done == 2) finished.open();
      };
    };
    ASSERT_TRUE(e->submit(
        decoding,
        [&](const TokenEvent& ev) {
          if (got[0].ids.empty()) second_queued.wait();  // the long prompt arrives while this one decodes
          std::lock_guard<std::mutex> lk(mu);
          got[0].ids.push_back(ev.id);
          order.push_back('t');
          return true;
        },
        on_done(0)));
    ASSERT_TRUE(e->submit(
        longer,
        [&](const TokenEvent& ev) {
          std::lock_guard<std::mutex> lk(mu);
          got[1].ids.push_back(ev.id);
          return true;
        },
        on_done(1), [&](int64_t at, int64_t total) {
          std::lock_guard<std::mutex> lk(mu);
          order.push_back(at == total ? 'P' : 'p');
        }));
    second_queued.open();
    ASSERT_TRUE(finished.wait(60));
    EXPECT_EQ(got[0].ids, solo_decoding.ids);
    EXPECT_EQ(got[1].ids, solo_longer.ids);
    // Tokens of the decoding request between the prompt's first progress and its end.
    const auto first = std::find(order.begin(), order.end(), 'p'), end = std::find(order.begin(), order.end(), 'P');
    ASSERT_NE(first, order.end());
    ASSERT_NE(end, order.end());
    const auto between = std::count(first, end, 't');
    if (interleave > 0)
      EXPECT_GE(between, 300 / interleave - 1);  // (one step per chunk of the prompt)
    else
      EXPECT_EQ(between, 0);
  }
}

TEST(Engine, ShutdownCancelsRunningAndQueued) {
  auto e = make_engine();
  Latch started;
  std::mutex mu;
  std::vector<FinishCause> causes;
  auto on_done = [&](const GenerationResult& g) {
    std::lock_guard<std::mutex> lk(mu);
    causes.push_back(g.cause);
  };
  ASSERT_TRUE(e->submit(greedy(prompt_ids(20, 70), 0), [&](const TokenEvent&) {
    started.open();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return true;
  }, on_done));
  ASSERT_TRUE(started.wait());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(e->submit(greedy(prompt_ids(20, 71 + i), 5), {}, on_done));
  const auto t = std::chrono::steady_clock::now();
  e->shutdown();
  EXPECT_LT(since(t), 2.0);
  EXPECT_EQ(causes, std::vector<FinishCause>(4, FinishCause::kCancelled));
  EXPECT_FALSE(e->submit(greedy(prompt_ids(20, 75), 5), {}, on_done));
  e->shutdown();  // idempotent
  e.reset();
  EXPECT_EQ(causes.size(), 4u);
}

// The next turn's rendered text contains the previous completion; encode_prompt() keeps the
// sampled tokens for it, so the request continues from the live end.
TEST(Engine, EncodePromptReusesSampledTokens) {
  auto e = make_engine();
  const text::Tokenizer& tok = *shared().tok;
  const std::string p_text = "<｜begin▁of▁sentence｜><｜User｜>What is six times seven?<｜Assistant｜></think>";
  EXPECT_EQ(e->encode_prompt(p_text), tok.encode(p_text));  // nothing retained yet
  const std::vector<int32_t> prompt = tok.encode(p_text);
  // The "model" answers in tokens that encode() would not produce for the same text.
  const std::vector<int32_t> answer = {*tok.token_id("4"), *tok.token_id("2"), *tok.token_id(".")};
  GenerationRequest r = greedy(prompt, 10);
  r.scripted_tokens = concat(answer, {*tok.token_id("<｜end▁of▁sentence｜>")});
  run(*e, r);
  const std::string tail = "<｜end▁of▁sentence｜><｜User｜>And times eight?<｜Assistant｜></think>";
  const std::string next = p_text + "42." + tail;
  const std::vector<int32_t> ids = e->encode_prompt(next);
  EXPECT_EQ(ids, concat(concat(prompt, answer), tok.encode(tail)));
  EXPECT_EQ(run(*e, greedy(ids, 2)).res.stats.cached_tokens, static_cast<int>(prompt.size() + answer.size()));
  // Text that leaves the sequence inside a word falls back to the last safe boundary.
  const std::string other = p_text + "4x";
  EXPECT_EQ(e->encode_prompt(other), concat(prompt, tok.encode("4x")));
}

// tool_choice enforcement: forced tokens come first (from the start, or once `force_after` is
// generated), then the script / sampler resumes; a stop token before the trigger becomes the trigger.
TEST(Engine, ForcedTokensAfterTrigger) {
  auto e = make_engine();
  const text::Tokenizer& tok = *shared().tok;
  const int32_t eos = *tok.token_id("<｜end▁of▁sentence｜>");
  const int32_t think_end = *tok.token_id("</think>");
  const std::vector<int32_t> forced = tok.encode("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n");

  // From the start: the forced tokens, then the script.
  GenerationRequest r = greedy(prompt_ids(10, 60), 100);
  r.forced_tokens = forced;
  r.scripted_tokens = concat(tok.encode("tail"), {eos});
  Outcome o = run(*e, r);
  EXPECT_EQ(o.ids, concat(forced, r.scripted_tokens));
  EXPECT_EQ(o.res.cause, FinishCause::kStopToken);

  // After "</think>": reasoning, the trigger, the forced part, then the rest of the script.
  GenerationRequest r2 = greedy(prompt_ids(10, 61), 100);
  r2.forced_tokens = forced;
  r2.force_after = think_end;
  const std::vector<int32_t> reasoning = tok.encode("hmm");
  r2.scripted_tokens = concat(concat(reasoning, {think_end}), concat(tok.encode("x"), {eos}));
  o = run(*e, r2);
  EXPECT_EQ(o.ids, concat(concat(concat(reasoning, {think_end}), forced), concat(tok.encode("x"), {eos})));

  // EOS inside reasoning is replaced by the trigger, so the forced part still comes.
  GenerationRequest r3 = greedy(prompt_ids(10, 62), 100);
  r3.forced_tokens = forced;
  r3.force_after = think_end;
  r3.scripted_tokens = concat(reasoning, {eos});
  o = run(*e, r3);
  EXPECT_EQ(o.ids, concat(concat(reasoning, {think_end}), forced));
  EXPECT_EQ(o.res.cause, FinishCause::kMaxTokens);  // the script ran out after the forced part

  // Sampled (no script): the forced part is emitted first and counts against max_tokens.
  GenerationRequest r4 = greedy(prompt_ids(10, 63), 3);
  r4.forced_tokens = forced;
  o = run(*e, r4);
  ASSERT_EQ(o.ids.size(), 3u);
  EXPECT_EQ(o.ids, std::vector<int32_t>(forced.begin(), forced.begin() + 3));
  EXPECT_EQ(o.res.cause, FinishCause::kMaxTokens);

  // Ids are validated like the prompt's.
  GenerationRequest bad = greedy(prompt_ids(10, 64), 3);
  bad.forced_tokens = {-1};
  EXPECT_THROW(e->submit(bad, {}, {}), Error);
}

// JSON mode on the random-weight model: whatever the weights, the constrained sampler only ever
// produces a prefix of one JSON object, closes it, and ends with EOS right after.
TEST(Engine, JsonObjectModeAlwaysParses) {
  auto e = make_engine();
  const int32_t eos = shared().model->config().eos_token_id;
  int closed = 0;
  for (uint64_t seed : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u}) {
    for (float temp : {0.0f, 1.0f}) {
      if (temp == 0.0f && seed > 2) continue;
      GenerationRequest r = greedy(prompt_ids(12, static_cast<int>(seed)), 200);
      r.sampling.temperature = temp;
      r.sampling.seed = seed;
      r.json_object = true;
      r.stop_ids = {eos};
      Outcome o = run(*e, r);
      ASSERT_FALSE(o.ids.empty());
      // Rebuild the exact bytes (the detokenized text replaces partial characters at the very end).
      std::string bytes;
      for (int32_t id : o.ids)
        if (id != eos) bytes += shared().tok->token_bytes(id);
      JsonPrefixValidator v;
      EXPECT_TRUE(v.feed(bytes)) << "seed " << seed << ": " << bytes;
      if (o.res.cause == FinishCause::kStopToken) {
        ++closed;
        EXPECT_EQ(o.ids.back(), eos);
        EXPECT_TRUE(v.complete()) << bytes;
        EXPECT_NO_THROW({
          auto j = nlohmann::json::parse(o.text.substr(0, o.text.size() - o.events.back().text.size()));
          EXPECT_TRUE(j.is_object());
        }) << o.text;
      } else {
        EXPECT_EQ(o.res.cause, FinishCause::kMaxTokens);
        EXPECT_FALSE(v.complete());
      }
      std::fprintf(stderr, "seed %d temp %.0f: %zu tokens, %s\n", static_cast<int>(seed), temp, o.ids.size(),
                   o.res.cause == FinishCause::kStopToken ? "closed" : "length");
    }
  }
  EXPECT_GT(closed, 0);
}

// JSON mode after the reasoning: free until "</think>", constrained after it; an EOS sampled
// inside the reasoning becomes "</think>".
TEST(Engine, JsonObjectModeAfterThinkEnd) {
  auto e = make_engine();
  const int32_t eos = shared().model->config().eos_token_id;
  const int32_t think_end = *shared().tok->token_id("</think>");
  GenerationRequest r = greedy(prompt_ids(12, 9), 300);
  r.sampling.temperature = 1.0f;
  r.sampling.seed = 11;
  r.json_object = true;
  r.json_after = think_end;
  r.stop_ids = {eos};
  // The reasoning is free; whatever follows "</think>" is a JSON prefix, and EOS can only end the
  // output after the object closed.
  Outcome o = run(*e, r);
  auto it = std::find(o.ids.begin(), o.ids.end(), think_end);
  if (it != o.ids.end()) {
    std::string bytes;
    for (auto j = it + 1; j != o.ids.end(); ++j)
      if (*j != eos) bytes += shared().tok->token_bytes(*j);
    JsonPrefixValidator v;
    EXPECT_TRUE(v.feed(bytes)) << bytes;
    if (o.res.cause == FinishCause::kStopToken) {
      EXPECT_TRUE(v.complete());
    }
  } else {
    EXPECT_EQ(o.res.cause, FinishCause::kMaxTokens);  // never ended the reasoning: no EOS either
  }
  EXPECT_EQ(std::count(o.ids.begin(), o.ids.end(), eos), o.res.cause == FinishCause::kStopToken ? 1 : 0);
}
