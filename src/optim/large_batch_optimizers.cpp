// LARS and LAMB's steps: the trust ratio of norms, per parameter tensor.
#include "optim/large_batch_optimizers.h"

#include "common/error.h"
#include "optim/optimizer.h"

#include <torch/torch.h>

#include <cmath>
#include <optional>
#include <string>

namespace dtrain {

namespace {

// Biases and normalisation scales: no weight decay, trust ratio 1.
bool excluded(const at::Tensor& parameter) { return parameter.dim() <= 1; }

// The L2 norm as a 0-dim tensor on the tensor's device, accumulated in float
// (double stays double), without a copy of the tensor.
at::Tensor norm_of(const at::Tensor& tensor) {
  return tensor.norm(2, c10::promoteTypes(tensor.scalar_type(), at::kFloat));
}

// numerator_norm / denominator_norm, or 1 where either is 0. A select on the
// device instead of branching on .item(), so a GPU step never waits for the
// host; the discarded quotient may be inf or NaN.
at::Tensor ratio_or_one(const at::Tensor& numerator_norm, const at::Tensor& denominator_norm) {
  const at::Tensor both_positive = at::logical_and(numerator_norm > 0, denominator_norm > 0);
  return at::where(both_positive, numerator_norm / denominator_norm, at::ones_like(numerator_norm));
}

// The options of a param group. OptimizerCloneableOptions gives the clone()
// that param groups need; get_lr/set_lr are how the trainer sets the LR.
struct LarsGroupOptions : torch::optim::OptimizerCloneableOptions<LarsGroupOptions> {
  explicit LarsGroupOptions(const LarsOptions& given) : values(given) {}
  double get_lr() const override { return values.lr; }
  void set_lr(const double lr) override { values.lr = lr; }
  LarsOptions values;
};

struct LambGroupOptions : torch::optim::OptimizerCloneableOptions<LambGroupOptions> {
  explicit LambGroupOptions(const LambOptions& given) : values(given) {}
  double get_lr() const override { return values.lr; }
  void set_lr(const double lr) override { values.lr = lr; }
  LambOptions values;
};

// Runs the closure, if any, with autograd on, as LibTorch's optimizers do.
at::Tensor evaluate(const torch::optim::Optimizer::LossClosure& closure) {
  if (!closure) return {};
  at::AutoGradMode enable_grad(true);
  return closure();
}

// Per-tensor norms of pieces (ZeRO-1): each piece adds the squares of two
// of its quantities to its tensor's row; then one all-reduce and a sqrt.
class PieceNorms {
 public:
  explicit PieceNorms(const TensorPieces& pieces)
      : pieces_(pieces),
        squares_(at::zeros({static_cast<int64_t>(pieces.tensor_dims.size()), 2}, pieces.options.dtype(at::kDouble))) {}
  void add(size_t piece, const at::Tensor& first, const at::Tensor& second) {
    const at::Tensor row = squares_[pieces_.tensor_of.at(piece)];
    row[0] += first.to(at::kDouble).square().sum();
    row[1] += second.to(at::kDouble).square().sum();
  }
  // After every add: the norms, [tensors, 2].
  at::Tensor combined() {
    pieces_.sum_over_ranks(squares_);
    return squares_.sqrt();
  }
  bool excluded(size_t piece) const { return pieces_.tensor_dims.at(pieces_.tensor_of.at(piece)) <= 1; }

 private:
  const TensorPieces& pieces_;
  at::Tensor squares_;
};

class Lars : public torch::optim::Optimizer {
 public:
  Lars(std::vector<at::Tensor> parameters, const LarsOptions& options, const TensorPieces* pieces)
      : Optimizer(std::move(parameters), std::make_unique<LarsGroupOptions>(options)) {
    if (pieces) pieces_ = *pieces;
  }

  at::Tensor step(LossClosure closure) override {
    at::NoGradGuard no_grad;
    at::Tensor loss = evaluate(closure);
    if (pieces_) {
      step_pieces();
      return loss;
    }
    for (auto& group : param_groups_) {
      const LarsOptions& options = static_cast<const LarsGroupOptions&>(group.options()).values;
      for (auto& parameter : group.params()) {
        if (!parameter.grad().defined()) continue;
        at::Tensor scaled_gradient;  // lr·trust·g'
        if (excluded(parameter)) {
          scaled_gradient = parameter.grad() * options.lr;
        } else {
          at::Tensor gradient = parameter.grad();
          if (options.weight_decay != 0) gradient = gradient.add(parameter, options.weight_decay);
          const at::Tensor trust = ratio_or_one(norm_of(parameter) * options.trust_coefficient, norm_of(gradient));
          scaled_gradient = gradient * (trust * options.lr);
        }
        at::Tensor& velocity = velocity_of(parameter);
        velocity.mul_(options.momentum).add_(scaled_gradient);
        parameter.sub_(velocity);
      }
    }
    return loss;
  }

 private:
  at::Tensor& velocity_of(const at::Tensor& parameter) {
    auto& slot = state_[optimizer_state_key(state_, parameter)];
    if (!slot) {
      auto fresh = std::make_unique<torch::optim::SGDParamState>();
      fresh->momentum_buffer(at::zeros_like(parameter, at::MemoryFormat::Preserve));
      slot = std::move(fresh);
    }
    return static_cast<torch::optim::SGDParamState&>(*slot).momentum_buffer();
  }

  // ZeRO-1: g' of every piece first, the tensors' norms across ranks, then the update.
  void step_pieces() {
    auto& group = param_groups_.at(0);
    const LarsOptions& options = static_cast<const LarsGroupOptions&>(group.options()).values;
    auto& parameters = group.params();
    PieceNorms norms(*pieces_);
    std::vector<at::Tensor> gradients(parameters.size());
    for (size_t i = 0; i < parameters.size(); ++i) {
      gradients[i] = parameters[i].grad();
      if (!norms.excluded(i) && options.weight_decay != 0) {
        gradients[i] = gradients[i].add(parameters[i], options.weight_decay);
      }
      norms.add(i, parameters[i], gradients[i]);
    }
    const at::Tensor combined = norms.combined();
    for (size_t i = 0; i < parameters.size(); ++i) {
      at::Tensor scaled_gradient;
      if (norms.excluded(i)) {
        scaled_gradient = gradients[i] * options.lr;
      } else {
        const at::Tensor row = combined[pieces_->tensor_of[i]];
        const at::Tensor trust = ratio_or_one(row[0].to(at::kFloat) * options.trust_coefficient, row[1].to(at::kFloat));
        scaled_gradient = gradients[i] * (trust * options.lr);
      }
      at::Tensor& velocity = velocity_of(parameters[i]);
      velocity.mul_(options.momentum).add_(scaled_gradient);
      parameters[i].sub_(velocity);
    }
  }

  std::optional<TensorPieces> pieces_;
};

class Lamb : public torch::optim::Optimizer {
 public:
  Lamb(std::vector<at::Tensor> parameters, const LambOptions& options, const TensorPieces* pieces)
      : Optimizer(std::move(parameters), std::make_unique<LambGroupOptions>(options)) {
    if (pieces) pieces_ = *pieces;
  }

  at::Tensor step(LossClosure closure) override {
    at::NoGradGuard no_grad;
    at::Tensor loss = evaluate(closure);
    if (pieces_) {
      step_pieces();
      return loss;
    }
    for (auto& group : param_groups_) {
      const LambOptions& options = static_cast<const LambGroupOptions&>(group.options()).values;
      for (auto& parameter : group.params()) {
        if (!parameter.grad().defined()) continue;
        at::Tensor update = adam_direction(parameter, options);
        if (excluded(parameter)) {
          parameter.sub_(update * options.lr);
        } else {
          if (options.weight_decay != 0) update.add_(parameter, options.weight_decay);
          const at::Tensor ratio = ratio_or_one(norm_of(parameter), norm_of(update));
          parameter.sub_(update * (ratio * options.lr));
        }
      }
    }
    return loss;
  }

 private:
  // Counts this parameter's step and updates its moments; returns the
  // bias-corrected Adam direction m̂ / (√v̂ + eps), before weight decay.
  at::Tensor adam_direction(const at::Tensor& parameter, const LambOptions& options) {
    const at::Tensor& gradient = parameter.grad();
    auto& state = adam_state_of(*this, parameter);
    state.step(state.step() + 1);
    at::Tensor first_moment = state.exp_avg();
    at::Tensor second_moment = state.exp_avg_sq();
    first_moment.mul_(options.beta1).add_(gradient, 1 - options.beta1);
    second_moment.mul_(options.beta2).addcmul_(gradient, gradient, 1 - options.beta2);
    const double first_correction = 1 - std::pow(options.beta1, static_cast<double>(state.step()));
    const double second_correction = 1 - std::pow(options.beta2, static_cast<double>(state.step()));
    return (first_moment / first_correction) / ((second_moment / second_correction).sqrt_().add_(options.eps));
  }

  // ZeRO-1: r of every piece first (moments updated), the tensors' norms
  // across ranks, then the update.
  void step_pieces() {
    auto& group = param_groups_.at(0);
    const LambOptions& options = static_cast<const LambGroupOptions&>(group.options()).values;
    auto& parameters = group.params();
    PieceNorms norms(*pieces_);
    std::vector<at::Tensor> updates(parameters.size());
    for (size_t i = 0; i < parameters.size(); ++i) {
      const at::Tensor& parameter = parameters[i];
      updates[i] = adam_direction(parameter, options);
      if (!norms.excluded(i) && options.weight_decay != 0) updates[i].add_(parameter, options.weight_decay);
      norms.add(i, parameter, updates[i]);
    }
    const at::Tensor combined = norms.combined();
    for (size_t i = 0; i < parameters.size(); ++i) {
      if (norms.excluded(i)) {
        parameters[i].sub_(updates[i] * options.lr);
      } else {
        const at::Tensor row = combined[pieces_->tensor_of[i]];
        const at::Tensor ratio = ratio_or_one(row[0].to(at::kFloat), row[1].to(at::kFloat));
        parameters[i].sub_(updates[i] * (ratio * options.lr));
      }
    }
  }

  std::optional<TensorPieces> pieces_;
};

void require(bool holds, const std::string& what) {
  if (!holds) throw Error("invalid optimizer option: " + what);
}

}  // namespace

std::unique_ptr<torch::optim::Optimizer> make_lars(std::vector<at::Tensor> parameters, const LarsOptions& options,
                                                   const TensorPieces* pieces) {
  require(options.lr >= 0, "lr must be >= 0, not " + std::to_string(options.lr));
  require(options.momentum >= 0, "momentum must be >= 0, not " + std::to_string(options.momentum));
  require(options.weight_decay >= 0, "weight decay must be >= 0, not " + std::to_string(options.weight_decay));
  require(options.trust_coefficient > 0,
          "trust coefficient must be > 0, not " + std::to_string(options.trust_coefficient));
  return std::make_unique<Lars>(std::move(parameters), options, pieces);
}

std::unique_ptr<torch::optim::Optimizer> make_lamb(std::vector<at::Tensor> parameters, const LambOptions& options,
                                                   const TensorPieces* pieces) {
  require(options.lr >= 0, "lr must be >= 0, not " + std::to_string(options.lr));
  require(options.beta1 >= 0 && options.beta1 < 1, "beta1 must be in [0, 1), not " + std::to_string(options.beta1));
  require(options.beta2 >= 0 && options.beta2 < 1, "beta2 must be in [0, 1), not " + std::to_string(options.beta2));
  require(options.eps >= 0, "eps must be >= 0, not " + std::to_string(options.eps));
  require(options.weight_decay >= 0, "weight decay must be >= 0, not " + std::to_string(options.weight_decay));
  return std::make_unique<Lamb>(std::move(parameters), options, pieces);
}

}  // namespace dtrain
