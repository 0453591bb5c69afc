// What a run tells its user and writes down: the plan lines, the progress
// line and "train" event, the non-finite line and event, the evaluation and
// target lines, the memory breakdown, and summary.json; with the time a run
// spends (Throughput) for the rates it reports. Lines are printed by rank 0
// only; events go to every rank's MetricsLog, which keeps rank 0's. This file
// formats; the numbers come from the trainer and its services.
#pragma once
#include "cli/config.h"
#include "data/batch_plan.h"
#include "data/sampler.h"
#include "memory/memory.h"
#include "optim/lr_schedule.h"
#include "run/evaluator.h"
#include "run/metrics_log.h"
#include "run/noise_scale.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <string>

namespace dtrain {

// How a run ended: summary.json's "status", and main's exit code.
enum class RunStatus { Completed, Preempted, Diverged, Measured };
const char* to_string(RunStatus status);

// The time a run spends. Steps are timed by the trainer; evaluation is not
// training time.
struct Throughput {
  using Clock = std::chrono::steady_clock;
  static constexpr int64_t kWarmupSteps = 20;  // steps before steady_seconds counts (allocator and cache warm-up)

  Clock::time_point start = Clock::now();  // of this process's run
  double train_seconds = 0;                // carried across resumes
  double steady_seconds = 0;               // past this process's first kWarmupSteps steps
  double run_seconds = 0;                  // this process's, for tokens/s
  double run_items = 0;                    // loss items (samples or target tokens) this process trained
  double interval_seconds = 0;             // since the last progress line
  int64_t interval_steps = 0;
  double interval_items = 0;
  double agreement_seconds = 0;            // step 6, the stop agreement
  double nonfinite_check_seconds = 0;      // step 4's check
  double noise_seconds = 0;                // --noise-scale's measurement

  // One step of `seconds` and `items`, the `steps_before`-th of this process.
  void add_step(double seconds, double items, int64_t steps_before);
  double elapsed() const { return std::chrono::duration<double>(Clock::now() - start).count(); }
};

double seconds_since(Throughput::Clock::time_point start);

// "global batch 256 = micro 128 x accum 1 x world 2; lr 0.1 -> 0.1 (linear,
// base batch 256)" and the steps line.
void print_plan(const BatchPlan& plan, const LrSchedule& schedule, const LrOptions& lr, const RunLength& length,
                int64_t epochs, int64_t dropped_per_epoch);

// Under a changing batch: where it starts and ends, and that positions count samples.
void print_batch_schedule(const BatchOptions& options, const BatchSchedule& schedule);

// The "train" event, and on rank 0 the progress line (stderr); starts a new
// interval of `time`. `noise` may be null (no --noise-scale).
void report_progress(bool root, const RunPosition& position, int64_t start_step, double mean_loss, double lr, double grad_norm,
                     const NoiseScaleAverage* noise, const RunLength& length, const BatchPlan& plan, bool tokens,
                     Throughput& time, MetricsLog& log);

// A non-finite step: the "skip" or "diverged" event, and on rank 0 its line.
void report_nonfinite(bool root, int64_t steps_done, bool diverged, double step_loss, double grad_norm, double lr,
                      int64_t consecutive, int64_t skipped_total, MetricsLog& log);

// "eval step N (epoch E): test acc ... | train-subset ... | gap ...".
void print_eval_line(const Evaluation& evaluation, int64_t steps_done, double epoch, bool tokens);
// "target METRIC reached at step N (S samples)".
void print_target_line(const StudyOptions& study, int64_t steps_done, int64_t samples_seen);

// The memory breakdown after the first step: the "memory" event, and on rank
// 0 its line. Nothing where nothing measures.
void report_memory(bool root, const MemoryBreakdown& memory, int64_t step, int64_t micro_batch, MetricsLog& log);

// summary.json's common part.
struct SummaryInputs {
  RunStatus status = RunStatus::Completed;
  int64_t steps_done = 0;
  int64_t samples_seen = 0;
  double epochs = 0;
  int64_t start_step = 0;  // a resumed run's first
  double peak_lr = 0;
  int64_t skipped_steps = 0;
  bool stopped_at_target = false;
  bool tokens = false;
};
nlohmann::json run_summary(const SummaryInputs& inputs, const RunLength& length, const BatchPlan& plan,
                           const Throughput& time, const nlohmann::json& last_eval);
// summary.json's "memory", "out_of_memory", "micro_batch_auto" and (CUDA)
// "peak_device_memory_bytes".
void add_memory(nlohmann::json& summary, const MemoryBreakdown& memory, const nlohmann::json& out_of_memory_history,
                const MicroBatchSearch& auto_search, int64_t chosen_micro, int64_t memory_budget,
                const c10::Device& device);
// summary.json's "noise_scale" and its cost per step.
void add_noise_scale(nlohmann::json& summary, const NoiseScaleAverage& noise, const Throughput& time,
                     int64_t steps_this_run);

}  // namespace dtrain
