#include "data/batch_schedule.h"

#include "common/error.h"
#include "data/sampler.h"

#include <gtest/gtest.h>

#include <set>
#include <vector>

namespace dtrain {
namespace {

BatchSchedulePlan rampup(int64_t start, int64_t increment, int64_t samples) {
  return {BatchScheduleKind::Rampup, start, increment, samples};
}

// Megatron's ramp 32 -> 128 by 32 over 1000 samples: three increments, one
// per 1000/3 samples consumed.
TEST(BatchSchedule, RampupArithmeticTable) {
  const BatchSchedulePlan plan = rampup(32, 32, 1000);
  const std::vector<std::pair<int64_t, int64_t>> table = {
      {0, 32}, {333, 32}, {334, 64}, {666, 64}, {667, 96}, {999, 96}, {1000, 128}, {1'000'000, 128}};
  for (const auto& [samples, batch] : table) EXPECT_EQ(rampup_batch(plan, 128, samples), batch) << samples;
  // One increment: the whole ramp is one jump at SAMPLES.
  EXPECT_EQ(rampup_batch(rampup(64, 64, 500), 128, 499), 64);
  EXPECT_EQ(rampup_batch(rampup(64, 64, 500), 128, 500), 128);
  // No overflow at a large sample count.
  EXPECT_EQ(rampup_batch(rampup(8, 8, 3), 1024, int64_t{1} << 60), 1024);
}

TEST(BatchSchedule, RefusesRampsMegatronRefuses) {
  // G - START not a multiple of INCREMENT.
  EXPECT_THROW(check_batch_schedule(rampup(32, 40, 1000), 128, 1, 8), UsageError);
  // INCREMENT not a multiple of world x micro.
  EXPECT_THROW(check_batch_schedule(rampup(32, 16, 1000), 128, 2, 16), UsageError);
  // START not a multiple of world x micro.
  EXPECT_THROW(check_batch_schedule(rampup(24, 8, 1000), 128, 2, 8), UsageError);
  // START not below G.
  EXPECT_THROW(check_batch_schedule(rampup(128, 32, 1000), 128, 1, 16), UsageError);
  EXPECT_NO_THROW(check_batch_schedule(rampup(32, 32, 1000), 128, 2, 16));
  const BatchSchedulePlan adaptive{BatchScheduleKind::Adaptive, 24, 0, 0};
  EXPECT_THROW(check_batch_schedule(adaptive, 128, 2, 8), UsageError);
}

// A constant schedule's positions are the step-indexed windows of
// data/sampler.h, and its epochs the same fraction.
TEST(BatchSchedule, ConstantIsTheStepIndexedWindow) {
  const int64_t n = 1000, g = 96;  // 10 steps per epoch, 40 dropped
  BatchSchedule schedule({}, 1.0, n, 3, g, 8);
  const int64_t per_epoch = n / g;
  for (int64_t step = 0; step < 3 * per_epoch; ++step) {
    ASSERT_EQ(schedule.position().epoch, step / per_epoch);
    ASSERT_EQ(schedule.position().offset, step % per_epoch * g);
    ASSERT_EQ(schedule.position().samples_seen, step * g);
    ASSERT_EQ(schedule.position().epochs, static_cast<double>(step) / static_cast<double>(per_epoch));
    ASSERT_EQ(schedule.steps_left(), 3 * per_epoch - step);
    schedule.advance();
    ASSERT_EQ(schedule.position().epoch_ended, (step + 1) % per_epoch == 0);
    ASSERT_FALSE(schedule.update(true, 5000.0));  // never changes
  }
  EXPECT_TRUE(schedule.finished());
  BatchSchedule resumed({}, 1.0, n, 3, g, 8);
  resumed.restore_steps(17);
  EXPECT_EQ(resumed.position().epoch, 1);
  EXPECT_EQ(resumed.position().offset, 7 * g);
}

// Across batch changes, each epoch's windows cover distinct samples, and
// only a tail shorter than the next batch is dropped.
TEST(BatchSchedule, RampupCoversEachSampleOncePerEpoch) {
  const int64_t n = 1000, epochs = 3;
  BatchSchedule schedule(rampup(16, 16, 1500), 1.0, n, epochs, 128, 16);
  std::vector<std::set<int64_t>> seen(epochs);
  std::set<int64_t> batches;
  int64_t changes = 0;
  while (!schedule.finished()) {
    const RunPosition at = schedule.position();
    const auto permutation = epoch_permutation(n, 7, at.epoch, true);
    const int64_t g = schedule.global_batch();
    batches.insert(g);
    ASSERT_LE(at.offset + g, n);
    for (int64_t i = at.offset; i < at.offset + g; ++i) {
      ASSERT_TRUE(seen[at.epoch].insert(permutation[i]).second) << "sample repeated in epoch " << at.epoch;
    }
    schedule.advance();
    if (schedule.position().epoch_ended) {
      // The tail left in the epoch was shorter than the next step's batch.
      const int64_t next = rampup_batch(rampup(16, 16, 1500), 128, schedule.position().samples_seen);
      ASSERT_LT(n - static_cast<int64_t>(seen[at.epoch].size()), next);
    }
    if (const auto change = schedule.update(false, std::nullopt)) {
      ++changes;
      EXPECT_GT(change->to, change->from);
      EXPECT_EQ(change->to, rampup_batch(rampup(16, 16, 1500), 128, schedule.position().samples_seen));
    }
  }
  EXPECT_EQ(changes, 7);  // 16 -> 32 -> ... -> 128
  EXPECT_EQ(batches.size(), 8u);
  int64_t trained = 0;
  for (const auto& epoch : seen) trained += static_cast<int64_t>(epoch.size());
  EXPECT_EQ(trained, schedule.position().samples_seen);
}

TEST(BatchSchedule, AdaptiveGrowsAtEvaluationsOnlyNeverShrinksAndIsCapped) {
  const BatchSchedulePlan plan{BatchScheduleKind::Adaptive, 16, 0, 0};
  BatchSchedule schedule(plan, 2.0, 10000, 5, 256, 8);
  EXPECT_EQ(schedule.global_batch(), 16);
  schedule.advance();
  EXPECT_FALSE(schedule.update(false, 100.0));  // no evaluation: no change
  const auto grown = schedule.update(true, 1000.0);  // at most a doubling per evaluation
  ASSERT_TRUE(grown);
  EXPECT_EQ(grown->from, 16);
  EXPECT_EQ(grown->to, 32);
  EXPECT_EQ(grown->step, 1);
  EXPECT_EQ(schedule.update(true, 1000.0)->to, 64);
  EXPECT_EQ(schedule.update(true, 45.0)->to, 88);  // 2 x 45 = 90 -> 88, the largest multiple of 8 below
  EXPECT_FALSE(schedule.update(true, 20.0));          // never shrinks
  EXPECT_FALSE(schedule.update(true, std::nullopt));  // no estimate yet
  EXPECT_EQ(schedule.update(true, 1e6)->to, 176);
  EXPECT_EQ(schedule.update(true, 1e6)->to, 256);  // capped by --global-batch-size
  // The state round-trips.
  schedule.advance();
  BatchSchedule resumed(plan, 2.0, 10000, 5, 256, 8);
  resumed.restore(schedule.state(), 2);
  EXPECT_EQ(resumed.global_batch(), 256);
  EXPECT_EQ(resumed.position().offset, schedule.position().offset);
  EXPECT_EQ(resumed.position().samples_seen, 16 + 256);
  // A state that does not fit this run is refused.
  nlohmann::json bad = schedule.state();
  bad["global_batch_size"] = 100;
  EXPECT_THROW(resumed.restore(bad, 2), Error);
}

}  // namespace
}  // namespace dtrain
