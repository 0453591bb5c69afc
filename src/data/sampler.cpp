// The sampler's pure functions: permutations, micro-batch windows, shards
// and the run's length in steps.
#include "data/sampler.h"

#include "common/error.h"

#include <algorithm>
#include <numeric>

namespace dtrain {

namespace {

// splitmix64: tiny, well-mixed, and fully specified (unlike std::shuffle and
// std::uniform_int_distribution, whose output differs between libraries).
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound) by rejection, without modulo bias.
  uint64_t below(uint64_t bound) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t value;
    do value = next(); while (value >= limit);
    return value % bound;
  }
};

std::vector<int64_t> shuffled(int64_t n, uint64_t stream_seed) {
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  SplitMix64 rng{stream_seed};
  for (int64_t i = n - 1; i > 0; --i) {  // Fisher-Yates
    std::swap(order[i], order[rng.below(static_cast<uint64_t>(i) + 1)]);
  }
  return order;
}

uint64_t mix(uint64_t seed, uint64_t stream) {
  SplitMix64 rng{seed ^ (stream * 0xD1B54A32D192ED03ULL)};
  return rng.next();
}

}  // namespace

std::vector<int64_t> epoch_permutation(int64_t num_samples, uint64_t seed, int64_t epoch, bool shuffle) {
  if (!shuffle) {
    std::vector<int64_t> order(num_samples);
    std::iota(order.begin(), order.end(), 0);
    return order;
  }
  return shuffled(num_samples, mix(seed, static_cast<uint64_t>(epoch) + 1));
}

std::vector<int64_t> micro_batch_indices(const std::vector<int64_t>& permutation, const BatchPlan& plan,
                                         int64_t step_in_epoch, int64_t micro_step, int rank) {
  return micro_batch_indices_at(permutation, plan, step_in_epoch * plan.global_batch_size, micro_step, rank);
}

std::vector<int64_t> micro_batch_indices_at(const std::vector<int64_t>& permutation, const BatchPlan& plan,
                                            int64_t window_start, int64_t micro_step, int rank) {
  if (window_start + plan.global_batch_size > static_cast<int64_t>(permutation.size())) {
    throw Error("the window at sample " + std::to_string(window_start) + " is past the end of the epoch");
  }
  std::vector<int64_t> indices(plan.micro_batch_size);
  for (int64_t j = 0; j < plan.micro_batch_size; ++j) {
    const int64_t local_position = micro_step * plan.micro_batch_size + j;
    indices[j] = permutation[window_start + rank + plan.world_size * local_position];
  }
  return indices;
}

std::vector<int64_t> fixed_subset(int64_t num_samples, int64_t size, uint64_t seed) {
  auto order = shuffled(num_samples, mix(seed, 0));  // stream 0: never an epoch's
  order.resize(std::min(size, num_samples));
  return order;
}

std::vector<int64_t> validation_indices(int64_t num_samples, int64_t size, uint64_t seed) {
  auto order = shuffled(num_samples, mix(seed, ~uint64_t{0}));  // stream 2^64-1: never an epoch's
  order.resize(std::min(size, num_samples));
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<int64_t> eval_shard(int64_t num_samples, int rank, int world_size) {
  std::vector<int64_t> indices;
  for (int64_t i = rank; i < num_samples; i += world_size) indices.push_back(i);
  return indices;
}

RunLength run_length(int64_t num_samples, const BatchPlan& plan, int64_t epochs, int64_t max_steps) {
  RunLength length;
  length.steps_per_epoch = steps_per_epoch(num_samples, plan);
  if (length.steps_per_epoch == 0) {
    throw UsageError("global batch " + std::to_string(plan.global_batch_size) + " exceeds the training set (" +
                     std::to_string(num_samples) + " samples); use a smaller batch");
  }
  if (__builtin_mul_overflow(epochs, length.steps_per_epoch, &length.total_steps)) {
    throw UsageError("--epochs " + std::to_string(epochs) + " is too large");
  }
  // The schedule's horizon is --epochs alone; --max-steps only stops early,
  // so a run stopped there and resumed follows the same trajectory.
  length.steps_to_run = max_steps > 0 ? std::min(length.total_steps, max_steps) : length.total_steps;
  return length;
}

}  // namespace dtrain
