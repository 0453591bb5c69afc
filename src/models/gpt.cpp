// The GPT's blocks, its forward and its initialization (GPT-2's), and the
// activation checkpointing of its blocks (a custom autograd Function).
#include "models/gpt.h"

#include "common/error.h"
#include "models/precision.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <cmath>
#include <limits>
#include <mutex>
#include <optional>
#include <sstream>
#include <utility>

namespace dtrain {

namespace {

constexpr double kInitStd = 0.02;

std::string shape_text(const torch::Tensor& tensor) {
  std::ostringstream out;
  out << tensor.sizes();
  return out.str();
}

void init_linear(const torch::nn::Linear& linear, double stddev) {
  torch::nn::init::normal_(linear->weight, 0.0, stddev);
  if (linear->bias.defined()) torch::nn::init::zeros_(linear->bias);
}

// The state of a default generator, read under its lock.
at::Tensor generator_state(const at::Generator& generator) {
  at::Generator copy = generator;  // a handle to the same generator
  std::lock_guard<std::mutex> lock(copy.mutex());
  return copy.get_state();
}

void set_generator_state(const at::Generator& generator, const at::Tensor& state) {
  at::Generator copy = generator;
  std::lock_guard<std::mutex> lock(copy.mutex());
  copy.set_state(state);
}

// What a checkpointed forward leaves for its backward besides the input
// tensor: the function to run again, and the thread's autocast state and the
// random generators' states as they were when the forward began, so that the
// recompute sees what the forward saw. Held in the autograd context as a
// capsule (an IValue holding any intrusive_ptr'd object), so it lives exactly
// as long as the graph node.
struct Recompute final : torch::CustomClassHolder {
  std::function<torch::Tensor(const torch::Tensor&)> function;
  AutocastState autocast;
  at::Tensor cpu_rng;
  std::optional<c10::Device> cuda_device;  // the input's GPU: its generator's state is kept too
  at::Tensor cuda_rng;
};

// Sets the generators to the forward's states for a scope and puts the
// states they had back after it (Python's torch.random.fork_rng): the
// recompute draws the forward's numbers, and code after the backward draws
// what it would have drawn without checkpointing.
class RngReplay {
 public:
  explicit RngReplay(const Recompute& recompute) : recompute_(recompute) {
    const auto& cpu = at::globalContext().defaultGenerator(at::kCPU);
    previous_cpu_ = generator_state(cpu);
    set_generator_state(cpu, recompute.cpu_rng);
    if (recompute.cuda_device) {
      const auto& cuda = at::globalContext().defaultGenerator(*recompute.cuda_device);
      previous_cuda_ = generator_state(cuda);
      set_generator_state(cuda, recompute.cuda_rng);
    }
  }
  ~RngReplay() {
    set_generator_state(at::globalContext().defaultGenerator(at::kCPU), previous_cpu_);
    if (recompute_.cuda_device) {
      set_generator_state(at::globalContext().defaultGenerator(*recompute_.cuda_device), previous_cuda_);
    }
  }
  RngReplay(const RngReplay&) = delete;
  RngReplay& operator=(const RngReplay&) = delete;

 private:
  const Recompute& recompute_;
  at::Tensor previous_cpu_, previous_cuda_;
};

// forward: runs the function without a graph and saves only its input.
// backward: runs it again from a detached copy of that input, with a graph
// and the forward's autocast and random states, and back-propagates the
// output's gradient through the new graph with autograd::backward (not
// autograd::grad): the function's parameters are leaves of that graph, so
// their AccumulateGrad nodes add into .grad and run their post-hooks (the
// gradient reducer's ready hooks, ddp/reducer.cpp) as each gradient becomes
// final, inside the outer backward and in the order it would have reached
// them. It returns the input's gradient to the outer backward.
//
// The nested backward is re-entrant: it runs on the thread of the outer one
// (LibTorch's engine allows this), with grad mode off for the accumulation,
// so .grad is added into in place and stays a view of the reducer's bucket.
class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& input,
                               c10::intrusive_ptr<Recompute> recompute) {
    recompute->autocast = AutocastState::current();
    // Before the function runs: the recompute must start from the states it started from.
    recompute->cpu_rng = generator_state(at::globalContext().defaultGenerator(at::kCPU));
    if (input.is_cuda()) {
      recompute->cuda_device = input.device();
      recompute->cuda_rng = generator_state(at::globalContext().defaultGenerator(input.device()));
    }
    ctx->save_for_backward({input});
    torch::Tensor output;
    {
      torch::NoGradGuard no_graph;  // Function::apply already turns grad mode off; this states it
      output = recompute->function(input);
    }
    ctx->saved_data["recompute"] = c10::IValue::make_capsule(std::move(recompute));
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto recompute = c10::static_intrusive_pointer_cast<Recompute>(ctx->saved_data["recompute"].toCapsule());
    // A new leaf: the recomputed graph ends here instead of running on into
    // the layers below, which the outer backward reaches through our return.
    const auto input = ctx->get_saved_variables().at(0).detach().requires_grad_(true);
    torch::Tensor output;
    {
      RngReplay rng(*recompute);
      AutocastScope autocast(recompute->autocast);
      torch::AutoGradMode with_graph(true);
      output = recompute->function(input);
    }
    torch::autograd::backward({output}, {grad_outputs.at(0)});
    return {input.grad(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor checkpointed_forward(std::function<torch::Tensor(const torch::Tensor&)> function,
                                   const torch::Tensor& input) {
  if (!torch::GradMode::is_enabled() || !input.requires_grad()) return function(input);
  auto recompute = c10::make_intrusive<Recompute>();
  recompute->function = std::move(function);
  return CheckpointFunction::apply(input, std::move(recompute));
}

void validate_gpt_options(const GptOptions& options) {
  auto positive = [](int64_t value, const char* flag) {
    if (value < 1) throw UsageError(std::string(flag) + " " + std::to_string(value) + " must be at least 1");
  };
  positive(options.vocab_size, "the vocabulary size");
  positive(options.block_size, "--block-size");
  positive(options.n_layer, "--n-layer");
  positive(options.n_head, "--n-head");
  positive(options.n_embd, "--n-embd");
  if (options.n_embd % options.n_head != 0) {
    throw UsageError("--n-embd " + std::to_string(options.n_embd) + " is not divisible by --n-head " +
                     std::to_string(options.n_head) + "; choose an --n-embd that is a multiple of --n-head");
  }
}

CausalSelfAttention::CausalSelfAttention(int64_t n_embd, int64_t n_head) : n_head_(n_head) {
  c_attn = register_module("c_attn", torch::nn::Linear(n_embd, 3 * n_embd));
  c_proj = register_module("c_proj", torch::nn::Linear(n_embd, n_embd));
}

bool fused_attention_available() {
#if TORCH_VERSION_MAJOR >= 2
  return true;
#else
  return false;
#endif
}

torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               AttentionKernel kernel) {
  if (kernel == AttentionKernel::Fused) {
#if TORCH_VERSION_MAJOR >= 2
    // Flash or memory-efficient kernels where the device has them: no T x T
    // matrix is kept for backward.
    return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
#else
    throw Error("fused attention needs LibTorch 2.0 or later (this build has 1.x)");
#endif
  }
  const int64_t length = q.size(-2), head_size = q.size(-1);
  auto scores = q.matmul(k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(head_size)));
  // Position t attends to 0..t only: the strictly upper triangle is the future.
  const auto future = torch::ones({length, length}, q.options().dtype(torch::kBool)).triu(1);
  scores = scores.masked_fill(future, -std::numeric_limits<double>::infinity());
  return scores.softmax(-1).matmul(v);
}

torch::Tensor CausalSelfAttention::forward(const torch::Tensor& x) {
  const int64_t batch = x.size(0), length = x.size(1), n_embd = x.size(2);
  const int64_t head_size = n_embd / n_head_;
  const auto qkv = c_attn->forward(x).split(n_embd, 2);
  // [N, T, C] -> [N, heads, T, head_size]
  auto heads = [&](const torch::Tensor& t) { return t.view({batch, length, n_head_, head_size}).transpose(1, 2); };
  const auto y = causal_attention(heads(qkv[0]), heads(qkv[1]), heads(qkv[2]), kernel)
                     .transpose(1, 2)
                     .contiguous()
                     .view({batch, length, n_embd});
  return c_proj->forward(y);
}

GptMlp::GptMlp(int64_t n_embd) {
  c_fc = register_module("c_fc", torch::nn::Linear(n_embd, 4 * n_embd));
  c_proj = register_module("c_proj", torch::nn::Linear(4 * n_embd, n_embd));
}

torch::Tensor GptMlp::forward(const torch::Tensor& x) { return c_proj->forward(torch::gelu(c_fc->forward(x))); }

GptBlock::GptBlock(int64_t n_embd, int64_t n_head) {
  ln_1 = register_module("ln_1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({n_embd})));
  attn = register_module("attn", std::make_shared<CausalSelfAttention>(n_embd, n_head));
  ln_2 = register_module("ln_2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({n_embd})));
  mlp = register_module("mlp", std::make_shared<GptMlp>(n_embd));
}

torch::Tensor GptBlock::forward(const torch::Tensor& x) {
  auto y = x + attn->forward(ln_1->forward(x));
  return y + mlp->forward(ln_2->forward(y));
}

TiedLmHead::TiedLmHead(const torch::Tensor& shared_weight) {
  // register_parameter keeps the tensor itself (the same TensorImpl), so the
  // embedding and the head read and accumulate gradients into one weight.
  weight = register_parameter("weight", shared_weight);
}

torch::Tensor TiedLmHead::forward(const torch::Tensor& x) { return torch::linear(x, weight); }

Gpt::Gpt(const GptOptions& options) : options_(options) {
  validate_gpt_options(options);
  // Registration order is the order of named_parameters() and of weights
  // files, the same as the PyTorch definition in docs/models.md.
  wte_ = register_module("wte", torch::nn::Embedding(options.vocab_size, options.n_embd));
  wpe_ = register_module("wpe", torch::nn::Embedding(options.block_size, options.n_embd));
  h_ = register_module("h", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.n_layer; ++i) {
    blocks_.push_back(std::make_shared<GptBlock>(options.n_embd, options.n_head));
    h_->push_back(std::static_pointer_cast<torch::nn::Module>(blocks_.back()));
  }
  ln_f_ = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({options.n_embd})));
  lm_head_ = register_module("lm_head", std::make_shared<TiedLmHead>(wte_->weight));

  // nanoGPT's initialization, drawn in a fixed order from the global generator.
  torch::NoGradGuard no_grad;
  const double residual_std = kInitStd / std::sqrt(2.0 * static_cast<double>(options.n_layer));
  torch::nn::init::normal_(wte_->weight, 0.0, kInitStd);
  torch::nn::init::normal_(wpe_->weight, 0.0, kInitStd);
  for (const auto& block : blocks_) {
    init_linear(block->attn->c_attn, kInitStd);
    init_linear(block->attn->c_proj, residual_std);
    init_linear(block->mlp->c_fc, kInitStd);
    init_linear(block->mlp->c_proj, residual_std);
  }
}

torch::Tensor Gpt::forward(const torch::Tensor& tokens) {
  if (tokens.dim() != 2 || tokens.scalar_type() != torch::kLong) {
    std::ostringstream type;
    type << tokens.scalar_type();
    throw Error("the GPT takes int64 tokens [N, T]; got " + type.str() + " " + shape_text(tokens));
  }
  const int64_t length = tokens.size(1);
  if (length < 1 || length > options_.block_size) {
    throw Error("a row of " + std::to_string(length) + " tokens does not fit the GPT's block size " +
                std::to_string(options_.block_size) + "; cut rows to 1.." + std::to_string(options_.block_size) +
                " tokens or raise --block-size");
  }
  // On the CPU only: on a GPU reading the range back would stall the stream
  // every forward. dtrain's token datasets hold bytes (0..255, the
  // vocabulary) by construction, and CUDA's embedding asserts on the device.
  if (tokens.numel() > 0 && tokens.is_cpu()) {
    const auto range = torch::stack({tokens.min(), tokens.max()});
    const int64_t lowest = range[0].item<int64_t>(), highest = range[1].item<int64_t>();
    if (lowest < 0 || highest >= options_.vocab_size) {
      throw Error("token id " + std::to_string(lowest < 0 ? lowest : highest) + " is outside the GPT's vocabulary [0, " +
                  std::to_string(options_.vocab_size) + "); pad inputs with 0, not -1 (-1 marks ignored targets)");
    }
  }
  const auto positions = torch::arange(length, tokens.options());
  auto x = wte_->forward(tokens) + wpe_->forward(positions);
  const bool checkpoint = activation_checkpointing_ && is_training() && torch::GradMode::is_enabled();
  for (const auto& block : blocks_) {
    // The closure holds the block: a graph that outlives the model still recomputes safely.
    x = checkpoint ? checkpointed_forward([block](const torch::Tensor& in) { return block->forward(in); }, x)
                   : block->forward(x);
  }
  return lm_head_->forward(ln_f_->forward(x));
}

void Gpt::set_attention_kernel(AttentionKernel kernel) {
  if (kernel == AttentionKernel::Fused && !fused_attention_available()) {
    throw Error("fused attention needs LibTorch 2.0 or later (this build has 1.x)");
  }
  for (const auto& block : blocks_) block->attn->kernel = kernel;
}

AttentionKernel Gpt::attention_kernel() const {
  return blocks_.empty() ? AttentionKernel::Explicit : blocks_.front()->attn->kernel;
}

std::shared_ptr<Gpt> make_gpt(const GptOptions& options) {
  return std::make_shared<Gpt>(options);
}

}  // namespace dtrain
