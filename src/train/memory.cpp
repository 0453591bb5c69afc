#include "train/memory.h"

#ifdef DTRAIN_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace dtrain {

void reset_peak_memory(const c10::Device& device) {
#ifdef DTRAIN_TORCH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
}

std::optional<int64_t> peak_memory_bytes(const c10::Device& device) {
#ifdef DTRAIN_TORCH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return stats.allocated_bytes[0].peak;  // [0]: the aggregate of both pools
  }
#endif
  return std::nullopt;
}

}  // namespace dtrain
