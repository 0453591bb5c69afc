#include "data/batch_schedule.h"

#include "common/error.h"
#include "data/batch_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace dtrain {

int64_t rampup_batch(const BatchSchedulePlan& plan, int64_t final_batch, int64_t samples_seen) {
  const int64_t increments = (final_batch - plan.start) / plan.increment;
  const __int128 steps = static_cast<__int128>(samples_seen) * increments / plan.samples;
  if (steps >= increments) return final_batch;
  return std::min<int64_t>(final_batch, plan.start + static_cast<int64_t>(steps) * plan.increment);
}

void check_batch_schedule(const BatchSchedulePlan& plan, int64_t final_batch, int64_t world_size,
                          int64_t micro_batch_size) {
  if (plan.kind == BatchScheduleKind::Constant) return;
  const int64_t unit = world_size * micro_batch_size;
  const std::string split = " (world " + std::to_string(world_size) + " x micro-batch " +
                            std::to_string(micro_batch_size) + " = " + std::to_string(unit) + ")";
  if (plan.start >= final_batch) {
    throw UsageError("--batch-schedule START " + std::to_string(plan.start) + " must be below --global-batch-size " +
                     std::to_string(final_batch) + ", the batch it grows to");
  }
  if (plan.start > 0 && plan.start % unit != 0) {
    throw UsageError("--batch-schedule START " + std::to_string(plan.start) + " is not a multiple of" + split +
                     "; use " + nearest_multiples(plan.start, unit));
  }
  if (plan.kind == BatchScheduleKind::Adaptive) return;
  if ((final_batch - plan.start) % plan.increment != 0) {
    throw UsageError("--batch-schedule rampup: --global-batch-size " + std::to_string(final_batch) + " - START " +
                     std::to_string(plan.start) + " is not a multiple of INCREMENT " + std::to_string(plan.increment) +
                     "; choose an INCREMENT that divides " + std::to_string(final_batch - plan.start));
  }
  if (plan.increment % unit != 0) {
    throw UsageError("--batch-schedule rampup: INCREMENT " + std::to_string(plan.increment) +
                     " is not a multiple of" + split + ", so a batch on the ramp would not split; use " +
                     nearest_multiples(plan.increment, unit));
  }
}

BatchSchedule::BatchSchedule(const BatchSchedulePlan& plan, double adaptive_factor, int64_t num_samples,
                             int64_t epochs, int64_t final_batch, int64_t unit)
    : plan_(plan),
      factor_(adaptive_factor),
      num_samples_(num_samples),
      epochs_(epochs),
      final_(final_batch),
      unit_(unit),
      global_(final_batch) {
  if (plan_.kind == BatchScheduleKind::Rampup) global_ = plan_.start;
  if (plan_.kind == BatchScheduleKind::Adaptive) global_ = plan_.start > 0 ? plan_.start : unit_;
  set_epochs_done();
}

int64_t BatchSchedule::steps_left() const {
  if (finished()) return 0;
  return (num_samples_ - position_.offset) / global_ + (epochs_ - position_.epoch - 1) * (num_samples_ / global_);
}

bool BatchSchedule::roll_if_short(int64_t next_batch) {
  if (num_samples_ - position_.offset >= next_batch) return false;
  ++position_.epoch;
  position_.offset = 0;
  return true;
}

void BatchSchedule::set_epochs_done() {
  if (constant()) {
    position_.epochs = static_cast<double>(position_.steps_done) / static_cast<double>(num_samples_ / final_);
  } else {
    position_.epochs = static_cast<double>(position_.epoch) +
                       static_cast<double>(position_.offset) / static_cast<double>(num_samples_);
  }
}

void BatchSchedule::advance() {
  ++position_.steps_done;
  position_.samples_seen += global_;
  position_.offset += global_;
  // The next step's batch, where it is known now (a ramp moves with the
  // samples consumed); an adaptive change at this step's evaluation rolls
  // the epoch in update().
  const int64_t next = plan_.kind == BatchScheduleKind::Rampup ? rampup_batch(plan_, final_, position_.samples_seen)
                                                               : global_;
  position_.epoch_ended = roll_if_short(next);
  set_epochs_done();
}

std::optional<BatchChange> BatchSchedule::update(bool evaluated, std::optional<double> b_simple) {
  int64_t wanted = global_;
  std::string reason;
  if (plan_.kind == BatchScheduleKind::Rampup) {
    wanted = rampup_batch(plan_, final_, position_.samples_seen);
    reason = "rampup after " + std::to_string(position_.samples_seen) + " samples";
  } else if (plan_.kind == BatchScheduleKind::Adaptive && evaluated && b_simple && std::isfinite(*b_simple)) {
    const double goal = factor_ * *b_simple;
    const int64_t allowed = goal >= static_cast<double>(final_)
                                ? final_
                                : static_cast<int64_t>(std::floor(goal / static_cast<double>(unit_))) * unit_;
    // At most a doubling per evaluation: the first estimates of a fresh run
    // are its noisiest (|G|^2 is small and poorly known).
    wanted = std::clamp<int64_t>(std::min(allowed, 2 * global_), global_, final_);
    char text[128];
    std::snprintf(text, sizeof text, "adaptive: B_simple %.1f x %.3g = %.1f", *b_simple, factor_, goal);
    reason = text;
  }
  if (wanted == global_) return std::nullopt;
  BatchChange change{position_.steps_done, global_, wanted, reason};
  global_ = wanted;
  if (roll_if_short(global_)) set_epochs_done();
  return change;
}

nlohmann::json BatchSchedule::state() const {
  return {{"global_batch_size", global_},
          {"epoch", position_.epoch},
          {"offset", position_.offset},
          {"samples_seen", position_.samples_seen}};
}

void BatchSchedule::restore(const nlohmann::json& state, int64_t steps_done) {
  position_.steps_done = steps_done;
  global_ = state.at("global_batch_size").get<int64_t>();
  position_.epoch = state.at("epoch").get<int64_t>();
  position_.offset = state.at("offset").get<int64_t>();
  position_.samples_seen = state.at("samples_seen").get<int64_t>();
  position_.epoch_ended = false;
  if (global_ < 1 || global_ > final_ || global_ % unit_ != 0 || position_.offset < 0 ||
      position_.offset + global_ > num_samples_ || position_.epoch < 0 || position_.samples_seen < 0) {
    throw Error("the checkpoint's batch schedule state " + state.dump() + " does not fit this run (global batch " +
                std::to_string(final_) + ", " + std::to_string(num_samples_) + " training samples)");
  }
  set_epochs_done();
}

void BatchSchedule::restore_steps(int64_t steps_done) {
  const int64_t per_epoch = num_samples_ / final_;
  position_.steps_done = steps_done;
  position_.epoch = steps_done / per_epoch;
  position_.offset = steps_done % per_epoch * final_;
  position_.samples_seen = steps_done * final_;
  position_.epoch_ended = false;
  set_epochs_done();
}

}  // namespace dtrain
