// dtrain_nccl_stall: the watchdog must end a job whose NCCL collective never
// completes, although the rank then blocks where nothing polls (in .item()).
// At world size 1, with the trainer's own watchdog wiring (JobWatchdog), it
// makes the NCCL comm stream wait for a device value nobody writes
// (cuStreamWaitValue32), starts an all-reduce outside any watchdog Scope (so
// only the tracking of collectives in flight can catch it), waits for it and
// reads the result. Expected: the watchdog's line within the timeout plus a
// few seconds, and a non-zero exit.
//   mpirun -np 1 dtrain_nccl_stall --collective-timeout 5
// Exits 77 (skipped) without a GPU that LibTorch can use. Built only with
// the NCCL backend; tests/gpu/kit.sh runs it.
#include "comm/mpi_communicator.h"
#include "comm/nccl_communicator.h"
#include "comm/placement.h"
#include "comm/watchdog.h"

#include <cuda.h>  // the driver's types and flags only: libcuda is reached through the runtime
#include <cuda_runtime_api.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

namespace {

// Makes `stream` wait until the 32-bit int at `flag` is 1. cuStreamWaitValue32 is a
// driver API call; the runtime hands out its address, so this binary does
// not link libcuda (absent where CI builds it).
void wait_forever(cudaStream_t stream, const void* flag) {
  using WaitValue32 = CUresult (*)(CUstream, CUdeviceptr, cuuint32_t, unsigned int);
  void* entry = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  if (cudaGetDriverEntryPointByVersion("cuStreamWaitValue32", &entry, 12000, cudaEnableDefault, &found) !=
          cudaSuccess ||
      found != cudaDriverEntryPointSuccess) {
    throw std::runtime_error("the CUDA driver has no cuStreamWaitValue32");
  }
  const CUresult code = reinterpret_cast<WaitValue32>(entry)(stream, reinterpret_cast<CUdeviceptr>(flag), 1,
                                                             CU_STREAM_WAIT_VALUE_EQ);
  if (code != CUDA_SUCCESS) throw std::runtime_error("cuStreamWaitValue32 failed, CUresult " + std::to_string(code));
}

void check(cudaError_t code, const char* what) {
  if (code != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(code));
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dtrain;
  MpiSession session(&argc, &argv);
  MpiCommunicator world;
  char* end = nullptr;
  const double timeout = argc == 3 ? std::strtod(argv[2], &end) : 0;
  if (argc != 3 || std::string(argv[1]) != "--collective-timeout" || *end != '\0' || timeout <= 0 ||
      world.world_size() != 1) {
    std::fprintf(stderr, "usage: mpirun -np 1 dtrain_nccl_stall --collective-timeout SECONDS\n");
    return 2;
  }
  if (cuda_device_count() == 0 || usable_gpu_count() == 0) {
    std::printf("nccl_stall: skipped: no GPU that LibTorch can use\n");
    return 77;
  }
  try {
    JobWatchdog watchdog(timeout, world);
    NcclCommunicator nccl(world, 0, timeout);
    const JobWatchdog::Attachment watched(watchdog, nccl, "GPU 0");
    // A first collective that completes, as in training: NCCL connects and
    // sets up its device state in its first collective.
    auto warm_up = torch::ones({1 << 20}, torch::TensorOptions().device(torch::kCUDA, 0));
    nccl.all_reduce(warm_up);
    const float warm_sum = warm_up.sum().item<float>();
    std::printf("nccl_stall: NCCL is up (warm-up sum %g)\n", warm_sum);
    std::fflush(stdout);

    void* never_written = nullptr;
    check(cudaMalloc(&never_written, sizeof(int)), "cudaMalloc");
    check(cudaMemset(never_written, 0, sizeof(int)), "cudaMemset");
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    wait_forever(nccl.comm_stream(), never_written);
    std::printf("nccl_stall: the NCCL stream waits on a value nobody writes\n");
    std::fflush(stdout);

    // A gradient-like all-reduce, as the reducer starts it: async, no Scope.
    auto gradient = torch::ones({1 << 20}, torch::TensorOptions().device(torch::kCUDA, 0));
    auto work = nccl.all_reduce_async(gradient);
    work->wait();  // orders the compute stream after the stalled comm stream: returns at once
    std::printf("nccl_stall: stalled; waiting\n");
    std::fflush(stdout);
    const float sum = gradient.sum().item<float>();  // blocks for good
    std::fprintf(stderr, "nccl_stall: error: the stalled all-reduce completed (sum %g)\n", sum);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "nccl_stall: error: %s\n", error.what());
  }
  return 1;
}
