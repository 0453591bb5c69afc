// The counting CPU allocator, the CUDA allocator's statistics, the step's
// breakdown, and the search of --micro-batch-size auto.
#include "memory/memory.h"

#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/alignment.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#ifdef DTRAIN_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>

namespace dtrain {
namespace {

std::atomic<int64_t> g_allocated{0};
std::atomic<int64_t> g_peak{0};
std::atomic<int64_t> g_budget{0};
std::atomic<int> g_budget_scopes{0};

void raise_peak(int64_t now) {
  int64_t peak = g_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

// Each allocation carries its size in a header of one alignment unit before
// the data, so freeing needs no lookup (and no lock): the pointer handed out
// stays aligned as LibTorch's own, and context == data as LibTorch's own, so
// raw_allocate and the "simple data pointer" checks keep working.
constexpr size_t kHeader = c10::gAlignment;

class CountingCpuAllocator final : public c10::Allocator {
 public:
  explicit CountingCpuAllocator(c10::Allocator* inner) : inner_(inner), inner_free_(inner->raw_deleter()) {}

// LibTorch 2.3 made allocate() non-const and added copy_data().
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
  c10::DataPtr allocate(size_t n) override { return allocate_counted(n); }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
#else
  c10::DataPtr allocate(size_t n) const override { return allocate_counted(n); }
#endif
  c10::DeleterFnPtr raw_deleter() const override { return &free_counted; }

  static CountingCpuAllocator* instance;

 private:
  c10::DataPtr allocate_counted(size_t n) const {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n == 0) return {nullptr, nullptr, &free_counted, cpu};
    const auto bytes = static_cast<int64_t>(n);
    const int64_t now = g_allocated.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    const int64_t budget = g_budget.load(std::memory_order_relaxed);
    if (budget > 0 && now > budget && g_budget_scopes.load(std::memory_order_relaxed) > 0) {
      g_allocated.fetch_sub(bytes, std::memory_order_relaxed);
      char text[192];
      std::snprintf(text, sizeof text,
                    "CPU out of memory: allocating %s would take this rank to %s, past its budget of %s",
                    format_bytes(bytes).c_str(), format_bytes(now).c_str(), format_bytes(budget).c_str());
      throw c10::OutOfMemoryError(c10::SourceLocation{__func__, __FILE__, static_cast<uint32_t>(__LINE__)}, text);
    }
    raise_peak(now);
    char* base = nullptr;
    try {
      base = static_cast<char*>(inner_->raw_allocate(n + kHeader));
    } catch (...) {  // the host itself is out of memory: not counted, LibTorch's error as it was
      g_allocated.fetch_sub(bytes, std::memory_order_relaxed);
      throw;
    }
    *reinterpret_cast<size_t*>(base) = n;
    void* data = base + kHeader;
    return {data, data, &free_counted, cpu};
  }

  static void free_counted(void* data) {
    if (data == nullptr) return;
    char* base = static_cast<char*>(data) - kHeader;
    g_allocated.fetch_sub(static_cast<int64_t>(*reinterpret_cast<size_t*>(base)), std::memory_order_relaxed);
    instance->inner_free_(base);
  }

  c10::Allocator* inner_;
  c10::DeleterFnPtr inner_free_;
};

CountingCpuAllocator* CountingCpuAllocator::instance = nullptr;

}  // namespace

void install_cpu_memory_accounting() {
  static std::once_flag once;
  std::call_once(once, [] {
    c10::Allocator* inner = c10::GetCPUAllocator();
    if (inner->raw_deleter() == nullptr) return;  // an allocator we cannot wrap: nothing is counted
    // Never freed: tensors it allocated may outlive main's locals.
    CountingCpuAllocator::instance = new CountingCpuAllocator(inner);
    // Priority above the default's, so a later default registration cannot undo it.
    c10::SetCPUAllocator(CountingCpuAllocator::instance, /*priority=*/1);
  });
}

bool cpu_memory_accounting_installed() {
  return CountingCpuAllocator::instance != nullptr && c10::GetCPUAllocator() == CountingCpuAllocator::instance;
}

void reset_peak_memory(const c10::Device& device) {
#ifdef DTRAIN_TORCH_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
    return;
  }
#endif
  if (device.is_cpu()) g_peak.store(g_allocated.load(std::memory_order_relaxed), std::memory_order_relaxed);
}

namespace {

// Bytes allocated on `device` now (`peak` false) or at most since the last reset.
std::optional<int64_t> allocated_statistic(const c10::Device& device, bool peak) {
#ifdef DTRAIN_TORCH_CUDA
  if (device.is_cuda()) {
    // [0]: the aggregate of both pools.
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return peak ? stats.allocated_bytes[0].peak : stats.allocated_bytes[0].current;
  }
#endif
  if (device.is_cpu() && cpu_memory_accounting_installed()) {
    return (peak ? g_peak : g_allocated).load(std::memory_order_relaxed);
  }
  return std::nullopt;
}

}  // namespace

std::optional<int64_t> allocated_memory_bytes(const c10::Device& device) { return allocated_statistic(device, false); }
std::optional<int64_t> peak_memory_bytes(const c10::Device& device) { return allocated_statistic(device, true); }

std::optional<int64_t> free_device_memory_bytes(const c10::Device& device) {
#ifdef DTRAIN_TORCH_CUDA
  if (device.is_cuda()) {
    const c10::cuda::CUDAGuard guard(device);  // cudaMemGetInfo reads the current device
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) return std::nullopt;
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<int64_t>(free) + stats.reserved_bytes[0].current - stats.allocated_bytes[0].current;
  }
#endif
  (void)device;
  return std::nullopt;
}

void release_cached_memory(const c10::Device& device) {
#ifdef DTRAIN_TORCH_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::emptyCache();
#endif
  (void)device;
}

void set_cpu_memory_budget(int64_t bytes) { g_budget.store(bytes, std::memory_order_relaxed); }

void apply_memory_budget(const c10::Device& device, int64_t bytes) {
  if (device.is_cpu()) set_cpu_memory_budget(bytes);
#ifdef DTRAIN_TORCH_CUDA
  if (device.is_cuda() && bytes > 0) {
    const c10::cuda::CUDAGuard guard(device);
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) == cudaSuccess && total > 0) {
      const double fraction = std::min(1.0, static_cast<double>(bytes) / static_cast<double>(total));
      c10::cuda::CUDACachingAllocator::setMemoryFraction(fraction, device.index());
    }
  }
#endif
}

BudgetScope::BudgetScope() { g_budget_scopes.fetch_add(1, std::memory_order_relaxed); }
BudgetScope::~BudgetScope() { g_budget_scopes.fetch_sub(1, std::memory_order_relaxed); }

int64_t tensor_bytes(const std::vector<at::Tensor>& tensors) {
  int64_t bytes = 0;
  for (const auto& tensor : tensors) {
    if (tensor.defined()) bytes += static_cast<int64_t>(tensor.numel()) * static_cast<int64_t>(tensor.element_size());
  }
  return bytes;
}

std::string format_bytes(int64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (std::abs(value) >= 1024 && unit < 4) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  if (unit == 0) {
    std::snprintf(text, sizeof text, "%lld B", static_cast<long long>(bytes));
  } else {
    std::snprintf(text, sizeof text, value < 10 ? "%.2f %s" : value < 100 ? "%.1f %s" : "%.0f %s", value, kUnits[unit]);
  }
  return text;
}

bool MemoryMeter::measures() const { return allocated_memory_bytes(device_).has_value(); }

void MemoryMeter::begin_step() {
  resident_ = allocated_memory_bytes(device_).value_or(0);
  reset_peak_memory(device_);
}

void MemoryMeter::end_micro_steps(bool counts) {
  const int64_t peak = peak_memory_bytes(device_).value_or(0);
  if (!counts) return;
  last_activations_ = std::max<int64_t>(0, peak - resident_);
  // At an equal peak the later step wins: its resident bytes include what
  // the first step allocated to keep (the noise scale's gradient copy).
  if (peak >= max_peak_) {
    max_peak_ = peak;
    resident_at_max_ = resident_;
    max_after_update_ = updates_ > 0;
  }
  before_update_ = allocated_memory_bytes(device_).value_or(0);
}

void MemoryMeter::after_update() {
  if (updates_++ == 0 && !state_resident_from_start_) optimizer_state_ = std::max<int64_t>(0, allocated_memory_bytes(device_).value_or(0) - before_update_);
}

MemoryBreakdown MemoryMeter::breakdown(int64_t parameters, int64_t gradients) const {
  MemoryBreakdown memory;
  memory.measured = measures() && max_peak_ >= 0;
  memory.parameters = parameters;
  memory.gradients = gradients;
  memory.optimizer_state = optimizer_state_;
  if (!memory.measured) return memory;
  memory.peak = max_peak_;
  memory.activations = std::max<int64_t>(0, max_peak_ - resident_at_max_);
  // The largest peak's step may be the first, before the optimizer state existed.
  const int64_t state = max_after_update_ || state_resident_from_start_ ? optimizer_state_ : 0;
  memory.other = std::max<int64_t>(0, resident_at_max_ - parameters - gradients - state);
  return memory;
}

MicroBatchSearch largest_fitting_micro_batch(int64_t local_batch, int64_t budget,
                                             const std::function<std::optional<int64_t>(int64_t)>& probe) {
  std::vector<int64_t> sizes;  // the divisors, ascending
  for (int64_t d = 1; d <= local_batch; ++d) {
    if (local_batch % d == 0) sizes.push_back(d);
  }
  MicroBatchSearch search;
  search.budget = budget;
  auto fits = [&](size_t index) {
    ProbedSize probed{sizes[index], probe(sizes[index]), false};
    probed.fits = probed.peak && *probed.peak <= budget;
    search.tried.push_back(probed);
    return probed.fits;
  };
  if (sizes.empty()) return search;
  if (fits(sizes.size() - 1)) {
    search.micro = sizes.back();
    return search;
  }
  // sizes[low] fits (or low = -1), sizes[high] does not.
  int64_t low = -1, high = static_cast<int64_t>(sizes.size()) - 1;
  while (high - low > 1) {
    const int64_t middle = low + (high - low) / 2;
    if (fits(static_cast<size_t>(middle))) low = middle;
    else high = middle;
  }
  search.micro = low >= 0 ? sizes[static_cast<size_t>(low)] : 0;
  return search;
}

std::string describe(const MemoryBreakdown& memory) {
  return "parameters " + format_bytes(memory.parameters) + ", gradients " + format_bytes(memory.gradients) +
         ", optimizer state " + format_bytes(memory.optimizer_state) + ", data and other " +
         format_bytes(memory.other) + ", activations " + format_bytes(memory.activations) + "; peak " +
         format_bytes(memory.peak);
}

}  // namespace dtrain
