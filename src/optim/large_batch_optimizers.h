// LARS and LAMB, the layer-wise adaptive optimizers for large batches, as
// torch::optim::Optimizer objects. Each scales a parameter tensor's update by
// a trust ratio of norms, so every layer moves by a step proportional to its
// own size whatever the batch size did to the gradient's scale.
//
// `w` is a parameter tensor, `g` its gradient (already all-reduced and
// clipped by the trainer). A parameter of at most one dimension (a bias, a
// LayerNorm weight) is "excluded": no weight decay and a trust ratio of 1.
//
// LARS (You et al. 2017):
//   g' = g + weight_decay·w
//   trust = trust_coefficient·‖w‖/‖g'‖, or 1 if either norm is 0
//   v = momentum·v + lr·trust·g'         (v starts at zero)
//   w = w − v
// LAMB (You et al. 2019, Algorithm 2 with φ = identity); t counts this
// parameter's steps from 1:
//   m = β1·m + (1−β1)·g,  v = β2·v + (1−β2)·g²
//   r = (m/(1−β1^t)) / (√(v/(1−β2^t)) + eps) + weight_decay·w
//   ratio = ‖w‖/‖r‖, or 1 if either norm is 0
//   w = w − lr·ratio·r
//
// Each step reads the LR from param_groups()[i].options().get_lr(), which the
// trainer sets every step. The per-parameter state uses LibTorch's own types,
// so the SGD and AdamW checkpoint code reads and restores it unchanged:
// LARS keeps a torch::optim::SGDParamState (momentum_buffer = v), LAMB a
// torch::optim::AdamWParamState (exp_avg = m, exp_avg_sq = v, step = t).
// Parameters whose grad is undefined are skipped and get no state. Norms are
// computed on the tensor's device in at least float precision, with no host
// synchronisation.
//
// With a sharded optimizer state (ZeRO-1, ddp/reducer.h) the optimizer's
// parameters are pieces of tensors, and a rank holds only some of each
// tensor. TensorPieces says which tensor each piece belongs to: ‖w‖, ‖g'‖ and
// ‖r‖ are then sums of the pieces' squares, combined across ranks by one
// small all-reduce per step (every rank calls it, pieces or not), and
// "excluded" is the whole tensor's dimension, not the piece's.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>

#include <functional>
#include <memory>
#include <vector>

namespace torch::optim {
class Optimizer;
}

namespace dtrain {

struct LarsOptions {
  double lr = 0;
  double momentum = 0.9;
  double weight_decay = 0;
  double trust_coefficient = 0.001;
};

struct LambOptions {
  double lr = 0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-6;
  double weight_decay = 0;
};

struct TensorPieces {
  std::vector<int64_t> tensor_of;  // per optimizer parameter (piece): its tensor's index
  std::vector<int64_t> tensor_dims;  // per tensor: its number of dimensions
  // Sums a double [tensors, 2] tensor over the ranks, in place (collective).
  std::function<void(at::Tensor&)> sum_over_ranks;
  // Where the parameters live: a rank may hold no piece at all, and still
  // joins the sum with zeros there.
  at::TensorOptions options;
};

// Throw Error if an option is out of range (a negative lr, momentum or
// weight_decay; a trust_coefficient ≤ 0; a beta outside [0, 1); eps < 0).
// `pieces`: null for whole tensors; else as above.
std::unique_ptr<torch::optim::Optimizer> make_lars(std::vector<at::Tensor> parameters, const LarsOptions& options,
                                                   const TensorPieces* pieces = nullptr);
std::unique_ptr<torch::optim::Optimizer> make_lamb(std::vector<at::Tensor> parameters, const LambOptions& options,
                                                   const TensorPieces* pieces = nullptr);

}  // namespace dtrain
