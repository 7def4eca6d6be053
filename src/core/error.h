// Errors the engine reports to users. Every failure on bad input throws dsv4::Error with a
// message that names the file / tensor / field and what is wrong; the CLI prints it and exits 1.
#pragma once
#include <stdexcept>
#include <string>

namespace dsv4 {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace dsv4
