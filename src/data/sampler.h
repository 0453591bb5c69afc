// Which samples each rank sees. In epoch e every rank computes the same
// permutation P_e of the training set (from the seed and e alone). Optimizer
// step t of the epoch covers exactly P_e[t*G, (t+1)*G) for global batch G;
// within that window rank r takes every W-th sample starting at r (as
// PyTorch's DistributedSampler does), and its micro-step i takes the i-th run
// of micro_batch_size of those. So the set of samples in a step does not depend
// on how G is split into micro-batches, accumulation steps and ranks. The tail
// of an epoch shorter than G is dropped.
//
// Pure functions with a self-contained generator (splitmix64), so the order is
// identical across platforms and LibTorch versions.
#pragma once
#include "data/batch_plan.h"

#include <cstdint>
#include <vector>

namespace dtrain {

// The identity when shuffle is false.
std::vector<int64_t> epoch_permutation(int64_t num_samples, uint64_t seed, int64_t epoch, bool shuffle);

// Indices (into the dataset) of rank `rank`'s micro-step `micro_step` of
// optimizer step `step_in_epoch`. `permutation` is the epoch's P_e.
std::vector<int64_t> micro_batch_indices(const std::vector<int64_t>& permutation, const BatchPlan& plan,
                                         int64_t step_in_epoch, int64_t micro_step, int rank);
// The same for the window P_e[window_start, window_start + G): under a
// changing batch (data/batch_schedule.h) windows start at any sample.
std::vector<int64_t> micro_batch_indices_at(const std::vector<int64_t>& permutation, const BatchPlan& plan,
                                            int64_t window_start, int64_t micro_step, int rank);

inline int64_t steps_per_epoch(int64_t num_samples, const BatchPlan& plan) {
  return num_samples / plan.global_batch_size;
}
inline int64_t dropped_per_epoch(int64_t num_samples, const BatchPlan& plan) {
  return num_samples % plan.global_batch_size;
}

// How long a run is, in optimizer steps.
struct RunLength {
  int64_t steps_per_epoch = 0;
  int64_t total_steps = 0;   // the schedule's horizon: --epochs x steps per epoch
  int64_t steps_to_run = 0;  // where the run stops: total_steps, or --max-steps if sooner
  double epochs(int64_t steps) const { return static_cast<double>(steps) / static_cast<double>(steps_per_epoch); }
};
// --max-steps 0: no limit. Throws UsageError when the global batch exceeds
// the training set or --epochs overflows the step count.
RunLength run_length(int64_t num_samples, const BatchPlan& plan, int64_t epochs, int64_t max_steps);

// The permutation of the epoch a step falls in, made once per epoch.
class EpochOrder {
 public:
  EpochOrder(int64_t num_samples, uint64_t seed, bool shuffle)
      : num_samples_(num_samples), seed_(seed), shuffle_(shuffle) {}
  const std::vector<int64_t>& of_epoch(int64_t epoch) {
    if (epoch != epoch_) {
      permutation_ = epoch_permutation(num_samples_, seed_, epoch, shuffle_);
      epoch_ = epoch;
    }
    return permutation_;
  }

 private:
  int64_t num_samples_;
  uint64_t seed_;
  bool shuffle_;
  int64_t epoch_ = -1;
  std::vector<int64_t> permutation_;
};

// A fixed subset of `size` training indices, the same for the whole run: the
// training split is evaluated on it, on equal footing with the test split.
std::vector<int64_t> fixed_subset(int64_t num_samples, int64_t size, uint64_t seed);

// The `size` training indices held out as the validation split (ascending):
// from the seed alone, so the same on every rank and for any batch split.
// Drawn from a stream no epoch permutation or fixed subset uses.
std::vector<int64_t> validation_indices(int64_t num_samples, int64_t size, uint64_t seed);

// The indices rank `rank` evaluates: every W-th of [0, n), each counted once.
std::vector<int64_t> eval_shard(int64_t num_samples, int rank, int world_size);

}  // namespace dtrain
