// The error messages dtrain prints: quoting bad input safely, and one line
// for any exception.
#include "common/error.h"

#include <c10/util/Exception.h>

#include <cstdio>

namespace dtrain {

std::string printable_excerpt(const std::string& text, size_t max_chars) {
  std::string out;
  for (size_t i = 0; i < text.size() && i < max_chars; ++i) {
    const unsigned char byte = static_cast<unsigned char>(text[i]);
    if (byte >= 0x20 && byte < 0x7f) {
      out += static_cast<char>(byte);
    } else {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", byte);
      out += escaped;
    }
  }
  if (text.size() > max_chars) out += "...";
  return out;
}

std::string one_line_message(const std::exception& error) {
  std::string text = error.what();
  if (const auto* torch_error = dynamic_cast<const c10::Error*>(&error)) {
    text = torch_error->what_without_backtrace();
  }
  return text.substr(0, text.find('\n'));
}

void print_error(int rank, int world_size, const std::string& message, bool name_rank) {
  if (name_rank && world_size > 1) {
    std::fprintf(stderr, "dtrain: error: rank %d: %s\n", rank, message.c_str());
  } else {
    std::fprintf(stderr, "dtrain: error: %s\n", message.c_str());
  }
  std::fflush(stderr);
}

}  // namespace dtrain
