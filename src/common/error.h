// The exception types dtrain throws, the one-line message it prints for any
// of them, and its exit codes. Library code never exits: it throws one of
// these and main() turns it into one line on stderr and a non-zero exit.
#pragma once
#include <stdexcept>
#include <string>

namespace dtrain {

// Exit codes, the same on every rank (docs/configuration.md).
constexpr int kExitCompleted = 0;
constexpr int kExitError = 1;      // any other Error
constexpr int kExitUsage = 2;      // UsageError: a bad flag or config, like other CLI tools
constexpr int kExitDiverged = 3;   // --on-nonfinite stop (run/nonfinite.h)
constexpr int kExitPreempted = 75; // EX_TEMPFAIL: stopped by a signal with a checkpoint; cluster/slurm/train.sbatch requeues

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

// The one-line text of any exception (LibTorch's carry backtraces).
std::string one_line_message(const std::exception& error);

// "dtrain: error: <message>" on stderr; "rank R: " before the message when
// `name_rank` and there is more than one rank.
void print_error(int rank, int world_size, const std::string& message, bool name_rank);

}  // namespace dtrain
