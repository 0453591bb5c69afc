// The GPT's blocks, its forward and its initialization (GPT-2's).
#include "models/gpt.h"

#include "common/error.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <sstream>

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

}  // namespace

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

torch::Tensor CausalSelfAttention::forward(const torch::Tensor& x) {
  const int64_t batch = x.size(0), length = x.size(1), n_embd = x.size(2);
  const int64_t head_size = n_embd / n_head_;
  const auto qkv = c_attn->forward(x).split(n_embd, 2);
  // [N, T, C] -> [N, heads, T, head_size]
  auto heads = [&](const torch::Tensor& t) { return t.view({batch, length, n_head_, head_size}).transpose(1, 2); };
  const auto q = heads(qkv[0]), k = heads(qkv[1]), v = heads(qkv[2]);
  auto scores = q.matmul(k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(head_size)));
  // Position t attends to 0..t only: the strictly upper triangle is the future.
  const auto future = torch::ones({length, length}, x.options().dtype(torch::kBool)).triu(1);
  scores = scores.masked_fill(future, -std::numeric_limits<double>::infinity());
  const auto y = scores.softmax(-1).matmul(v).transpose(1, 2).contiguous().view({batch, length, n_embd});
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
  for (const auto& block : blocks_) x = block->forward(x);
  return lm_head_->forward(ln_f_->forward(x));
}

std::shared_ptr<Gpt> make_gpt(const GptOptions& options) {
  return std::make_shared<Gpt>(options);
}

}  // namespace dtrain
