#include <functional>
#include "core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"

namespace dsv4 {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
struct DTypeInfo {
  DType t;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::BF16, "BF16", 2}, {DType::F16, "F16", 2},         {DType::F32, "F32", 4},
    {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E8M0, "F8_E8M0", 1}, {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},     {DType::I32, "I32", 4},         {DType::I64, "I64", 8},
    {DType::BOOL, "BOOL", 1},
};
}  // namespace

const char* dtype_name(DType t) {
  for (const auto& d : kDTypes)
    if (d.t == t) return d.name;
  return "?";
}
size_t dtype_size(DType t) {
  for (const auto& d : kDTypes)
    if (d.t == t) return d.size;
  return 0;
}
bool parse_dtype(std::string_view s, DType* out) {
  for (const auto& d : kDTypes)
    if (s == d.name) {
      *out = d.t;
      return true;
    }
  return false;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorView::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + std::strerror(errno));
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    throw Error(path + ": cannot stat: " + std::strerror(errno));
  }
  size_ = static_cast<size_t>(st.st_size);
  dev_ = static_cast<uint64_t>(st.st_dev);
  ino_ = static_cast<uint64_t>(st.st_ino);
  if (size_ < 8) {
    ::close(fd);
    throw Error(path + ": not a safetensors file (" + std::to_string(size_) + " bytes, need a header)");
  }
  map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw Error(path + ": mmap failed: " + std::strerror(errno));
  }
  try {
    const auto* base = static_cast<const uint8_t*>(map_);
    uint64_t hlen = 0;
    std::memcpy(&hlen, base, 8);
    if (hlen > size_ - 8)
      throw Error(path + ": header length " + std::to_string(hlen) + " exceeds file size " +
                  std::to_string(size_) + " (truncated or not a safetensors file)");
    json header;
    try {
      header = json::parse(base + 8, base + 8 + hlen);
    } catch (const json::exception& e) {
      throw Error(path + ": header is not valid JSON: " + e.what());
    }
    if (!header.is_object()) throw Error(path + ": header is not a JSON object");
    const uint8_t* data = base + 8 + hlen;
    const size_t data_size = size_ - 8 - hlen;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (auto it = header.begin(); it != header.end(); ++it) {
      const std::string& name = it.key();
      const json& v = it.value();
      if (name == "__metadata__") {
        if (v.is_object())
          for (auto m = v.begin(); m != v.end(); ++m)
            if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
        continue;
      }
      auto bad = [&](const std::string& what) { return Error(path + ": tensor '" + name + "': " + what); };
      if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
        throw bad("entry needs dtype, shape and data_offsets");
      TensorView t;
      t.name = name;
      t.file = &path_;
      if (!v["dtype"].is_string() || !parse_dtype(v["dtype"].get<std::string>(), &t.dtype))
        throw bad("unsupported dtype " + v["dtype"].dump());
      if (!v["shape"].is_array()) throw bad("shape is not an array");
      for (const auto& d : v["shape"]) {
        if (!d.is_number_integer() || d.get<int64_t>() < 0) throw bad("invalid shape " + v["shape"].dump());
        t.shape.push_back(d.get<int64_t>());
      }
      const json& off = v["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
        throw bad("invalid data_offsets " + off.dump());
      const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
      if (b > e || e > data_size)
        throw bad("data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                  ") outside the data section of " + std::to_string(data_size) + " bytes (truncated file?)");
      // numel * size must match the byte range (guard the multiplication against overflow).
      unsigned __int128 expect = dtype_size(t.dtype);
      for (int64_t d : t.shape) expect *= static_cast<unsigned __int128>(d);
      if (expect != e - b)
        throw bad("byte size " + std::to_string(e - b) + " does not match dtype " + dtype_name(t.dtype) +
                  " and shape " + t.shape_str());
      t.data = data + b;
      t.nbytes = e - b;
      if (reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype) != 0) {
        realigned_.emplace_back(new uint64_t[(t.nbytes + 7) / 8]);
        std::memcpy(realigned_.back().get(), t.data, t.nbytes);
        t.data = reinterpret_cast<const uint8_t*>(realigned_.back().get());
      }
      ranges.emplace_back(b, e);
      tensors_.push_back(std::move(t));
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i].first < ranges[i - 1].second && ranges[i].first != ranges[i].second)
        throw Error(path + ": tensor data ranges overlap (corrupt header)");
    // No MADV_RANDOM: it would also turn off fault-around, so every 4 KiB page touched for the
    // first time would fault on its own (measured: first-touch GEMMs at a third of the speed).
  } catch (...) {
    ::munmap(map_, size_);
    map_ = nullptr;
    throw;
  }
}

void SafetensorsFile::prefault(size_t chunk, const std::function<void(size_t)>& done) const {
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  // Linux 5.14
#endif
  const auto* base = static_cast<const uint8_t*>(map_);
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  for (size_t off = 0; off < size_; off += chunk) {
    const size_t len = std::min(chunk, size_ - off);
    if (::madvise(const_cast<uint8_t*>(base + off), len, MADV_POPULATE_READ) != 0) {
      // Older kernels: touch one byte per page.
      volatile uint8_t sink = 0;
      for (size_t p = off; p < off + len; p += page) sink = sink + base[p];
    }
    if (done) done(off + len);
  }
}

bool SafetensorsFile::resident_pages(size_t& rss, size_t& huge) const {
  std::ifstream smaps("/proc/self/smaps");
  if (!smaps) return false;
  const uintptr_t start = reinterpret_cast<uintptr_t>(map_);
  std::string line;
  bool in_map = false, found = false;
  rss = huge = 0;
  while (std::getline(smaps, line)) {
    // A mapping's header line: "start-end perms offset dev inode [path]"; its fields follow.
    const size_t dash = line.find('-');
    if (dash != std::string::npos && dash > 0 && line.find(' ') > dash &&
        std::isxdigit(static_cast<unsigned char>(line[0]))) {
      in_map = std::strtoull(line.c_str(), nullptr, 16) == start;
      found = found || in_map;
      continue;
    }
    if (!in_map) continue;
    const auto field_kb = [&](const char* name, size_t& out) {
      const size_t n = std::strlen(name);
      if (line.compare(0, n, name) == 0) out = std::strtoull(line.c_str() + n, nullptr, 10) * 1024;
    };
    field_kb("Rss:", rss);
    field_kb("FilePmdMapped:", huge);
  }
  return found;
}

bool SafetensorsFile::reload_range(size_t off, size_t len) const {
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
  const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st{};
  const bool same = ::fstat(fd, &st) == 0 && static_cast<uint64_t>(st.st_dev) == dev_ &&
                    static_cast<uint64_t>(st.st_ino) == ino_ && static_cast<size_t>(st.st_size) == size_;
  if (same) {
    auto* base = static_cast<uint8_t*>(map_) + off;
    // Dirty pages (a file still being written back) cannot leave the cache: write them first.
    if (off == 0) ::fdatasync(fd);
    // (The mapping is private and read-only, so dropping its pages loses nothing: they fault in
    // again from the file.)
    ::madvise(base, len, MADV_DONTNEED);
    ::posix_fadvise(fd, static_cast<off_t>(off), static_cast<off_t>(len), POSIX_FADV_DONTNEED);
    ::madvise(base, len, MADV_POPULATE_READ);
  }
  ::close(fd);
  return same;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
}

void TensorStore::prefault(const std::function<void(size_t, size_t)>& progress) const {
  size_t total = 0, before = 0;
  for (const auto& f : files_) total += f->file_size();
  for (const auto& f : files_) {
    f->prefault(size_t{256} << 20, [&](size_t done) {
      if (progress) progress(before + done, total);
    });
    before += f->file_size();
  }
}

size_t TensorStore::reload_small_pages(const std::function<void(size_t, size_t)>& progress) const {
  constexpr size_t kMinBytes = size_t{64} << 20, kChunk = size_t{256} << 20;
  std::vector<const SafetensorsFile*> small;
  size_t todo = 0;
  for (const auto& f : files_) {
    size_t rss = 0, huge = 0;
    // Mostly small pages: under half of the resident bytes in 2 MiB pages.
    if (f->file_size() >= kMinBytes && f->resident_pages(rss, huge) && rss >= kMinBytes && huge < rss / 2) {
      small.push_back(f.get());
      todo += f->file_size();
    }
  }
  size_t done = 0;
  for (const SafetensorsFile* f : small) {
    for (size_t off = 0; off < f->file_size(); off += kChunk) {
      size_t huge_before = 0, rss = 0;
      const bool first = off == 0;
      if (first) f->resident_pages(rss, huge_before);
      const size_t len = std::min(kChunk, f->file_size() - off);
      if (!f->reload_range(off, len)) return done;
      done += len;
      if (progress) progress(done, todo);
      size_t huge_after = 0;
      // The first chunk tells whether this file system maps the file in large pages at all.
      if (first && len >= kMinBytes && f->resident_pages(rss, huge_after) && huge_after < huge_before + len / 4)
        return done;
    }
  }
  return done;
}

void TensorStore::add(std::unique_ptr<SafetensorsFile> f) {
  for (const TensorView& t : f->tensors()) {
    auto [it, inserted] = by_name_.emplace(t.name, &t);
    if (!inserted)
      throw Error("tensor '" + t.name + "' appears in both " + *it->second->file + " and " + f->path());
  }
  files_.push_back(std::move(f));
}

TensorStore TensorStore::open_file(const std::string& path) {
  TensorStore s;
  s.add(std::make_unique<SafetensorsFile>(path));
  return s;
}

TensorStore TensorStore::open_dir(const std::string& dir) {
  TensorStore s;
  const fs::path d(dir);
  const fs::path index = d / "model.safetensors.index.json";
  if (fs::exists(index)) {
    json j;
    try {
      std::ifstream in(index);
      j = json::parse(in);
    } catch (const json::exception& e) {
      throw Error(index.string() + ": not valid JSON: " + e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      throw Error(index.string() + ": missing weight_map object");
    std::set<std::string> shards;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it.value().is_string()) throw Error(index.string() + ": weight_map entry '" + it.key() + "' is not a file name");
      const std::string f = it.value().get<std::string>();
      if (f.find('/') != std::string::npos || f.find("..") != std::string::npos)
        throw Error(index.string() + ": shard name '" + f + "' must be a plain file name");
      shards.insert(f);
    }
    for (const auto& f : shards) {
      const fs::path p = d / f;
      if (!fs::exists(p)) throw Error(index.string() + " lists shard " + f + ", which does not exist");
      s.add(std::make_unique<SafetensorsFile>(p.string()));
    }
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      const TensorView* t = s.find(it.key());
      if (!t) throw Error(index.string() + ": tensor '" + it.key() + "' is not in its shard " + it.value().get<std::string>());
      if (fs::path(*t->file).filename() != it.value().get<std::string>())
        throw Error(index.string() + ": tensor '" + it.key() + "' listed in " + it.value().get<std::string>() +
                    " but found in " + *t->file);
    }
  } else if (fs::exists(d / "model.safetensors")) {
    s.add(std::make_unique<SafetensorsFile>((d / "model.safetensors").string()));
  } else {
    throw Error(dir + ": no model.safetensors or model.safetensors.index.json");
  }
  return s;
}

const TensorView* TensorStore::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const TensorView& TensorStore::get(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) throw Error("tensor '" + name + "' is missing");
  return *t;
}

size_t TensorStore::total_bytes() const {
  size_t n = 0;
  for (const auto& [name, t] : by_name_) n += t->nbytes;
  return n;
}

void write_safetensors_streaming(const std::string& path, const std::vector<TensorToWrite>& headers,
                                 const std::function<void(size_t, std::vector<uint8_t>&)>& fill,
                                 const std::map<std::string, std::string>& metadata) {
  // nlohmann::ordered_json keeps insertion order so the file layout is deterministic.
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  // Element size descending keeps every tensor aligned (the safetensors library does the same).
  std::vector<size_t> order(headers.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return dtype_size(headers[a].dtype) > dtype_size(headers[b].dtype); });
  uint64_t off = 0;
  std::vector<size_t> sizes(headers.size());
  for (size_t i : order) {
    const auto& t = headers[i];
    size_t bytes = dtype_size(t.dtype);
    for (int64_t d : t.shape) bytes *= static_cast<size_t>(d);
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + bytes}}};
    off += bytes;
    sizes[i] = bytes;
  }
  std::string h = header.dump();
  while (h.size() % 8) h.push_back(' ');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(tmp + ": cannot create");
    const uint64_t hlen = h.size();
    out.write(reinterpret_cast<const char*>(&hlen), 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    std::vector<uint8_t> buf;
    for (size_t i : order) {
      buf.clear();
      fill(i, buf);
      if (buf.size() != sizes[i])
        throw Error("write_safetensors: tensor '" + headers[i].name + "' has " + std::to_string(buf.size()) +
                    " bytes, expected " + std::to_string(sizes[i]));
      out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
    }
    if (!out) throw Error(tmp + ": write failed (disk full?)");
  }
  fs::rename(tmp, path);
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_safetensors_streaming(
      path, tensors, [&](size_t i, std::vector<uint8_t>& out) { out = tensors[i].bytes; }, metadata);
}

}  // namespace dsv4
