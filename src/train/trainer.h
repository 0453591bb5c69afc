// The training loop. One optimizer step, identically on every rank:
//   1. zero the gradient buckets; note the memory resident (memory/memory.h);
//   2. for each of grad_accum_steps micro-batches (data/batch_plan.h, data
//      from data/sampler.h): forward, loss = SUM of per-sample losses divided
//      by the number of loss items in the GLOBAL batch, backward. Only the
//      last micro-step communicates: its backward starts each bucket's
//      all-reduce (SUM) as soon as the bucket's gradients are final
//      (ddp/reducer.h);
//   3. wait for all buckets: now every rank holds the gradient of the
//      global-batch mean loss, whatever the split. Where out-of-memory can
//      happen, the ranks agree whether any ran out in step 2; if so, all
//      redo steps 1-3 with half the micro-batch (memory/out_of_memory.h);
//   4. judge the all-reduced gradient (run/nonfinite.h): a non-finite one
//      is skipped or stops the run as diverged, alike on every rank; with
//      --noise-scale, measure the gradient noise scale (run/noise_scale.h);
//   5. optional clipping by the global norm, then the optimizer step with the
//      scheduled LR (optim/lr_schedule.h; run/updater.h: with a sharded
//      optimizer state, each rank updates its shard and the parameters are
//      all-gathered).
// Then, between steps, each service decides whether it is due: the progress
// line and metrics (run/report.h), evaluation and the --target check
// (run/evaluator.h), a change of the global batch under --batch-schedule
// (data/batch_schedule.h: the split and the LR follow it), and
//   6. the ranks agree whether any was signalled or a timed checkpoint is due
//      (run/preemption.h);
//   7. a checkpoint when one is due (run/checkpoint.h), and a stop when
//      preempted.
#pragma once
#include "cli/config.h"
#include "comm/communicator.h"
#include "common/fault.h"
#include "data/batch_schedule.h"
#include "data/dataset.h"
#include "data/sampler.h"
#include "memory/memory.h"
#include "models/models.h"
#include "optim/lr_schedule.h"
#include "run/nonfinite.h"
#include "run/noise_scale.h"
#include "run/report.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace dtrain {

class Evaluator;
class GradientReducer;
class MetricsLog;
class OutOfMemoryGuard;
class Updater;
struct Checkpoint;

struct StepResult {
  double lr = 0;
  double loss_items = 0;  // the global batch's loss normalizer: samples, or target tokens
  double grad_norm = NAN;  // of the all-reduced gradient before clipping; when asked, clipping or non-finite
  StepVerdict verdict = StepVerdict::Update;
  bool noise_measured = false;  // --noise-scale: `noise` holds this step's estimates
  NoiseEstimate noise;
};

// How a run ended, and what it records in summary.json (or noise_scale.json).
// --micro-batch-size auto: one candidate configuration of the levers.
struct LeverCandidate {
  bool checkpointing = false;
  MicroBatchSearch search;  // this rank's probes
  int64_t micro = 0;        // agreed: the smallest of the ranks' largest
  double seconds = 0;       // agreed: the slowest rank's micro-step at `micro` (0: not timed)
  std::optional<int64_t> peak;  // this rank's peak at `micro`, when timed
};

struct RunOutcome {
  RunStatus status = RunStatus::Completed;
  nlohmann::json summary;
};

class Trainer {
 public:
  // `model` is trained in place, on the device its parameters are on (with a
  // communicator `comm` that handles tensors there); `control` carries small
  // CPU agreements (the MPI communicator; may be `comm` on CPUs). Throws
  // Error if the global batch does not fit in the training set.
  Trainer(const Config& config, const BatchPlan& plan, Communicator& comm, Communicator& control,
          const Dataset& data, std::shared_ptr<Model> model);
  // On CPUs: `comm` carries both.
  Trainer(const Config& config, const BatchPlan& plan, Communicator& comm, const Dataset& data,
          std::shared_ptr<Model> model)
      : Trainer(config, plan, comm, comm, data, std::move(model)) {}
  ~Trainer();

  // Rank 0's parameters and buffers overwrite everyone's (one broadcast).
  void broadcast_initial_state();

  // --micro-batch-size auto, in three local parts with an exchange of every
  // rank's answers between them (main.cpp), kept outside any agreed step
  // (comm/agreement.h). The candidates are the levers left to auto: with and
  // without activation checkpointing under --activation-checkpointing auto
  // (the GPT), else just the configured one.
  // 1. Per candidate, this rank's largest micro-batch that divides its share
  //    of the global batch and whose measured micro-step peak fits the
  //    budget (0: none), by probing the first micro-batch at candidate sizes
  //    and changing nothing (no update, gradients zeroed, RNG states
  //    restored; no communication). Throws UsageError (CPU without
  //    --memory-budget).
  std::vector<int64_t> largest_fitting_micro_batches();
  // 2. Given every rank's answers ([candidate][rank]): each candidate's
  //    micro-step timed at the smallest of them (nanoseconds; 0 where nothing
  //    fits). Times nothing when there is one candidate.
  std::vector<int64_t> time_candidates(const std::vector<std::vector<int64_t>>& choices);
  // 3. Given every rank's timings too: the candidate with the most samples
  //    per second (the slowest rank's time) is used. Prints what was tried
  //    and why it chose; throws Error when nothing fits.
  void use_micro_batch(const std::vector<std::vector<int64_t>>& choices,
                       const std::vector<std::vector<int64_t>>& nanoseconds);
  // dtrain plan's compute probe: the median of `repeats` timed micro-steps
  // of `micro` samples (forward and backward, no communication, nothing
  // changed, as the auto probe); nullopt where it runs out of memory.
  // `warm_up` false: no untimed probe first (the caller times the call).
  std::optional<double> time_micro_step(int64_t micro, int repeats, bool warm_up = true);
  // Whether the model recomputes its blocks in backward (the GPT's activation checkpointing).
  bool activation_checkpointing() const;
  const BatchPlan& plan() const { return plan_; }

  // Optimizer step `step` (0-based, counted over the whole run): steps 1-5.
  // The gradient norm is computed when asked (for the log) or for clipping.
  // Without `update`, steps 1-4 only: the gradient is measured, the weights
  // and optimizer stay as they are (--measure-noise-scale).
  // Every call consumes the step's window of samples (data/batch_schedule.h);
  // under a changing batch, steps come in order.
  StepResult train_step(int64_t step, bool compute_grad_norm = false, bool update = true);
  // The batch schedule and the run's position in its data.
  const BatchSchedule& batch_schedule() const { return batch_; }

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

  // The whole run: steps, progress, evaluations, metrics, checkpoints.
  RunOutcome run(MetricsLog& log);

  // --measure-noise-scale: B_simple at the current weights over `steps`
  // global batches from the current position, with no update (collective).
  RunOutcome measure_noise_scale(int64_t steps);
  // --measure-sharpness and --sharpness-at-end (run/sharpness.h): the top
  // Hessian eigenvalue of the training loss at the current weights over the
  // first `samples` training samples, in blocks of the micro-batch
  // (collective); sharpness.json's content. In fp32, with the GPT's explicit
  // attention and no activation checkpointing (neither has a double
  // backward); the model is left as it was. Throws UsageError when the
  // training split is smaller.
  nlohmann::json measure_sharpness(int64_t samples);

  int64_t steps_per_epoch() const { return length_.steps_per_epoch; }
  // The schedule's horizon: --epochs x steps per epoch.
  int64_t total_steps() const { return length_.total_steps; }
  // Where run() stops: total_steps(), or --max-steps if that is sooner.
  int64_t steps_to_run() const { return length_.steps_to_run; }
  const LrSchedule& schedule() const { return schedule_; }
  const GradientReducer& reducer() const { return *reducer_; }
  Evaluator& evaluator() { return *evaluator_; }

 private:
  // The training loss since the last progress line, summed on the device (read
  // only when logged, so no host sync per step): this rank's share.
  struct LossSums {
    at::Tensor since_logged;  // over the steps since the last take
    at::Tensor step;          // the current step's
    int64_t steps = 0;
  };

  // The loss normalizer of a step: the global batch's samples, or for token
  // datasets the target tokens of all its rows. Every rank holds the epoch's
  // permutation and the whole training set's target counts, so each sums the
  // same window of the permutation itself: no communication.
  double global_batch_items(const std::vector<int64_t>& permutation, int64_t window_start) const;
  // Steps 1-5 on the current window; train_step moves the position on.
  StepResult step_on_window(int64_t step, bool compute_grad_norm, bool update);
  // Steps 1-3: false when a rank ran out of memory (all ranks agree; the
  // gradients are to be discarded).
  bool accumulate_gradients(const std::vector<int64_t>& permutation, int64_t step, int64_t window_start,
                            double loss_items);
  // The LR of the next step: the schedule at the step, or under a changing
  // batch at the samples consumed over the final batch, peaked for the
  // current batch (--batch-schedule-lr scale) or the final one (fixed).
  double lr_now(int64_t step) const;
  // Between steps: a change of the global batch when the schedule wants one
  // (the split, the run's length and the log follow).
  void follow_batch_schedule(bool evaluated, MetricsLog& log);
  // The split and the run's length for global batch `global`.
  void use_global_batch(int64_t global);
  // Forward of training samples `indices`: the SUM of their losses.
  at::Tensor summed_train_loss(const std::vector<int64_t>& indices);
  // --micro-batch-size auto: the peak (bytes, resident included) of one
  // micro-step of `micro` samples, with the optimizer state a first update
  // will add; nullopt when it ran out of memory.
  std::optional<int64_t> probe_micro_step(int64_t micro);
  MemoryBreakdown memory_breakdown() const;
  int64_t optimizer_state_bytes() const;  // the optimizer's state tensors, summed
  // A non-finite step's event and line.
  void report_nonfinite_step(int64_t steps_done, const StepResult& result, MetricsLog& log);
  void set_activation_checkpointing(bool on);
  // Whether a checkpoint by step count is due (the timed one is agreed).
  bool checkpoint_due(int64_t steps_done) const;
  // --noise-scale: this step's estimates into `result` and the averages.
  void measure_noise(StepResult& result);
  nlohmann::json summary(RunStatus status, int64_t steps_done) const;
  bool is_root() const { return comm_.rank() == 0; }

  const Config& config_;
  BatchPlan plan_;
  Communicator& comm_;
  Communicator& control_;
  const Dataset& data_;
  std::shared_ptr<Model> model_;
  c10::Device device_ = c10::kCPU;  // where the model lives; batches move there
  std::unique_ptr<GradientReducer> reducer_;
  std::unique_ptr<Updater> updater_;  // the optimizer, sharded with the reducer or not
  RunLength length_;
  LrSchedule schedule_;
  EpochOrder order_;
  BatchSchedule batch_;
  LossSums loss_;
  int64_t start_step_ = 0;  // steps done before this process (a resume)
  Throughput time_;
  NonFiniteGuard nonfinite_;
  std::unique_ptr<Evaluator> evaluator_;
  MemoryMeter memory_{c10::kCPU};
  std::unique_ptr<OutOfMemoryGuard> out_of_memory_;
  std::vector<LeverCandidate> auto_;  // --micro-batch-size auto's candidates; the chosen one first
  std::unique_ptr<NoiseScaleAverage> noise_;  // --noise-scale (or a measurement)
  FaultHook fault_nan_{"DTRAIN_FAULT_NAN_STEP"};  // tests: step N's loss NaN (on RANK only)
};

}  // namespace dtrain
