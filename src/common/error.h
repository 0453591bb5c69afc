// The exception types dtrain throws. Library code never exits: it throws one of
// these and main() turns it into one line on stderr and a non-zero exit.
#pragma once
#include <stdexcept>
#include <string>

namespace dtrain {

// Something the user can fix: a flag, a config file, a data or weights file.
// The message names the problem and the fix, in one line.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad command line or configuration (exit code 2, like other CLI tools).
class UsageError : public Error {
 public:
  using Error::Error;
};

// A failed MPI/CUDA/NCCL call: names the call, where it was made and the
// library's own message.
class CommError : public Error {
 public:
  using Error::Error;
};

// At most `max_chars` of `text` for an error message, with bytes that are not
// printable ASCII escaped as \xNN and "..." where it was cut, so a message
// quoting bad input stays one short, readable line.
std::string printable_excerpt(const std::string& text, size_t max_chars = 60);

}  // namespace dtrain
