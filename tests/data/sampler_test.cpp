#include "data/sampler.h"

#include "common/error.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>

namespace dtrain {
namespace {

// Every sample of optimizer step `step`, gathered over all ranks and micro-steps.
std::multiset<int64_t> step_samples(const std::vector<int64_t>& permutation, const BatchPlan& plan, int64_t step) {
  std::multiset<int64_t> samples;
  for (int rank = 0; rank < plan.world_size; ++rank) {
    for (int64_t micro = 0; micro < plan.grad_accum_steps; ++micro) {
      for (int64_t index : micro_batch_indices(permutation, plan, step, micro, rank)) samples.insert(index);
    }
  }
  return samples;
}

TEST(Sampler, EveryStepCoversTheSameSamplesWhateverTheSplit) {
  const int64_t n = 1000;
  const auto permutation = epoch_permutation(n, /*seed=*/3, /*epoch=*/1, /*shuffle=*/true);
  const BatchPlan splits[] = {
      derive_batch_plan(32, 1, 0, 1), derive_batch_plan(8, 4, 0, 1), derive_batch_plan(16, 1, 0, 2),
      derive_batch_plan(4, 4, 0, 2),  derive_batch_plan(2, 4, 0, 4), derive_batch_plan(1, 1, 0, 32),
  };
  const int64_t steps = steps_per_epoch(n, splits[0]);
  ASSERT_EQ(steps, 31);
  for (int64_t step = 0; step < steps; ++step) {
    const auto reference = step_samples(permutation, splits[0], step);
    // Step t covers exactly P[t*G, (t+1)*G).
    EXPECT_EQ(reference, std::multiset<int64_t>(permutation.begin() + step * 32, permutation.begin() + (step + 1) * 32));
    for (const auto& plan : splits) {
      EXPECT_EQ(step_samples(permutation, plan, step), reference) << plan.describe() << " step " << step;
    }
  }
}

TEST(Sampler, NoSampleTwiceInAnEpochAndTheTailIsDropped) {
  const int64_t n = 1000;
  const auto plan = derive_batch_plan(4, 4, 0, 2);  // G = 32: 31 steps, 8 dropped
  const auto permutation = epoch_permutation(n, 5, 0, true);
  std::set<int64_t> seen;
  int64_t count = 0;
  for (int64_t step = 0; step < steps_per_epoch(n, plan); ++step) {
    for (int64_t index : step_samples(permutation, plan, step)) {
      seen.insert(index);
      ++count;
    }
  }
  EXPECT_EQ(count, 992);
  EXPECT_EQ(static_cast<int64_t>(seen.size()), 992);
  EXPECT_EQ(dropped_per_epoch(n, plan), 8);
  EXPECT_THROW(micro_batch_indices(permutation, plan, 31, 0, 0), std::exception);
}

TEST(Sampler, PermutationIsAPermutationThatChangesWithEpochAndSeed) {
  const auto e0 = epoch_permutation(500, 1, 0, true);
  const auto e1 = epoch_permutation(500, 1, 1, true);
  const auto other_seed = epoch_permutation(500, 2, 0, true);
  auto sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 500; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_NE(e0, e1);
  EXPECT_NE(e0, other_seed);
  EXPECT_EQ(e0, epoch_permutation(500, 1, 0, true)) << "same seed and epoch must give the same order";
  const auto identity = epoch_permutation(500, 1, 3, false);
  for (int64_t i = 0; i < 500; ++i) ASSERT_EQ(identity[i], i);
}

TEST(Sampler, RankTakesEveryWorldSizeThSampleOfTheWindow) {
  std::vector<int64_t> permutation(64);
  for (int64_t i = 0; i < 64; ++i) permutation[i] = 100 + i;
  const auto plan = derive_batch_plan(2, 2, 0, 4);  // G = 16
  EXPECT_EQ(micro_batch_indices(permutation, plan, 1, 0, 1), (std::vector<int64_t>{117, 121}));
  EXPECT_EQ(micro_batch_indices(permutation, plan, 1, 1, 1), (std::vector<int64_t>{125, 129}));
}

TEST(Sampler, EvalShardsCountEachSampleOnce) {
  for (int world : {1, 2, 3, 4, 7}) {
    std::multiset<int64_t> all;
    for (int rank = 0; rank < world; ++rank) {
      for (int64_t i : eval_shard(1001, rank, world)) all.insert(i);
    }
    EXPECT_EQ(all.size(), 1001u);
    EXPECT_EQ(std::set<int64_t>(all.begin(), all.end()).size(), 1001u) << "world " << world;
  }
}

TEST(Sampler, FixedSubsetIsStableAndDistinct) {
  const auto a = fixed_subset(1000, 100, 9);
  EXPECT_EQ(a, fixed_subset(1000, 100, 9));
  EXPECT_EQ(std::set<int64_t>(a.begin(), a.end()).size(), 100u);
  EXPECT_EQ(fixed_subset(50, 100, 9).size(), 50u);
}

TEST(Sampler, RunLengthCountsStepsAndRefusesImpossibleRuns) {
  const BatchPlan plan = derive_batch_plan(0, 0, 256, 2);
  const RunLength full = run_length(60000, plan, 10, 0);
  EXPECT_EQ(full.steps_per_epoch, 234);
  EXPECT_EQ(full.total_steps, 2340);
  EXPECT_EQ(full.steps_to_run, 2340);
  EXPECT_DOUBLE_EQ(full.epochs(117), 0.5);
  const RunLength cut = run_length(60000, plan, 10, 100);  // --max-steps stops early; the horizon stays
  EXPECT_EQ(cut.total_steps, 2340);
  EXPECT_EQ(cut.steps_to_run, 100);
  EXPECT_EQ(run_length(60000, plan, 1, 5000).steps_to_run, 234);
  EXPECT_THROW(run_length(100, plan, 1, 0), UsageError);                        // the batch exceeds the data
  EXPECT_THROW(run_length(60000, plan, int64_t{1} << 62, 0), UsageError);        // epochs overflow
}

TEST(Sampler, EpochOrderIsTheEpochsPermutation) {
  EpochOrder order(100, 7, true);
  const std::vector<int64_t> first = order.of_epoch(0);
  EXPECT_EQ(first, epoch_permutation(100, 7, 0, true));
  EXPECT_EQ(order.of_epoch(3), epoch_permutation(100, 7, 3, true));
  EXPECT_EQ(order.of_epoch(0), first);
}

}  // namespace
}  // namespace dtrain
