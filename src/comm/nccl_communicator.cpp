// The NCCL backend: collectives on CUDA tensors on its own stream, watched
// for errors and aborted cleanly, as c10d's ProcessGroupNCCL does.
#include "comm/nccl_communicator.h"

#include "comm/watchdog.h"
#include "common/error.h"

#include <ATen/ATen.h>
#include <cuda_runtime.h>
#include <nccl.h>

#ifdef DTRAIN_TORCH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>

namespace dtrain {

namespace {

std::string where(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

std::string seconds_text(double seconds) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", seconds);
  return text;
}

}  // namespace

#define CUDA_CHECK(call) state_->check_cuda((call), #call, __FILE__, __LINE__)
#define NCCL_CHECK(call) state_->check_nccl((call), #call, __FILE__, __LINE__)

// Shared by the communicator, its Works and the watchdog's health check, any
// of which may outlive the communicator.
struct NcclCommunicator::State {
  int rank = 0;
  int device = -1;
  double timeout_seconds = 0;     // for NCCL calls in progress; 0: forever
  cudaStream_t stream = nullptr;  // the comm stream
  bool owns_stream = false;
  // A call failed, or the communicator was aborted: no more collectives.
  std::atomic<bool> failed{false};
  CollectiveWatchdog* health_watched_by = nullptr;  // main thread only
  // The NCCL handle. Whoever swaps it to null (take_comm) aborts or destroys
  // it; `comm_mutex` keeps that from happening during a health check.
  std::atomic<ncclComm_t> comm{nullptr};
  std::mutex comm_mutex;

  std::string who() const { return "rank " + std::to_string(rank) + " (GPU " + std::to_string(device) + ")"; }

  ncclComm_t take_comm() {
    std::lock_guard<std::mutex> lock(comm_mutex);
    return comm.exchange(nullptr);
  }

  // Any thread: marks the communicator failed and aborts it, so no rank
  // waits on a broken one.
  void fail() {
    failed = true;
    if (ncclComm_t handle = take_comm()) ncclCommAbort(handle);
  }

  void check_cuda(cudaError_t code, const char* expression, const char* file, int line) {
    if (code == cudaSuccess) return;
    fail();
    throw CommError(std::string(expression) + " failed at " + where(file, line) + " on " + who() + ": " +
                    cudaGetErrorString(code));
  }

  // ncclInProgress is success for a call that starts work on a nonblocking
  // communicator, once the work has settled; anything else aborts and throws.
  void check_nccl(ncclResult_t code, const char* expression, const char* file, int line) {
    if (failed) {  // aborted under the call (the watchdog): its result means nothing
      throw CommError(std::string(expression) + " on " + who() +
                      ": the NCCL communicator was aborted (by the watchdog or an earlier failure)");
    }
    if (code == ncclInProgress) code = settle(comm.load());
    if (code == ncclSuccess) return;
    const std::string at = " at " + where(file, line) + " on " + who() + ": ";
    std::string message = expression;
    if (code == ncclInProgress) {
      message += " did not complete within --collective-timeout " + seconds_text(timeout_seconds) + " s" + at +
                 "another rank stopped responding or did not make the same call";
    } else {
      message += " failed" + at + ncclGetErrorString(code);
      const char* detail = ncclGetLastError(comm.load());
      if (detail && *detail) message += " (" + std::string(detail) + ")";
    }
    fail();
    throw CommError(message);
  }

  // Polls until the last call on `handle` has finished (NCCL forbids other
  // calls on it, and CUDA work on its stream, before then) and returns its
  // result; ncclInProgress if it is still running after the timeout.
  ncclResult_t settle(ncclComm_t handle) const {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      ncclResult_t state = ncclInProgress;
      const ncclResult_t code = ncclCommGetAsyncError(handle, &state);
      if (code != ncclSuccess) return code;
      if (state != ncclInProgress) return state;
      if (timeout_seconds > 0 &&
          std::chrono::steady_clock::now() - start > std::chrono::duration<double>(timeout_seconds)) {
        return ncclInProgress;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  // The watchdog's health check (its thread): NCCL's asynchronous error, e.g.
  // a peer that died or a network failure, or empty.
  std::string async_error() {
    std::lock_guard<std::mutex> lock(comm_mutex);
    const ncclComm_t handle = comm.load();
    ncclResult_t state = ncclSuccess;
    if (!handle || ncclCommGetAsyncError(handle, &state) != ncclSuccess) return {};
    if (state == ncclSuccess || state == ncclInProgress) return {};
    failed = true;
    std::string error = std::string("NCCL async error: ") + ncclGetErrorString(state);
    const char* detail = ncclGetLastError(handle);
    if (detail && *detail) error += " (" + std::string(detail) + ")";
    return error;
  }

  // The stream compute runs on now: LibTorch's current one, or the legacy default.
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

// One collective in flight: the event recorded after it on the comm stream.
// Shared by its Work and the watchdog; whichever drops it last destroys the
// event. cudaEventQuery is safe from any thread.
class NcclCollective final : public WatchedCollective {
 public:
  NcclCollective(cudaEvent_t done, int device, const char* name) : done_(done), device_(device), name_(name) {}
  ~NcclCollective() override { cudaEventDestroy(done_); }
  const char* name() const override { return name_; }
  cudaEvent_t done() const { return done_; }

  CollectiveState poll() override {
    // The watchdog thread's first CUDA call must not make a context on GPU 0.
    cudaSetDevice(device_);
    const cudaError_t code = cudaEventQuery(done_);
    if (code == cudaSuccess) return {CollectiveState::Done, {}};
    if (code == cudaErrorNotReady) {
      (void)cudaGetLastError();  // not an error: do not leave it for LibTorch's next launch check
      return {};
    }
    return {CollectiveState::Failed, std::string("CUDA error on GPU ") + std::to_string(device_) + ": " +
                                         cudaGetErrorString(code)};
  }

 private:
  cudaEvent_t done_;
  int device_;
  const char* name_;
};

}  // namespace

// wait() orders the stream current when it is called (as c10d's
// WorkNCCL::wait does) after the collective: no host sync.
class NcclCommunicator::NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<State> state, std::shared_ptr<NcclCollective> collective)
      : state_(std::move(state)), collective_(std::move(collective)) {}
  void wait() override {
    if (state_->failed) {
      throw CommError(state_->who() + ": the NCCL communicator failed or was aborted while the " +
                      collective_->name() + " ran; its result is lost");
    }
    CUDA_CHECK(cudaStreamWaitEvent(state_->compute_stream(), collective_->done(), 0));
  }
  bool test() override {
    const CollectiveState state = collective_->poll();
    if (state.status == CollectiveState::Failed) {
      state_->failed = true;
      throw CommError(state_->who() + ": the " + collective_->name() + " failed: " + state.error);
    }
    return state.status == CollectiveState::Done;
  }

 private:
  std::shared_ptr<State> state_;
  std::shared_ptr<NcclCollective> collective_;
};

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later probes start clean
    return 0;
  }
  return count;
}

NcclCommunicator::NcclCommunicator(Communicator& bootstrap, int device_index, double timeout_seconds)
    : bootstrap_(bootstrap), state_(std::make_shared<State>()) {
  state_->rank = bootstrap.rank();
  state_->device = device_index;
  state_->timeout_seconds = timeout_seconds;
  CUDA_CHECK(cudaSetDevice(device_index));
  ncclUniqueId id;
  if (rank() == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  auto id_bytes = at::empty({static_cast<int64_t>(sizeof(id))}, at::kByte);
  std::memcpy(id_bytes.data_ptr(), &id, sizeof(id));
  bootstrap_.broadcast(id_bytes, 0);
  std::memcpy(&id, id_bytes.data_ptr(), sizeof(id));

  // Nonblocking, so a rank that never joins cannot hang this one: poll
  // until initialized, under the timeout.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t handle = nullptr;
  ncclResult_t result = ncclCommInitRankConfig(&handle, world_size(), id, rank(), &config);
  state_->comm = handle;
  if (result == ncclInProgress) result = state_->settle(handle);
  if (result == ncclInProgress) {
    state_->fail();
    throw CommError(state_->who() + ": NCCL initialization did not complete: another rank did not join NCCL "
                                    "initialization within --collective-timeout " +
                    seconds_text(timeout_seconds) + " s; check that every rank started, or raise the timeout");
  }
  state_->check_nccl(result, "ncclCommInitRankConfig", __FILE__, __LINE__);

#ifdef DTRAIN_TORCH_CUDA
  state_->stream = at::cuda::getStreamFromPool(/*isHighPriority=*/true, device_index).stream();
#else
  CUDA_CHECK(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking));
  state_->owns_stream = true;
#endif
}

void NcclCommunicator::abort() { state_->fail(); }

NcclCommunicator::~NcclCommunicator() {
  // Never blocks on a broken job: after a failure or abort(), or while an
  // exception unwinds (some rank may have left a collective half done),
  // abort. Otherwise finalize (flushes our collectives, under the timeout)
  // and destroy, falling back to abort.
  if (ncclComm_t handle = state_->take_comm()) {
    bool finalized = false;
    if (!state_->failed && std::uncaught_exceptions() == 0) {
      // No watchdog is left at this point: bound the flush by itself.
      constexpr double kFinalizeSeconds = 30;
      if (state_->timeout_seconds <= 0 || state_->timeout_seconds > kFinalizeSeconds) {
        state_->timeout_seconds = kFinalizeSeconds;
      }
      ncclResult_t result = ncclCommFinalize(handle);
      if (result == ncclInProgress) result = state_->settle(handle);
      finalized = result == ncclSuccess;
    }
    if (finalized) ncclCommDestroy(handle);
    else ncclCommAbort(handle);
  }
  if (state_->owns_stream) cudaStreamDestroy(state_->stream);
}

cudaStream_t NcclCommunicator::comm_stream() const { return state_->stream; }

namespace {

void require_cuda(const at::Tensor& tensor, int device) {
  if (!tensor.device().is_cuda() || tensor.device().index() != device) {
    throw Error("NCCL backend needs tensors on GPU " + std::to_string(device) + ", got " + tensor.device().str());
  }
}

}  // namespace

void NcclCommunicator::prepare_collective(const at::Tensor& tensor) {
  if (state_->failed) {
    throw CommError(state_->who() + ": the NCCL communicator failed or was aborted earlier; no collective can run");
  }
  require_cuda(tensor, state_->device);
  CollectiveWatchdog* const watchdog = this->watchdog();
  if (watchdog && watchdog != state_->health_watched_by) {
    watchdog->add_health_check([state = state_] { return state->async_error(); });
    state_->health_watched_by = watchdog;
  }
  // The collective must see everything compute has queued for this tensor.
  cudaEvent_t ready;
  CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventRecord(ready, state_->compute_stream()));
  CUDA_CHECK(cudaStreamWaitEvent(state_->stream, ready, 0));
  CUDA_CHECK(cudaEventDestroy(ready));
#ifdef DTRAIN_TORCH_CUDA
  // The caching allocator must not hand this memory to compute while NCCL
  // may still be using it on our stream.
  c10::cuda::CUDACachingAllocator::recordStream(tensor.storage().data_ptr(),
                                                 c10::cuda::getStreamFromExternal(state_->stream, state_->device));
#endif
}

std::unique_ptr<Work> NcclCommunicator::finish_collective(const char* name) {
  CollectiveWatchdog* const watchdog = this->watchdog();
  const char* const scope = watchdog ? watchdog->scope_name() : nullptr;
  cudaEvent_t done;
  CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  auto collective = std::make_shared<NcclCollective>(done, state_->device, scope ? scope : name);
  CUDA_CHECK(cudaEventRecord(done, state_->stream));
  if (watchdog) watchdog->track(collective);
  return std::make_unique<NcclWork>(state_, std::move(collective));
}

std::unique_ptr<Work> NcclCommunicator::do_all_reduce_async(at::Tensor& tensor, ReduceOp op) {
  // The enqueue itself is watched too: NCCL may block in it (its first
  // collective connects peers; a full work queue waits for the GPU).
  CollectiveWatchdog::Scope watched(watchdog(), "NCCL all-reduce");
  prepare_collective(tensor);
  NCCL_CHECK(ncclAllReduce(tensor.data_ptr(), tensor.data_ptr(), static_cast<size_t>(tensor.numel()),
                           nccl_type_of(tensor), nccl_op_of(op), state_->comm.load(), state_->stream));
  return finish_collective("NCCL all-reduce");
}

std::unique_ptr<Work> NcclCommunicator::do_reduce_scatter_async(at::Tensor& input, at::Tensor& output) {
  CollectiveWatchdog::Scope watched(watchdog(), "NCCL reduce-scatter");
  prepare_collective(input);
  prepare_collective(output);
  NCCL_CHECK(ncclReduceScatter(input.data_ptr(), output.data_ptr(), static_cast<size_t>(output.numel()),
                               nccl_type_of(input), ncclSum, state_->comm.load(), state_->stream));
  return finish_collective("NCCL reduce-scatter");
}

std::unique_ptr<Work> NcclCommunicator::do_all_gather_async(at::Tensor& buffer) {
  CollectiveWatchdog::Scope watched(watchdog(), "NCCL all-gather");
  prepare_collective(buffer);
  const int64_t chunk = buffer.numel() / world_size();
  // In place: NCCL allows the send buffer to be this rank's chunk of the receive buffer.
  const auto* own = static_cast<const char*>(buffer.data_ptr()) + rank() * chunk * buffer.element_size();
  NCCL_CHECK(ncclAllGather(own, buffer.data_ptr(), static_cast<size_t>(chunk), nccl_type_of(buffer),
                           state_->comm.load(), state_->stream));
  return finish_collective("NCCL all-gather");
}

void NcclCommunicator::do_all_reduce(at::Tensor& tensor, ReduceOp op) {
  // "Blocking" on a GPU means: ordered before anything compute does next.
  do_all_reduce_async(tensor, op)->wait();
}

void NcclCommunicator::do_broadcast(at::Tensor& tensor, int root) {
  CollectiveWatchdog::Scope watched(watchdog(), "NCCL broadcast");
  prepare_collective(tensor);
  NCCL_CHECK(ncclBroadcast(tensor.data_ptr(), tensor.data_ptr(), static_cast<size_t>(tensor.numel()),
                           nccl_type_of(tensor), root, state_->comm.load(), state_->stream));
  finish_collective("NCCL broadcast")->wait();
}

void NcclCommunicator::barrier() {
  {
    CollectiveWatchdog::Scope watched(watchdog(), "NCCL barrier");
    CUDA_CHECK(cudaStreamSynchronize(state_->stream));
  }
  bootstrap_.barrier();
}

}  // namespace dtrain
