// Machine limits measured in the same run as a benchmark, so results can be reported as ratios:
// read bandwidth (STREAM-like sum over a buffer far larger than the caches, all threads) and
// peak fp32 multiply-add throughput of the active ISA (independent FMA chains, all threads) and,
// where the GEMMs use it (the AVX-512 path), of the bf16 dot-product instruction VDPBF16PS.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/thread_pool.h"

namespace dsv4 {

struct Roofline {
  double read_gbs = 0;       // GB/s (1e9 bytes)
  double fma_gflops = 0;     // GFLOP/s, counting a multiply-add as 2 flops
  double dot_gflops = 0;     // VDPBF16PS GFLOP/s (32 multiply-adds per instruction); 0 if unused
  double amx_gflops = 0;     // AMX TDPBF16PS tile products (16 x 16 x 32 per instruction) where
                             // the products use them (gemm_amx_active()); else 0
  const char* isa = "";
  // The peak prefill is measured against: the fastest of the multiply-add instructions the GEMMs
  // run on here. All paths give the same bits (gemm.h), so a slower instruction's peak would
  // flatter a kernel that leaves the faster one unused: VDPBF16PS does 32 multiply-adds to FMA's
  // 16, yet measured 863 GFLOP/s on a Zen 5 VM, well above FMA, and 170 vs FMA's 340 on a Xeon
  // VM; AMX tiles (where the products take them) run 15x FMA's peak on a Xeon VM.
  bool dot_is_peak() const { return dot_gflops > fma_gflops; }
  double gemm_peak_gflops() const { return amx_gflops > 0 ? amx_gflops : dot_is_peak() ? dot_gflops : fma_gflops; }
  const char* gemm_peak_name() const { return amx_gflops > 0 ? "AMX" : dot_is_peak() ? "VDPBF16PS" : "FMA"; }
};

// bytes: size of the buffer read (default 1 GiB); seconds: minimum time per measurement.
// With `data`, the read bandwidth is measured over [data, data + bytes) instead of fresh buffers:
// a benchmark passes resident weights, the very pages its decode streams (on virtual machines a
// fresh allocation sometimes reads several times slower than the rest of memory for its life).
Roofline measure_roofline(ThreadPool& pool, size_t bytes = size_t(1) << 30, double seconds = 0.5,
                          const void* data = nullptr);

// Read bandwidth alone (as in measure_roofline): over [data, data + bytes) when data is given.
double measure_read_gbs(ThreadPool& pool, size_t bytes, double seconds, const void* data = nullptr);

// The multiply-add peaks alone (measure_roofline's compute fields; read_gbs stays 0): the best of
// `reps` runs of each loop, each run `scale` times measure_roofline's iteration count (1: about
// 0.1-0.3 s on two cores).
Roofline measure_peaks(ThreadPool& pool, int reps = 3, double scale = 1.0);

// A peak sampled around timed work whose clock may move under it (virtual machines change their
// cores' clock by 2x within seconds, so a peak probed minutes earlier is no denominator): the probe
// runs before the first piece of work and after each, and each piece counts with its duration
// against the mean of the probes on either side of it.
class PeakSamples {
 public:
  void start(double peak) { last_ = peak, lo_ = hi_ = peak, weighted_ = seconds_ = 0; }
  void piece(double seconds, double peak_after) {
    weighted_ += seconds * 0.5 * (last_ + peak_after);
    seconds_ += seconds;
    last_ = peak_after;
    lo_ = peak_after < lo_ ? peak_after : lo_;
    hi_ = peak_after > hi_ ? peak_after : hi_;
  }
  // The time-weighted peak (the first probe alone before any piece).
  double mean() const { return seconds_ > 0 ? weighted_ / seconds_ : last_; }
  double lo() const { return lo_; }
  double hi() const { return hi_; }

 private:
  double last_ = 0, lo_ = 0, hi_ = 0, weighted_ = 0, seconds_ = 0;
};

namespace roofline_detail {
// Per-ISA FMA loops: `iters` iterations of kFmaChains independent chains, chain j starting at
// seeds[j] (every lane) and doing v = fma(v, 0.999999, 1e-7); out[j] gets lane 0 of chain j.
// Returns the flops performed. The seeds come from memory so that the compiler cannot prove two
// chains equal and merge them: with constant, equal starts GCC 12 kept one chain of ten, and the
// "peak" was ten times a single chain's latency-bound rate (about 1.33x the true peak on a Xeon).
constexpr int kFmaChains = 12;  // > latency x ports (4 x 2) of current x86 FMA units
double fma_loop_scalar(long iters, const float* seeds, float* out);
double fma_loop_avx2(long iters, const float* seeds, float* out);
double fma_loop_avx512(long iters, const float* seeds, float* out);
// VDPBF16PS loop (AVX-512 BF16): `iters` iterations of kDotChains chains, chain j starting at
// seeds[j] and adding 1 * 2^-24 twice per iteration in every lane; out[j] gets lane 0 of chain j.
constexpr int kDotChains = 16;
double dpbf16_loop_avx512(long iters, const float* seeds, float* out);
// TDPBF16PS loop (AMX): `iters` iterations of four independent tile products on operands in the
// tile registers; out[0] gets one accumulator element.
double tdpbf16_loop_amx(long iters, float* out);
// Per-ISA read loops: XOR of all bytes of [p, p + len), len a multiple of 512.
uint64_t read_xor_scalar(const uint8_t* p, size_t len);
uint64_t read_xor_avx2(const uint8_t* p, size_t len);
uint64_t read_xor_avx512(const uint8_t* p, size_t len);
}  // namespace roofline_detail

}  // namespace dsv4
