// Memory-mapped safetensors reader and a small writer (for synthetic models and test data).
// Tensors are used in place from the mapping: no copy, no conversion.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace dsv4 {

enum class DType { BF16, F16, F32, F8_E4M3, F8_E8M0, I8, U8, I32, I64, BOOL };

const char* dtype_name(DType t);
size_t dtype_size(DType t);
bool parse_dtype(std::string_view s, DType* out);

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  const std::string* file = nullptr;  // shard the tensor lives in (owned by the store)

  int64_t numel() const;
  int64_t dim(int i) const { return shape.at(static_cast<size_t>(i)); }
  std::string shape_str() const;
  template <class T>
  const T* as() const { return reinterpret_cast<const T*>(data); }
};

// One mapped .safetensors file. Validates the header fully on open.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  size_t file_size() const { return size_; }
  // Populates the page tables of [0, size) in chunks; done(bytes_done) after each chunk.
  void prefault(size_t chunk, const std::function<void(size_t)>& done) const;
  // This process's resident bytes of the mapping and how many of them are mapped as 2 MiB pages
  // (/proc/self/smaps); false where that cannot be read.
  bool resident_pages(size_t& rss, size_t& huge) const;
  // Drops [off, off + len) from this mapping and from the page cache, then maps it again, read
  // anew from the file: a page cache filled by writing the file holds it in 4 KiB pages, which
  // the kernel reads back in large ones where the file system supports them. The addresses stay
  // the same. False if the file cannot be opened again or is no longer the mapped file.
  bool reload_range(size_t off, size_t len) const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  uint64_t dev_ = 0, ino_ = 0;  // (reload_range checks that the path still names this file)
  std::vector<TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
  // Aligned copies of tensors whose data offset is not a multiple of their element size (writers
  // other than the safetensors library may pack tensors that way); used instead of the mapping.
  std::vector<std::unique_ptr<uint64_t[]>> realigned_;
};

// All tensors of a model directory (one model.safetensors, or shards listed by
// model.safetensors.index.json), or of a single file.
class TensorStore {
 public:
  static TensorStore open_dir(const std::string& dir);
  static TensorStore open_file(const std::string& path);
  // Maps every page of the files into this process now (reading them from disk if they are not
  // cached), so that later first touches do not fault one by one during decode.
  // progress(bytes_done, bytes_total) is called every 256 MiB.
  void prefault(const std::function<void(size_t, size_t)>& progress = {}) const;
  // After prefault: where a file is resident mostly in 4 KiB pages (a checkpoint just written,
  // e.g. downloaded or copied, stays cached that way), reads it again so that the kernel maps it
  // in 2 MiB pages: decode reads every weight once per token, and the small pages' TLB misses
  // slow it by 6-40 % (docs/performance.md, "Memory map"). Stops after the
  // first 256 MiB if they come back small as well (a file system without large folios).
  // progress(bytes_done, bytes_to_do). Returns the bytes read again.
  size_t reload_small_pages(const std::function<void(size_t, size_t)>& progress = {}) const;

  const TensorView* find(const std::string& name) const;
  // Throws dsv4::Error naming the tensor when it is missing.
  const TensorView& get(const std::string& name) const;
  const std::map<std::string, const TensorView*>& all() const { return by_name_; }
  size_t total_bytes() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> by_name_;
  void add(std::unique_ptr<SafetensorsFile> f);
};

// Writer: tensors are laid out by element size (largest first, then in the order given) so that,
// with the header padded to 8 bytes, every tensor is aligned to its element size without holes.
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Streaming writer for files larger than memory: the header comes from `headers` (bytes left
// empty), then `fill(i, out)` produces tensor i's bytes, one tensor at a time.
void write_safetensors_streaming(const std::string& path, const std::vector<TensorToWrite>& headers,
                                 const std::function<void(size_t, std::vector<uint8_t>&)>& fill,
                                 const std::map<std::string, std::string>& metadata = {});

}  // namespace dsv4
