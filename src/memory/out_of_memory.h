// Surviving out-of-memory: a micro-step that runs out of memory on any rank
// makes every rank redo the optimizer step with half the micro-batch and
// twice the accumulation. The global batch and its samples stay the same, so
// the trajectory is the same up to float reassociation.
//
// The protocol (docs/architecture.md), per optimizer step:
//   1. Each rank runs its micro-steps. Out-of-memory (c10::OutOfMemoryError:
//      CUDA's allocator, or the CPU budget of memory/memory.h) is caught;
//      that rank stops computing.
//   2. Every rank then completes the step's gradient all-reduces: a rank that
//      failed starts the buckets its backward had not started, in index
//      order, with whatever they hold (GradientReducer::abandon). Its peers
//      may be waiting inside their own last backward for exactly those
//      collectives, so no one is left waiting.
//   3. One small all-reduce (MAX of "I ran out") on the control
//      communicator: every rank learns the same verdict.
//   4. If any rank ran out, all discard the gradients (nothing was stepped),
//      halve the micro-batch (the largest divisor of the rank's share at most
//      half of it), and redo the step from its start. At micro-batch 1 there
//      is nothing left to halve: the run stops with an error on every rank.
// The agreement costs one tiny all-reduce per step; it runs only where an
// out-of-memory can happen and be survived: on CUDA, or on CPU with a
// --memory-budget (or the test hook below).
//
// Test hook: DTRAIN_FAULT_OOM=STEP:RANK gives rank RANK, from step STEP
// (1-based, at least 2) on, once and on CPU only, a CPU budget of what is resident when that step
// begins plus the activations the step before it measured, less one byte:
// a step of the same shapes peaks at exactly that, so the step runs out at
// its micro-batch, and any smaller one fits.
#pragma once
#include "cli/config.h"
#include "common/fault.h"
#include "comm/communicator.h"
#include "data/batch_plan.h"

#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace dtrain {

class MemoryMeter;

class OutOfMemoryGuard {
 public:
  OutOfMemoryGuard(const Config& config, Communicator& control, const c10::Device& device);

  // Whether out-of-memory is survived (and agreed on every step).
  bool active() const { return active_; }
  // Before step `step` (0-based) begins its micro-steps: the test hook.
  void before_step(int64_t step, const MemoryMeter& memory);
  // This rank's micro-steps ran out of memory with `message`.
  void note_failure(const std::string& message) { message_ = message; }
  // Steps 3: whether any rank ran out (a collective when active).
  bool any_rank_failed(bool failed_here);
  // Step 4: the split to redo step `step` with; logs the event. Throws Error
  // on every rank when the micro-batch is 1 already.
  BatchPlan smaller_split(const BatchPlan& plan, int64_t step);
  // Events for metrics.jsonl since the last call.
  std::vector<nlohmann::json> take_events();
  // Every re-split of this run (a resumed run's included), for summary.json
  // and checkpoints.
  const nlohmann::json& history() const { return history_; }
  void restore_history(const nlohmann::json& history) {
    history_ = history;
    logged_ = history_.size();  // the resumed run logged them already
  }

 private:
  Communicator& control_;
  c10::Device device_;
  bool active_ = false;
  FaultHook fault_{"DTRAIN_FAULT_OOM"};
  bool fault_applied_ = false;
  std::string message_;      // this rank's last failure
  nlohmann::json history_ = nlohmann::json::array();
  size_t logged_ = 0;        // history_ entries already taken as events
};

// The largest divisor of `local_batch` that is at most half of `micro`; 0
// when `micro` is 1.
int64_t halved_micro_batch(int64_t micro, int64_t local_batch);

}  // namespace dtrain
