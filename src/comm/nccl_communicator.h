// The NCCL backend of Communicator, for CUDA tensors: one GPU per rank, NCCL
// bootstrapped over MPI (rank 0 makes the unique id and broadcasts it).
// Collectives run on a dedicated CUDA stream, ordered against the compute
// stream with CUDA events, never with a host synchronization:
//   compute stream --event--> comm stream: the collective waits for the data
//   comm stream --event--> compute stream: later compute waits for the result
// With a CUDA build of LibTorch, the compute stream is LibTorch's current
// stream and buffers are recorded on the comm stream in the caching
// allocator, so their memory is not reused while NCCL still uses it.
//
// Failing cleanly, as PyTorch's ProcessGroupNCCL does (docs/gpu.md, "When
// NCCL fails"):
//   - The communicator is nonblocking: no NCCL call waits on other ranks.
//     Initialization and any call that returns ncclInProgress are polled
//     (ncclCommGetAsyncError) under `timeout_seconds`; past it the
//     communicator is aborted and CommError names the rank, GPU and cause.
//   - With a watchdog set (Communicator::set_watchdog), every collective is
//     tracked until its completion event fires, and the watchdog checks
//     ncclCommGetAsyncError (a dead peer, a network error).
//   - Every CUDA and NCCL call is checked; a failure marks the communicator
//     failed (later collectives and Work::wait() throw) and a NCCL failure
//     aborts it. The destructor never blocks on a broken job: after a
//     failure or abort(), or while an exception unwinds, it aborts;
//     otherwise it finalizes (under the timeout) and destroys.
// Only compiled when CUDA and NCCL are found (DTRAIN_HAVE_NCCL).
#pragma once
#include "comm/communicator.h"

#include <cuda_runtime_api.h>

#include <memory>

namespace dtrain {

class NcclCommunicator final : public Communicator {
 public:
  // `bootstrap` (MPI) is used to share the NCCL id, for barrier and
  // all_gather; it must outlive this object. `timeout_seconds` bounds the
  // wait for NCCL initialization and for NCCL calls in progress (0: wait
  // forever); dtrain passes --collective-timeout.
  NcclCommunicator(Communicator& bootstrap, int device_index, double timeout_seconds = 0);
  ~NcclCommunicator() override;

  int rank() const override { return bootstrap_.rank(); }
  int world_size() const override { return bootstrap_.world_size(); }
  int local_rank() const override { return bootstrap_.local_rank(); }
  int local_size() const override { return bootstrap_.local_size(); }
  const char* backend_name() const override { return "nccl"; }
  void barrier() override;
  std::vector<int64_t> all_gather(int64_t value) override { return bootstrap_.all_gather(value); }
  // ncclCommAbort, from any thread: unblocks collectives in flight (the
  // watchdog's last act). The communicator is failed from then on.
  void abort() override;

  // The stream collectives run on. For tests and diagnostics only (the GPU
  // stall test makes it wait forever).
  cudaStream_t comm_stream() const;

 protected:
  void do_all_reduce(at::Tensor& tensor, ReduceOp op) override;
  void do_broadcast(at::Tensor& tensor, int root) override;
  std::unique_ptr<Work> do_all_reduce_async(at::Tensor& tensor, ReduceOp op) override;
  std::unique_ptr<Work> do_reduce_scatter_async(at::Tensor& input, at::Tensor& output) override;
  std::unique_ptr<Work> do_all_gather_async(at::Tensor& buffer) override;

 private:
  // Throws if the communicator has failed; registers the health check with
  // a newly set watchdog; orders the comm stream after the compute stream
  // for `tensor` (and keeps its memory from being reused early).
  void prepare_collective(const at::Tensor& tensor);
  // An event after the enqueued collective, tracked by the watchdog, for the
  // compute stream to wait on. `name`: unless a watchdog Scope names it.
  std::unique_ptr<Work> finish_collective(const char* name);

  struct State;     // CUDA and NCCL handles, shared with Works and the watchdog
  class NcclWork;   // the Work of one collective
  Communicator& bootstrap_;
  std::shared_ptr<State> state_;
};

// Number of GPUs the CUDA runtime sees (0 when there is no driver or device).
int cuda_device_count();

}  // namespace dtrain
