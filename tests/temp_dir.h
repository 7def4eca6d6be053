// A scratch directory under the system temp folder, named for this process and removed with the
// object (a function-local static one: at exit), so that test runs leave nothing behind.
#pragma once
#include <unistd.h>

#include <filesystem>
#include <string>
#include <system_error>

namespace dsv4::test_support {

class TempDir {
 public:
  explicit TempDir(const std::string& stem)
      : path_(std::filesystem::temp_directory_path() / (stem + "_" + std::to_string(::getpid()))) {
    std::filesystem::remove_all(path_);
  }
  ~TempDir() {
    std::error_code ec;  // best effort: never throw from here
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  const std::string& str() const { return str_; }

 private:
  std::filesystem::path path_;
  std::string str_ = path_.string();
};

}  // namespace dsv4::test_support
