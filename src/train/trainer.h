// The training loop. One optimizer step, identically on every rank:
//   1. zero the gradient buckets; note the memory resident (train/memory.h);
//   2. for each of grad_accum_steps micro-batches (train/batch_plan.h, data
//      from data/sampler.h): forward, loss = SUM of per-sample losses divided
//      by the number of loss items in the GLOBAL batch, backward. Only the
//      last micro-step communicates: its backward starts each bucket's
//      all-reduce (SUM) as soon as the bucket's gradients are final
//      (train/reducer.h);
//   3. wait for all buckets: now every rank holds the gradient of the
//      global-batch mean loss, whatever the split. Where out-of-memory can
//      happen, the ranks agree whether any ran out in step 2; if so, all
//      redo steps 1-3 with half the micro-batch (train/out_of_memory.h);
//   4. judge the all-reduced gradient (train/nonfinite.h): a non-finite one
//      is skipped or stops the run as diverged, alike on every rank; with
//      --noise-scale, measure the gradient noise scale (train/noise_scale.h);
//   5. optional clipping by the global norm, then the optimizer step with the
//      scheduled LR (train/lr_schedule.h).
// Then, between steps: progress and metrics (train/metrics.h), evaluation
// on its schedule and the --target check (train/targets.h),
//   6. the ranks agree whether any was signalled or a timed checkpoint is due
//      (train/preemption.h);
//   7. a checkpoint when one is due (train/checkpoint.h), and a stop when
//      preempted.
// Evaluation shards each split across ranks without padding and all-reduces
// sums, so every sample counts exactly once.
#pragma once
#include "cli/config.h"
#include "comm/communicator.h"
#include "data/dataset.h"
#include "models/models.h"
#include "train/batch_plan.h"
#include "train/reducer.h"
#include "train/lr_schedule.h"
#include "train/metrics.h"
#include "train/memory.h"
#include "train/noise_scale.h"
#include "train/nonfinite.h"
#include "train/out_of_memory.h"
#include "train/preemption.h"
#include "train/targets.h"

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <memory>
#include <optional>
#include <vector>

namespace torch::optim {
class Optimizer;
}

namespace dtrain {

// Token datasets: loss in nats per target token and next-token accuracy,
// both over target tokens (items); classification: per sample.
struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  int64_t samples = 0;
  int64_t items = 0;  // samples, or target tokens
};

struct StepResult {
  double lr = 0;
  double loss_items = 0;  // the global batch's loss normalizer: samples, or target tokens
  double grad_norm = NAN;  // of the all-reduced gradient before clipping; when asked, clipping or non-finite
  StepVerdict verdict = StepVerdict::Update;
  bool noise_measured = false;  // --noise-scale: `noise` holds this step's estimates
  NoiseEstimate noise;
};

struct Checkpoint;

// How a run ended (summary.json "status"; the exit code).
enum class RunStatus { Completed, Preempted, Diverged, Measured };
const char* to_string(RunStatus status);

class Trainer {
 public:
  // `model` is trained in place, on the device its parameters are on (with a
  // communicator `comm` that handles tensors there); `control` carries small
  // CPU agreements (the MPI communicator; may be `comm` on CPUs). Throws
  // Error if the global batch does not fit in the training set.
  Trainer(const Config& config, const BatchPlan& plan, Communicator& comm, Communicator& control,
          const Dataset& data, std::shared_ptr<Classifier> model);
  // On CPUs: `comm` carries both.
  Trainer(const Config& config, const BatchPlan& plan, Communicator& comm, const Dataset& data,
          std::shared_ptr<Classifier> model)
      : Trainer(config, plan, comm, comm, data, std::move(model)) {}
  ~Trainer();

  // Rank 0's parameters and buffers overwrite everyone's (one broadcast).
  void broadcast_initial_state();

  // --micro-batch-size auto, in two parts so that the exchange between them
  // stays outside any start-up step (train/startup.h): first this rank's
  // largest micro-batch that divides its share of the global batch and whose
  // measured micro-step peak fits the budget (0: none), by probing the first
  // micro-batch at candidate sizes and changing nothing (no update,
  // gradients zeroed, RNG states restored; no communication). Throws
  // UsageError (CPU without --memory-budget).
  int64_t largest_fitting_micro_batch();
  // Then every rank's answer (all_gather): the smallest is used. Prints what
  // was tried; throws Error when nothing fits.
  void use_micro_batch(const std::vector<int64_t>& choices);
  const BatchPlan& plan() const { return plan_; }

  // Optimizer step `step` (0-based, counted over the whole run): steps 1-5.
  // The gradient norm is computed when asked (for the log) or for clipping.
  // Without `update`, steps 1-4 only: the gradient is measured, the weights
  // and optimizer stay as they are (--measure-noise-scale).
  StepResult train_step(int64_t step, bool compute_grad_norm = false, bool update = true);

  // Continue from `checkpoint` (read on every rank): weights, optimizer
  // state, position, loss accumulators, skip counters, RNG states. Throws
  // UsageError if its settings would change the trajectory.
  void restore(const Checkpoint& checkpoint, const std::string& source);
  // Writes the state after `steps_done` steps to the checkpoint dir: rank 0
  // writes, after the ranks confirmed identical parameters (collective).
  void save_checkpoint(int64_t steps_done, MetricsLog& log);
  int64_t start_step() const { return start_step_; }

  // Mean training loss over the steps since the last call (collective).
  double take_mean_train_loss();

  // Loss and accuracy over `indices` of `split`, all ranks together (collective).
  EvalResult evaluate(const Split& split, const std::vector<int64_t>& indices);

  // The whole run: steps, progress, evaluations, metrics, checkpoints.
  // Returns the summary; its "status" says how the run ended.
  nlohmann::json run(MetricsLog& log);

  // --measure-noise-scale: B_simple at the current weights over `steps`
  // global batches from the current position, with no update (collective).
  // Returns the summary (status "measured").
  nlohmann::json measure_noise_scale(int64_t steps);

  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  // The schedule's horizon: --epochs x steps per epoch.
  int64_t total_steps() const { return total_steps_; }
  // Where run() stops: total_steps(), or --max-steps if that is sooner.
  int64_t steps_to_run() const { return steps_to_run_; }
  const LrSchedule& schedule() const { return schedule_; }
  const GradientReducer& reducer() const { return *reducer_; }

 private:
  // The loss normalizer of a step: the global batch's samples, or for token
  // datasets the target tokens of all its rows. Every rank holds the epoch's
  // permutation and the whole training set's target counts, so each sums the
  // same window of the permutation itself: no communication.
  double global_batch_items(int64_t step_in_epoch) const;  // after permutation_ is set
  // Steps 1-3: false when a rank ran out of memory (all ranks agree; the
  // gradients are to be discarded).
  bool accumulate_gradients(int64_t step, int64_t step_in_epoch, double loss_items);
  // Forward of training samples `indices`: the SUM of their losses.
  at::Tensor summed_train_loss(const std::vector<int64_t>& indices);
  // --micro-batch-size auto: the peak (bytes, resident included) of one
  // micro-step of `micro` samples, with the optimizer state a first update
  // will add; nullopt when it ran out of memory.
  std::optional<int64_t> probe_micro_step(int64_t micro);
  MemoryBreakdown memory_breakdown() const;
  int64_t optimizer_state_bytes() const;  // the optimizer's state tensors, summed
  // After the first step: the breakdown, printed (rank 0) and logged.
  void report_memory(MetricsLog& log);
  // summary.json's "memory" (and on CUDA "peak_device_memory_bytes").
  void add_memory(nlohmann::json& summary) const;
  nlohmann::json evaluate_all(int64_t steps_done);
  void print_plan() const;
  void log_progress(int64_t steps_done, const StepResult& result, MetricsLog& log);
  void evaluate_and_log(int64_t steps_done, MetricsLog& log);
  // A non-finite step: logs the skip, or reports the divergence.
  void report_nonfinite(int64_t steps_done, const StepResult& result, MetricsLog& log);
  bool checkpoint_due(int64_t steps_done) const;
  // --noise-scale: this step's estimates into `result` and the averages.
  void measure_noise(StepResult& result);
  // Element-wise SUM across ranks (collective).
  std::vector<double> all_reduce_sums(const std::vector<double>& values);
  bool is_root() const { return comm_.rank() == 0; }

  const Config& config_;
  BatchPlan plan_;
  Communicator& comm_;
  Communicator& control_;
  const Dataset& data_;
  std::shared_ptr<Classifier> model_;
  c10::Device device_ = c10::kCPU;  // where the model lives; batches move there
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::unique_ptr<GradientReducer> reducer_;
  int64_t steps_per_epoch_ = 0;
  int64_t total_steps_ = 0;
  int64_t steps_to_run_ = 0;
  LrSchedule schedule_;

  int64_t permutation_epoch_ = -1;
  std::vector<int64_t> permutation_;
  std::vector<int64_t> test_shard_;         // this rank's test indices
  std::vector<int64_t> validation_shard_;   // this rank's validation indices
  std::vector<int64_t> train_eval_shard_;   // this rank's part of the fixed train subset
  at::Tensor local_loss_sum_;               // this rank's share of the global losses since the last take (on device_)
  at::Tensor step_loss_;                    // this rank's share of the current step's loss (on device_)
  int64_t loss_steps_ = 0;

  NonFiniteGuard nonfinite_;
  std::string checkpoint_dir_;
  int64_t start_step_ = 0;                  // steps done before this process (a resume)
  double train_seconds_ = 0;                // excludes evaluation; carried across resumes
  double interval_seconds_ = 0;             // since the last progress line
  int64_t interval_steps_ = 0;
  double interval_tokens_ = 0;              // token datasets: target tokens trained since the last progress line
  double run_tokens_ = 0, run_seconds_ = 0;  // this process's, for tokens/s
  double nonfinite_check_seconds_ = 0;      // the gradient norm of step 4
  nlohmann::json last_eval_;
  TargetTracker target_;
  bool stop_at_target_ = false;             // reached --target with --stop-at-target
  MemoryMeter memory_{c10::kCPU};
  std::unique_ptr<OutOfMemoryGuard> out_of_memory_;
  MicroBatchSearch auto_search_;            // --micro-batch-size auto: this rank's probes
  int64_t auto_budget_ = 0;                 // and its budget (0: not auto)
  std::unique_ptr<NoiseScaleAverage> noise_;  // --noise-scale (or a measurement)
  double noise_seconds_ = 0;                // its cost: the micro-batch norms are timed inside the steps
  int64_t fault_nan_step_ = -1;             // DTRAIN_FAULT_NAN_STEP (tests)
  int fault_nan_rank_ = -1;
  std::chrono::steady_clock::time_point run_start_;
};

}  // namespace dtrain
