// The Communicator's public collectives: they check their tensors, count
// calls and bytes, and hand the work to the backend's do_* methods.
#include "comm/communicator.h"

#include "comm/watchdog.h"

#include "common/error.h"

namespace dtrain {

namespace {
void require_contiguous(const at::Tensor& tensor, const char* what) {
  if (!tensor.is_contiguous()) {
    throw Error(std::string(what) + " needs a contiguous tensor");
  }
}
}  // namespace

void Communicator::all_reduce(at::Tensor& tensor, ReduceOp op) {
  require_contiguous(tensor, "all_reduce");
  ++stats_.all_reduce_calls;
  stats_.all_reduce_bytes += tensor.numel() * static_cast<int64_t>(tensor.element_size());
  CollectiveWatchdog::Scope watched(watchdog_, "all-reduce");
  do_all_reduce(tensor, op);
}

std::unique_ptr<Work> Communicator::all_reduce_async(at::Tensor& tensor, ReduceOp op) {
  require_contiguous(tensor, "all_reduce_async");
  ++stats_.all_reduce_calls;
  stats_.all_reduce_bytes += tensor.numel() * static_cast<int64_t>(tensor.element_size());
  return do_all_reduce_async(tensor, op);
}

void Communicator::broadcast(at::Tensor& tensor, int root) {
  require_contiguous(tensor, "broadcast");
  ++stats_.broadcast_calls;
  stats_.broadcast_bytes += tensor.numel() * static_cast<int64_t>(tensor.element_size());
  CollectiveWatchdog::Scope watched(watchdog_, "broadcast");
  do_broadcast(tensor, root);
}

}  // namespace dtrain
