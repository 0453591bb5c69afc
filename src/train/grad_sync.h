// Gradient synchronization with one flat buffer. Every parameter's gradient
// is a view into the buffer, so backward accumulates micro-batches into it in
// place and an optimizer step's all-reduce is one call on it: no copies in or
// out. (The bucketed, overlapping reducer will replace this behind the same
// three calls.)
//
// Protocol, on every rank: zero_grad() before the first micro-step, backward
// for each micro-step (no communication), all_reduce() once after the last,
// then the optimizer step. Gradients must never be reset to undefined (e.g. by
// Optimizer::zero_grad(true)): the views would be lost.
#pragma once
#include "comm/communicator.h"

#include <ATen/core/Tensor.h>

#include <vector>

namespace dtrain {

class FlatGradientSync {
 public:
  FlatGradientSync(std::vector<at::Tensor> parameters, Communicator& comm);

  void zero_grad();
  // SUM across ranks. The loss is already divided by the global batch's item
  // count, so the sum is the gradient of the global-batch mean.
  void all_reduce();
  // L2 norm of all gradients (after all_reduce: the global gradient's norm).
  double grad_norm() const;
  // Scales every gradient by `factor` (clipping).
  void scale(double factor);

  const at::Tensor& buffer() const { return buffer_; }
  int64_t bytes() const { return buffer_.numel() * static_cast<int64_t>(buffer_.element_size()); }

 private:
  void bind_views();

  std::vector<at::Tensor> parameters_;
  Communicator& comm_;
  at::Tensor buffer_;
};

}  // namespace dtrain
