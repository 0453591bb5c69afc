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
// Every CUDA and NCCL call is checked; on a NCCL error the communicator is
// aborted (ncclCommAbort) and CommError names the call, the rank and the
// device. Only compiled when CUDA and NCCL are found (DTRAIN_HAVE_NCCL).
#pragma once
#include "comm/communicator.h"

#include <cuda_runtime_api.h>

#include <memory>

namespace dtrain {

class NcclCommunicator final : public Communicator {
 public:
  // `bootstrap` (MPI) is used to share the NCCL id, for barrier and
  // all_gather; it must outlive this object.
  NcclCommunicator(Communicator& bootstrap, int device_index);
  ~NcclCommunicator() override;

  int rank() const override { return bootstrap_.rank(); }
  int world_size() const override { return bootstrap_.world_size(); }
  int local_rank() const override { return bootstrap_.local_rank(); }
  int local_size() const override { return bootstrap_.local_size(); }
  const char* backend_name() const override { return "nccl"; }
  void barrier() override;
  std::vector<int64_t> all_gather(int64_t value) override { return bootstrap_.all_gather(value); }
  // ncclCommAbort: unblocks collectives in flight (the watchdog's last act).
  void abort() override;

 protected:
  void do_all_reduce(at::Tensor& tensor, ReduceOp op) override;
  void do_broadcast(at::Tensor& tensor, int root) override;
  std::unique_ptr<Work> do_all_reduce_async(at::Tensor& tensor, ReduceOp op) override;

 private:
  // Orders the comm stream after the compute stream for `tensor` (and keeps
  // its memory from being reused early); returns the compute stream.
  cudaStream_t prepare_collective(const at::Tensor& tensor);
  // An event after the enqueued collective, for the compute stream to wait on.
  std::unique_ptr<Work> finish_collective(cudaStream_t compute);

  struct State;  // CUDA and NCCL handles, kept out of this header
  Communicator& bootstrap_;
  std::unique_ptr<State> state_;
};

// Number of GPUs the CUDA runtime sees (0 when there is no driver or device).
int cuda_device_count();

}  // namespace dtrain
