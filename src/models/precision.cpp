// --precision: TF32 switches, bf16 autocast scopes, and auto's choice.
#include "models/precision.h"

#include <ATen/Context.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#ifdef DTRAIN_TORCH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace dtrain {

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define DTRAIN_AUTOCAST_BY_DEVICE_TYPE 1
#endif

Precision resolve_precision(Precision requested, const c10::Device& device) {
  if (requested != Precision::Auto) return requested;
#ifdef DTRAIN_TORCH_CUDA
  if (!device.is_cuda()) return Precision::Fp32;
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index()) != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: the run goes on in fp32
    return Precision::Fp32;
  }
  return major >= 8 ? Precision::Bf16Mixed : Precision::Fp32;
#else
  (void)device;  // a LibTorch without CUDA has no GPU to choose bf16 for
  return Precision::Fp32;
#endif
}

void set_tf32(Precision precision) {
  const bool on = precision == Precision::Tf32 || precision == Precision::Bf16Mixed;
  at::globalContext().setAllowTF32CuBLAS(on);
  at::globalContext().setAllowTF32CuDNN(on);
}

AutocastState AutocastState::current() {
  AutocastState state;
#ifdef DTRAIN_AUTOCAST_BY_DEVICE_TYPE
  state.cpu_enabled = at::autocast::is_autocast_enabled(at::kCPU);
  state.cuda_enabled = at::autocast::is_autocast_enabled(at::kCUDA);
  state.cpu_dtype = at::autocast::get_autocast_dtype(at::kCPU);
  state.cuda_dtype = at::autocast::get_autocast_dtype(at::kCUDA);
#else
  state.cpu_enabled = at::autocast::is_cpu_enabled();
  state.cuda_enabled = at::autocast::is_enabled();
  state.cpu_dtype = at::autocast::get_autocast_cpu_dtype();
  state.cuda_dtype = at::autocast::get_autocast_gpu_dtype();
#endif
  state.cache_enabled = at::autocast::is_autocast_cache_enabled();
  return state;
}

void AutocastState::make_current() const {
#ifdef DTRAIN_AUTOCAST_BY_DEVICE_TYPE
  at::autocast::set_autocast_enabled(at::kCPU, cpu_enabled);
  at::autocast::set_autocast_enabled(at::kCUDA, cuda_enabled);
  at::autocast::set_autocast_dtype(at::kCPU, cpu_dtype);
  at::autocast::set_autocast_dtype(at::kCUDA, cuda_dtype);
#else
  at::autocast::set_cpu_enabled(cpu_enabled);
  at::autocast::set_enabled(cuda_enabled);
  at::autocast::set_autocast_cpu_dtype(cpu_dtype);
  at::autocast::set_autocast_gpu_dtype(cuda_dtype);
#endif
  at::autocast::set_autocast_cache_enabled(cache_enabled);
}

AutocastScope::AutocastScope(const AutocastState& state) : previous_(AutocastState::current()) {
  at::autocast::increment_nesting();
  state.make_current();
}

AutocastScope::~AutocastScope() {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  previous_.make_current();
}

namespace {

AutocastState bf16_autocast(c10::DeviceType device_type) {
  AutocastState state = AutocastState::current();
  if (device_type == c10::DeviceType::CUDA) {
    state.cuda_enabled = true;
    state.cuda_dtype = c10::kBFloat16;
  } else {
    state.cpu_enabled = true;
    state.cpu_dtype = c10::kBFloat16;
  }
  state.cache_enabled = true;
  return state;
}

}  // namespace

PrecisionScope::PrecisionScope(Precision precision, c10::DeviceType device_type) {
  if (autocasts(precision)) autocast_.emplace(bf16_autocast(device_type));
}

}  // namespace dtrain
