// A small classifier with a tied weight, for the shared-parameter tests: one
// Linear module registered under two names (block1 and block2) and applied
// twice, as `self.block2 = self.block1` does in PyTorch. LibTorch's
// parameters() lists its weight and bias twice; the weights file holds
// block1.* and block2.*, equal.
#pragma once
#include "models/models.h"

#include <torch/torch.h>

namespace dtrain::testing {

class TiedMlp : public Model {
 public:
  TiedMlp(int64_t in_features, int64_t hidden, int64_t classes) {
    input_ = register_module("input", torch::nn::Linear(in_features, hidden));
    block1_ = register_module("block1", torch::nn::Linear(hidden, hidden));
    block2_ = register_module("block2", block1_);
    head_ = register_module("head", torch::nn::Linear(hidden, classes));
  }
  torch::Tensor forward(const torch::Tensor& inputs) override {
    auto x = torch::relu(input_->forward(inputs.flatten(1)));
    x = torch::relu(block1_->forward(x));
    x = torch::relu(block2_->forward(x));
    return head_->forward(x);
  }

 private:
  torch::nn::Linear input_{nullptr}, block1_{nullptr}, block2_{nullptr}, head_{nullptr};
};

}  // namespace dtrain::testing
