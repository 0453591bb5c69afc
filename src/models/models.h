// The models dtrain trains: the MLP and CNN classifiers here, the GPT in
// models/gpt.h, all behind one base class, Model. Parameter names are part of
// the interface (weights files, PyTorch interop), documented in docs/models.md.
#pragma once
#include "cli/config.h"

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <memory>
#include <vector>

namespace dtrain {

// A module mapping a batch of inputs [N, ...] to logits: [N, classes] for the
// classifiers, [N, T, vocabulary] for the GPT.
class Model : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& inputs) = 0;
};

// flatten -> (Linear + ReLU) per hidden width -> Linear to the classes.
// Names: hidden.<i>.weight/bias, head.weight/bias.
class Mlp : public Model {
 public:
  Mlp(int64_t in_features, const std::vector<int64_t>& hidden, int64_t num_classes);
  torch::Tensor forward(const torch::Tensor& inputs) override;

 private:
  torch::nn::ModuleList hidden_;
  torch::nn::Linear head_{nullptr};
};

// conv1(3x3, 32) ReLU maxpool2 -> conv2(3x3, 64) ReLU maxpool2 -> fc(128) ReLU
// -> head. No batch norm, so the per-sample loss does not depend on the
// micro-batch split. Names: conv1, conv2, fc, head (.weight/.bias).
class SmallCnn : public Model {
 public:
  SmallCnn(const std::vector<int64_t>& input_shape, int64_t num_classes);
  torch::Tensor forward(const torch::Tensor& inputs) override;

 private:
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  torch::nn::Linear fc_{nullptr}, head_{nullptr};
};

// Shallue et al. (2018)'s "Simple CNN" for 28x28 images: conv1(5x5, 32,
// padding 2) ReLU maxpool2 -> conv2(5x5, 64, padding 2) ReLU maxpool2 ->
// fc(1024) ReLU -> head, flattened in NCHW order as PyTorch does. About 83
// MFLOP per training sample. Names: conv1, conv2, fc, head (.weight/.bias),
// as the PyTorch definition in docs/models.md.
class SimpleCnn : public Model {
 public:
  SimpleCnn(const std::vector<int64_t>& input_shape, int64_t num_classes);
  torch::Tensor forward(const torch::Tensor& inputs) override;

 private:
  torch::nn::Conv2d conv1_{nullptr}, conv2_{nullptr};
  torch::nn::Linear fc_{nullptr}, head_{nullptr};
};

// The parameters to train: each distinct tensor once, in order of first
// appearance, as PyTorch's Module.parameters() gives them. A weight shared by
// two modules (tied weights) is registered under both names, and LibTorch's
// parameters() lists it twice; the reducer, the optimizer, the parameter count
// and the gradient norm must see it once. Weight files keep every name
// (io/weights.h).
std::vector<torch::Tensor> trainable_parameters(const torch::nn::Module& model);
// The same with each tensor's first registered name (optimizer state files).
std::vector<std::pair<std::string, torch::Tensor>> named_trainable_parameters(const torch::nn::Module& model);

// The loss every model trains and is evaluated on: the SUM of per-item
// cross-entropies, per sample ([N, C] logits) or per target token ([N, T, V]
// logits; -1 targets, the padding, never count), in fp32 for bf16 or fp16
// logits.
torch::Tensor summed_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets);

// `input_shape` is one sample's shape, e.g. {1, 28, 28}.
std::shared_ptr<Model> make_model(const ModelOptions& options, const std::vector<int64_t>& input_shape,
                                  int64_t num_classes);

}  // namespace dtrain
