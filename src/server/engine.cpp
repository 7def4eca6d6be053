// The generation engine: one thread owns the model and serves a FIFO queue; retained sequences
// with state checkpoints give prefix reuse (docs/prefix-cache.md).
#include "server/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <limits>
#include <mutex>
#include <random>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "model/checkpoint.h"
#include "server/json_constraint.h"

namespace dsv4::server {

namespace {

using Clock = std::chrono::steady_clock;


double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

struct Job {
  GenerationRequest req;
  TokenCallback on_token;
  DoneCallback on_done;
  ProgressCallback on_progress;
  Clock::time_point submitted;
  bool cancelled() const { return req.cancel && req.cancel->load(std::memory_order_relaxed); }
};

// A retained sequence: its state, the tokens that state has consumed, and snapshots of it.
struct Seq {
  SequenceState state;
  std::vector<int32_t> tokens;  // state.pos == tokens.size()
  std::vector<std::shared_ptr<const StateCheckpoint>> checkpoints;  // ascending pos, all <= tokens.size()
  int64_t prompt_len = 0;  // prompt length of the last request served on this sequence
  uint64_t last_used = 0;
  bool active = false;  // a request is generating on it: neither evicted nor taken over
};

// Where a new prompt can resume: the live end of `seq` (cp == nullptr) or one of its checkpoints.
struct Match {
  Seq* seq = nullptr;
  std::shared_ptr<const StateCheckpoint> cp;
  int64_t reuse = 0;
};

int64_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b, int64_t limit) {
  const int64_t n = std::min<int64_t>({static_cast<int64_t>(a.size()), static_cast<int64_t>(b.size()), limit});
  int64_t i = 0;
  while (i < n && a[static_cast<size_t>(i)] == b[static_cast<size_t>(i)]) ++i;
  return i;
}

// Uniform double in [0, 1) from 53 random bits: fixed formula, so a seed gives the same tokens
// with any standard library.
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// Order for candidate lists: higher value first, lower id on ties (deterministic).
struct ByValueDesc {
  const float* v;
  bool operator()(int32_t a, int32_t b) const { return v[a] > v[b] || (v[a] == v[b] && a < b); }
};

// Sampling with penalties, top-k, temperature and top-p for one request.
class RequestSampler {
 public:
  RequestSampler(const SamplingParams& p, int vocab) : p_(p), vocab_(vocab) {
    rng_.seed(p.seed ? *p.seed : (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}());
  }

  int32_t sample(const float* raw) {
    const float* l = penalized(raw);
    if (greedy()) return argmax(l);
    idx_.resize(static_cast<size_t>(vocab_));
    for (int32_t i = 0; i < vocab_; ++i) idx_[static_cast<size_t>(i)] = i;
    size_t n = idx_.size();
    bool sorted = false;
    if (p_.top_k > 0 && p_.top_k < vocab_) {
      n = static_cast<size_t>(p_.top_k);
      std::partial_sort(idx_.begin(), idx_.begin() + static_cast<ptrdiff_t>(n), idx_.end(), ByValueDesc{l});
      sorted = true;
    }
    const int32_t best = sorted ? idx_[0] : argmax(l);
    const double inv_t = 1.0 / static_cast<double>(p_.temperature);
    prob_.resize(static_cast<size_t>(vocab_));
    double sum = 0;
    for (size_t i = 0; i < n; ++i) {
      const int32_t id = idx_[i];
      sum += (prob_[static_cast<size_t>(id)] = static_cast<float>(std::exp((static_cast<double>(l[id]) - l[best]) * inv_t)));
    }
    if (p_.top_p < 1.0f) {
      // Nucleus: sort only as far as needed (growing prefix), keep the smallest set reaching top_p.
      const double target = static_cast<double>(p_.top_p) * sum;
      size_t k = std::min<size_t>(n, 64), kept = n;
      for (;;) {
        if (!sorted)  // (a top-k list is already in order)
          std::partial_sort(idx_.begin(), idx_.begin() + static_cast<ptrdiff_t>(k), idx_.begin() + static_cast<ptrdiff_t>(n),
                            ByValueDesc{prob_.data()});
        double acc = 0;
        size_t i = 0;
        while (i < k && acc < target) acc += prob_[static_cast<size_t>(idx_[i++])];
        if (acc >= target || k == n) {
          kept = std::max<size_t>(i, 1);
          break;
        }
        k = std::min(n, k * 4);
      }
      n = kept;
      sum = 0;
      for (size_t i = 0; i < n; ++i) sum += prob_[static_cast<size_t>(idx_[i])];
    }
    double u = uniform01(rng_) * sum;
    for (size_t i = 0; i < n; ++i) {
      u -= prob_[static_cast<size_t>(idx_[i])];
      if (u < 0) return idx_[i];
    }
    return idx_[n - 1];
  }

  // Constrained sampling (JSON mode): the same distribution restricted to the tokens `ok` accepts.
  // Candidates are walked in probability order, so `ok` runs on few tokens: greedy takes the first
  // accepted one; sampling draws among the accepted tokens of the kept set (top-k / nucleus),
  // looking at no more than kScan candidates once one is accepted, and when the kept set has none
  // it scans further down the distribution and draws among the first accepted ones found there.
  // Returns -1 when no token of the vocabulary is accepted.
  template <class Accept>
  int32_t sample_if(const float* raw, Accept&& ok) {
    constexpr size_t kScan = 4096;
    const float* l = penalized(raw);
    const size_t V = static_cast<size_t>(vocab_);
    idx_.resize(V);
    for (int32_t i = 0; i < vocab_; ++i) idx_[static_cast<size_t>(i)] = i;
    size_t sorted = 0;
    auto sort_to = [&](size_t k) {
      k = std::min(k, V);
      if (k > sorted) {
        std::partial_sort(idx_.begin() + static_cast<ptrdiff_t>(sorted), idx_.begin() + static_cast<ptrdiff_t>(k),
                          idx_.end(), ByValueDesc{l});
        sorted = k;
      }
    };
    auto next_chunk = [](size_t at) { return at < 64 ? size_t{64} : at * 4; };
    if (greedy()) {
      for (size_t i = 0; i < V; ++i) {
        if (i == sorted) sort_to(next_chunk(i));
        if (ok(idx_[i])) return idx_[i];
      }
      return -1;
    }
    // Unnormalised probabilities over the whole vocabulary (the top-p target needs the total).
    const double inv_t = 1.0 / static_cast<double>(p_.temperature);
    const int32_t best = argmax(l);
    prob_.resize(V);
    double total = 0;
    for (size_t i = 0; i < V; ++i)
      total += (prob_[i] = static_cast<float>(std::exp((static_cast<double>(l[i]) - l[best]) * inv_t)));
    if (p_.top_k > 0 && static_cast<size_t>(p_.top_k) < V) {
      sort_to(static_cast<size_t>(p_.top_k));
      total = 0;
      for (size_t i = 0; i < sorted; ++i) total += prob_[static_cast<size_t>(idx_[i])];
    }
    const size_t kept_max = p_.top_k > 0 ? std::min(V, static_cast<size_t>(p_.top_k)) : V;
    const double target = static_cast<double>(std::min(p_.top_p, 1.0f)) * total;
    cand_.clear();
    double acc = 0, cand_sum = 0;
    size_t i = 0;
    // The kept set: in order until the nucleus mass is reached (always at least one token).
    for (; i < kept_max && (i == 0 || acc < target); ++i) {
      if (i == sorted) sort_to(next_chunk(i));
      const int32_t id = idx_[i];
      const float p = prob_[static_cast<size_t>(id)];
      acc += p;
      if (ok(id)) {
        cand_.push_back(id);
        cand_sum += p;
      }
      if (!cand_.empty() && i + 1 >= kScan) {
        ++i;
        break;
      }
    }
    // Fallback: nothing acceptable in the kept set, scan on and use the first chunk with any.
    while (cand_.empty() && i < V) {
      const size_t end = std::min(V, next_chunk(i));
      sort_to(end);
      for (; i < end; ++i)
        if (ok(idx_[i])) {
          cand_.push_back(idx_[i]);
          cand_sum += prob_[static_cast<size_t>(idx_[i])];
        }
    }
    if (cand_.empty()) return -1;
    if (!(cand_sum > 0)) return cand_.front();
    double u = uniform01(rng_) * cand_sum;
    for (const int32_t id : cand_) {
      u -= prob_[static_cast<size_t>(id)];
      if (u < 0) return id;
    }
    return cand_.back();
  }

  void count(int32_t id) { ++counts_[id]; }

 private:
  bool greedy() const { return !(p_.temperature > 0.0f) || p_.top_p <= 0.0f || p_.top_k == 1; }

  const float* penalized(const float* raw) {
    if ((p_.presence_penalty == 0.0f && p_.frequency_penalty == 0.0f) || counts_.empty()) return raw;
    pen_.assign(raw, raw + vocab_);
    for (const auto& [id, n] : counts_)  // OpenAI: presence once, frequency per occurrence
      pen_[static_cast<size_t>(id)] -= p_.presence_penalty + p_.frequency_penalty * static_cast<float>(n);
    return pen_.data();
  }

  int32_t argmax(const float* l) const {
    int32_t best = 0;
    for (int32_t i = 1; i < vocab_; ++i)
      if (l[i] > l[best]) best = i;
    return best;
  }

  SamplingParams p_;
  int vocab_;
  std::mt19937_64 rng_;
  std::unordered_map<int32_t, int> counts_;
  std::vector<float> pen_, prob_;
  std::vector<int32_t> idx_, cand_;
};

// JSON-mode decoding state: the validator over the answer so far, plus the alternative of a
// tool-call block opening (json_allow_tool_calls), matched byte by byte; once it is complete the
// output is free.
constexpr std::string_view kToolBlockOpen = "<｜DSML｜tool_calls>";

struct JsonDecodeState {
  JsonPrefixValidator v{true};
  size_t tool_pos = 0;  // bytes of kToolBlockOpen matched (0: none)
  bool free = false;

  // Would `bytes` (the token's text; `added`: a special token) keep the output valid? Updates *this.
  bool advance(std::string_view bytes, bool added, bool allow_tools) {
    if (bytes.empty()) return false;
    for (size_t i = 0; i < bytes.size(); ++i) {
      const unsigned char c = static_cast<unsigned char>(bytes[i]);
      if (tool_pos > 0) {
        if (c != static_cast<unsigned char>(kToolBlockOpen[tool_pos])) return false;
        if (++tool_pos == kToolBlockOpen.size()) {
          free = true;
          return true;
        }
        continue;
      }
      if (added) return false;  // special tokens only as part of the tool-call opening
      if (allow_tools && c == '<' && v.mode() == JsonPrefixValidator::Mode::kStart) {
        tool_pos = 1;
        continue;
      }
      if (!v.feed(c)) return false;
    }
    return true;
  }
};

// log-softmax of the raw logits (temperature 1): the sampled token and the n best alternatives.
void fill_logprobs(const float* l, int vocab, int n, TokenEvent& ev, std::vector<int32_t>& idx) {
  double m = -std::numeric_limits<double>::infinity();
  for (int i = 0; i < vocab; ++i) m = std::max(m, static_cast<double>(l[i]));
  double s = 0;
  for (int i = 0; i < vocab; ++i) s += std::exp(static_cast<double>(l[i]) - m);
  const double lse = m + std::log(s);
  ev.logprob = static_cast<float>(static_cast<double>(l[ev.id]) - lse);
  ev.top.clear();
  if (n <= 0) return;
  n = std::min(n, vocab);
  idx.resize(static_cast<size_t>(vocab));
  for (int32_t i = 0; i < vocab; ++i) idx[static_cast<size_t>(i)] = i;
  std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), ByValueDesc{l});
  for (int i = 0; i < n; ++i) {
    const int32_t id = idx[static_cast<size_t>(i)];
    ev.top.push_back({id, static_cast<float>(static_cast<double>(l[id]) - lse)});
  }
}

}  // namespace

namespace {
// A request past its prefill: its sequence, and what its decoding carries from token to token.
struct Active {
  // vocab: the ids a sample may take; model_vocab: the logits' length.
  Active(std::unique_ptr<Job> j, int vocab, int model_vocab, const text::Tokenizer& tok)
      : job(std::move(j)), sampler(job->req.sampling, vocab), detok(tok), logits(static_cast<size_t>(model_vocab)) {}
  std::unique_ptr<Job> job;
  GenerationResult res;
  Seq* seq = nullptr;
  int64_t L = 0;  // prompt tokens
  Clock::time_point t_started{}, t_prefilled{};
  RequestSampler sampler;
  text::StreamDecoder detok;
  std::unordered_set<int32_t> stops;
  size_t script_pos = 0;
  std::deque<int32_t> forced;
  bool force_armed = true, json_mode = false, json_armed = false;
  JsonDecodeState json;
  int completion = 0;
  std::vector<float> logits;  // the next token's
  bool done = false;          // ended in this step
};
}  // namespace

struct Engine::Impl {
  std::shared_ptr<Model> model;
  std::shared_ptr<const text::Tokenizer> tok;
  EngineOptions opt;
  int64_t max_ctx = 0;
  int vocab = 0;  // ids usable in prompts and samples: inside both the model's and the tokenizer's vocabulary
  std::unordered_set<int32_t> eos;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<std::unique_ptr<Job>> queue;
  bool running = false;
  std::atomic<bool> stopping{false};
  std::thread thread;
  std::once_flag joined;

  // Token lists of the retained sequences, published after each request for encode_prompt().
  mutable std::mutex pub_mu;
  std::vector<std::shared_ptr<const std::vector<int32_t>>> published;

  // Engine thread only.
  std::vector<std::unique_ptr<Seq>> seqs;
  uint64_t tick = 0;
  std::vector<float> batch_logits;
  std::vector<int32_t> scratch_idx;
  // Each token's bytes and whether it is an added (special) token, built on first use (JSON mode).
  std::vector<std::string> token_text;
  std::vector<uint8_t> token_added;
  void build_token_table();

  void loop();
  std::unique_ptr<Active> start(std::unique_ptr<Job> job);
  enum class Prefill { kDone, kMore, kEnded };
  Prefill prefill(Active& a, int64_t budget);
  void begin_decode(Active& a);
  bool pick(Active& a, int32_t& id);
  void step(std::vector<std::unique_ptr<Active>>& active);
  void drop(Active& a);
  void end(Active& a);
  void trim_retained(const Seq* keep);
  void finish(Job& job, GenerationResult& res);
  void finish_cancelled(Job& job);
  void sweep_cancelled_queue();
  Match best_match(const std::vector<int32_t>& prompt);
  Seq& slot_for_new(const Seq* keep);
  Seq& acquire(const std::vector<int32_t>& prompt, int64_t& reused);
  void add_checkpoint(Seq& s);
  void enforce_budget(const Seq* keep);
  void publish();
  bool added_token_at(const std::string& text, size_t off) const;
  size_t cache_bytes() const;
  bool cancelled(const Job& job) const { return job.cancelled() || stopping.load(std::memory_order_relaxed); }
};

Engine::Engine(std::shared_ptr<Model> model, std::shared_ptr<const text::Tokenizer> tokenizer, EngineOptions options)
    : impl_(std::make_unique<Impl>()) {
  if (!model || !tokenizer) throw Error("engine: model and tokenizer are required");
  Impl& m = *impl_;
  m.model = std::move(model);
  m.tok = std::move(tokenizer);
  m.opt = options;
  const ModelConfig& c = m.model->config();
  m.max_ctx = c.max_position_embeddings;
  if (options.max_context > 0) m.max_ctx = std::min<int64_t>(options.max_context, m.max_ctx);
  m.vocab = std::min<int>(c.vocab_size, m.tok->vocab_size());
  m.eos.insert(c.eos_token_id);
  if (auto e = m.tok->eos_id()) m.eos.insert(*e);
  m.thread = std::thread([this] { impl_->loop(); });
}

Engine::~Engine() { shutdown(); }

int64_t Engine::max_context() const { return impl_->max_ctx; }
const ModelConfig& Engine::config() const { return impl_->model->config(); }
const text::Tokenizer& Engine::tokenizer() const { return *impl_->tok; }

int Engine::queued() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  int n = 0;
  for (const auto& j : impl_->queue) n += j->cancelled() ? 0 : 1;
  return n;
}

bool Engine::busy() const {
  std::lock_guard<std::mutex> lk(impl_->mu);
  return impl_->running || !impl_->queue.empty();
}

bool Engine::submit(GenerationRequest request, TokenCallback on_token, DoneCallback on_done, ProgressCallback on_progress) {
  Impl& m = *impl_;
  const int64_t n = static_cast<int64_t>(request.prompt.size());
  if (n == 0) throw Error("the prompt is empty");
  auto check_ids = [&](const std::vector<int32_t>& ids, const char* what) {
    for (size_t i = 0; i < ids.size(); ++i)
      if (ids[i] < 0 || ids[i] >= m.vocab)
        throw Error(std::string(what) + " token id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                    " is outside the vocabulary [0, " + std::to_string(m.vocab) + ")");
  };
  check_ids(request.prompt, "prompt");
  check_ids(request.scripted_tokens, "scripted");
  check_ids(request.forced_tokens, "forced");
  if (request.force_after >= m.vocab) throw Error("force_after token id is outside the vocabulary");
  if (request.json_object && request.json_after >= m.vocab) throw Error("json_after token id is outside the vocabulary");
  if (n >= m.max_ctx)
    throw Error("the prompt has " + std::to_string(n) + " tokens; the context limit is " + std::to_string(m.max_ctx) +
                " tokens, which leaves no room for a completion");
  if (request.max_tokens > 0 && n + request.max_tokens > m.max_ctx)
    throw Error("this model's maximum context length is " + std::to_string(m.max_ctx) + " tokens; the request has " +
                std::to_string(n) + " prompt tokens + max_tokens " + std::to_string(request.max_tokens) + " = " +
                std::to_string(n + request.max_tokens) + " tokens");
  request.top_logprobs = std::min(request.top_logprobs, 20);
  auto job = std::make_unique<Job>();
  job->req = std::move(request);
  job->on_token = std::move(on_token);
  job->on_done = std::move(on_done);
  job->on_progress = std::move(on_progress);
  job->submitted = Clock::now();
  {
    std::lock_guard<std::mutex> lk(m.mu);
    if (m.stopping) return false;
    if (m.opt.max_queue > 0) {
      int live = 0;  // cancelled entries wait only for their on_done and do not hold a place
      for (const auto& j : m.queue) live += j->cancelled() ? 0 : 1;
      if (live >= m.opt.max_queue) return false;
    }
    m.queue.push_back(std::move(job));
  }
  m.cv.notify_all();
  return true;
}

void Engine::shutdown() {
  Impl& m = *impl_;
  {
    std::lock_guard<std::mutex> lk(m.mu);
    m.stopping = true;
  }
  m.cv.notify_all();
  // From a callback (engine thread) we can only ask; the owner's later call joins.
  if (std::this_thread::get_id() == m.thread.get_id()) return;
  std::call_once(m.joined, [&] {
    if (m.thread.joinable()) m.thread.join();
  });
}

void Engine::Impl::loop() {
  // Admit queued requests while fewer than max_batch generate, and take one token for every
  // decoding request in one forward step (continuous batching). One admitted request at a time
  // is prefilled: all at once while nothing decodes, else at most interleave_chunk prompt tokens
  // between two decode steps, so that a long prompt does not stall the others' streams.
  const size_t max_batch = static_cast<size_t>(std::max(opt.max_batch, 1));
  std::vector<std::unique_ptr<Active>> active;
  std::unique_ptr<Active> admitting;  // prefilling
  for (;;) {
    while (!admitting && active.size() < max_batch) {
      std::unique_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lk(mu);
        if (active.empty()) cv.wait(lk, [&] { return stopping.load() || !queue.empty(); });
        if (stopping || queue.empty()) break;
        job = std::move(queue.front());
        queue.pop_front();
        running = true;
      }
      admitting = start(std::move(job));
      if (!admitting || !active.empty()) break;
      // Nothing decodes: the prompt runs to its end, and the next request may be admitted.
      if (prefill(*admitting, 0) == Prefill::kDone) {
        begin_decode(*admitting);
        active.push_back(std::move(admitting));
      }
      admitting.reset();
    }
    if (stopping) break;
    if (admitting) {
      const int64_t budget = opt.interleave_chunk > 0 ? opt.interleave_chunk : 0;
      switch (prefill(*admitting, active.empty() ? 0 : budget)) {
        case Prefill::kDone:
          begin_decode(*admitting);
          active.push_back(std::move(admitting));
          break;
        case Prefill::kEnded: admitting.reset(); break;
        case Prefill::kMore: break;
      }
    }
    if (!active.empty()) step(active);
    std::lock_guard<std::mutex> lk(mu);
    running = !active.empty() || admitting;
  }
  if (admitting) active.push_back(std::move(admitting));
  for (auto& a : active) {
    a->res.cause = FinishCause::kCancelled;
    end(*a);
  }
  std::deque<std::unique_ptr<Job>> rest;
  {
    std::lock_guard<std::mutex> lk(mu);
    rest.swap(queue);
    running = false;
  }
  for (auto& j : rest) finish_cancelled(*j);
}

void Engine::Impl::finish(Job& job, GenerationResult& res) {
  if (!job.on_done) return;
  try {
    job.on_done(res);
  } catch (...) {  // a failing callback must not take the engine down
  }
}

void Engine::Impl::finish_cancelled(Job& job) {
  GenerationResult res;
  res.cause = FinishCause::kCancelled;
  res.stats.prompt_tokens = static_cast<int>(job.req.prompt.size());
  res.stats.queue_seconds = seconds(job.submitted, Clock::now());
  finish(job, res);
}

// Requests cancelled while queued are answered at once, even while another one generates.
void Engine::Impl::sweep_cancelled_queue() {
  std::vector<std::unique_ptr<Job>> done;
  {
    std::lock_guard<std::mutex> lk(mu);
    for (auto it = queue.begin(); it != queue.end();) {
      if ((*it)->cancelled()) {
        done.push_back(std::move(*it));
        it = queue.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& j : done) finish_cancelled(*j);
}

Match Engine::Impl::best_match(const std::vector<int32_t>& prompt) {
  Match best;
  const int64_t limit = static_cast<int64_t>(prompt.size()) - 1;  // the last prompt token is always run
  for (auto& sp : seqs) {
    Seq& s = *sp;
    const int64_t common = common_prefix(s.tokens, prompt, limit);
    Match m;
    m.seq = &s;
    // A generating sequence's live end moves on: only its (immutable) checkpoints can be forked.
    if (!s.active && common == static_cast<int64_t>(s.tokens.size())) {
      m.reuse = common;  // the whole sequence is a prefix: continue from its live end
    } else {
      for (auto it = s.checkpoints.rbegin(); it != s.checkpoints.rend(); ++it)
        if ((*it)->pos <= common) {
          m.cp = *it;
          m.reuse = (*it)->pos;
          break;
        }
    }
    if (m.reuse == 0) continue;
    const bool better = m.reuse > best.reuse ||
                        (m.reuse == best.reuse && ((!m.cp && best.cp) || ((!m.cp) == (!best.cp) && s.last_used > best.seq->last_used)));
    if (better) best = m;
  }
  return best;
}

// A cleared sequence for a new prefix: an unused slot, else the least recently used one
// (never `keep`, the sequence being forked from).
Seq& Engine::Impl::slot_for_new(const Seq* keep) {
  const size_t cap = static_cast<size_t>(std::max(opt.retained_sequences, 1));
  if (seqs.size() < cap) {
    seqs.push_back(std::make_unique<Seq>());
    seqs.back()->state = model->new_state();
    return *seqs.back();
  }
  Seq* lru = nullptr;
  for (auto& sp : seqs)
    if (sp.get() != keep && !sp->active && (!lru || sp->last_used < lru->last_used)) lru = sp.get();
  if (!lru) {  // every slot is generating (or kept): one more, trimmed once a request ends
    seqs.push_back(std::make_unique<Seq>());
    seqs.back()->state = model->new_state();
    return *seqs.back();
  }
  // Fresh allocations so an evicted long sequence gives its memory back.
  lru->state = model->new_state();
  lru->tokens.clear();
  lru->tokens.shrink_to_fit();
  lru->checkpoints.clear();
  lru->prompt_len = 0;
  return *lru;
}

Seq& Engine::Impl::acquire(const std::vector<int32_t>& prompt, int64_t& reused) {
  reused = 0;
  Match m = opt.retained_sequences > 0 ? best_match(prompt) : Match{};
  if (m.reuse == 0) return slot_for_new(nullptr);
  reused = m.reuse;
  Seq& src = *m.seq;
  if (!m.cp) return src;
  const int64_t p = m.cp->pos;
  // Diverging inside the source's last prompt means another conversation shares its prefix
  // (e.g. the same system prompt): fork, so both stay warm. Diverging in its completion (or at
  // the prompt's last token) means this request supersedes it: rewind in place.
  if (src.active || (p < src.prompt_len - 1 && opt.retained_sequences > 1)) {
    Seq& dst = slot_for_new(&src);
    fork_state(src.state, *m.cp, dst.state);
    dst.tokens.assign(prompt.begin(), prompt.begin() + p);
    for (const auto& c : src.checkpoints)
      if (c->pos <= p) dst.checkpoints.push_back(c);  // immutable: shared, not copied
    dst.prompt_len = src.prompt_len;
    return dst;
  }
  restore_checkpoint(src.state, *m.cp);
  src.tokens.resize(static_cast<size_t>(p));
  while (!src.checkpoints.empty() && src.checkpoints.back()->pos > p) src.checkpoints.pop_back();
  return src;
}

// Keeps at most max_checkpoints per sequence: drops the one whose removal leaves the smallest
// gap, so the survivors stay spread over the sequence; the newest is always kept.
void Engine::Impl::add_checkpoint(Seq& s) {
  if (s.state.pos <= 0) return;
  if (!s.checkpoints.empty() && s.checkpoints.back()->pos >= s.state.pos) return;
  s.checkpoints.push_back(std::make_shared<const StateCheckpoint>(take_checkpoint(s.state)));
  const size_t cap = static_cast<size_t>(std::max(opt.max_checkpoints, 1));
  while (s.checkpoints.size() > cap) {
    size_t drop = 0;
    int64_t gap = std::numeric_limits<int64_t>::max();
    for (size_t i = 0; i + 1 < s.checkpoints.size(); ++i) {
      const int64_t prev = i == 0 ? 0 : s.checkpoints[i - 1]->pos;
      const int64_t g = s.checkpoints[i + 1]->pos - prev;
      if (g < gap) {
        gap = g;
        drop = i;
      }
    }
    s.checkpoints.erase(s.checkpoints.begin() + static_cast<ptrdiff_t>(drop));
  }
}

size_t Engine::Impl::cache_bytes() const {
  size_t n = 0;
  std::unordered_set<const StateCheckpoint*> seen;
  for (const auto& sp : seqs) {
    n += sp->state.bytes() + sp->tokens.capacity() * sizeof(int32_t);
    for (const auto& c : sp->checkpoints)
      if (seen.insert(c.get()).second) n += c->bytes();
  }
  return n;
}

void Engine::Impl::enforce_budget(const Seq* keep) {
  if (opt.cache_bytes <= 0) return;
  while (seqs.size() > 1 && cache_bytes() > static_cast<size_t>(opt.cache_bytes)) {
    auto lru = seqs.end();
    for (auto it = seqs.begin(); it != seqs.end(); ++it)
      if (it->get() != keep && !(*it)->active && (lru == seqs.end() || (*it)->last_used < (*lru)->last_used)) lru = it;
    if (lru == seqs.end()) break;
    seqs.erase(lru);
  }
}

// Back to retained_sequences once the requests that needed more slots have ended.
void Engine::Impl::trim_retained(const Seq* keep) {
  const size_t cap = static_cast<size_t>(std::max(opt.retained_sequences, 1));
  while (seqs.size() > cap) {
    auto lru = seqs.end();
    for (auto it = seqs.begin(); it != seqs.end(); ++it)
      if (it->get() != keep && !(*it)->active && (lru == seqs.end() || (*it)->last_used < (*lru)->last_used)) lru = it;
    if (lru == seqs.end()) break;
    seqs.erase(lru);
  }
}

// An admitted request: its sequence acquired (a retained prefix reused), not yet prefilled;
// null when it ended here (cancelled while queued, or an error).
std::unique_ptr<Active> Engine::Impl::start(std::unique_ptr<Job> job_ptr) {
  auto a = std::make_unique<Active>(std::move(job_ptr), vocab, model->config().vocab_size, *tok);
  Job& job = *a->job;
  const GenerationRequest& req = job.req;
  GenerationStats& st = a->res.stats;
  a->t_started = Clock::now();
  a->L = static_cast<int64_t>(req.prompt.size());
  st.prompt_tokens = static_cast<int>(a->L);
  st.queue_seconds = seconds(job.submitted, a->t_started);
  if (cancelled(job)) {
    a->res.cause = FinishCause::kCancelled;
    end(*a);
    return nullptr;
  }
  try {
    int64_t reused = 0;
    a->seq = &acquire(req.prompt, reused);
    a->seq->active = true;
    a->seq->last_used = ++tick;
    st.cached_tokens = static_cast<int>(reused);
  } catch (const std::exception& e) {
    a->res.cause = FinishCause::kError;
    a->res.error = e.what();
    drop(*a);
    end(*a);
    return nullptr;
  }
  return a;
}

// Prefills an admitted request's prompt: to its end (budget 0), or chunks until at least
// `budget` tokens ran. kEnded: cancelled or failed, and ended (end() called).
Engine::Impl::Prefill Engine::Impl::prefill(Active& a, int64_t budget) {
  Job& job = *a.job;
  const GenerationRequest& req = job.req;
  GenerationStats& st = a.res.stats;
  const int64_t L = a.L;
  try {
    Seq* seq = a.seq;
    seq->last_used = ++tick;
    // Prefill the suffix. A fresh sequence runs token 0 alone: Model::attention lays out a
    // chunk that starts at position 0 with fewer than `window` index slots, which changes the
    // 64-entry summation blocks; every later chunk uses the full layout, which is the decode
    // layout, so each position is computed identically however the prompt was split or reused
    // (and a 1-token chunk at 0 has a single visible row, the same under either layout).
    const int64_t interval = std::max(opt.checkpoint_interval, 0);
    int64_t pos = seq->state.pos, ran = 0;
    bool stopped = false;
    while (pos < L && (budget <= 0 || ran < budget)) {
      // Chunks start at multiples of the chunk length (after the first token), so a prompt is
      // cut the same way whatever was reused; between decode steps at multiples of the budget.
      const int64_t chunk = std::max<int64_t>(budget > 0 ? std::min<int64_t>(budget, opt.prefill_chunk) : opt.prefill_chunk, 1);
      int64_t end_pos = pos == 0 ? 1 : std::min(L, (pos / chunk + 1) * chunk);
      if (interval > 0) end_pos = std::min(end_pos, (pos / interval + 1) * interval);
      if (pos < L - 1) end_pos = std::min(end_pos, L - 1);  // so a checkpoint can sit just before the last token
      const int n = static_cast<int>(end_pos - pos);
      // Progress (keep-alives) and the cancel check after every block, not only per chunk: a
      // chunk of a long prompt runs for seconds to minutes. A cancelled chunk leaves the state
      // where it was, at the last chunk boundary.
      const int blocks = model->config().n_layers;
      const auto on_layer = [&](int done) {
        if (job.on_progress) job.on_progress(pos + static_cast<int64_t>(n) * done / blocks, L);
        return !cancelled(job);
      };
      if (!model->forward(seq->state, req.prompt.data() + pos, n, end_pos == L ? a.logits.data() : nullptr, nullptr,
                          on_layer)) {
        stopped = true;
        break;
      }
      seq->tokens.insert(seq->tokens.end(), req.prompt.begin() + pos, req.prompt.begin() + end_pos);
      pos = end_pos;
      ran += n;
      // At L-1 the snapshot serves a repeat of this prompt and a next turn that re-renders the
      // prompt's last token (e.g. "<think>" dropped from history), not only extensions.
      if (opt.retained_sequences > 0 && ((interval > 0 && pos % interval == 0) || pos == L - 1)) add_checkpoint(*seq);
      if (job.on_progress) job.on_progress(pos, L);
      if (pos < L && cancelled(job)) {
        stopped = true;
        break;
      }
    }
    if (stopped) {
      a.t_prefilled = Clock::now();
      st.prefill_seconds = seconds(a.t_started, a.t_prefilled);
      a.res.cause = FinishCause::kCancelled;
      end(a);
      return Prefill::kEnded;
    }
    if (pos < L) return Prefill::kMore;
  } catch (const std::exception& e) {
    a.res.cause = FinishCause::kError;
    a.res.error = e.what();
    drop(a);
    end(a);
    return Prefill::kEnded;
  }
  a.t_prefilled = Clock::now();
  st.prefill_seconds = seconds(a.t_started, a.t_prefilled);  // (decode steps of others included)
  return Prefill::kDone;
}

// Decode: sample from the current logits, emit, then run the token for the next logits.
void Engine::Impl::begin_decode(Active& a) {
  const GenerationRequest& req = a.job->req;
  const bool json_mode = req.json_object && req.forced_tokens.empty();
  a.stops.insert(req.stop_ids.begin(), req.stop_ids.end());
  a.stops.insert(eos.begin(), eos.end());
  // Forced tokens not yet emitted; armed from the start or once `force_after` is generated.
  a.force_armed = req.forced_tokens.empty() || req.force_after < 0;
  if (!req.forced_tokens.empty() && req.force_after < 0) a.forced.assign(req.forced_tokens.begin(), req.forced_tokens.end());
  // JSON mode: armed from the start or once `json_after` is generated.
  a.json_mode = json_mode;
  a.json_armed = json_mode && req.json_after < 0;
  a.json.v.limit_whitespace(64, 8);
  if (json_mode) build_token_table();
}

// The next token of a decoding request from its logits, emitted; true when the request goes on
// (the token must then run through the model), false when it ended (res.cause set).
bool Engine::Impl::pick(Active& a, int32_t& id) {
  Job& job = *a.job;
  const GenerationRequest& req = job.req;
  GenerationStats& st = a.res.stats;
  if (cancelled(job)) {
    a.res.cause = FinishCause::kCancelled;
    return false;
  }
  const float* logits = a.logits.data();
  const bool scripted = !req.scripted_tokens.empty();
  const int32_t eos_id = model->config().eos_token_id;
  if (!a.forced.empty()) {
    id = a.forced.front();
    a.forced.pop_front();
  } else if (a.json_armed && !a.json.free) {
    // A scripted token (tests) is a proposal: taken when the constraint accepts it.
    const int32_t proposal = scripted ? req.scripted_tokens[a.script_pos++] : -1;
    JsonDecodeState next;
    if (a.json.v.complete()) {
      id = eos_id;  // the object is closed: nothing else may follow
    } else if (proposal >= 0 && (next = a.json, next.advance(token_text[static_cast<size_t>(proposal)],
                                                            token_added[static_cast<size_t>(proposal)] != 0,
                                                            req.json_allow_tool_calls))) {
      id = proposal;
      a.json = next;
    } else {
      id = a.sampler.sample_if(logits, [&](int32_t cand) {
        next = a.json;
        return next.advance(token_text[static_cast<size_t>(cand)], token_added[static_cast<size_t>(cand)] != 0,
                            req.json_allow_tool_calls);
      });
      if (id < 0) id = eos_id;  // no token continues the JSON (cannot happen with a real vocabulary)
      else a.json.advance(token_text[static_cast<size_t>(id)], token_added[static_cast<size_t>(id)] != 0,
                          req.json_allow_tool_calls);
    }
  } else if (scripted) {
    id = req.scripted_tokens[a.script_pos++];
  } else {
    id = a.sampler.sample(logits);
  }
  if (a.json_mode && !a.json_armed && (id == req.json_after || a.stops.count(id))) {
    id = req.json_after;  // a stop before the answer becomes the end of the reasoning
    a.json_armed = true;
  }
  if (!a.force_armed && (id == req.force_after || a.stops.count(id))) {
    id = req.force_after;  // a stop before the trigger becomes the trigger
    a.force_armed = true;
    a.forced.assign(req.forced_tokens.begin(), req.forced_tokens.end());
  }
  a.sampler.count(id);
  const int completion = ++a.completion;
  TokenEvent ev;
  ev.id = id;
  if (req.top_logprobs >= 0) fill_logprobs(logits, vocab, req.top_logprobs, ev, scratch_idx);
  FinishCause cause = FinishCause::kError;  // kError here = keep going
  if (a.stops.count(id)) {
    cause = FinishCause::kStopToken;  // the stop token is still delivered: the parser needs EOS
  } else if (req.max_tokens > 0 && completion >= req.max_tokens) {
    cause = FinishCause::kMaxTokens;
  } else if (a.L + completion >= max_ctx) {
    cause = FinishCause::kContextFull;
  } else if (scripted && a.forced.empty() && a.script_pos >= req.scripted_tokens.size()) {
    cause = FinishCause::kMaxTokens;  // the script ran out: like a length limit
  }
  const bool last = cause != FinishCause::kError;
  ev.text = a.detok.push(id);
  if (last) ev.text += a.detok.finish();  // an unfinished character at the very end comes out lossy
  if (completion == 1) st.time_to_first_token = seconds(job.submitted, Clock::now());
  st.completion_tokens = completion;
  if (job.on_token && !job.on_token(ev)) {
    a.res.cause = FinishCause::kCancelled;
    return false;
  }
  if (last) {
    a.res.cause = cause;
    return false;
  }
  return true;
}

// One token for every decoding request: ended requests leave, the others' tokens run through
// the model in one step (Model::decode_batch; a single one through forward).
void Engine::Impl::step(std::vector<std::unique_ptr<Active>>& active) {
  sweep_cancelled_queue();
  std::vector<Active*> going;
  std::vector<int32_t> ids;
  for (auto& a : active) {
    int32_t id = 0;
    if (pick(*a, id)) {
      going.push_back(a.get());
      ids.push_back(id);
    } else {
      a->done = true;
    }
  }
  try {
    if (going.size() == 1) {
      model->forward(going[0]->seq->state, &ids[0], 1, going[0]->logits.data());
    } else if (going.size() > 1) {
      std::vector<SequenceState*> states;
      for (Active* a : going) states.push_back(&a->seq->state);
      const size_t V = going[0]->logits.size();
      batch_logits.resize(going.size() * V);
      model->decode_batch(states, ids.data(), batch_logits.data());
      for (size_t i = 0; i < going.size(); ++i)
        std::copy_n(batch_logits.begin() + static_cast<ptrdiff_t>(i * V), V, going[i]->logits.begin());
    }
    for (size_t i = 0; i < going.size(); ++i) going[i]->seq->tokens.push_back(ids[i]);
  } catch (const std::exception& e) {
    // The states may be half-updated: every request of the step ends, its sequence forgotten.
    for (Active* a : going) {
      a->res.cause = FinishCause::kError;
      a->res.error = e.what();
      drop(*a);
      a->done = true;
    }
  }
  for (auto it = active.begin(); it != active.end();) {
    if ((*it)->done) {
      end(**it);
      it = active.erase(it);
    } else {
      ++it;
    }
  }
}

// Forgets a request's sequence (its state may be half-updated).
void Engine::Impl::drop(Active& a) {
  if (!a.seq) return;
  for (auto it = seqs.begin(); it != seqs.end(); ++it)
    if (it->get() == a.seq) {
      seqs.erase(it);
      break;
    }
  a.seq = nullptr;
}

// A request's end: its sequence retained (or not), the cache kept within its limits, the caller
// told.
void Engine::Impl::end(Active& a) {
  if (a.t_prefilled != Clock::time_point{}) a.res.stats.decode_seconds = seconds(a.t_prefilled, Clock::now());
  Seq* seq = a.seq;
  if (seq) {
    seq->prompt_len = a.L;
    seq->last_used = ++tick;
    seq->active = false;
    if (opt.retained_sequences <= 0) {
      drop(a);
      seq = nullptr;
    }
  }
  trim_retained(seq);
  enforce_budget(seq);
  publish();
  finish(*a.job, a.res);
}

void Engine::Impl::build_token_table() {
  if (!token_text.empty()) return;
  token_text.resize(static_cast<size_t>(vocab));
  token_added.assign(static_cast<size_t>(vocab), 0);
  for (int32_t id = 0; id < vocab; ++id) {
    try {
      token_text[static_cast<size_t>(id)] = tok->token_bytes(id);
      token_added[static_cast<size_t>(id)] = tok->is_added(id) ? 1 : 0;
    } catch (const std::exception&) {  // an id without text is never a JSON candidate
      token_text[static_cast<size_t>(id)].clear();
    }
  }
}

void Engine::Impl::publish() {
  std::vector<std::shared_ptr<const std::vector<int32_t>>> lists;
  for (const auto& sp : seqs) lists.push_back(std::make_shared<const std::vector<int32_t>>(sp->tokens));
  std::lock_guard<std::mutex> lk(pub_mu);
  published.swap(lists);
}

// True when an added token starts at text[off]: added tokens are matched before BPE, so encode()
// gives one as the first id of a short window (cut back to a whole character).
bool Engine::Impl::added_token_at(const std::string& text, size_t off) const {
  if (off >= text.size()) return true;  // nothing follows
  size_t end = std::min(text.size(), off + 96);
  while (end < text.size() && end > off && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  try {
    const std::vector<int32_t> ids = tok->encode(std::string_view(text).substr(off, end - off), true);
    return !ids.empty() && tok->is_added(ids[0]);
  } catch (const std::exception&) {  // starts inside a character: not a boundary
    return false;
  }
}

std::vector<int32_t> Engine::encode_prompt(const std::string& rendered) const {
  const Impl& m = *impl_;
  std::vector<std::shared_ptr<const std::vector<int32_t>>> lists;
  {
    std::lock_guard<std::mutex> lk(m.pub_mu);
    lists = m.published;
  }
  const std::vector<int32_t>* best = nullptr;
  size_t best_k = 0, best_off = 0;
  for (const auto& lp : lists) {
    const std::vector<int32_t>& t = *lp;
    // Longest token prefix whose bytes are a prefix of the text, with each boundary's offset.
    std::vector<size_t> offs{0};
    for (size_t k = 0; k < t.size(); ++k) {
      const std::string b = m.tok->token_bytes(t[k]);
      if (rendered.compare(offs.back(), b.size(), b) != 0 || offs.back() + b.size() > rendered.size()) break;
      offs.push_back(offs.back() + b.size());
    }
    // Walk back to a safe boundary (bounded: a miss there only costs a re-prefill).
    for (size_t k = offs.size() - 1, tries = 0; k > best_k && tries < 4096; --k, ++tries)
      if (m.tok->is_added(t[k - 1]) || m.added_token_at(rendered, offs[k])) {
        best = &t;
        best_k = k;
        best_off = offs[k];
        break;
      }
  }
  if (!best) return m.tok->encode(rendered, true);
  std::vector<int32_t> out(best->begin(), best->begin() + static_cast<ptrdiff_t>(best_k));
  if (best_off < rendered.size()) {
    const std::vector<int32_t> rest = m.tok->encode(std::string_view(rendered).substr(best_off), true);
    out.insert(out.end(), rest.begin(), rest.end());
  }
  return out;
}

}  // namespace dsv4::server
