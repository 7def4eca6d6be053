#include "model/sampler.h"

#include <algorithm>
#include <cmath>

namespace dsv4 {

int32_t Sampler::sample(const float* logits, int vocab) {
  int32_t best = 0;
  for (int i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  if (opt_.temperature <= 0.0f) return best;
  const double inv_t = 1.0 / opt_.temperature;
  probs_.resize(static_cast<size_t>(vocab));
  double sum = 0;
  for (int i = 0; i < vocab; ++i) {
    const double p = std::exp((logits[i] - logits[best]) * inv_t);
    probs_[static_cast<size_t>(i)] = {static_cast<float>(p), i};
    sum += p;
  }
  size_t n = probs_.size();
  if (opt_.top_p < 1.0f) {
    std::sort(probs_.begin(), probs_.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    double acc = 0;
    for (n = 0; n < probs_.size();) {
      acc += probs_[n++].first / sum;
      if (acc >= opt_.top_p) break;
    }
    sum = 0;
    for (size_t i = 0; i < n; ++i) sum += probs_[i].first;
  }
  double u = std::uniform_real_distribution<double>(0.0, sum)(rng_);
  for (size_t i = 0; i < n; ++i) {
    u -= probs_[i].first;
    if (u <= 0) return probs_[i].second;
  }
  return probs_[n - 1].second;
}

}  // namespace dsv4
