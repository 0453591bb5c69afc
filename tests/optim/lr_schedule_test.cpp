#include "optim/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>

namespace dtrain {
namespace {

TEST(LrScaling, FollowsTheGlobalBatch) {
  struct Case { double lr; int64_t global, base; LrScaling scaling; double want; };
  const Case cases[] = {
      {0.1, 4096, 256, LrScaling::Linear, 1.6},
      {0.1, 128, 256, LrScaling::Linear, 0.05},
      {0.1, 1024, 256, LrScaling::Sqrt, 0.2},
      {0.1, 64, 256, LrScaling::Sqrt, 0.05},
      {0.1, 4096, 256, LrScaling::None, 0.1},
      {0.3, 256, 256, LrScaling::Linear, 0.3},
  };
  for (const auto& c : cases) {
    EXPECT_NEAR(scaled_peak_lr(c.lr, c.global, c.base, c.scaling), c.want, 1e-12)
        << to_string(c.scaling) << " " << c.global;
  }
}

LrSchedule schedule(LrScheduleKind kind, int64_t warmup, int64_t total) {
  LrSchedule s;
  s.base_lr = 0.1;
  s.peak_lr = 1.6;
  s.warmup_steps = warmup;
  s.total_steps = total;
  s.kind = kind;
  s.min_lr = 0.01;
  s.milestone_steps = {50, 80};
  s.gamma = 0.1;
  return s;
}

TEST(LrSchedule, WarmupRisesLinearlyFromTheUnscaledLr) {
  const auto s = schedule(LrScheduleKind::Constant, 10, 100);
  EXPECT_DOUBLE_EQ(s.at(0), 0.1);
  EXPECT_DOUBLE_EQ(s.at(5), 0.1 + 1.5 * 5 / 10);
  EXPECT_DOUBLE_EQ(s.at(9), 0.1 + 1.5 * 9 / 10);
  EXPECT_DOUBLE_EQ(s.at(10), 1.6);
  EXPECT_DOUBLE_EQ(s.at(99), 1.6);
}

TEST(LrSchedule, DecaysAfterWarmup) {
  struct Case { LrScheduleKind kind; int64_t step; double want; };
  const Case cases[] = {
      {LrScheduleKind::Cosine, 10, 1.6},
      {LrScheduleKind::Cosine, 55, 0.01 + 1.59 * 0.5},     // halfway through decay
      {LrScheduleKind::Cosine, 100, 0.01},
      {LrScheduleKind::Cosine, 150, 0.01},                 // clamped past the end
      {LrScheduleKind::Linear, 10, 1.6},
      {LrScheduleKind::Linear, 55, 0.01 + 1.59 * 0.5},
      {LrScheduleKind::Linear, 100, 0.01},
      {LrScheduleKind::Step, 49, 1.6},
      {LrScheduleKind::Step, 50, 0.16},
      {LrScheduleKind::Step, 79, 0.16},
      {LrScheduleKind::Step, 80, 0.016},
      {LrScheduleKind::Step, 5, 0.1 + 1.5 * 5 / 10},      // warmup wins
  };
  for (const auto& c : cases) {
    EXPECT_NEAR(schedule(c.kind, 10, 100).at(c.step), c.want, 1e-12) << to_string(c.kind) << " step " << c.step;
  }
}

TEST(LrSchedule, ConvertsEpochsToSteps) {
  LrOptions options;
  options.lr = 0.1;
  options.base_batch_size = 256;
  options.scaling = LrScaling::Linear;
  options.warmup_epochs = 2.5;
  options.schedule = LrScheduleKind::Step;
  options.milestones_epochs = {30, 60};
  const auto s = make_lr_schedule(options, 1024, /*steps_per_epoch=*/10, /*total_steps=*/900);
  EXPECT_DOUBLE_EQ(s.peak_lr, 0.4);
  EXPECT_EQ(s.warmup_steps, 25);
  EXPECT_EQ(s.milestone_steps, (std::vector<int64_t>{300, 600}));
  EXPECT_EQ(s.total_steps, 900);
  options.warmup_epochs = 0;
  options.warmup_steps = 7;
  EXPECT_EQ(make_lr_schedule(options, 1024, 10, 900).warmup_steps, 7);
}

TEST(LrSchedule, NoWarmupStartsAtThePeak) {
  const auto s = schedule(LrScheduleKind::Constant, 0, 100);
  EXPECT_DOUBLE_EQ(s.at(0), 1.6);
}

// A changing batch reads the schedule at fractional steps: at whole steps the
// same LR, bit for bit, and between them in between.
TEST(LrSchedule, AtPositionAgreesWithWholeSteps) {
  LrOptions options;
  options.lr = 0.1;
  options.base_batch_size = 64;
  options.warmup_steps = 7;
  options.schedule = LrScheduleKind::Cosine;
  options.min_lr = 0.001;
  const LrSchedule s = make_lr_schedule(options, 256, 10, 50);
  for (int64_t step = 0; step <= 55; ++step) ASSERT_EQ(s.at(step), s.at_position(static_cast<double>(step))) << step;
  EXPECT_GT(s.at_position(3.5), s.at(3));
  EXPECT_LT(s.at_position(3.5), s.at(4));
}

}  // namespace
}  // namespace dtrain
