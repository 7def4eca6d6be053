#include "core/thread_pool.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace dsv4 {

namespace {
thread_local bool in_pool_job = false;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// How long a worker or the caller polls before it sleeps: long enough to bridge the gaps
// between the GEMMs, norms and attention calls of one decode step (a few microseconds), short
// enough that a thread waiting on one that has lost its core (more runnable threads than
// cores) gives the core back soon.
constexpr auto kSpin = std::chrono::microseconds(50);

// Polls `ready` until it returns true or `spin` has passed; returns its last answer.
template <class Ready>
bool spin_until(std::chrono::microseconds spin, Ready ready) {
  if (spin.count() == 0) return ready();
  const auto deadline = std::chrono::steady_clock::now() + spin;
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (ready()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return ready();
  }
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // More threads than cores: a polling thread would keep one with work off its core.
  spin_ = static_cast<unsigned>(n_threads) <= std::thread::hardware_concurrency() ? kSpin : std::chrono::microseconds(0);
  for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_chunks() {
  in_pool_job = true;
  // Guided: each claim takes its share of what is left (at least the grain), so chunks shrink
  // towards the end and the threads finish close together.
  const int64_t share = 2 * static_cast<int64_t>(size());
  int64_t b = next_.load();
  while (b < n_) {
    const int64_t len = std::max(grain_, (n_ - b + share - 1) / share);
    if (!next_.compare_exchange_weak(b, b + len)) continue;  // (b now holds the current counter)
    (*fn_)(b, std::min(n_, b + len));
    b = next_.load();
  }
  in_pool_job = false;
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    auto job_or_stop = [&] { return stop_.load() || generation_.load() != seen; };
    if (!spin_until(spin_, job_or_stop)) {
      std::unique_lock<std::mutex> lk(mu_);
      ++sleeping_workers_;  // before re-checking the counter (the caller checks in reverse order)
      wake_.wait(lk, job_or_stop);
      --sleeping_workers_;
    }
    if (stop_) return;
    seen = generation_.load();
    run_chunks();
    if (active_.fetch_sub(1) == 1 && caller_sleeping_.load()) {
      std::lock_guard<std::mutex> lk(mu_);  // (the caller is in wait, or about to re-check)
      done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn, int64_t grain) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (workers_.empty() || in_pool_job || n <= grain) {
    fn(0, n);
    return;
  }
  fn_ = &fn;
  n_ = n;
  grain_ = grain;
  next_.store(0);
  active_.store(static_cast<int>(workers_.size()));
  generation_.fetch_add(1);  // publishes the job fields above
  if (sleeping_workers_.load() > 0) {
    std::lock_guard<std::mutex> lk(mu_);  // a worker between its check and its wait holds mu_
    wake_.notify_all();
  }
  run_chunks();
  auto all_done = [&] { return active_.load() == 0; };
  if (!spin_until(spin_, all_done)) {
    std::unique_lock<std::mutex> lk(mu_);
    caller_sleeping_ = true;  // before re-checking the count (the last worker checks in reverse order)
    done_.wait(lk, all_done);
    caller_sleeping_ = false;
  }
  fn_ = nullptr;
}

}  // namespace dsv4
