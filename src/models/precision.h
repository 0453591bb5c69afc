// The numeric precision of a run's compute (--precision, docs/performance.md
// "Precision"): the TF32 switches of cuBLAS and cuDNN for the process, and
// bfloat16 autocast around each forward and its loss. Parameters, gradients,
// the optimizer state, the noise scale and the non-finite check stay fp32 in
// every mode; backward runs outside autocast, as in PyTorch.
#pragma once
#include "cli/config.h"

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <optional>

namespace dtrain {

// auto: bf16-mixed on a CUDA device of compute capability 8.0 or more (bf16
// tensor cores), fp32 elsewhere (a CPU, or an older GPU). Other values stay.
Precision resolve_precision(Precision requested, const c10::Device& device);

// TF32 in cuBLAS and cuDNN, for the whole process: on for tf32 and
// bf16-mixed (the fp32 matmuls autocast leaves), off for fp32 (LibTorch
// leaves cuDNN's on by default; the equivalence tests need it off).
void set_tf32(Precision precision);

// Whether `precision` runs the forward under bf16 autocast.
inline bool autocasts(Precision precision) { return precision == Precision::Bf16Mixed; }

// The autocast state of this thread: whether CPU and CUDA autocast are on,
// their lower-precision types, and whether casts of weights are cached.
// LibTorch 2.4 replaced the per-device functions with ones taking the device
// type (the old ones, kept deprecated, warn when called); both are handled.
struct AutocastState {
  bool cpu_enabled = false, cuda_enabled = false;
  c10::ScalarType cpu_dtype = c10::kBFloat16, cuda_dtype = c10::kHalf;
  bool cache_enabled = true;

  static AutocastState current();
  void make_current() const;
};

// Enters an autocast state for a scope and puts the previous one back, as
// Python's torch.autocast does, nesting included: when the outermost
// autocast scope ends, the cache of lower-precision weight copies is cleared,
// before an in-place optimizer update could make it stale.
class AutocastScope {
 public:
  explicit AutocastScope(const AutocastState& state);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  AutocastState previous_;
};

// The scope of one forward and its loss under `precision` on a device of
// `device_type`: bf16 autocast for bf16-mixed, nothing otherwise.
class PrecisionScope {
 public:
  PrecisionScope(Precision precision, c10::DeviceType device_type);

 private:
  std::optional<AutocastScope> autocast_;
};

}  // namespace dtrain
