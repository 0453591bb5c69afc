// Start-up steps that every rank must pass together. A bad flag, config file
// or data file may fail on one rank only (a file missing on one node), and a
// rank that exits alone leaves the others hanging in their next collective.
// So each start-up step runs under run_agreed: afterwards the ranks exchange
// one status word; if any failed, the lowest failing rank prints its one-line
// error and every rank throws AgreedFailure and exits non-zero.
#pragma once
#include "cli/config.h"
#include "comm/communicator.h"

#include <functional>
#include <stdexcept>

namespace dtrain {

// Thrown on every rank once a failure has been reported; main() only exits.
class AgreedFailure : public std::exception {
 public:
  explicit AgreedFailure(int exit_code) : exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }
  const char* what() const noexcept override { return "start-up failed on some rank (already reported)"; }

 private:
  int exit_code_;
};

// Exit codes: 2 for UsageError (bad flags or config), 1 for other errors.
void run_agreed(Communicator& comm, const std::function<void()>& step);

// Compares the configuration's launch hash across ranks (collective).
// Throws UsageError on every rank if any rank differs.
void check_same_config(Communicator& comm, const Config& config);

// "dtrain: error: <message>", on stderr; names the rank when world > 1.
void print_error(const Communicator& comm, const std::string& message, bool name_rank);

// The one-line text of any exception (LibTorch's carry backtraces).
std::string one_line_message(const std::exception& error);

}  // namespace dtrain
