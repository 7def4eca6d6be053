// The pool's hand-off: every index runs exactly once, back-to-back jobs (spinning workers) and
// jobs after idle time (sleeping workers) both complete, nested calls run inline, and the pool
// shuts down cleanly in either state.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <utility>
#include <chrono>
#include <thread>
#include <vector>

#include "core/thread_pool.h"

namespace dsv4 {
namespace {

// Runs one job over n items and checks that each index was visited exactly once.
void expect_each_index_once(ThreadPool& pool, int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  pool.parallel_for(n, [&](int64_t b, int64_t e) {
    ASSERT_LE(0, b);
    ASSERT_LT(b, e);
    ASSERT_LE(e, n);
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)]++;
  }, grain);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "n=" << n << " i=" << i;
}

TEST(ThreadPool, EveryIndexOnceForManySizes) {
  for (int threads : {1, 2, 3, 8}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {1, 2, 3, 7, 64, 1000, 12345})
      for (int64_t grain : {1, 5, 100}) expect_each_index_once(pool, n, grain);
  }
}

TEST(ThreadPool, ChunksHoldAtLeastTheGrain) {
  ThreadPool pool(4);
  std::atomic<int> small{0};
  pool.parallel_for(1000, [&](int64_t b, int64_t e) {
    if (e - b < 64 && e != 1000) small++;  // only the last chunk may be short
  }, 64);
  EXPECT_EQ(small.load(), 0);
}

// Guided chunks: each takes a quarter (two threads) of what is left, at least the grain, so they
// shrink towards the end and the last one is a single item; which thread takes which does not
// change the chunks.
TEST(ThreadPool, ChunksShrinkTowardsTheEnd) {
  ThreadPool pool(2);
  std::mutex mu;
  std::vector<std::pair<int64_t, int64_t>> chunks;
  pool.parallel_for(1000, [&](int64_t b, int64_t e) {
    std::lock_guard<std::mutex> lk(mu);
    chunks.emplace_back(b, e);
  });
  std::sort(chunks.begin(), chunks.end());
  ASSERT_GE(chunks.size(), 8u);
  EXPECT_EQ(chunks.front(), std::make_pair(int64_t{0}, int64_t{250}));
  EXPECT_EQ(chunks[1], std::make_pair(int64_t{250}, int64_t{438}));  // ceil(750 / 4) = 188
  for (size_t i = 1; i < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i].first, chunks[i - 1].second);
    EXPECT_LE(chunks[i].second - chunks[i].first, chunks[i - 1].second - chunks[i - 1].first);
  }
  EXPECT_EQ(chunks.back().second - chunks.back().first, 1);
}

// Thousands of tiny jobs in a row: the workers stay in their spin phase between them, so this is
// the path where a lost hand-off would hang or drop work.
TEST(ThreadPool, BackToBackTinyJobs) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  for (int job = 0; job < 20000; ++job)
    pool.parallel_for(6, [&](int64_t b, int64_t e) { total += e - b; });
  EXPECT_EQ(total.load(), 6 * 20000);
}

// Jobs separated by idle time longer than the spin window: the workers are asleep each time
// and must be woken; the caller may sleep too while a slow chunk finishes.
TEST(ThreadPool, JobsAfterIdleTimeAndSlowChunks) {
  ThreadPool pool(2);
  for (int round = 0; round < 5; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::atomic<int> ran{0};
    pool.parallel_for(8, [&](int64_t b, int64_t e) {
      if (b == 0) std::this_thread::sleep_for(std::chrono::milliseconds(3));  // outlasts the caller's spin
      ran += static_cast<int>(e - b);
    });
    EXPECT_EQ(ran.load(), 8) << "round " << round;
  }
}

TEST(ThreadPool, NestedCallsRunInline) {
  ThreadPool pool(2);
  std::atomic<int> inner{0};
  pool.parallel_for(4, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const auto outer_thread = std::this_thread::get_id();
      pool.parallel_for(10, [&](int64_t ib, int64_t ie) {
        EXPECT_EQ(std::this_thread::get_id(), outer_thread);
        inner += static_cast<int>(ie - ib);
      });
    }
  });
  EXPECT_EQ(inner.load(), 40);
}

TEST(ThreadPool, ShutsDownWhileSpinningOrAsleep) {
  for (int wait_ms : {0, 5}) {
    ThreadPool pool(4);
    pool.parallel_for(16, [](int64_t, int64_t) {});
    std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
  }  // the destructor must join either way (a hang fails the test by timeout)
  SUCCEED();
}

}  // namespace
}  // namespace dsv4
