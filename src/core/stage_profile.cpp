#include "core/stage_profile.h"

namespace dsv4 {

std::atomic<bool> StageProfile::enabled_{false};
std::array<std::atomic<int64_t>, StageProfile::kStages> StageProfile::ns_{};

const char* stage_name(Stage s) {
  switch (s) {
    case Stage::kEmbed: return "embed";
    case Stage::kHyperConn: return "mHC + norms";
    case Stage::kAttnProject: return "attn projections";
    case Stage::kCompressor: return "compressors";
    case Stage::kIndexer: return "indexer";
    case Stage::kAttnCore: return "attention core";
    case Stage::kAttnOut: return "attn output";
    case Stage::kMoeGate: return "MoE router";
    case Stage::kExperts: return "routed experts";
    case Stage::kSharedExpert: return "shared expert";
    case Stage::kHead: return "output head";
    case Stage::kCount: break;
  }
  return "?";
}

void StageProfile::reset() {
  for (auto& v : ns_) v.store(0, std::memory_order_relaxed);
}

std::array<int64_t, StageProfile::kStages> StageProfile::totals() {
  std::array<int64_t, kStages> out{};
  for (int i = 0; i < kStages; ++i) out[static_cast<size_t>(i)] = ns_[static_cast<size_t>(i)].load(std::memory_order_relaxed);
  return out;
}

}  // namespace dsv4
