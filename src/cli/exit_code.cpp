#include "cli/commands.h"

namespace dsv4::cli {

int& exit_code() {
  static int code = 0;
  return code;
}

}  // namespace dsv4::cli
