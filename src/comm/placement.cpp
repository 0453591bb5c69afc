// Choosing the device and the collective backend once, from ordered
// candidates, and checking that every rank chose alike.
#include "comm/placement.h"

#include "common/error.h"

#include <torch/cuda.h>

#ifdef DTRAIN_HAVE_NCCL
#include "comm/nccl_communicator.h"
#endif

namespace dtrain {

std::string Placement::describe() const {
  std::string text = device == DeviceKind::Cuda ? "cuda:" + std::to_string(device_index) : "cpu";
  return text + ", " + to_string(backend) + (overlap ? ", overlapped buckets" : ", buckets after backward");
}

bool nccl_compiled() {
#ifdef DTRAIN_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

int usable_gpu_count() {
  // LibTorch's view decides: a CPU-only LibTorch cannot put tensors on a GPU
  // even when the CUDA runtime sees one.
  return torch::cuda::is_available() ? static_cast<int>(torch::cuda::device_count()) : 0;
}

Placement choose_placement(const DistributedOptions& options, int local_rank) {
  const int gpus = usable_gpu_count();
  const std::string no_gpu =
      "LibTorch sees no GPU (a CPU-only LibTorch build, or no CUDA driver or device on this host)";
  Placement placement;
  switch (options.device) {
    case DeviceKind::Cpu: placement.device = DeviceKind::Cpu; break;
    case DeviceKind::Cuda:
      if (gpus == 0) throw UsageError("--device cuda: " + no_gpu + "; use --device cpu");
      placement.device = DeviceKind::Cuda;
      break;
    case DeviceKind::Auto:
      // A GPU only if something can all-reduce on it: NCCL in this build, and
      // not --backend mpi. Otherwise train on the CPU.
      placement.device = gpus > 0 && nccl_compiled() && options.backend != BackendKind::Mpi ? DeviceKind::Cuda
                                                                                           : DeviceKind::Cpu;
      break;
  }
  if (placement.device == DeviceKind::Cuda) {
    if (gpus == 1) {
      placement.device_index = 0;  // e.g. the scheduler gave each rank one GPU via CUDA_VISIBLE_DEVICES
    } else if (local_rank < gpus) {
      placement.device_index = local_rank;
    } else {
      throw UsageError("local rank " + std::to_string(local_rank) + " has no GPU of its own (" + std::to_string(gpus) +
                       " visible on this host); start at most one rank per GPU per host, or give each rank its "
                       "own GPU with CUDA_VISIBLE_DEVICES");
    }
  }

  switch (options.backend) {
    case BackendKind::Nccl:
      if (!nccl_compiled()) {
        throw UsageError("--backend nccl: this dtrain was built without NCCL (CUDA and NCCL were not found at build "
                         "time); use --backend mpi");
      }
      if (placement.device != DeviceKind::Cuda) {
        throw UsageError("--backend nccl needs a GPU: " + (gpus == 0 ? no_gpu : "--device cpu was given") +
                         "; use --backend mpi");
      }
      placement.backend = BackendKind::Nccl;
      break;
    case BackendKind::Mpi:
      if (placement.device == DeviceKind::Cuda) {
        throw UsageError("--backend mpi all-reduces CPU tensors; use --backend nccl with GPUs, or --device cpu");
      }
      placement.backend = BackendKind::Mpi;
      break;
    case BackendKind::Auto: {
      // Ordered candidates: the first that can serve this device wins.
      const bool nccl_usable = nccl_compiled() && placement.device == DeviceKind::Cuda;
      const bool mpi_usable = placement.device == DeviceKind::Cpu;
      if (nccl_usable) placement.backend = BackendKind::Nccl;
      else if (mpi_usable) placement.backend = BackendKind::Mpi;
      else throw UsageError("training on a GPU needs the NCCL backend, which this dtrain was built without");
      break;
    }
  }
  return placement;
}

void check_same_placement(Communicator& comm, const Placement& placement) {
  const int64_t code = static_cast<int64_t>(placement.device) * 10 + static_cast<int64_t>(placement.backend);
  const auto codes = comm.all_gather(code);
  for (size_t r = 1; r < codes.size(); ++r) {
    if (codes[r] != codes[0]) {
      throw UsageError("ranks chose different devices or backends (rank 0: " +
                       std::string(to_string(static_cast<DeviceKind>(codes[0] / 10))) + "/" +
                       to_string(static_cast<BackendKind>(codes[0] % 10)) + ", rank " + std::to_string(r) + ": " +
                       to_string(static_cast<DeviceKind>(codes[r] / 10)) + "/" +
                       to_string(static_cast<BackendKind>(codes[r] % 10)) +
                       "); some hosts lack a GPU: give --device and --backend explicitly");
    }
  }
}

std::unique_ptr<Communicator> make_backend(const Placement& placement, Communicator& bootstrap,
                                           double timeout_seconds) {
#ifdef DTRAIN_HAVE_NCCL
  if (placement.backend == BackendKind::Nccl) {
    return std::make_unique<NcclCommunicator>(bootstrap, placement.device_index, timeout_seconds);
  }
#endif
  return nullptr;
}

}  // namespace dtrain
