// Activation checkpointing (models/gpt.h: checkpointed_forward and
// Gpt::set_activation_checkpointing): the gradients are bitwise those
// without it; the gradient accumulators' post-hooks (what the gradient
// reducer's ready hooks hang on) fire once per backward, in the same order,
// each when its gradient is final; the blocks' activations are not kept; the
// recompute replays the forward's random and autocast states; evaluation is
// the plain forward; and --activation-checkpointing blocks is refused for the
// models without blocks.
#include "models/gpt.h"

#include "cli/options.h"
#include "common/error.h"
#include "memory/memory.h"
#include "models/models.h"

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace dtrain {
namespace {

GptOptions small_gpt(int64_t n_layer) {
  GptOptions options;
  options.vocab_size = 256;
  options.block_size = 16;
  options.n_layer = n_layer;
  options.n_head = 4;
  options.n_embd = 32;
  return options;
}

// Every parameter drawn afresh (biases and LayerNorms included), so the
// gradients see every term of the computation.
std::shared_ptr<Gpt> random_gpt(const GptOptions& options, uint64_t seed) {
  torch::manual_seed(seed);
  auto model = make_gpt(options);
  torch::NoGradGuard no_grad;
  for (auto& [name, parameter] : named_trainable_parameters(*model)) {
    const bool layer_norm_scale = name.find("ln_") != std::string::npos && name.find(".weight") != std::string::npos;
    parameter.normal_(layer_norm_scale ? 1.0 : 0.0, layer_norm_scale ? 0.2 : 0.3);
  }
  return model;
}

struct Batch {
  torch::Tensor tokens, targets;
};

// Rows of `length` tokens whose last two targets are padding (-1), as the
// trainer's text batches have.
Batch random_batch(int64_t rows, int64_t length, uint64_t seed) {
  auto generator = at::detail::createCPUGenerator(seed);
  Batch batch{at::randint(0, 256, {rows, length}, generator, torch::kLong),
              at::randint(0, 256, {rows, length}, generator, torch::kLong)};
  batch.targets.narrow(1, length - 2, 2).fill_(-1);
  return batch;
}

torch::Tensor loss_of(Gpt& model, const Batch& batch) {
  return summed_cross_entropy(model.forward(batch.tokens), batch.targets);
}

// The gradients of one forward and backward from zeroed .grad, cloned.
std::vector<torch::Tensor> gradients(Gpt& model, const Batch& batch, bool checkpointing) {
  model.set_activation_checkpointing(checkpointing);
  model.zero_grad();
  loss_of(model, batch).backward();
  std::vector<torch::Tensor> grads;
  for (const auto& parameter : trainable_parameters(model)) grads.push_back(parameter.grad().clone());
  return grads;
}

// How many nodes of each name the graph behind `root` has.
std::map<std::string, int> graph_node_names(const torch::Tensor& root) {
  std::map<std::string, int> names;
  std::set<const torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> pending{root.grad_fn().get()};
  while (!pending.empty()) {
    auto* node = pending.back();
    pending.pop_back();
    if (node == nullptr || !seen.insert(node).second) continue;
    ++names[node->name()];
    for (const auto& edge : node->next_edges()) pending.push_back(edge.function.get());
  }
  return names;
}

// Nodes whose name contains `part`, or with `prefix_only` begins with it
// (SoftmaxBackward0, not the loss's LogSoftmaxBackward0).
int nodes_named(const std::map<std::string, int>& names, const std::string& part, bool prefix_only = false) {
  int count = 0;
  for (const auto& [name, n] : names) {
    const auto at = name.find(part);
    if (at != std::string::npos && (!prefix_only || at == 0)) count += n;
  }
  return count;
}

TEST(GptCheckpointing, GradientsAreBitwiseThoseWithout) {
  auto model = random_gpt(small_gpt(2), 1);
  const Batch batch = random_batch(3, 16, 2);
  const auto plain = gradients(*model, batch, false);
  const auto checkpointed = gradients(*model, batch, true);
  const auto names = named_trainable_parameters(*model);
  ASSERT_EQ(plain.size(), checkpointed.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    EXPECT_TRUE(torch::equal(plain[i], checkpointed[i]))
        << names[i].first << ": max difference " << (plain[i] - checkpointed[i]).abs().max().item<double>();
    EXPECT_GT(plain[i].abs().max().item<double>(), 0) << names[i].first << " got no gradient";
  }
  // And the loss, from the plain forward that checkpointing runs under no grad.
  model->set_activation_checkpointing(false);
  const auto plain_loss = loss_of(*model, batch);
  model->set_activation_checkpointing(true);
  EXPECT_TRUE(torch::equal(plain_loss, loss_of(*model, batch)));
}

TEST(GptCheckpointing, TheGraphHoldsOneCheckpointPerBlockAndNothingInside) {
  auto model = random_gpt(small_gpt(3), 1);
  const Batch batch = random_batch(2, 16, 2);
  model->set_activation_checkpointing(false);
  const auto plain = graph_node_names(loss_of(*model, batch));
  model->set_activation_checkpointing(true);
  const auto checkpointed = graph_node_names(loss_of(*model, batch));
  EXPECT_EQ(nodes_named(plain, "CheckpointFunction"), 0);
  EXPECT_EQ(nodes_named(checkpointed, "CheckpointFunction"), 3);
  // Attention (its softmax, or on LibTorch 2.x the fused kernel's node,
  // ScaledDotProduct...AttentionBackward) and the MLP's GELU are inside the
  // blocks only.
  const char* attention = fused_attention_available() ? "ScaledDotProduct" : "SoftmaxBackward";
  EXPECT_EQ(nodes_named(plain, attention, true), 3);
  EXPECT_EQ(nodes_named(plain, "GeluBackward"), 3);
  EXPECT_EQ(nodes_named(checkpointed, attention, true), 0);
  EXPECT_EQ(nodes_named(checkpointed, "GeluBackward"), 0);
}

// A post-hook on a parameter's gradient accumulator, as the gradient
// reducer's ReadyHook (ddp/reducer.cpp): counts its calls, records their
// order, and copies .grad as it is when the hook runs.
struct HookLog {
  std::vector<int> calls;
  std::vector<size_t> order;
  std::vector<torch::Tensor> grad_at_hook;
};

class RecordingHook final : public torch::autograd::FunctionPostHook {
 public:
  RecordingHook(HookLog* log, size_t parameter, const torch::Tensor& tensor)
      : log_(log), parameter_(parameter), tensor_(tensor) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list& /*inputs*/) override {
    ++log_->calls[parameter_];
    log_->order.push_back(parameter_);
    log_->grad_at_hook[parameter_] = tensor_.grad().clone();
    return outputs;
  }

 private:
  HookLog* log_;
  size_t parameter_;
  torch::Tensor tensor_;
};

// Hooks every trainable parameter's accumulator; takes them off at the end.
class AccumulatorHooks {
 public:
  AccumulatorHooks(const std::vector<torch::Tensor>& parameters, HookLog* log) {
    log->calls.assign(parameters.size(), 0);
    log->grad_at_hook.assign(parameters.size(), torch::Tensor());
    for (size_t i = 0; i < parameters.size(); ++i) {
      auto accumulator = torch::autograd::impl::grad_accumulator(parameters[i]);
      keys_.push_back(accumulator->add_post_hook(std::make_unique<RecordingHook>(log, i, parameters[i])));
      accumulators_.push_back(std::move(accumulator));
    }
  }
  ~AccumulatorHooks() {
    for (size_t i = 0; i < accumulators_.size(); ++i) accumulators_[i]->del_post_hook(keys_[i]);
  }

 private:
  std::vector<decltype(torch::autograd::impl::grad_accumulator(std::declval<const at::Tensor&>()))> accumulators_;
  std::vector<uintptr_t> keys_;
};

TEST(GptCheckpointing, AccumulatorHooksFireOnceWhenEachGradientIsFinalInTheSameOrder) {
  auto model = random_gpt(small_gpt(2), 3);
  const auto parameters = trainable_parameters(*model);
  const auto names = named_trainable_parameters(*model);
  std::vector<size_t> plain_order;
  for (const bool checkpointing : {false, true}) {
    SCOPED_TRACE(checkpointing ? "checkpointing" : "plain");
    model->set_activation_checkpointing(checkpointing);
    model->zero_grad();
    HookLog log;
    AccumulatorHooks hooks(parameters, &log);
    // Two micro-steps accumulating into .grad, as the trainer's are.
    for (int micro_step = 0; micro_step < 2; ++micro_step) {
      log.calls.assign(parameters.size(), 0);
      log.order.clear();
      loss_of(*model, random_batch(2, 16, 10 + micro_step)).backward();
      for (size_t i = 0; i < parameters.size(); ++i) {
        EXPECT_EQ(log.calls[i], 1) << names[i].first << " in micro-step " << micro_step;
        ASSERT_TRUE(log.grad_at_hook[i].defined()) << names[i].first;
        // What the reducer would all-reduce is what backward leaves.
        EXPECT_TRUE(torch::equal(log.grad_at_hook[i], parameters[i].grad()))
            << names[i].first << " changed after its hook in micro-step " << micro_step;
      }
    }
    // The reducer fills and starts its buckets in this order.
    if (!checkpointing) {
      plain_order = log.order;
    } else {
      EXPECT_EQ(log.order, plain_order);
    }
  }
}

TEST(GptCheckpointing, EvaluationAndNoGradForwardsArePlain) {
  auto model = random_gpt(small_gpt(2), 4);
  const Batch batch = random_batch(2, 16, 5);
  model->set_activation_checkpointing(false);
  const auto plain = model->forward(batch.tokens).detach();
  model->set_activation_checkpointing(true);
  EXPECT_TRUE(model->activation_checkpointing());
  {
    torch::NoGradGuard no_grad;
    const auto logits = model->forward(batch.tokens);
    EXPECT_TRUE(torch::equal(logits, plain));
    EXPECT_FALSE(logits.requires_grad());
  }
  model->eval();
  const auto eval_logits = model->forward(batch.tokens);
  EXPECT_TRUE(torch::equal(eval_logits, plain));
  EXPECT_EQ(nodes_named(graph_node_names(eval_logits), "CheckpointFunction"), 0) << "eval() checkpointed";
  model->train();
  const auto train_logits = model->forward(batch.tokens);
  EXPECT_TRUE(torch::equal(train_logits, plain));
  EXPECT_EQ(nodes_named(graph_node_names(train_logits), "CheckpointFunction"), 2);
}

// The bytes a forward and backward of `model` on `batch` allocate beyond
// what was resident, from the counting CPU allocator (memory/memory.h).
int64_t step_activation_bytes(Gpt& model, const Batch& batch, bool checkpointing) {
  const c10::Device cpu(c10::kCPU);
  model.set_activation_checkpointing(checkpointing);
  reset_peak_memory(cpu);
  const int64_t resident = allocated_memory_bytes(cpu).value();
  loss_of(model, batch).backward();
  return peak_memory_bytes(cpu).value() - resident;
}

TEST(GptCheckpointing, KeepsOnlyTheBlocksInputs) {
  install_cpu_memory_accounting();
  GptOptions options = small_gpt(4);
  options.block_size = 32;
  auto model = random_gpt(options, 6);
  const Batch batch = random_batch(16, 32, 7);
  loss_of(*model, batch).backward();  // .grad allocated once, outside the measures
  const int64_t plain = step_activation_bytes(*model, batch, false);
  const int64_t checkpointed = step_activation_bytes(*model, batch, true);
  // Per block and sample, the plain forward keeps about 30 tensors of
  // T x n_embd floats or more (the attention scores are n_head x T x T);
  // checkpointing keeps one, plus one block's worth while it is recomputed.
  EXPECT_LT(checkpointed * 2, plain) << "plain " << plain << " bytes, checkpointed " << checkpointed;
}

// ---- checkpointed_forward on functions with dropout and under autocast ----

// CPU autocast to bfloat16 for a scope, as Python's torch.autocast("cpu").
class CpuAutocast {
 public:
  CpuAutocast() {
    at::autocast::increment_nesting();
    set(true);
  }
  ~CpuAutocast() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    set(false);
  }
  static bool enabled() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    return at::autocast::is_autocast_enabled(at::kCPU);
#else
    return at::autocast::is_cpu_enabled();
#endif
  }

 private:
  static void set(bool on) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCPU, on);
#else
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(on);
#endif
  }
};

struct LinearRun {
  torch::Tensor weight_grad, input_grad, draw_after;
};

// y = function(linear(x)) summed, a draw from the global generator, backward,
// and a second draw, which must not depend on whether the backward
// recomputed: the generator must be put back where the first draw left it,
// not where the recompute's replay of the forward's draws ends.
LinearRun run_linear(const std::function<torch::Tensor(const torch::Tensor&)>& after_linear, bool checkpointing,
                     bool autocast) {
  torch::manual_seed(21);
  torch::nn::Linear linear(16, 16);
  auto input = torch::randn({8, 16}).requires_grad_(true);
  auto function = [&](const torch::Tensor& x) { return after_linear(linear->forward(x)); };
  torch::Tensor output;
  {
    std::optional<CpuAutocast> scope;
    if (autocast) scope.emplace();
    output = checkpointing ? checkpointed_forward(function, input) : function(input);
  }
  EXPECT_FALSE(CpuAutocast::enabled());
  torch::rand({4});
  // Weights that differ per element, so a different dropout mask shows.
  (output.to(torch::kFloat) * torch::arange(output.numel(), torch::kFloat).view(output.sizes())).sum().backward();
  return {linear->weight.grad().clone(), input.grad().clone(), torch::rand({4})};
}

TEST(CheckpointedForward, ReplaysTheForwardsRandomStateAndRestoresTheCurrentOne) {
  auto dropout = [](const torch::Tensor& x) { return torch::dropout(x, 0.5, /*train=*/true); };
  const auto plain = run_linear(dropout, false, false);
  const auto checkpointed = run_linear(dropout, true, false);
  EXPECT_TRUE(torch::equal(plain.weight_grad, checkpointed.weight_grad)) << "the recompute drew another mask";
  EXPECT_TRUE(torch::equal(plain.input_grad, checkpointed.input_grad));
  EXPECT_TRUE(torch::equal(plain.draw_after, checkpointed.draw_after))
      << "the generator after backward is not where the plain run leaves it";
}

TEST(CheckpointedForward, RecomputesUnderTheForwardsAutocast) {
  auto tanh = [](const torch::Tensor& x) { return torch::tanh(x); };
  const auto fp32 = run_linear(tanh, false, false);
  const auto plain = run_linear(tanh, false, true);
  // The test means something only if autocast changes the result.
  ASSERT_FALSE(torch::equal(plain.weight_grad, fp32.weight_grad)) << "autocast did not lower linear to bfloat16";
  const auto checkpointed = run_linear(tanh, true, true);  // backward runs outside the autocast scope
  EXPECT_TRUE(torch::equal(plain.weight_grad, checkpointed.weight_grad));
  EXPECT_TRUE(torch::equal(plain.input_grad, checkpointed.input_grad));
}

TEST(CheckpointedForward, WithoutGradModeOrAnInputThatNeedsNoGradItIsTheFunction) {
  torch::nn::Linear linear(4, 4);
  int calls = 0;
  auto function = [&](const torch::Tensor& x) {
    ++calls;
    return linear->forward(x);
  };
  // An input that needs no grad: the parameters still get gradients.
  const auto out = checkpointed_forward(function, torch::ones({2, 4}));
  EXPECT_EQ(nodes_named(graph_node_names(out), "CheckpointFunction"), 0);
  out.sum().backward();
  EXPECT_TRUE(linear->weight.grad().defined());
  EXPECT_EQ(calls, 1);
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(checkpointed_forward(function, torch::ones({2, 4}).requires_grad_(true)).requires_grad());
}

// ---- the option ----

TEST(GptCheckpointing, BlocksIsRefusedForModelsWithoutBlocksAndAutoIsOff) {
  for (const auto kind : {ModelKind::Mlp, ModelKind::Cnn}) {
    ModelOptions options;
    options.kind = kind;
    options.activation_checkpointing = ActivationCheckpointing::Blocks;
    const std::string expected = std::string("--activation-checkpointing blocks needs --model gpt (the ") +
                                 to_string(kind) + " has no transformer blocks to recompute); use none";
    try {
      make_model(options, {1, 28, 28}, 10);
      ADD_FAILURE() << "built a " << to_string(kind) << " with blocks";
    } catch (const UsageError& e) {
      EXPECT_EQ(std::string(e.what()), expected);
    }
    try {
      parse_options({"--model", to_string(kind), "--activation-checkpointing", "blocks"});
      ADD_FAILURE() << "parsed --model " << to_string(kind) << " --activation-checkpointing blocks";
    } catch (const UsageError& e) {
      EXPECT_EQ(std::string(e.what()), expected);
    }
    // auto is --micro-batch-size auto's to choose: accepted, and off.
    options.activation_checkpointing = ActivationCheckpointing::Auto;
    EXPECT_NO_THROW(make_model(options, {1, 28, 28}, 10));
  }
  ModelOptions gpt;
  gpt.kind = ModelKind::Gpt;
  gpt.n_layer = 2;
  gpt.n_embd = 32;
  gpt.block_size = 16;
  const std::pair<ActivationCheckpointing, bool> cases[] = {
      {ActivationCheckpointing::None, false}, {ActivationCheckpointing::Blocks, true},
      {ActivationCheckpointing::Auto, false}};
  for (const auto& [choice, on] : cases) {
    gpt.activation_checkpointing = choice;
    auto model = std::dynamic_pointer_cast<Gpt>(make_model(gpt, {16}, 256));
    ASSERT_TRUE(model);
    EXPECT_EQ(model->activation_checkpointing(), on) << to_string(choice);
  }
  EXPECT_EQ(parse_options({"--model", "gpt", "--activation-checkpointing", "blocks"}).config.model.activation_checkpointing,
            ActivationCheckpointing::Blocks);
}

}  // namespace
}  // namespace dtrain
