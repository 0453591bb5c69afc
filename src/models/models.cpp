// The MLP and the CNNs, the parameter lists that hold a tied weight once, the
// loss, and the factory that builds any model from its options.
#include "models/models.h"

#include "common/error.h"
#include "models/gpt.h"

#include <torch/torch.h>

#include <unordered_set>

namespace dtrain {

Mlp::Mlp(int64_t in_features, const std::vector<int64_t>& hidden, int64_t num_classes) {
  hidden_ = register_module("hidden", torch::nn::ModuleList());
  int64_t width = in_features;
  for (int64_t next : hidden) {
    hidden_->push_back(torch::nn::Linear(width, next));
    width = next;
  }
  head_ = register_module("head", torch::nn::Linear(width, num_classes));
}

torch::Tensor Mlp::forward(const torch::Tensor& inputs) {
  auto x = inputs.flatten(1);
  for (const auto& layer : *hidden_) x = torch::relu(layer->as<torch::nn::Linear>()->forward(x));
  return head_->forward(x);
}

SmallCnn::SmallCnn(const std::vector<int64_t>& input_shape, int64_t num_classes) {
  if (input_shape.size() != 3 || input_shape[1] % 4 != 0 || input_shape[2] % 4 != 0) {
    throw Error("--model cnn needs image inputs [C, H, W] with H and W divisible by 4");
  }
  conv1_ = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(input_shape[0], 32, 3).padding(1)));
  conv2_ = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 3).padding(1)));
  fc_ = register_module("fc", torch::nn::Linear(64 * (input_shape[1] / 4) * (input_shape[2] / 4), 128));
  head_ = register_module("head", torch::nn::Linear(128, num_classes));
}

torch::Tensor SmallCnn::forward(const torch::Tensor& inputs) {
  auto x = torch::max_pool2d(torch::relu(conv1_->forward(inputs)), 2);
  x = torch::max_pool2d(torch::relu(conv2_->forward(x)), 2);
  x = torch::relu(fc_->forward(x.flatten(1)));
  return head_->forward(x);
}

SimpleCnn::SimpleCnn(const std::vector<int64_t>& input_shape, int64_t num_classes) {
  if (input_shape.size() != 3 || input_shape[1] % 4 != 0 || input_shape[2] % 4 != 0) {
    throw Error("--model simple-cnn needs image inputs [C, H, W] with H and W divisible by 4");
  }
  conv1_ = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(input_shape[0], 32, 5).padding(2)));
  conv2_ = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 5).padding(2)));
  fc_ = register_module("fc", torch::nn::Linear(64 * (input_shape[1] / 4) * (input_shape[2] / 4), 1024));
  head_ = register_module("head", torch::nn::Linear(1024, num_classes));
}

torch::Tensor SimpleCnn::forward(const torch::Tensor& inputs) {
  auto x = torch::max_pool2d(torch::relu(conv1_->forward(inputs)), 2);
  x = torch::max_pool2d(torch::relu(conv2_->forward(x)), 2);
  x = torch::relu(fc_->forward(x.flatten(1)));
  return head_->forward(x);
}

std::vector<std::pair<std::string, torch::Tensor>> named_trainable_parameters(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> unique;
  std::unordered_set<const c10::TensorImpl*> seen;
  for (const auto& item : model.named_parameters()) {
    if (seen.insert(item.value().unsafeGetTensorImpl()).second) unique.emplace_back(item.key(), item.value());
  }
  return unique;
}

std::vector<torch::Tensor> trainable_parameters(const torch::nn::Module& model) {
  std::vector<torch::Tensor> unique;
  for (auto& item : named_trainable_parameters(model)) unique.push_back(std::move(item.second));
  return unique;
}

std::shared_ptr<Model> make_model(const ModelOptions& options, const std::vector<int64_t>& input_shape,
                                       int64_t num_classes) {
  // Parsing refuses this too (cli/options.cpp), on every rank before
  // training; here for callers that fill ModelOptions themselves.
  if (options.activation_checkpointing == ActivationCheckpointing::Blocks && options.kind != ModelKind::Gpt) {
    throw UsageError(activation_checkpointing_needs_blocks(options.kind));
  }
  switch (options.kind) {
    case ModelKind::Mlp: {
      int64_t features = 1;
      for (int64_t d : input_shape) features *= d;
      return std::make_shared<Mlp>(features, options.hidden, num_classes);
    }
    case ModelKind::Cnn:
      return std::make_shared<SmallCnn>(input_shape, num_classes);
    case ModelKind::SimpleCnn:
      return std::make_shared<SimpleCnn>(input_shape, num_classes);
    case ModelKind::Gpt: {
      if (input_shape.size() != 1 || input_shape[0] != options.block_size) {
        throw UsageError("--model gpt reads rows of --block-size tokens: train it on --dataset kjv or text");
      }
      GptOptions gpt;
      gpt.vocab_size = num_classes;
      gpt.block_size = options.block_size;
      gpt.n_layer = options.n_layer;
      gpt.n_head = options.n_head;
      gpt.n_embd = options.n_embd;
      auto model = make_gpt(gpt);
      // auto is --micro-batch-size auto's to decide; until it has decided
      // (and without it), auto is off.
      model->set_activation_checkpointing(options.activation_checkpointing == ActivationCheckpointing::Blocks);
      return model;
    }
  }
  throw Error("unknown model");
}

torch::Tensor summed_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets) {
  // Under --precision bf16-mixed the logits come out bf16: the softmax and
  // the sum are taken in fp32, as autocast does for PyTorch's cross_entropy.
  const bool reduced = logits.scalar_type() == torch::kBFloat16 || logits.scalar_type() == torch::kHalf;
  const auto wide = reduced ? logits.to(torch::kFloat) : logits;
  return torch::nn::functional::cross_entropy(
      wide.reshape({-1, wide.size(-1)}), targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(-1));
}

}  // namespace dtrain
