// The optimizer of a run and its state as named tensors. A checkpoint's
// optimizer.pt holds, per parameter (named as in model.pt):
//   SGD with momentum, LARS: NAME.momentum_buffer
//   AdamW, LAMB:             NAME.exp_avg, NAME.exp_avg_sq, NAME.step (int64 scalar)
// A parameter the optimizer has not touched yet has no entries. Loading the
// state back continues the optimizer bit for bit.
#pragma once
#include "cli/config.h"
#include "io/weights.h"

#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace torch::optim {
class Optimizer;
struct AdamWParamState;
}

namespace dtrain {

using NamedParameters = std::vector<std::pair<std::string, at::Tensor>>;

// The key of `parameter` in an optimizer's state map (Optimizer::state()):
// LibTorch keys it by the tensor's address, as text in 1.13 and as the
// pointer itself in 2.x. For the optimizers that make entries (LARS, LAMB)
// and the code that saves and restores them.
template <typename StateMap>
typename StateMap::key_type optimizer_state_key(const StateMap&, const at::Tensor& parameter) {
  if constexpr (std::is_same_v<typename StateMap::key_type, std::string>) {
    std::ostringstream text;
    text << parameter.unsafeGetTensorImpl();
    return text.str();
  } else {
    return parameter.unsafeGetTensorImpl();
  }
}

struct TensorPieces;  // optim/large_batch_optimizers.h

// `pieces`: null, or (ZeRO-1) which tensor each of `parameters` is a piece
// of, for LARS and LAMB's per-tensor norms; SGD and AdamW act element by
// element and need nothing. `fused`: AdamW steps with LibTorch's fused
// kernel (when fused_adamw_available(); others ignore it), with the same
// state and checkpoint entries as torch::optim::AdamW.
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerOptions& options,
                                                        const NamedParameters& parameters, double lr,
                                                        const TensorPieces* pieces = nullptr, bool fused = false);

// Whether this LibTorch has the fused AdamW kernel for CUDA and the CPU
// (at::_fused_adamw_, LibTorch 2.4 or later).
bool fused_adamw_available();

// `parameter`'s Adam state in `optimizer` (AdamW, LAMB, the fused AdamW),
// made at step 0 with zero moments the first time.
torch::optim::AdamWParamState& adam_state_of(torch::optim::Optimizer& optimizer, const at::Tensor& parameter);

// Whether the optimizer keeps state (momentum, moments): what a sharded
// optimizer state would shard.
bool keeps_state(const OptimizerOptions& options);

// The state fields per parameter, in file order.
std::vector<std::string> optimizer_state_fields(const OptimizerOptions& options);

// Checks what optimizer_state gave against `parameters` (the whole tensors):
// for each parameter all fields or none, each of its shape (`step` one
// number), nothing else. Throws Error naming `source` and the first problem.
void check_optimizer_state(const OptimizerOptions& options, const NamedParameters& parameters,
                           const NamedTensors& state, const std::string& source);

// The optimizer's per-parameter state, on the CPU.
NamedTensors optimizer_state(torch::optim::Optimizer& optimizer, const OptimizerOptions& options,
                             const NamedParameters& parameters);

// Restores what optimizer_state gave. Throws Error naming `source` and the
// first entry that is missing, unexpected or of the wrong shape.
void load_optimizer_state(torch::optim::Optimizer& optimizer, const OptimizerOptions& options,
                          const NamedParameters& parameters, const NamedTensors& state, const std::string& source);

}  // namespace dtrain
