// AdamW with LibTorch's fused kernel (at::_fused_adamw_, LibTorch 2.4 or
// later, CUDA and CPU): one launch per step for all parameters instead of a
// handful per tensor. It is a torch::optim::AdamW whose step() is replaced:
// the same options, the same per-parameter state (AdamWParamState: exp_avg,
// exp_avg_sq and an int64 step), so optimizer_state() and checkpoints do not
// change. The kernel counts steps in a float32 tensor per parameter; those
// are kept beside the state and refilled from its int64 step after a load.
#pragma once
#include <memory>
#include <vector>

namespace at {
class Tensor;
}
namespace torch::optim {
class Optimizer;
struct AdamWOptions;
}  // namespace torch::optim

namespace dtrain {

// Throws Error when !fused_adamw_available() (optim/optimizer.h).
std::unique_ptr<torch::optim::Optimizer> make_fused_adamw(const std::vector<at::Tensor>& parameters,
                                                          const torch::optim::AdamWOptions& options);

}  // namespace dtrain
