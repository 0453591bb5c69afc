// The language model: a decoder-only transformer in the shape of GPT-2 and
// nanoGPT, small enough to train on CPUs. It maps int64 tokens [N, T] to
// next-token logits [N, T, vocab_size]. Parameter names and shapes are part of
// the interface (weights files, PyTorch interop) and are documented, with a
// PyTorch definition that loads dtrain's weights, in docs/models.md (## gpt).
//
// Invariants the trainer relies on:
// - No dropout and no batch statistics: the logits depend only on the weights
//   and the row itself, so a batch's gradient does not depend on how it is
//   split into micro-batches.
// - Attention is causal: the logits at position t depend only on tokens
//   0..t. So a row padded at its END (with any token id; dtrain uses 0) gives
//   the same logits at its real positions as the unpadded row; the padded
//   positions' targets are ignored (-1).
// - With activation checkpointing on (set_activation_checkpointing), the
//   gradients are bitwise those without it: backward recomputes each block
//   from its saved input with the same operations, the same autocast state
//   and the same random states.
#pragma once
#include "models/models.h"

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace dtrain {

struct GptOptions {
  int64_t vocab_size = 256;  // bytes
  int64_t block_size = 128;  // the longest input row, in tokens
  int64_t n_layer = 4;
  int64_t n_head = 4;
  int64_t n_embd = 128;  // divisible by n_head
};

// Throws UsageError, one line naming the fix (in terms of the flags --n-layer,
// --n-head, --n-embd, --block-size), unless every size is positive and n_embd
// is divisible by n_head.
void validate_gpt_options(const GptOptions& options);

// Activation checkpointing of one function of one tensor (PyTorch's
// torch.utils.checkpoint, re-entrant variant, which LibTorch lacks): runs
// `function` without recording a graph and keeps only `input`; backward runs
// it again from that input, with a graph, in the autocast state and from the
// CPU (and, for a CUDA input, that GPU's) random-generator states the
// forward began with, then back-propagates through it. The parameters
// `function` uses get their gradients accumulated, and the post-hooks of
// their gradient accumulators fire, once per backward, when each gradient is
// final, as without checkpointing. Trades memory for time: the activations
// inside `function` live only while backward passes through it, at the cost
// of a second forward of it.
//
// Without grad mode, or when `input` does not require grad, it is
// function(input): the graph could not reach the parameters inside through
// an input that does not require grad, so checkpointing would lose their
// gradients. `function` must return a tensor that is neither `input` nor a
// view of it, and must not change `input` in place.
torch::Tensor checkpointed_forward(std::function<torch::Tensor(const torch::Tensor&)> function,
                                   const torch::Tensor& input);

// Causal attention of q, k, v [N, heads, T, head size]: softmax(q k^T /
// sqrt(head size)) with the future masked out, times v. Explicit builds the
// T x T scores and keeps them for backward; Fused calls LibTorch 2.x's
// scaled_dot_product_attention (flash or memory-efficient kernels where the
// device has them, no T x T matrix kept). The GPT uses Fused wherever
// fused_attention_available(); the two agree to float rounding.
enum class AttentionKernel { Explicit, Fused };
bool fused_attention_available();  // LibTorch 2.0 or later
torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               AttentionKernel kernel);

// Multi-head causal self-attention: one fused projection c_attn (n_embd ->
// 3 n_embd: queries, keys, values), causal_attention, then c_proj
// (n_embd -> n_embd).
class CausalSelfAttention : public torch::nn::Module {
 public:
  CausalSelfAttention(int64_t n_embd, int64_t n_head);
  torch::Tensor forward(const torch::Tensor& x);  // [N, T, n_embd] -> [N, T, n_embd]

  torch::nn::Linear c_attn{nullptr}, c_proj{nullptr};
  AttentionKernel kernel = fused_attention_available() ? AttentionKernel::Fused : AttentionKernel::Explicit;

 private:
  int64_t n_head_;
};

// c_fc (n_embd -> 4 n_embd), GELU (the exact erf form), c_proj back.
class GptMlp : public torch::nn::Module {
 public:
  explicit GptMlp(int64_t n_embd);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::Linear c_fc{nullptr}, c_proj{nullptr};
};

// Pre-LayerNorm residual block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).
class GptBlock : public torch::nn::Module {
 public:
  GptBlock(int64_t n_embd, int64_t n_head);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::LayerNorm ln_1{nullptr}, ln_2{nullptr};
  std::shared_ptr<CausalSelfAttention> attn;
  std::shared_ptr<GptMlp> mlp;
};

// The output projection n_embd -> vocab_size, without bias, whose weight is
// another module's tensor: the token embedding's, registered here a second
// time as lm_head.weight (as PyTorch's `wte.weight = lm_head.weight` does).
// LibTorch's parameters() then lists it twice; trainable_parameters() once.
class TiedLmHead : public torch::nn::Module {
 public:
  explicit TiedLmHead(const torch::Tensor& shared_weight);
  torch::Tensor forward(const torch::Tensor& x);

  torch::Tensor weight;
};

// wte (token embedding) + wpe (position embedding) -> n_layer GptBlocks
// (h.0 .. h.<n_layer-1>) -> ln_f -> lm_head (tied to wte). Initialized as
// nanoGPT does, from torch's global generator (torch::manual_seed): every
// Linear and Embedding weight ~ N(0, 0.02), the residual projections
// (attn.c_proj, mlp.c_proj) ~ N(0, 0.02 / sqrt(2 n_layer)), biases 0,
// LayerNorms weight 1 and bias 0.
class Gpt : public Model {
 public:
  explicit Gpt(const GptOptions& options);  // validate_gpt_options first

  // tokens: int64 [N, T] with 1 <= T <= block_size and every id in
  // [0, vocab_size); anything else throws Error naming the problem. The id
  // check reads the batch's minimum and maximum (one host sync on a GPU): an
  // out-of-range id would otherwise be a device-side assert that ends the run.
  torch::Tensor forward(const torch::Tensor& tokens) override;

  const GptOptions& options() const { return options_; }

  // Activation checkpointing of the blocks (--activation-checkpointing
  // blocks): while on, a training forward with grad mode on keeps only each
  // block's input and recomputes the block in backward (checkpointed_forward):
  // the activations per sample fall from about n_layer blocks' worth to
  // n_layer block inputs (T x n_embd floats each) plus one block's worth, for
  // about one more forward of the blocks per step. Evaluation (eval() or no
  // grad mode) runs the blocks plainly either way. Off at construction. Each
  // forward reads it once, and its graph carries the choice to its backward,
  // so switching it between steps (as the micro-batch probe of
  // --micro-batch-size auto does) is safe.
  void set_activation_checkpointing(bool on) { activation_checkpointing_ = on; }
  // The attention of every block: Fused (the default where
  // fused_attention_available()) or Explicit.
  void set_attention_kernel(AttentionKernel kernel);
  AttentionKernel attention_kernel() const;
  bool activation_checkpointing() const { return activation_checkpointing_; }

 private:
  GptOptions options_;
  bool activation_checkpointing_ = false;
  torch::nn::Embedding wte_{nullptr}, wpe_{nullptr};
  torch::nn::ModuleList h_{nullptr};
  std::vector<std::shared_ptr<GptBlock>> blocks_;  // h_'s modules, typed
  torch::nn::LayerNorm ln_f_{nullptr};
  std::shared_ptr<TiedLmHead> lm_head_;
};

// The model, its options validated (validate_gpt_options) before anything is
// allocated.
std::shared_ptr<Gpt> make_gpt(const GptOptions& options);

}  // namespace dtrain
