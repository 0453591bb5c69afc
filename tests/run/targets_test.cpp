#include "run/targets.h"

#include "data/dataset.h"
#include "data/sampler.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace dtrain {
namespace {

std::vector<int64_t> due_steps(int64_t last, int64_t per_epoch, int64_t every, int64_t per_doubling) {
  std::vector<int64_t> steps;
  for (int64_t s = 0; s <= last; ++s) {
    if (evaluation_due(s, s % per_epoch == 0, every, per_doubling)) steps.push_back(s);
  }
  return steps;
}

TEST(EvalSchedule, FixedIsEpochEndsAndEveryN) {
  EXPECT_EQ(due_steps(25, 10, 0, 0), (std::vector<int64_t>{10, 20}));
  EXPECT_EQ(due_steps(25, 10, 4, 0), (std::vector<int64_t>{4, 8, 10, 12, 16, 20, 24}));
}

TEST(EvalSchedule, GeometricResolvesEveryScaleAlike) {
  // K = 1: the powers of two.
  EXPECT_EQ(due_steps(70, 1000, 0, 1), (std::vector<int64_t>{1, 2, 4, 8, 16, 32, 64}));
  // K = 2: ceil(2^(j/2)) = 1, 2, 2, 3, 4, 6, 8, 12, 16, 23, 32, 46, 64.
  EXPECT_EQ(due_steps(64, 1000, 0, 2), (std::vector<int64_t>{1, 2, 3, 4, 6, 8, 12, 16, 23, 32, 46, 64}));
  // K = 8: consecutive evaluations at most 2^(1/8) apart (plus one step) at
  // every scale, about 8 per doubling, from 30-step runs to 30000-step runs.
  const auto steps = due_steps(40000, 1 << 30, 0, 8);
  for (size_t i = 1; i < steps.size(); ++i) {
    EXPECT_LE(static_cast<double>(steps[i]), std::pow(2.0, 1.0 / 8) * static_cast<double>(steps[i - 1]) + 1) << steps[i];
  }
  const auto between = [&](int64_t low, int64_t high) {
    return std::count_if(steps.begin(), steps.end(), [&](int64_t s) { return s > low && s <= high; });
  };
  EXPECT_EQ(between(1024, 2048), 8);
  EXPECT_EQ(between(16384, 32768), 8);
}

TEST(Targets, FirstEvaluationThatMeetsItCounts) {
  TargetTracker accuracy({"val_accuracy", 0.8});
  EXPECT_FALSE(accuracy.observe({{"val_accuracy", 0.79}}, 10, 640));
  EXPECT_TRUE(accuracy.observe({{"val_accuracy", 0.8}}, 20, 1280));
  EXPECT_FALSE(accuracy.observe({{"val_accuracy", 0.9}}, 30, 1920));  // only the first
  nlohmann::json summary;
  accuracy.describe(summary);
  EXPECT_EQ(summary["steps_to_target"], 20);
  EXPECT_EQ(summary["samples_to_target"], 1280);
  EXPECT_EQ(summary["target_reached"], true);

  // Lower is better for losses; train_* reads the train subset's evaluation.
  TargetTracker loss({"train_loss", 0.3});
  EXPECT_FALSE(loss.observe({{"train_eval_loss", 0.31}, {"val_loss", 0.1}}, 5, 50));
  EXPECT_TRUE(loss.observe({{"train_eval_loss", 0.29}}, 6, 60));

  TargetTracker never({"test_accuracy", 0.99});
  never.observe({{"test_accuracy", 0.5}}, 1, 1);
  summary = nlohmann::json::object();
  never.describe(summary);
  EXPECT_TRUE(summary["steps_to_target"].is_null());
  EXPECT_EQ(summary["target_reached"], false);

  // A checkpoint's state comes back for the same target only.
  TargetTracker resumed({"val_accuracy", 0.8});
  resumed.restore(accuracy.state());
  EXPECT_TRUE(resumed.reached());
  TargetTracker other({"val_accuracy", 0.85});
  other.restore(accuracy.state());
  EXPECT_FALSE(other.reached());
}

TEST(Validation, HeldOutByTheSeedAndNeverTrainedOn) {
  const auto a = validation_indices(1000, 100, 7);
  EXPECT_EQ(a, validation_indices(1000, 100, 7));
  EXPECT_NE(a, validation_indices(1000, 100, 8));
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  EXPECT_EQ(std::adjacent_find(a.begin(), a.end()), a.end());
  // Not the first samples, nor the train-eval subset of the same seed.
  EXPECT_NE(a.back(), 99);
  auto subset = fixed_subset(1000, 100, 7);
  std::sort(subset.begin(), subset.end());
  EXPECT_NE(a, subset);

  Dataset data = make_synthetic(1000, 10, 4, /*seed=*/2);
  const auto inputs = data.train.inputs.clone();
  hold_out_validation(data, 100, 7);
  EXPECT_EQ(data.validation.size(), 100);
  EXPECT_EQ(data.train.size(), 900);
  // Every original sample is in exactly one split, and the held-out ones are a's.
  EXPECT_TRUE(data.validation.inputs.equal(inputs.index_select(0, torch::tensor(a, torch::kLong))));
  const auto all = torch::cat({data.train.inputs, data.validation.inputs}).reshape({1000, -1});
  EXPECT_TRUE(std::get<0>(torch::sort(all.sum(1))).equal(std::get<0>(torch::sort(inputs.reshape({1000, -1}).sum(1)))));
  Dataset small = make_synthetic(50, 10, 4, 2);
  EXPECT_THROW(hold_out_validation(small, 50, 7), std::exception);
}

}  // namespace
}  // namespace dtrain
