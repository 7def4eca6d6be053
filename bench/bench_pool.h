// The benchmarks' thread pool: env DSV4_BENCH_THREADS=N threads (default: all cores).
#pragma once
#include <cstdlib>

#include "core/thread_pool.h"

namespace dsv4 {

inline ThreadPool& bench_pool() {
  static ThreadPool p([] {
    const char* t = std::getenv("DSV4_BENCH_THREADS");
    return t ? std::atoi(t) : 0;
  }());
  return p;
}

}  // namespace dsv4
