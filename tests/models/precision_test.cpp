// --precision (models/precision.h) and the GPU-speed paths that depend on
// the LibTorch version: bf16 autocast scopes (what runs in bf16, what stays
// fp32, nesting and the weight-cast cache), auto's resolution, the TF32
// switches; the fused attention against the explicit one and the fused
// AdamW against torch::optim's loop (both LibTorch 2.x only: CI runs them in
// the kit's rehearsal build).
#include "models/precision.h"

#include "models/gpt.h"
#include "models/models.h"
#include "optim/optimizer.h"

#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <vector>

namespace dtrain {
namespace {

TEST(Precision, Bf16MixedRunsMatmulsInBf16InsideItsScopeOnly) {
  torch::manual_seed(0);
  torch::nn::Linear linear(8, 4);
  const auto x = torch::randn({3, 8});
  {
    const PrecisionScope scope(Precision::Bf16Mixed, c10::DeviceType::CPU);
    EXPECT_TRUE(AutocastState::current().cpu_enabled);
    EXPECT_EQ(linear->forward(x).scalar_type(), torch::kBFloat16);
    {
      const PrecisionScope inner(Precision::Bf16Mixed, c10::DeviceType::CPU);  // nesting
      EXPECT_EQ(linear->forward(x).scalar_type(), torch::kBFloat16);
    }
    EXPECT_TRUE(AutocastState::current().cpu_enabled) << "the inner scope's exit must not end the outer one";
  }
  EXPECT_FALSE(AutocastState::current().cpu_enabled);
  EXPECT_EQ(linear->forward(x).scalar_type(), torch::kFloat);
  for (const Precision plain : {Precision::Fp32, Precision::Tf32}) {
    const PrecisionScope scope(plain, c10::DeviceType::CPU);
    EXPECT_FALSE(AutocastState::current().cpu_enabled);
    EXPECT_EQ(linear->forward(x).scalar_type(), torch::kFloat);
  }
}

TEST(Precision, AutoIsFp32OnTheCpuAndOtherValuesStay) {
  EXPECT_EQ(resolve_precision(Precision::Auto, c10::Device(c10::kCPU)), Precision::Fp32);
  for (const Precision p : {Precision::Fp32, Precision::Tf32, Precision::Bf16Mixed}) {
    EXPECT_EQ(resolve_precision(p, c10::Device(c10::kCPU)), p);
  }
}

TEST(Precision, Tf32SwitchesFollowTheMode) {
  set_tf32(Precision::Tf32);
  EXPECT_TRUE(at::globalContext().allowTF32CuBLAS());
  EXPECT_TRUE(at::globalContext().allowTF32CuDNN());
  set_tf32(Precision::Fp32);
  EXPECT_FALSE(at::globalContext().allowTF32CuBLAS());
  EXPECT_FALSE(at::globalContext().allowTF32CuDNN()) << "LibTorch leaves cuDNN's TF32 on: fp32 must turn it off";
  set_tf32(Precision::Bf16Mixed);
  EXPECT_TRUE(at::globalContext().allowTF32CuBLAS());
  set_tf32(Precision::Fp32);
}

GptOptions small_gpt() {
  GptOptions options;
  options.vocab_size = 256;
  options.block_size = 16;
  options.n_layer = 2;
  options.n_head = 4;
  options.n_embd = 32;
  return options;
}

// The GPT's forward and loss under bf16-mixed: the loss is fp32 and near
// fp32's, the gradients are fp32 (backward outside the scope), and the
// cached bf16 copies of the weights do not outlive the scope: after an
// in-place update, the next forward sees the new weights.
TEST(Precision, Bf16MixedGptLossIsFp32AndNearAndTheCastCacheIsCleared) {
  torch::manual_seed(1);
  auto model = make_gpt(small_gpt());
  const auto tokens = torch::randint(0, 256, {4, 16}, torch::kLong);
  const auto targets = torch::randint(0, 256, {4, 16}, torch::kLong);
  const auto fp32 = summed_cross_entropy(model->forward(tokens), targets);
  torch::Tensor bf16;
  {
    const PrecisionScope scope(Precision::Bf16Mixed, c10::DeviceType::CPU);
    const auto logits = model->forward(tokens);
    EXPECT_EQ(logits.scalar_type(), torch::kBFloat16);
    bf16 = summed_cross_entropy(logits, targets);
  }
  EXPECT_EQ(bf16.scalar_type(), torch::kFloat);
  EXPECT_NEAR(bf16.item<double>(), fp32.item<double>(), 0.02 * fp32.item<double>());
  bf16.backward();
  for (const auto& parameter : model->parameters()) {
    ASSERT_TRUE(parameter.grad().defined());
    EXPECT_EQ(parameter.grad().scalar_type(), torch::kFloat);
  }
  // Change the weights in place between two scopes (as the optimizer does):
  // the second scope must see the new weights, exactly as a model that
  // never had a cache does. A stale bf16 copy of a matmul weight from the
  // first scope would make them differ.
  torch::manual_seed(1);
  auto twin = make_gpt(small_gpt());  // the same weights, never cast
  auto scale = [](Gpt& gpt) {
    torch::NoGradGuard no_grad;
    for (auto& parameter : gpt.parameters()) parameter.mul_(0.5);
  };
  torch::Tensor before, after, fresh;
  {
    const PrecisionScope scope(Precision::Bf16Mixed, c10::DeviceType::CPU);
    before = model->forward(tokens).to(torch::kFloat);
  }
  scale(*model);
  {
    const PrecisionScope scope(Precision::Bf16Mixed, c10::DeviceType::CPU);
    after = model->forward(tokens).to(torch::kFloat);
  }
  scale(*twin);
  {
    const PrecisionScope scope(Precision::Bf16Mixed, c10::DeviceType::CPU);
    fresh = twin->forward(tokens).to(torch::kFloat);
  }
  EXPECT_GT((before - after).abs().max().item<double>(), 1e-2);
  EXPECT_TRUE(torch::equal(after, fresh)) << "the second scope used a cast of the old weights";
}

// Forward and every gradient of the fused (scaled_dot_product_attention)
// and explicit causal attention, fp32 on the CPU.
TEST(FusedAttention, MatchesTheExplicitPathInForwardAndGradients) {
  if (!fused_attention_available()) GTEST_SKIP() << "LibTorch 1.x: no scaled_dot_product_attention (CI runs this in the kit's LibTorch 2.x build)";
  torch::manual_seed(2);
  const auto q0 = torch::randn({2, 3, 17, 8}), k0 = torch::randn({2, 3, 17, 8}), v0 = torch::randn({2, 3, 17, 8});
  const auto weights = torch::randn({2, 3, 17, 8});
  std::vector<torch::Tensor> outputs, grads;
  for (const auto kernel : {AttentionKernel::Explicit, AttentionKernel::Fused}) {
    auto q = q0.clone().requires_grad_(true), k = k0.clone().requires_grad_(true), v = v0.clone().requires_grad_(true);
    const auto y = causal_attention(q, k, v, kernel);
    (y * weights).sum().backward();
    outputs.push_back(y.detach());
    grads.insert(grads.end(), {q.grad(), k.grad(), v.grad()});
  }
  const double forward = (outputs[0] - outputs[1]).abs().max().item<double>();
  EXPECT_LE(forward, 1e-5);
  std::printf("[ SDPA     ] fused against explicit: forward %.3g", forward);
  for (int i = 0; i < 3; ++i) {
    const double difference = (grads[i] - grads[i + 3]).abs().max().item<double>();
    EXPECT_LE(difference, 1e-5) << "gradient " << "qkv"[i];
    std::printf(", d%c %.3g", "qkv"[i], difference);
  }
  std::printf(" (max absolute differences)\n");
}

// The fused AdamW against torch::optim's loop on the same gradients (10
// steps, weight decay on), then a resume of the fused one from its state.
TEST(FusedAdamW, MatchesTheLoopAndResumesBitwise) {
  if (!fused_adamw_available()) GTEST_SKIP() << "LibTorch before 2.4: no fused AdamW (CI runs this in the kit's LibTorch 2.x build)";
  torch::manual_seed(3);
  const std::vector<torch::Tensor> start = {torch::randn({7, 5}), torch::randn({5}), torch::randn({3, 2, 4})};
  std::vector<std::vector<torch::Tensor>> gradients(10);
  for (auto& step : gradients) {
    for (const auto& tensor : start) step.push_back(torch::randn_like(tensor));
  }
  OptimizerOptions options;
  options.kind = OptimizerKind::AdamW;
  options.weight_decay = 0.1;
  options.eps = 1e-8;
  auto named = [&] {
    NamedParameters parameters;
    for (size_t i = 0; i < start.size(); ++i) parameters.emplace_back("p" + std::to_string(i), start[i].clone());
    return parameters;
  };
  auto run = [&](torch::optim::Optimizer& optimizer, const NamedParameters& parameters, size_t from, size_t to) {
    for (size_t step = from; step < to; ++step) {
      for (size_t i = 0; i < parameters.size(); ++i) parameters[i].second.mutable_grad() = gradients[step][i].clone();
      optimizer.step();
    }
  };
  const auto loop_params = named(), fused_params = named();
  auto loop = make_optimizer(options, loop_params, 0.01, nullptr, /*fused=*/false);
  auto fused = make_optimizer(options, fused_params, 0.01, nullptr, /*fused=*/true);
  run(*loop, loop_params, 0, 10);
  run(*fused, fused_params, 0, 10);
  for (size_t i = 0; i < start.size(); ++i) {
    const auto& a = loop_params[i].second;
    const auto& b = fused_params[i].second;
    // Relative to the magnitude, with a floor for entries near zero.
    const double relative = ((a - b).abs() / a.abs().clamp_min(1e-3)).max().item<double>();
    EXPECT_LE(relative, 1e-6) << loop_params[i].first;
    std::printf("[ ADAMW    ] %s: fused against the loop after 10 steps, max relative difference %.3g\n",
                loop_params[i].first.c_str(), relative);
    EXPECT_GT((a - start[i]).abs().max().item<double>(), 1e-3) << "the step moved nothing";
  }
  // Its state is torch::optim::AdamW's: 5 steps, saved, loaded into a new
  // fused optimizer, 5 more, gives the uninterrupted 10 bit for bit.
  const auto resumed_params = named();
  auto first = make_optimizer(options, resumed_params, 0.01, nullptr, true);
  run(*first, resumed_params, 0, 5);
  const NamedTensors state = optimizer_state(*first, options, resumed_params);
  ASSERT_EQ(state.size(), 9u);
  auto second = make_optimizer(options, resumed_params, 0.01, nullptr, true);
  load_optimizer_state(*second, options, resumed_params, state, "the test's state");
  run(*second, resumed_params, 5, 10);
  for (size_t i = 0; i < start.size(); ++i) {
    EXPECT_TRUE(torch::equal(resumed_params[i].second, fused_params[i].second)) << resumed_params[i].first;
  }
}

}  // namespace
}  // namespace dtrain
