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

std::unique_ptr<Work> Communicator::reduce_scatter_async(at::Tensor& input, at::Tensor& output) {
  require_contiguous(input, "reduce_scatter_async");
  require_contiguous(output, "reduce_scatter_async");
  if (input.scalar_type() != output.scalar_type() || input.numel() != output.numel() * world_size()) {
    throw Error("reduce_scatter_async needs an input of world size (" + std::to_string(world_size()) +
                ") chunks of the output's numel and dtype; got " + std::to_string(input.numel()) + " and " +
                std::to_string(output.numel()));
  }
  ++stats_.reduce_scatter_calls;
  stats_.reduce_scatter_bytes += input.numel() * static_cast<int64_t>(input.element_size());
  return do_reduce_scatter_async(input, output);
}

std::unique_ptr<Work> Communicator::all_gather_async(at::Tensor& buffer) {
  require_contiguous(buffer, "all_gather_async");
  if (buffer.numel() % world_size() != 0) {
    throw Error("all_gather_async needs a buffer of world size (" + std::to_string(world_size()) +
                ") equal chunks; got " + std::to_string(buffer.numel()) + " elements");
  }
  ++stats_.all_gather_calls;
  stats_.all_gather_bytes += buffer.numel() * static_cast<int64_t>(buffer.element_size());
  return do_all_gather_async(buffer);
}

}  // namespace dtrain
