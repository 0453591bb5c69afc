#include "train/startup.h"

#include "cli/options.h"
#include "common/error.h"

#include <c10/util/Exception.h>

#include <cstdio>
#include <sstream>

namespace dtrain {

std::string one_line_message(const std::exception& error) {
  std::string text = error.what();
  if (const auto* torch_error = dynamic_cast<const c10::Error*>(&error)) {
    text = torch_error->what_without_backtrace();
  }
  return text.substr(0, text.find('\n'));
}

void print_error(const Communicator& comm, const std::string& message, bool name_rank) {
  if (name_rank && comm.world_size() > 1) {
    std::fprintf(stderr, "dtrain: error: rank %d: %s\n", comm.rank(), message.c_str());
  } else {
    std::fprintf(stderr, "dtrain: error: %s\n", message.c_str());
  }
  std::fflush(stderr);
}

void run_agreed(Communicator& comm, const std::function<void()>& step) {
  int64_t status = 0;
  std::string message;
  try {
    step();
  } catch (const UsageError& e) {
    status = 2;
    message = one_line_message(e);
  } catch (const std::exception& e) {
    status = 1;
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
  if (comm.rank() == first_failed) print_error(comm, message, /*name_rank=*/!all_failed);
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
