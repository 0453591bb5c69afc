// Device memory, as LibTorch's allocator sees it. The start of memory
// accounting: on CUDA, the peak of the bytes the caching allocator has handed
// out (tensors, not its cached reserve), since the last reset. The CPU has no
// such statistics in LibTorch; there these return nothing.
#pragma once
#include <c10/core/Device.h>

#include <cstdint>
#include <optional>

namespace dtrain {

// Starts a new peak (CUDA); nothing elsewhere.
void reset_peak_memory(const c10::Device& device);

// Peak bytes allocated on `device` since the last reset (CUDA builds of
// LibTorch on a CUDA device), else nullopt.
std::optional<int64_t> peak_memory_bytes(const c10::Device& device);

}  // namespace dtrain
