// run_agreed's status exchange and the start-up check that every rank
// resolved the same configuration.
#include "comm/agreement.h"

#include "cli/options.h"
#include "comm/watchdog.h"
#include "common/error.h"
#include "common/fault.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <thread>

namespace dtrain {

namespace {

// DTRAIN_FAULT_STALL=WHAT:RANK: that rank stops for good before the status
// exchange of the step named WHAT.
void stall_if_told(const char* what, int rank) {
  const char* told_rank = fault_argument("DTRAIN_FAULT_STALL", what);
  if (told_rank == nullptr || std::atoi(told_rank) != rank) return;
  std::fprintf(stderr, "fault: rank %d stalls before the %s\n", rank, what);
  std::fflush(stderr);
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

}  // namespace

void run_agreed(Communicator& comm, const std::function<void()>& step, const char* what) {
  int64_t status = 0;
  std::string message;
  try {
    step();
  } catch (const UsageError& e) {
    status = kExitUsage;
    message = one_line_message(e);
  } catch (const std::exception& e) {
    status = kExitError;
    message = one_line_message(e);
  }
  stall_if_told(what, comm.rank());
  std::vector<int64_t> statuses;
  {
    CollectiveWatchdog::Scope watched(comm.watchdog(), what);
    statuses = comm.all_gather(status);
  }
  int first_failed = -1;
  for (int r = 0; r < static_cast<int>(statuses.size()); ++r) {
    if (statuses[r] != 0) {
      first_failed = r;
      break;
    }
  }
  if (first_failed < 0) return;
  bool all_failed = true;
  for (int64_t s : statuses) all_failed = all_failed && s != 0;
  if (comm.rank() == first_failed) print_error(comm.rank(), comm.world_size(), message, /*name_rank=*/!all_failed);
  throw AgreedFailure(status != 0 ? static_cast<int>(status) : static_cast<int>(statuses[first_failed]));
}

void check_same_config(Communicator& comm, const Config& config) {
  const auto hashes = comm.all_gather(static_cast<int64_t>(launch_hash(config)));
  for (size_t r = 1; r < hashes.size(); ++r) {
    if (hashes[r] != hashes[0]) {
      std::ostringstream message;
      message << "rank " << r << " resolved a different configuration than rank 0 (hash " << std::hex
              << static_cast<uint64_t>(hashes[r]) << " vs " << static_cast<uint64_t>(hashes[0])
              << "); launch every rank with the same flags and the same config file";
      throw UsageError(message.str());
    }
  }
}

}  // namespace dtrain
