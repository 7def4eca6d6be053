#include "text/unicode.h"

#include <array>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace dsv4::text::detail {

// ASCII classes written out so the hottest path needs no table initialisation.
// 0 other, 1 L, 2 M, 3 N, 4 P, 5 S, 6 space.
const uint8_t kAsciiClass[128] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6, 0, 0,  // \t \n \v \f \r are White_Space
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    6, 4, 4, 4, 5, 4, 4, 4, 4, 4, 4, 5, 4, 4, 4, 4,  //  !"#$%&'()*+,-./
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 5, 5, 5, 4,  // 0-9 :;<=>?
    4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,  // @A-O
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 4, 4, 5, 4,  // P-Z [\]^_
    5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,  // `a-o
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 5, 4, 5, 0,  // p-z {|}~ DEL
};

namespace {

struct Built {
  std::vector<uint16_t> stage1;
  std::vector<uint8_t> stage2;
  ClassTable table{};
};

Built build() {
  Built b;
  b.stage1.resize(0x110000 >> 8);
  std::map<std::string, uint16_t> seen;  // block contents -> index, to share identical blocks
  std::array<uint8_t, 256> block{};
  unsigned r = 0;
  const auto* ranges = unicode_data::kClassRanges;
  for (uint32_t blk = 0; blk < (0x110000u >> 8); ++blk) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t cp = (blk << 8) | i;
      while (r < unicode_data::kClassRangeCount && ranges[r].hi < cp) ++r;
      block[i] = (r < unicode_data::kClassRangeCount && ranges[r].lo <= cp) ? ranges[r].cls : 0;
    }
    std::string key(reinterpret_cast<const char*>(block.data()), block.size());
    auto [it, inserted] = seen.emplace(key, static_cast<uint16_t>(seen.size()));
    if (inserted) b.stage2.insert(b.stage2.end(), block.begin(), block.end());
    b.stage1[blk] = it->second;
  }
  b.table.stage1 = b.stage1.data();
  b.table.stage2 = b.stage2.data();
  return b;
}

}  // namespace

const ClassTable& class_table() {
  static const Built built = build();  // thread-safe one-time init
  return built.table;
}

}  // namespace dsv4::text::detail
