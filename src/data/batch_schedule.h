// The global batch over a run (--batch-schedule), and where the run is in its
// data, counted in samples.
//
// Every step takes the next G samples of the epoch's permutation, where G is
// the step's global batch: P_e[offset, offset + G). When fewer than the next
// step's G remain, the epoch's tail is dropped and the next epoch begins. So
// within an epoch no sample is skipped or repeated, whatever the batch does;
// under a constant batch this is exactly the step-indexed window of
// data/sampler.h (step t of the epoch at offset t x G).
//
// The batch changes between steps only:
// - rampup:START:INCREMENT:SAMPLES (Megatron's form): G(n) = START +
//   INCREMENT x floor(n x K / SAMPLES) for n samples consumed, K = (G - START)
//   / INCREMENT increments, capped at G (exact integer arithmetic);
// - adaptive: at an evaluation, the largest allowed batch <= factor x B_simple,
//   if that is larger than the current one; at most twice the current one
//   (early estimates are noisy), and capped at G.
// An allowed batch is a multiple of world x micro-batch (each step splits
// into whole micro-batches on every rank).
#pragma once
#include "cli/config.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace dtrain {

// Where the run stands after `steps_done` steps.
struct RunPosition {
  int64_t steps_done = 0;
  int64_t epoch = 0;         // the epoch the next step trains in
  int64_t offset = 0;        // samples of that epoch's permutation consumed
  int64_t samples_seen = 0;  // samples trained on, whole run
  double epochs = 0;         // fractional epochs done (reports)
  bool epoch_ended = false;  // the last step ended an epoch
};

struct BatchChange {
  int64_t step = 0;  // the first step trained with `to`
  int64_t from = 0;
  int64_t to = 0;
  std::string reason;
};

// Megatron's ramp at `samples_seen` samples: START + INCREMENT x floor(n x K /
// SAMPLES), capped at `final_batch`.
int64_t rampup_batch(const BatchSchedulePlan& plan, int64_t final_batch, int64_t samples_seen);

// Throws UsageError when the schedule cannot run with this split: a ramp whose
// G - START is not a multiple of INCREMENT, or whose batches are not
// multiples of world x micro (Megatron refuses both); a START not below G.
void check_batch_schedule(const BatchSchedulePlan& plan, int64_t final_batch, int64_t world_size,
                          int64_t micro_batch_size);

class BatchSchedule {
 public:
  // `final_batch` is --global-batch-size; `unit` = world x micro-batch.
  BatchSchedule(const BatchSchedulePlan& plan, double adaptive_factor, int64_t num_samples, int64_t epochs,
                int64_t final_batch, int64_t unit);

  bool constant() const { return plan_.kind == BatchScheduleKind::Constant; }
  bool adaptive() const { return plan_.kind == BatchScheduleKind::Adaptive; }
  // The global batch of the next step.
  int64_t global_batch() const { return global_; }
  int64_t final_batch() const { return final_; }
  const RunPosition& position() const { return position_; }
  // All --epochs consumed.
  bool finished() const { return position_.epoch >= epochs_; }
  // Steps left at the current batch until --epochs are consumed.
  int64_t steps_left() const;

  // After a step of global_batch() samples: the position moves on; the
  // epoch ends when the next step's batch no longer fits in its rest.
  void advance();
  // Between steps: the batch the schedule wants now (rampup: from the
  // samples consumed; adaptive: after an evaluation, from `b_simple`).
  // Returns the change when there is one, already applied.
  std::optional<BatchChange> update(bool evaluated, std::optional<double> b_simple);

  // For checkpoints: the batch and the position.
  nlohmann::json state() const;
  void restore(const nlohmann::json& state, int64_t steps_done);
  // A constant schedule's position after `steps_done` steps (older
  // checkpoints carry only the step).
  void restore_steps(int64_t steps_done);

 private:
  // Rolls into the next epoch when fewer than `next_batch` samples remain.
  bool roll_if_short(int64_t next_batch);
  void set_epochs_done();

  BatchSchedulePlan plan_;
  double factor_;
  int64_t num_samples_;
  int64_t epochs_;
  int64_t final_;
  int64_t unit_;
  int64_t global_;
  RunPosition position_;
};

}  // namespace dtrain
