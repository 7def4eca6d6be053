// The stage profiler of `dsv4 bench --profile`: off costs nothing and records nothing; on, a
// forward pass's time lands in its stages; the per-stage weight bytes add up to the total.
#include <gtest/gtest.h>

#include <numeric>
#include <thread>

#include "core/stage_profile.h"
#include "model/model.h"
#include "tiny_model.h"

using namespace dsv4;

namespace {

int64_t sum(const std::array<int64_t, StageProfile::kStages>& t) { return std::accumulate(t.begin(), t.end(), int64_t{0}); }

const std::string& profile_model_dir() {
  static const test_support::TinyModelDir dir("dsv4_profile_model", 512, 7);
  return dir.str();
}

}  // namespace

TEST(StageProfile, RecordsOnlyWhenEnabled) {
  StageProfile::reset();
  StageProfile::enable(false);
  { StageTimer t(Stage::kAttnCore); std::this_thread::sleep_for(std::chrono::milliseconds(2)); }
  EXPECT_EQ(sum(StageProfile::totals()), 0);

  StageProfile::enable(true);
  { StageTimer t(Stage::kAttnCore); std::this_thread::sleep_for(std::chrono::milliseconds(2)); }
  StageTimer early(Stage::kHead);
  early.stop();
  early.stop();  // a second stop adds nothing
  StageProfile::enable(false);
  const auto t = StageProfile::totals();
  EXPECT_GE(t[static_cast<size_t>(Stage::kAttnCore)], 2'000'000);
  EXPECT_EQ(t[static_cast<size_t>(Stage::kExperts)], 0);
  StageProfile::reset();
  EXPECT_EQ(sum(StageProfile::totals()), 0);
}

TEST(StageProfile, ForwardPassFillsItsStages) {
  Model m(profile_model_dir(), 2);
  SequenceState s = m.new_state();
  std::vector<float> logits(static_cast<size_t>(m.config().vocab_size));
  std::vector<int32_t> tok(40);
  for (size_t i = 0; i < tok.size(); ++i) tok[i] = static_cast<int32_t>((i * 31 + 5) % 512);
  StageProfile::reset();
  StageProfile::enable(true);
  m.forward(s, tok.data(), static_cast<int>(tok.size()), logits.data());
  StageProfile::enable(false);
  const auto t = StageProfile::totals();
  for (Stage st : {Stage::kHyperConn, Stage::kAttnProject, Stage::kCompressor, Stage::kIndexer, Stage::kAttnCore,
                   Stage::kAttnOut, Stage::kMoeGate, Stage::kExperts, Stage::kHead})
    EXPECT_GT(t[static_cast<size_t>(st)], 0) << stage_name(st);
  StageProfile::reset();
}

TEST(StageProfile, StageBytesAddUpToTheDecodeBytes) {
  Model m(profile_model_dir(), 1);
  const StageBytes by = m.bytes_per_token_by_stage();
  EXPECT_EQ(std::accumulate(by.begin(), by.end(), size_t{0}), m.bytes_per_token());
  const ModelConfig& c = m.config();
  EXPECT_EQ(by[static_cast<size_t>(Stage::kHead)], static_cast<size_t>(c.vocab_size) * c.dim * 2);
  EXPECT_EQ(by[static_cast<size_t>(Stage::kEmbed)], static_cast<size_t>(c.dim) * 2);
  EXPECT_EQ(by[static_cast<size_t>(Stage::kAttnCore)], 0u);  // reads state, not weights
  const StageBytes macs = m.prefill_macs_by_stage();
  EXPECT_EQ(static_cast<double>(std::accumulate(macs.begin(), macs.end(), size_t{0})), m.prefill_macs_per_token());
  EXPECT_EQ(macs[static_cast<size_t>(Stage::kHead)], 0u);  // prefill projects only the last position
  for (Stage st : {Stage::kAttnProject, Stage::kAttnOut, Stage::kCompressor, Stage::kIndexer, Stage::kExperts})
    EXPECT_GT(by[static_cast<size_t>(st)], 0u) << stage_name(st);
}
