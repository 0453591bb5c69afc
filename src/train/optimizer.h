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
#include <string>
#include <utility>
#include <vector>

namespace torch::optim {
class Optimizer;
}

namespace dtrain {

using NamedParameters = std::vector<std::pair<std::string, at::Tensor>>;

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerOptions& options,
                                                        const NamedParameters& parameters, double lr);

// The optimizer's per-parameter state, on the CPU.
NamedTensors optimizer_state(torch::optim::Optimizer& optimizer, const OptimizerOptions& options,
                             const NamedParameters& parameters);

// Restores what optimizer_state gave. Throws Error naming `source` and the
// first entry that is missing, unexpected or of the wrong shape.
void load_optimizer_state(torch::optim::Optimizer& optimizer, const OptimizerOptions& options,
                          const NamedParameters& parameters, const NamedTensors& state, const std::string& source);

}  // namespace dtrain
