// Wall time per stage of the forward pass, for `dsv4 bench --profile`: where a decode step's
// time goes, next to the weight bytes each stage reads. Off by default; a disabled section costs
// one relaxed atomic load. Sections are timed on the thread that runs the forward pass (the pool
// workers are inside the section's parallel_for calls), so nested sections must not overlap:
// each stage below is a leaf.
#pragma once
#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>

namespace dsv4 {

enum class Stage : int {
  kEmbed,          // token embedding rows into the hyper-connection streams
  kHyperConn,      // mHC pre/post mixes and the block input norms
  kAttnProject,    // wq_a, wkv, wq_b, q/kv norms, RoPE, KV quantisation
  kCompressor,     // KV and indexer compressors (bf16 projections + pooling)
  kIndexer,        // indexer queries and scoring, top-k
  kAttnCore,       // window / compressed / selected rows, online softmax
  kAttnOut,        // grouped wo_a, wo_b
  kMoeGate,        // router logits, scores, top-k
  kExperts,        // routed experts (FP4)
  kSharedExpert,   // shared expert (FP8) and the final add
  kHead,           // output mHC, norm, vocabulary projection
  kCount
};

const char* stage_name(Stage s);
// A per-stage amount (bytes of weights read, multiply-adds), indexed by Stage.
using StageBytes = std::array<size_t, static_cast<size_t>(Stage::kCount)>;

class StageProfile {
 public:
  static constexpr int kStages = static_cast<int>(Stage::kCount);
  static void enable(bool on) { enabled_.store(on, std::memory_order_relaxed); }
  static bool enabled() { return enabled_.load(std::memory_order_relaxed); }
  static void reset();
  static void add(Stage s, int64_t ns) { ns_[static_cast<int>(s)].fetch_add(ns, std::memory_order_relaxed); }
  // Nanoseconds accumulated per stage since the last reset.
  static std::array<int64_t, kStages> totals();

 private:
  static std::atomic<bool> enabled_;
  static std::array<std::atomic<int64_t>, kStages> ns_;
};

// Adds the scope's wall time to one stage when profiling is on.
class StageTimer {
 public:
  explicit StageTimer(Stage s) : stage_(s), on_(StageProfile::enabled()) {
    if (on_) t0_ = std::chrono::steady_clock::now();
  }
  ~StageTimer() { stop(); }
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;
  // Ends the section early (before the scope does).
  void stop() {
    if (!on_) return;
    on_ = false;
    StageProfile::add(stage_, std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0_).count());
  }

 private:
  Stage stage_;
  bool on_;
  std::chrono::steady_clock::time_point t0_{};
};

}  // namespace dsv4
