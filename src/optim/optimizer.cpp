// Building the run's optimizer, and its state as named tensors for
// checkpoints.
#include "optim/optimizer.h"

#include "common/error.h"
#include "optim/fused_adamw.h"
#include "optim/large_batch_optimizers.h"

#include <torch/torch.h>

#include <map>
#include <sstream>
#include <type_traits>

namespace dtrain {

namespace {

[[noreturn]] void refuse_state(const std::string& source, const std::string& problem) {
  throw Error(source + " does not match the optimizer (" + problem + "); resume with the --optimizer it was written with");
}

}  // namespace

std::vector<std::string> optimizer_state_fields(const OptimizerOptions& options) {
  switch (options.kind) {
    case OptimizerKind::Sgd:
    case OptimizerKind::Lars: return {"momentum_buffer"};
    case OptimizerKind::AdamW:
    case OptimizerKind::Lamb: return {"exp_avg", "exp_avg_sq", "step"};
  }
  return {};
}

torch::optim::AdamWParamState& adam_state_of(torch::optim::Optimizer& optimizer, const at::Tensor& parameter) {
  auto& slot = optimizer.state()[optimizer_state_key(optimizer.state(), parameter)];
  if (!slot) {
    auto fresh = std::make_unique<torch::optim::AdamWParamState>();
    fresh->step(0);
    fresh->exp_avg(at::zeros_like(parameter, at::MemoryFormat::Preserve));
    fresh->exp_avg_sq(at::zeros_like(parameter, at::MemoryFormat::Preserve));
    slot = std::move(fresh);
  }
  return static_cast<torch::optim::AdamWParamState&>(*slot);
}

bool keeps_state(const OptimizerOptions& options) {
  return options.kind != OptimizerKind::Sgd || options.momentum > 0;
}

void check_optimizer_state(const OptimizerOptions& options, const NamedParameters& parameters,
                           const NamedTensors& state, const std::string& source) {
  std::map<std::string, at::Tensor> given(state.begin(), state.end());
  for (const auto& [name, parameter] : parameters) {
    bool any = false;
    for (const auto& field : optimizer_state_fields(options)) any = any || given.count(name + "." + field);
    if (!any) continue;
    for (const auto& field : optimizer_state_fields(options)) {
      const auto found = given.find(name + "." + field);
      if (found == given.end()) refuse_state(source, "missing " + name + "." + field);
      if (field == "step" ? found->second.numel() != 1 : !found->second.sizes().equals(parameter.sizes())) {
        refuse_state(source, name + "." + field + (field == "step" ? " is not one number" : " has the wrong shape"));
      }
      given.erase(found);
    }
  }
  if (!given.empty()) refuse_state(source, "unexpected " + given.begin()->first);
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimizerOptions& options,
                                                        const NamedParameters& named, double lr,
                                                        const TensorPieces* pieces, bool fused) {
  std::vector<torch::Tensor> parameters;
  for (const auto& item : named) parameters.push_back(item.second);
  const double eps = options.eps > 0 ? options.eps : default_eps(options.kind);  // --eps auto
  switch (options.kind) {
    case OptimizerKind::Sgd:
      return std::make_unique<torch::optim::SGD>(parameters, torch::optim::SGDOptions(lr)
                                                                 .momentum(options.momentum)
                                                                 .nesterov(options.nesterov)
                                                                 .weight_decay(options.weight_decay));
    case OptimizerKind::AdamW: {
      const auto adamw = torch::optim::AdamWOptions(lr)
                             .betas({options.betas.at(0), options.betas.at(1)})
                             .eps(eps)
                             .weight_decay(options.weight_decay);
      if (fused && fused_adamw_available()) return make_fused_adamw(parameters, adamw);
      return std::make_unique<torch::optim::AdamW>(parameters, adamw);
    }
    case OptimizerKind::Lars:
      return make_lars(parameters, {lr, options.momentum, options.weight_decay, options.trust_coefficient}, pieces);
    case OptimizerKind::Lamb:
      return make_lamb(parameters, {lr, options.betas.at(0), options.betas.at(1), eps, options.weight_decay}, pieces);
  }
  throw Error("unknown optimizer");
}

NamedTensors optimizer_state(torch::optim::Optimizer& optimizer, const OptimizerOptions& options,
                             const NamedParameters& parameters) {
  NamedTensors state;
  auto& table = optimizer.state();
  for (const auto& [name, parameter] : parameters) {
    const auto found = table.find(optimizer_state_key(table, parameter));
    if (found == table.end()) continue;
    switch (options.kind) {
      case OptimizerKind::Sgd:
      case OptimizerKind::Lars: {
        const auto& sgd = static_cast<const torch::optim::SGDParamState&>(*found->second);
        if (sgd.momentum_buffer().defined()) state.emplace_back(name + ".momentum_buffer", sgd.momentum_buffer().cpu());
        break;
      }
      case OptimizerKind::AdamW:
      case OptimizerKind::Lamb: {
        const auto& adam = static_cast<const torch::optim::AdamWParamState&>(*found->second);
        state.emplace_back(name + ".exp_avg", adam.exp_avg().cpu());
        state.emplace_back(name + ".exp_avg_sq", adam.exp_avg_sq().cpu());
        state.emplace_back(name + ".step", torch::tensor(static_cast<int64_t>(adam.step()), torch::kLong));
        break;
      }
    }
  }
  return state;
}

void load_optimizer_state(torch::optim::Optimizer& optimizer, const OptimizerOptions& options,
                          const NamedParameters& parameters, const NamedTensors& state, const std::string& source) {
  std::map<std::string, at::Tensor> given(state.begin(), state.end());
  auto refuse = [&](const std::string& problem) { refuse_state(source, problem); };
  auto take = [&](const std::string& name, const at::Tensor& like) -> at::Tensor {
    const auto found = given.find(name);
    if (found == given.end()) refuse("missing " + name);
    at::Tensor value = found->second;
    given.erase(found);
    if (like.defined() && !value.sizes().equals(like.sizes())) refuse(name + " has the wrong shape");
    return like.defined() ? value.to(like.options()).clone() : value;
  };
  auto& table = optimizer.state();
  for (const auto& [name, parameter] : parameters) {
    // A parameter without entries has no state yet (no step taken).
    bool any = false;
    for (const auto& field : optimizer_state_fields(options)) any = any || given.count(name + "." + field);
    if (!any) continue;
    switch (options.kind) {
      case OptimizerKind::Sgd:
      case OptimizerKind::Lars: {
        auto sgd = std::make_unique<torch::optim::SGDParamState>();
        sgd->momentum_buffer(take(name + ".momentum_buffer", parameter));
        table[optimizer_state_key(table, parameter)] = std::move(sgd);
        break;
      }
      case OptimizerKind::AdamW:
      case OptimizerKind::Lamb: {
        auto adam = std::make_unique<torch::optim::AdamWParamState>();
        adam->exp_avg(take(name + ".exp_avg", parameter));
        adam->exp_avg_sq(take(name + ".exp_avg_sq", parameter));
        const at::Tensor step = take(name + ".step", at::Tensor());
        if (step.numel() != 1) refuse(name + ".step is not one number");
        adam->step(step.to(torch::kLong).item<int64_t>());
        table[optimizer_state_key(table, parameter)] = std::move(adam);
        break;
      }
    }
  }
  if (!given.empty()) refuse("unexpected " + given.begin()->first);
}

}  // namespace dtrain
