// Token sampling from logits: greedy (temperature 0) or temperature + nucleus (top-p), seeded.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace dsv4 {

struct SamplerOptions {
  float temperature = 1.0f;  // 0 = greedy
  float top_p = 1.0f;
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& o) : opt_(o), rng_(o.seed) {}
  int32_t sample(const float* logits, int vocab);

 private:
  SamplerOptions opt_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> probs_;
};

}  // namespace dsv4
