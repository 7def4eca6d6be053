#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/safetensors.h"
#include "temp_dir.h"

using namespace dsv4;
namespace fs = std::filesystem;

namespace {
// Every file of this test program lives in one folder that is removed at exit.
const fs::path& scratch() {
  static const test_support::TempDir dir("dsv4_test_safetensors");
  fs::create_directories(dir.path());
  return dir.path();
}
fs::path tmp_file(const std::string& name) { return scratch() / name; }

std::string error_of(const std::string& path) {
  try {
    SafetensorsFile f(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void write_raw(const fs::path& p, const std::string& header, size_t data_bytes) {
  std::ofstream out(p, std::ios::binary);
  const uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << std::string(data_bytes, '\0');
}
}  // namespace

TEST(Safetensors, WriteReadRoundTrip) {
  const fs::path p = tmp_file("rt.safetensors");
  std::vector<uint8_t> a(2 * 3 * 4), b{1, 2, 3};
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<uint8_t>(i);
  write_safetensors(p.string(), {{"a", DType::F32, {2, 3}, a}, {"b", DType::I8, {3}, b}}, {{"k", "v"}});
  TensorStore s = TensorStore::open_file(p.string());
  const TensorView& ta = s.get("a");
  EXPECT_EQ(ta.dtype, DType::F32);
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(ta.data, a.data(), a.size()), 0);
  EXPECT_EQ(s.get("b").as<int8_t>()[2], 3);
  EXPECT_EQ(s.find("c"), nullptr);
  EXPECT_THROW(s.get("c"), Error);
}

TEST(Safetensors, RejectsCorruptFiles) {
  const fs::path p = tmp_file("bad.safetensors");
  { std::ofstream(p, std::ios::binary) << "abc"; }
  EXPECT_NE(error_of(p.string()).find("not a safetensors file"), std::string::npos);

  write_raw(p, "{not json", 0);
  EXPECT_NE(error_of(p.string()).find("not valid JSON"), std::string::npos);

  {  // header length larger than the file: truncated
    std::ofstream out(p, std::ios::binary);
    const uint64_t n = 1000;
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << "{}";
  }
  EXPECT_NE(error_of(p.string()).find("exceeds file size"), std::string::npos);

  write_raw(p, R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
  EXPECT_NE(error_of(p.string()).find("outside the data section"), std::string::npos);

  write_raw(p, R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16);
  EXPECT_NE(error_of(p.string()).find("does not match"), std::string::npos);

  write_raw(p, R"({"w":{"dtype":"Q9","shape":[4],"data_offsets":[0,4]}})", 4);
  EXPECT_NE(error_of(p.string()).find("unsupported dtype"), std::string::npos);

  write_raw(p, R"({"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"v":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", 8);
  EXPECT_NE(error_of(p.string()).find("overlap"), std::string::npos);
}

TEST(Safetensors, ShardedDirectory) {
  const fs::path d = tmp_file("sharded");
  fs::create_directories(d);
  write_safetensors((d / "s1.safetensors").string(), {{"x", DType::U8, {2}, {1, 2}}});
  write_safetensors((d / "s2.safetensors").string(), {{"y", DType::U8, {1}, {3}}});
  { std::ofstream(d / "model.safetensors.index.json") << R"({"weight_map":{"x":"s1.safetensors","y":"s2.safetensors"}})"; }
  TensorStore s = TensorStore::open_dir(d.string());
  EXPECT_EQ(s.get("y").data[0], 3);
  { std::ofstream(d / "model.safetensors.index.json") << R"({"weight_map":{"x":"s2.safetensors","y":"s2.safetensors"}})"; }
  EXPECT_THROW(TensorStore::open_dir(d.string()), Error);
  { std::ofstream(d / "model.safetensors.index.json") << R"({"weight_map":{"x":"missing.safetensors"}})"; }
  EXPECT_THROW(TensorStore::open_dir(d.string()), Error);
}

TEST(Safetensors, WriterAlignsAndReaderCopesWithMisalignedData) {
  const fs::path p = tmp_file("align.safetensors");
  // Written in an order that would misalign the F32 and I64 tensors if packed as given.
  write_safetensors(p.string(), {{"byte", DType::U8, {3}, {1, 2, 3}},
                                 {"f", DType::F32, {1}, {0, 0, 0x80, 0x3f}},
                                 {"i", DType::I64, {1}, {7, 0, 0, 0, 0, 0, 0, 0}}});
  TensorStore s = TensorStore::open_file(p.string());
  for (const char* name : {"byte", "f", "i"}) {
    const TensorView& t = s.get(name);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype), 0u) << name;
  }
  EXPECT_EQ(s.get("f").as<float>()[0], 1.0f);
  EXPECT_EQ(s.get("i").as<int64_t>()[0], 7);
  // A file from another writer with an F32 at an odd offset is still read correctly.
  write_raw(p, R"({"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"f":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}})", 0);
  {
    std::ofstream out(p, std::ios::binary | std::ios::app);
    const unsigned char bytes[] = {9, 0, 0, 0x80, 0x3f};
    out.write(reinterpret_cast<const char*>(bytes), 5);
  }
  TensorStore s2 = TensorStore::open_file(p.string());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(s2.get("f").data) % 4, 0u);
  EXPECT_EQ(s2.get("f").as<float>()[0], 1.0f);
}

namespace {
// A file with one tensor of `bytes` bytes holding a pattern from `seed`.
std::vector<uint8_t> write_pattern(const fs::path& p, size_t bytes, uint8_t seed) {
  std::vector<uint8_t> v(bytes);
  for (size_t i = 0; i < bytes; ++i) v[i] = static_cast<uint8_t>(i * 131 + seed + i / 4096);
  write_safetensors(p.string(), {{"t", DType::U8, {static_cast<int64_t>(bytes)}, v}});
  return v;
}
const TensorView& only_tensor(const SafetensorsFile& f) { return f.tensors().at(0); }
}  // namespace

// Reading a range again (page cache dropped, pages mapped anew) keeps the addresses and bytes.
TEST(Safetensors, ReloadKeepsTheMappedBytes) {
  const fs::path p = tmp_file("reload.safetensors");
  const auto want = write_pattern(p, size_t{3} << 20, 7);
  SafetensorsFile f(p.string());
  f.prefault(size_t{1} << 20, {});
  size_t rss = 0, huge = 0;
  ASSERT_TRUE(f.resident_pages(rss, huge));
  EXPECT_GE(rss, want.size());  // prefault mapped every page
  EXPECT_LE(huge, rss);
  const uint8_t* before = only_tensor(f).data;
  EXPECT_TRUE(f.reload_range(0, f.file_size()));
  EXPECT_EQ(only_tensor(f).data, before);
  EXPECT_EQ(std::memcmp(only_tensor(f).data, want.data(), want.size()), 0);
  ASSERT_TRUE(f.resident_pages(rss, huge));
  EXPECT_GE(rss, want.size());  // populated again
  // A range inside the file as well.
  EXPECT_TRUE(f.reload_range(size_t{1} << 20, size_t{1} << 20));
  EXPECT_EQ(std::memcmp(only_tensor(f).data, want.data(), want.size()), 0);
}

// A file replaced under the same path is not the mapped one: no reload, the old bytes stay.
TEST(Safetensors, ReloadRefusesAReplacedFile) {
  const fs::path p = tmp_file("replaced.safetensors"), q = tmp_file("replacement.safetensors");
  const auto want = write_pattern(p, size_t{1} << 20, 1);
  SafetensorsFile f(p.string());
  write_pattern(q, size_t{1} << 20, 2);
  fs::rename(q, p);
  EXPECT_FALSE(f.reload_range(0, f.file_size()));
  EXPECT_EQ(std::memcmp(only_tensor(f).data, want.data(), want.size()), 0);
}

// Files under 64 MiB are left as they are (the TLB cost is in the large streams).
TEST(Safetensors, SmallFilesAreNotReloaded) {
  const fs::path p = tmp_file("small.safetensors");
  write_pattern(p, size_t{2} << 20, 3);
  TensorStore s = TensorStore::open_file(p.string());
  s.prefault();
  EXPECT_EQ(s.reload_small_pages(), 0u);
}
