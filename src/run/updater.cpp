// The optimizer step, sharded or not, and its state as whole tensors.
#include "run/updater.h"

#include "comm/communicator.h"
#include "comm/watchdog.h"
#include "common/error.h"
#include "ddp/reducer.h"
#include "memory/memory.h"
#include "optim/large_batch_optimizers.h"

#include <torch/torch.h>

#include <chrono>
#include <csignal>
#include <map>

namespace dtrain {

Updater::Updater(const OptimizerOptions& options, const NamedParameters& parameters, GradientReducer& reducer,
                 Communicator& comm, double lr, bool fused)
    : options_(options),
      parameters_(parameters),
      reducer_(reducer),
      comm_(comm),
      fused_(fused && options.kind == OptimizerKind::AdamW) {
  if (!reducer_.sharded()) {
    optimizer_ = make_optimizer(options_, parameters_, lr, nullptr, fused_);
    return;
  }
  layout_ = std::make_unique<TensorPieces>();
  for (const auto& [name, parameter] : parameters_) layout_->tensor_dims.push_back(parameter.dim());
  layout_->options = parameters_.front().second.options();
  layout_->sum_over_ranks = [this](at::Tensor& squares) {
    CollectiveWatchdog::Scope watched(comm_.watchdog(), "trust-ratio norms all-reduce");
    comm_.all_reduce(squares);
  };
  for (const auto& piece : reducer_.owned_pieces()) {
    at::Tensor value = piece.value;  // the same tensor: the optimizer sees its gradient
    value.mutable_grad() = piece.grad;
    pieces_.emplace_back(parameters_.at(piece.parameter).first + "@" + std::to_string(piece.offset_in_tensor), value);
    layout_->tensor_of.push_back(static_cast<int64_t>(piece.parameter));
  }
  optimizer_ = make_optimizer(options_, pieces_, lr, layout_.get(), fused_);
}

Updater::~Updater() = default;

bool Updater::sharded() const { return reducer_.sharded(); }

bool Updater::has_state() const { return !optimizer_->state().empty(); }

void Updater::set_lr(double lr) {
  for (auto& group : optimizer_->param_groups()) group.options().set_lr(lr);
}

void Updater::step(int64_t step) {
  optimizer_->step();
  if (!sharded()) return;
  if (fault_exit_.fires(step, comm_.rank())) std::raise(SIGKILL);  // its peers are in the all-gather
  const auto start = std::chrono::steady_clock::now();
  reducer_.gather_parameters();
  gather_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int64_t Updater::local_state_bytes() const {
  int64_t bytes = 0;
  for (const auto& [name, tensor] : optimizer_state(*optimizer_, options_, sharded() ? pieces_ : parameters_)) {
    bytes += tensor_bytes({tensor});
  }
  return bytes;
}

NamedTensors Updater::state() {
  if (!sharded()) return optimizer_state(*optimizer_, options_, parameters_);
  const std::vector<std::string> fields = optimizer_state_fields(options_);
  const NamedTensors local = optimizer_state(*optimizer_, options_, pieces_);
  const std::map<std::string, at::Tensor> given(local.begin(), local.end());
  const auto& owned = reducer_.owned_pieces();
  const auto device = parameters_.front().second.device();
  // Which parameters have state, and their step counts: a rank may hold no
  // piece of a parameter, so both are agreed (max over the ranks).
  const int64_t count = static_cast<int64_t>(parameters_.size());
  at::Tensor has = torch::zeros({2, count}, torch::TensorOptions().dtype(torch::kDouble));
  for (size_t i = 0; i < owned.size(); ++i) {
    const std::string& name = pieces_[i].first;
    if (!given.count(name + "." + fields.front())) continue;
    has[0][static_cast<int64_t>(owned[i].parameter)] = 1.0;
    if (given.count(name + ".step")) {
      has[1][static_cast<int64_t>(owned[i].parameter)] = given.at(name + ".step").item<double>();
    }
  }
  has = has.to(device);
  {
    CollectiveWatchdog::Scope watched(comm_.watchdog(), "optimizer state all-reduce");
    comm_.all_reduce(has, ReduceOp::Max);
  }
  has = has.cpu();
  std::map<std::string, std::vector<at::Tensor>> whole;  // field -> per parameter
  for (const auto& field : fields) {
    if (field == "step") continue;
    std::vector<at::Tensor> pieces;
    for (size_t i = 0; i < owned.size(); ++i) {
      const auto found = given.find(pieces_[i].first + "." + field);
      pieces.push_back(found != given.end() ? found->second.to(device).reshape({-1})
                                            : torch::zeros({owned[i].value.numel()}, owned[i].value.options()));
    }
    whole[field] = reducer_.gather_pieces(pieces);
  }
  NamedTensors state;
  for (size_t p = 0; p < parameters_.size(); ++p) {
    if (has[0][static_cast<int64_t>(p)].item<double>() == 0) continue;
    const auto& [name, parameter] = parameters_[p];
    for (const auto& field : fields) {
      if (field == "step") {
        state.emplace_back(name + ".step", torch::tensor(has[1][static_cast<int64_t>(p)].item<int64_t>(), torch::kLong));
      } else {
        state.emplace_back(name + "." + field, whole[field][p].view(parameter.sizes()).cpu().clone());
      }
    }
  }
  return state;
}

void Updater::load(const NamedTensors& state, const std::string& source) {
  if (!sharded()) {
    load_optimizer_state(*optimizer_, options_, parameters_, state, source);
    return;
  }
  check_optimizer_state(options_, parameters_, state, source);
  const std::map<std::string, at::Tensor> given(state.begin(), state.end());
  const std::vector<std::string> fields = optimizer_state_fields(options_);
  NamedTensors pieces;
  const auto& owned = reducer_.owned_pieces();
  for (size_t i = 0; i < owned.size(); ++i) {
    const std::string& name = parameters_.at(owned[i].parameter).first;
    if (!given.count(name + "." + fields.front())) continue;
    for (const auto& field : fields) {
      const at::Tensor& value = given.at(name + "." + field);
      pieces.emplace_back(pieces_[i].first + "." + field,
                          field == "step" ? value
                                          : value.reshape({-1}).narrow(0, owned[i].offset_in_tensor,
                                                                       owned[i].value.numel()));
    }
  }
  load_optimizer_state(*optimizer_, options_, pieces_, pieces, source);
}

}  // namespace dtrain
