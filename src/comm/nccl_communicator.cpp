#include "comm/nccl_communicator.h"

#include "common/error.h"

#include <ATen/ATen.h>
#include <cuda_runtime.h>
#include <nccl.h>

#ifdef DTRAIN_TORCH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <cstring>
#include <string>

namespace dtrain {

namespace {

std::string where(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

void check_cuda(cudaError_t code, const char* expression, const char* file, int line, int rank, int device) {
  if (code == cudaSuccess) return;
  throw CommError(std::string(expression) + " failed at " + where(file, line) + " on rank " + std::to_string(rank) +
                  ", GPU " + std::to_string(device) + ": " + cudaGetErrorString(code));
}

}  // namespace

#define CUDA_CHECK(call) check_cuda((call), #call, __FILE__, __LINE__, rank(), state_->device)
#define NCCL_CHECK(call) state_->check_nccl((call), #call, __FILE__, __LINE__, rank())

struct NcclCommunicator::State {
  int device = -1;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;  // the comm stream
  bool owns_stream = false;

  // Aborts the communicator (so no rank waits on a broken one) and throws.
  void check_nccl(ncclResult_t code, const char* expression, const char* file, int line, int rank) {
    if (code == ncclSuccess) return;
    std::string message = std::string(expression) + " failed at " + where(file, line) + " on rank " +
                          std::to_string(rank) + ", GPU " + std::to_string(device) + ": " + ncclGetErrorString(code);
    if (comm) {
      const char* detail = ncclGetLastError(comm);
      if (detail && *detail) message += " (" + std::string(detail) + ")";
      ncclCommAbort(comm);
      comm = nullptr;
    }
    throw CommError(message);
  }

  // The stream compute runs on: LibTorch's current one, or the legacy default.
  cudaStream_t compute_stream() const {
#ifdef DTRAIN_TORCH_CUDA
    return at::cuda::getCurrentCUDAStream(device).stream();
#else
    return nullptr;
#endif
  }
};

namespace {

ncclDataType_t nccl_type_of(const at::Tensor& tensor) {
  switch (tensor.scalar_type()) {
    case at::kFloat: return ncclFloat32;
    case at::kDouble: return ncclFloat64;
    case at::kHalf: return ncclFloat16;
    case at::kBFloat16: return ncclBfloat16;
    case at::kLong: return ncclInt64;
    case at::kInt: return ncclInt32;
    case at::kByte: return ncclUint8;
    default:
      throw Error(std::string("NCCL backend cannot communicate tensors of type ") +
                  c10::toString(tensor.scalar_type()));
  }
}

ncclRedOp_t nccl_op_of(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: return ncclMin;
  }
  return ncclSum;
}

// Completes when the comm stream reaches the event recorded after the
// collective. wait() orders the compute stream after it (no host sync).
class NcclWork final : public Work {
 public:
  NcclWork(cudaEvent_t done, cudaStream_t compute) : done_(done), compute_(compute) {}
  ~NcclWork() override { cudaEventDestroy(done_); }
  void wait() override {
    const cudaError_t code = cudaStreamWaitEvent(compute_, done_, 0);
    if (code != cudaSuccess) throw CommError(std::string("cudaStreamWaitEvent failed: ") + cudaGetErrorString(code));
  }
  bool test() override {
    const cudaError_t code = cudaEventQuery(done_);
    if (code == cudaSuccess) return true;
    if (code == cudaErrorNotReady) {
      (void)cudaGetLastError();  // not an error: do not leave it for LibTorch's next launch check
      return false;
    }
    throw CommError(std::string("cudaEventQuery on a NCCL collective failed: ") + cudaGetErrorString(code));
  }

 private:
  cudaEvent_t done_;
  cudaStream_t compute_;
};

}  // namespace

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later probes start clean
    return 0;
  }
  return count;
}

NcclCommunicator::NcclCommunicator(Communicator& bootstrap, int device_index)
    : bootstrap_(bootstrap), state_(std::make_unique<State>()) {
  state_->device = device_index;
  CUDA_CHECK(cudaSetDevice(device_index));
  ncclUniqueId id;
  if (rank() == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  auto id_bytes = at::empty({static_cast<int64_t>(sizeof(id))}, at::kByte);
  std::memcpy(id_bytes.data_ptr(), &id, sizeof(id));
  bootstrap_.broadcast(id_bytes, 0);
  std::memcpy(&id, id_bytes.data_ptr(), sizeof(id));
  NCCL_CHECK(ncclCommInitRank(&state_->comm, world_size(), id, rank()));
#ifdef DTRAIN_TORCH_CUDA
  state_->stream = at::cuda::getStreamFromPool(/*isHighPriority=*/true, device_index).stream();
#else
  CUDA_CHECK(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking));
  state_->owns_stream = true;
#endif
}

void NcclCommunicator::abort() {
  if (state_->comm) ncclCommAbort(state_->comm);
}

NcclCommunicator::~NcclCommunicator() {
  if (state_->comm) {
    cudaStreamSynchronize(state_->stream);
    ncclCommDestroy(state_->comm);
  }
  if (state_->owns_stream) cudaStreamDestroy(state_->stream);
}

namespace {

void require_cuda(const at::Tensor& tensor, int device) {
  if (!tensor.device().is_cuda() || tensor.device().index() != device) {
    throw Error("NCCL backend needs tensors on GPU " + std::to_string(device) + ", got " + tensor.device().str());
  }
}

}  // namespace

cudaStream_t NcclCommunicator::prepare_collective(const at::Tensor& tensor) {
  require_cuda(tensor, state_->device);
  const cudaStream_t compute = state_->compute_stream();
  // The collective must see everything compute has queued for this tensor.
  cudaEvent_t ready;
  CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(ready, compute));
  CUDA_CHECK(cudaStreamWaitEvent(state_->stream, ready, 0));
  CUDA_CHECK(cudaEventDestroy(ready));
#ifdef DTRAIN_TORCH_CUDA
  // The caching allocator must not hand this memory to compute while NCCL
  // may still be using it on our stream.
  c10::cuda::CUDACachingAllocator::recordStream(tensor.storage().data_ptr(),
                                                 c10::cuda::getStreamFromExternal(state_->stream, state_->device));
#endif
  return compute;
}

std::unique_ptr<Work> NcclCommunicator::finish_collective(cudaStream_t compute) {
  cudaEvent_t done;
  CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(done, state_->stream));
  return std::make_unique<NcclWork>(done, compute);
}

std::unique_ptr<Work> NcclCommunicator::do_all_reduce_async(at::Tensor& tensor, ReduceOp op) {
  const cudaStream_t compute = prepare_collective(tensor);
  NCCL_CHECK(ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), static_cast<size_t>(tensor.numel()),
                           nccl_type_of(tensor), nccl_op_of(op), state_->comm, state_->stream));
  return finish_collective(compute);
}

void NcclCommunicator::do_all_reduce(at::Tensor& tensor, ReduceOp op) {
  // "Blocking" on a GPU means: ordered before anything compute does next.
  do_all_reduce_async(tensor, op)->wait();
}

void NcclCommunicator::do_broadcast(at::Tensor& tensor, int root) {
  const cudaStream_t compute = prepare_collective(tensor);
  NCCL_CHECK(ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), static_cast<size_t>(tensor.numel()),
                           nccl_type_of(tensor), root, state_->comm, state_->stream));
  finish_collective(compute)->wait();
}

void NcclCommunicator::barrier() {
  CUDA_CHECK(cudaStreamSynchronize(state_->stream));
  bootstrap_.barrier();
}

}  // namespace dtrain
