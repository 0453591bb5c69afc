// Memory accounting: what a training step holds and at most needs, on the
// device the model lives on.
//
// CUDA: LibTorch's caching-allocator statistics (bytes handed out to
// tensors, not the allocator's cached reserve). CPU: LibTorch has no
// statistics there, so install_cpu_memory_accounting() puts a counting
// allocator in front of LibTorch's own CPU allocator (c10::SetCPUAllocator,
// in LibTorch 1.13 and 2.x alike): every CPU tensor's bytes are counted when
// allocated and when freed, lock-free, with the peak since the last reset.
// On CPU everything LibTorch allocates counts, the dataset included: that is
// the process's truth, and the breakdown shows it as "data and other".
//
// A budget (--memory-budget on CPU, or a test's injected one) is enforced by
// the counting allocator inside a BudgetScope only: the micro-steps of
// training and the probes of --micro-batch-size auto. An allocation past it
// throws c10::OutOfMemoryError, as CUDA's allocator does when the device is
// full, so one recovery path (memory/out_of_memory.h) serves both.
#pragma once
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace at {
class Tensor;
}

namespace dtrain {

// Puts the counting allocator in front of LibTorch's CPU allocator, once
// (later calls do nothing). Call it first thing in main, before any tensor
// exists: tensors allocated before it are not counted while they live.
void install_cpu_memory_accounting();
bool cpu_memory_accounting_installed();

// Starts a new peak at the current allocation.
void reset_peak_memory(const c10::Device& device);
// Bytes allocated on `device` now, and the peak since the last reset; nullopt
// where nothing measures (CPU without the counting allocator, or a CUDA
// device in a CPU build of LibTorch).
std::optional<int64_t> allocated_memory_bytes(const c10::Device& device);
std::optional<int64_t> peak_memory_bytes(const c10::Device& device);

// Free bytes on a CUDA device (cudaMemGetInfo) plus what LibTorch's caching
// allocator holds in reserve but not in tensors; nullopt elsewhere.
std::optional<int64_t> free_device_memory_bytes(const c10::Device& device);
// After an out-of-memory error on CUDA: give the cache back to the device,
// so the smaller retry does not meet the fragments of the failed attempt.
void release_cached_memory(const c10::Device& device);

// The CPU budget: 0 = none. While a BudgetScope is alive, an allocation that
// would take the counted bytes past it throws c10::OutOfMemoryError.
void set_cpu_memory_budget(int64_t bytes);
// --memory-budget on `device`: the CPU budget above, or on CUDA the caching
// allocator's memory fraction (budget / the device's total), past which it
// raises c10::OutOfMemoryError as on a full device. Nothing for 0.
void apply_memory_budget(const c10::Device& device, int64_t bytes);
class BudgetScope {
 public:
  BudgetScope();
  ~BudgetScope();
  BudgetScope(const BudgetScope&) = delete;
  BudgetScope& operator=(const BudgetScope&) = delete;
};

// Bytes of a list of tensors (their storage as seen: numel x element size).
int64_t tensor_bytes(const std::vector<at::Tensor>& tensors);

// What one training step holds and needs on one rank.
struct MemoryBreakdown {
  int64_t parameters = 0;
  int64_t gradients = 0;        // the reducer's buckets
  int64_t optimizer_state = 0;  // momentum, Adam moments, ...
  int64_t other = 0;            // resident but none of the above: on CPU the dataset, on CUDA the eval buffers
  int64_t activations = 0;      // the micro-steps' peak less what was resident when the step began
  int64_t peak = 0;             // the micro-steps' peak: resident + activations
  bool measured = false;        // false where nothing measures (see above)
};

// Per training step: what was resident when it began, the peak of its
// micro-steps, and how much the first optimizer update added (the optimizer
// state, which LibTorch creates lazily). Costs two atomic reads per step on
// CPU and a statistics copy on CUDA (docs/performance.md).
class MemoryMeter {
 public:
  explicit MemoryMeter(const c10::Device& device) : device_(device) {}
  bool measures() const;
  void begin_step();         // before the micro-steps: resident now, a new peak
  // After them (and the all-reduce): the step's peak; an attempt that ran
  // out of memory somewhere (`counts` false) is not the step's.
  void end_micro_steps(bool counts = true);
  void after_update();       // after the optimizer step
  // The last step's resident bytes and activations (peak less resident).
  int64_t resident() const { return resident_; }
  int64_t last_activations() const { return last_activations_; }
  // A resumed run's optimizer state, resident from the start.
  void set_resident_optimizer_state(int64_t bytes) {
    optimizer_state_ = bytes;
    state_resident_from_start_ = true;
  }
  bool stepped() const { return updates_ > 0; }
  // The breakdown at the step with the largest peak so far.
  MemoryBreakdown breakdown(int64_t parameters, int64_t gradients) const;

 private:
  c10::Device device_;
  int64_t resident_ = 0;
  int64_t before_update_ = 0;
  int64_t last_activations_ = 0;
  int64_t optimizer_state_ = 0;
  int64_t updates_ = 0;
  int64_t max_peak_ = -1;
  int64_t resident_at_max_ = 0;
  bool max_after_update_ = false;
  bool state_resident_from_start_ = false;
};

// --micro-batch-size auto's search over the divisors of `local_batch` (a
// rank's share of the global batch): the largest whose probe (peak bytes,
// or nullopt for out of memory) fits `budget`. Peaks grow with the
// micro-batch, so after the largest, a bisection: at most about log2 of the
// number of divisors probes. micro 0: not even 1 fits.
struct ProbedSize {
  int64_t micro = 0;
  std::optional<int64_t> peak;  // nullopt: ran out of memory
  bool fits = false;
};
struct MicroBatchSearch {
  int64_t budget = 0;             // bytes per rank; 0: no search ran (not auto)
  int64_t micro = 0;
  std::vector<ProbedSize> tried;  // in the order probed
};
MicroBatchSearch largest_fitting_micro_batch(int64_t local_batch, int64_t budget,
                                             const std::function<std::optional<int64_t>(int64_t)>& probe);

// "parameters 1.2 MiB, gradients 1.2 MiB, optimizer state 2.4 MiB, data and
// other 180 MiB, activations 35 MiB; peak 220 MiB".
std::string describe(const MemoryBreakdown& memory);
// 1536 -> "1.5 KiB"; 3 << 30 -> "3.00 GiB".
std::string format_bytes(int64_t bytes);

}  // namespace dtrain
