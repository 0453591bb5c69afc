// The non-finite check in backward (ddp/finite_check.h): the kernel, the
// helper thread's rounds, and the reducer at world size 1 using it.
#include "ddp/finite_check.h"

#include "comm/communicator.h"
#include "ddp/reducer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cfloat>
#include <limits>
#include <vector>

namespace dtrain {
namespace {

TEST(FiniteCheck, TheKernelFindsNaNAndInfAnywhereAndPassesEveryFiniteFloat) {
  const float bad[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::signaling_NaN(),
                       std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                       -std::numeric_limits<float>::quiet_NaN()};
  // Sizes around the kernel's 4096-float blocks; a value at the start, in
  // the middle and at the very end.
  for (size_t size : {size_t{1}, size_t{7}, size_t{4095}, size_t{4096}, size_t{4097}, size_t{70001}}) {
    std::vector<float> values(size, 0.5f);
    values[0] = FLT_MAX;
    values[size / 2] = -FLT_MAX;
    values[size - 1] = std::numeric_limits<float>::denorm_min();
    if (size > 3) values[1] = -0.0f;
    EXPECT_TRUE(floats_all_finite(values.data(), size)) << size;
    for (size_t at : {size_t{0}, size / 2, size - 1}) {
      for (float value : bad) {
        std::vector<float> damaged = values;
        damaged[at] = value;
        EXPECT_FALSE(floats_all_finite(damaged.data(), size)) << "size " << size << " at " << at << " " << value;
      }
    }
  }
  EXPECT_TRUE(floats_all_finite(nullptr, 0));
}

TEST(FiniteCheck, EachRoundJudgesWhatWasSubmittedSinceTheLast) {
  FiniteCheck check;
  std::vector<std::vector<float>> spans;
  for (size_t size : {size_t{10}, size_t{300000}, size_t{1}, size_t{65536}}) spans.emplace_back(size, 1.0f);
  for (int round = 0; round < 20; ++round) {
    const bool poison = round % 3 == 1;
    if (poison) spans[round % spans.size()].back() = std::numeric_limits<float>::infinity();
    for (const auto& span : spans) check.submit(span.data(), span.size());
    EXPECT_EQ(check.all_finite(), !poison) << "round " << round;
    if (poison) spans[round % spans.size()].back() = 1.0f;
  }
  EXPECT_TRUE(check.all_finite());  // an empty round
}

// At world size 1 the reducer queues each gradient from its backward hook,
// and the verdict matches the gradients: NaN from the data is found, a
// repeated call checks everything again, and the option changes no value.
TEST(FiniteCheck, TheReducerChecksEachGradientInBackward) {
  LocalCommunicator comm;
  torch::manual_seed(0);
  auto model = torch::nn::Sequential(torch::nn::Linear(20, 64), torch::nn::ReLU(), torch::nn::Linear(64, 5));
  auto twin = torch::nn::Sequential(torch::nn::Linear(20, 64), torch::nn::ReLU(), torch::nn::Linear(64, 5));
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < model->parameters().size(); ++i) twin->parameters()[i].copy_(model->parameters()[i]);
  }
  ReducerOptions checked;
  checked.first_bucket_bytes = 1024;
  checked.check_finite_in_backward = true;
  ReducerOptions plain = checked;
  plain.check_finite_in_backward = false;
  GradientReducer reducer(model->parameters(), comm, checked);
  GradientReducer reference(twin->parameters(), comm, plain);
  auto step = [](torch::nn::Sequential& net, GradientReducer& r, const at::Tensor& inputs, int micro_steps) {
    r.zero_grad();
    for (int m = 0; m < micro_steps; ++m) {
      r.begin_micro_step(m == micro_steps - 1);
      net->forward(inputs).square().sum().backward();
    }
    r.finish();
  };
  const auto inputs = torch::randn({8, 20});
  for (int micro_steps : {1, 3}) {
    step(model, reducer, inputs, micro_steps);
    step(twin, reference, inputs, micro_steps);
    EXPECT_EQ(reducer.gradients_checked_in_backward(), 4);  // every parameter, from its hook
    EXPECT_TRUE(reducer.all_finite());
    for (size_t i = 0; i < model->parameters().size(); ++i) {
      EXPECT_TRUE(torch::equal(model->parameters()[i].grad(), twin->parameters()[i].grad())) << i;
    }
  }
  auto poisoned = inputs.clone();
  poisoned[3][7] = std::numeric_limits<float>::quiet_NaN();
  step(model, reducer, poisoned, 2);
  EXPECT_EQ(reducer.gradients_checked_in_backward(), 4);
  EXPECT_FALSE(reducer.all_finite());
  EXPECT_FALSE(reducer.all_finite());  // a second call checks all again
  step(model, reducer, inputs, 1);
  EXPECT_TRUE(reducer.all_finite());
  // A value edited after the step is seen by the next call's whole check.
  torch::NoGradGuard no_grad;
  model->parameters()[2].grad().view({-1})[5] = -std::numeric_limits<float>::infinity();
  EXPECT_FALSE(reducer.all_finite());
}

}  // namespace
}  // namespace dtrain
