// run_agreed's status exchange and the start-up check that every rank
// resolved the same configuration.
#include "comm/agreement.h"

#include "cli/options.h"
#include "common/error.h"

#include <cstdio>
#include <sstream>

namespace dtrain {

void run_agreed(Communicator& comm, const std::function<void()>& step) {
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
  const std::vector<int64_t> statuses = comm.all_gather(status);
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
