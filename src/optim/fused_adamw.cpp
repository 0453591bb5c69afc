// The fused AdamW step over torch::optim::AdamW's state.
#include "optim/fused_adamw.h"

#include "common/error.h"
#include "optim/optimizer.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <unordered_map>

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define DTRAIN_FUSED_ADAMW 1
#endif

namespace dtrain {

bool fused_adamw_available() {
#ifdef DTRAIN_FUSED_ADAMW
  return true;
#else
  return false;
#endif
}

#ifdef DTRAIN_FUSED_ADAMW
namespace {

class FusedAdamW final : public torch::optim::AdamW {
 public:
  FusedAdamW(const std::vector<at::Tensor>& parameters, const torch::optim::AdamWOptions& options)
      : torch::optim::AdamW(parameters, options) {}

  torch::Tensor step(LossClosure closure = nullptr) override {
    torch::NoGradGuard no_grad;
    torch::Tensor loss;
    if (closure != nullptr) {
      at::AutoGradMode enable_grad(true);
      loss = closure();
    }
    for (auto& group : param_groups()) {
      const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
      TORCH_CHECK(!options.amsgrad(), "dtrain's fused AdamW has no amsgrad");
      std::vector<at::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        TORCH_CHECK(!p.grad().is_sparse(), "AdamW does not support sparse gradients");
        auto& adam = adam_state_of(*this, p);
        // The kernel's float32 step, refilled where the int64 one moved
        // without it (a fresh state, a load): no read back from the device.
        // Both advance by one below.
        Counter& counter = counters_[p.unsafeGetTensorImpl()];
        if (!counter.value.defined() || counter.mirrors != adam.step()) {
          counter.value = torch::full({}, static_cast<double>(adam.step()), p.options().dtype(torch::kFloat));
          counter.mirrors = adam.step();
        }
        adam.step(adam.step() + 1);
        ++counter.mirrors;
        params.push_back(p);
        grads.push_back(p.grad());
        exp_avgs.push_back(adam.exp_avg());
        exp_avg_sqs.push_back(adam.exp_avg_sq());
        steps.push_back(counter.value);
      }
      if (params.empty()) continue;
      // The kernel reads the step counts and does not advance them (PyTorch's
      // _fused_adamw advances them first, in one op, as here).
      at::_foreach_add_(steps, 1);
      at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, steps, options.lr(),
                        std::get<0>(options.betas()), std::get<1>(options.betas()), options.weight_decay(),
                        options.eps(), /*amsgrad=*/false, /*maximize=*/false);
    }
    return loss;
  }

 private:
  struct Counter {
    at::Tensor value;      // float32, on the parameter's device; advanced by one before each kernel call
    int64_t mirrors = -1;  // the int64 step it equals
  };
  std::unordered_map<const void*, Counter> counters_;
};

}  // namespace
#endif

std::unique_ptr<torch::optim::Optimizer> make_fused_adamw(const std::vector<at::Tensor>& parameters,
                                                          const torch::optim::AdamWOptions& options) {
#ifdef DTRAIN_FUSED_ADAMW
  return std::make_unique<FusedAdamW>(parameters, options);
#else
  (void)parameters;
  (void)options;
  throw Error("the fused AdamW step needs LibTorch 2.4 or later (this build has an older one)");
#endif
}

}  // namespace dtrain
