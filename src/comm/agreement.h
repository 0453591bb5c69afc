// Steps that every rank must pass together: the start-up steps (flags, config
// file, data, model, resume) and the writing of a checkpoint mid-run. A bad
// flag or data file may fail on one rank only (a file missing on one node),
// and a rank that exits alone leaves the others hanging in their next
// collective. So each such step runs under run_agreed: afterwards the ranks
// exchange one status word; if any failed, the lowest failing rank prints its
// one-line error and every rank throws AgreedFailure and exits non-zero.
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
  const char* what() const noexcept override { return "a step every rank must pass failed on some rank (already reported)"; }

 private:
  int exit_code_;
};

// Exit codes: kExitUsage for UsageError, kExitError for other errors. The
// status exchange is watched (--collective-timeout) as `what`, e.g. "dataset
// agreement", which also names the step for the test hook
// DTRAIN_FAULT_STALL=WHAT:RANK (that rank stops for good just before the
// exchange, as a hung node would).
void run_agreed(Communicator& comm, const std::function<void()>& step, const char* what = "agreement");

// Compares the configuration's launch hash across ranks (collective).
// Throws UsageError on every rank if any rank differs.
void check_same_config(Communicator& comm, const Config& config);

}  // namespace dtrain
