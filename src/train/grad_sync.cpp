#include "train/grad_sync.h"

#include "common/error.h"

#include <torch/torch.h>

namespace dtrain {

FlatGradientSync::FlatGradientSync(std::vector<at::Tensor> parameters, Communicator& comm)
    : parameters_(std::move(parameters)), comm_(comm) {
  int64_t total = 0;
  for (const auto& p : parameters_) {
    if (p.scalar_type() != parameters_.front().scalar_type()) {
      throw Error("all parameters must share one dtype for the flat gradient buffer");
    }
    total += p.numel();
  }
  buffer_ = torch::zeros({total}, parameters_.front().options().requires_grad(false));
  bind_views();
}

void FlatGradientSync::bind_views() {
  int64_t offset = 0;
  for (auto& p : parameters_) {
    p.mutable_grad() = buffer_.narrow(0, offset, p.numel()).view(p.sizes());
    offset += p.numel();
  }
}

void FlatGradientSync::zero_grad() {
  buffer_.zero_();
  // Cheap guard for the invariant above: a reset gradient would silently stop
  // accumulating into the buffer.
  for (const auto& p : parameters_) {
    if (!p.grad().defined() || !p.grad().is_alias_of(buffer_)) {
      throw Error("a parameter's gradient was detached from the flat buffer; do not reset gradients to undefined");
    }
  }
}

void FlatGradientSync::all_reduce() { comm_.all_reduce(buffer_, ReduceOp::Sum); }

double FlatGradientSync::grad_norm() const { return buffer_.norm().item<double>(); }

void FlatGradientSync::scale(double factor) { buffer_.mul_(factor); }

}  // namespace dtrain
