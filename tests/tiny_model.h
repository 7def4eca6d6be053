// The tests' small synthetic checkpoint: every attention kind (SWA, CSA, HCA, CSA, then the MTP
// layer), written once per process into a TempDir that goes at exit.
#pragma once
#include <cstdint>
#include <string>

#include "model/synth.h"
#include "temp_dir.h"

namespace dsv4::test_support {

class TinyModelDir : public TempDir {
 public:
  TinyModelDir(const std::string& stem, int vocab_size, uint64_t seed) : TempDir(stem) {
    ModelConfig c = synth_config("tiny", 0, 0);
    c.vocab_size = vocab_size;
    c.compress_ratios = {0, 4, 128, 4, 0};
    synthesize_model(c, seed, str());
  }
};

}  // namespace dsv4::test_support
