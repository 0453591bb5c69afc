// The LR schedule's arithmetic: scaling, warmup and the decay after it.
#include "optim/lr_schedule.h"

#include <algorithm>
#include <cmath>

namespace dtrain {

double scaled_peak_lr(double lr, int64_t global_batch_size, int64_t base_batch_size,
                      LrScaling scaling) {
  const double ratio = static_cast<double>(global_batch_size) / static_cast<double>(base_batch_size);
  switch (scaling) {
    case LrScaling::Linear: return lr * ratio;
    case LrScaling::Sqrt: return lr * std::sqrt(ratio);
    case LrScaling::None: return lr;
  }
  return lr;
}

double LrSchedule::at(int64_t step) const { return at_position(static_cast<double>(step)); }

double LrSchedule::at_position(double step) const {
  // Integers below 2^53 convert exactly, so at(int) gives what the integer
  // arithmetic gave.
  if (step < static_cast<double>(warmup_steps)) {
    return base_lr + (peak_lr - base_lr) * step / static_cast<double>(warmup_steps);
  }
  const int64_t decay_steps = total_steps - warmup_steps;
  const double progress =
      decay_steps > 0 ? std::clamp((step - static_cast<double>(warmup_steps)) / static_cast<double>(decay_steps), 0.0, 1.0)
                      : 1.0;
  switch (kind) {
    case LrScheduleKind::Constant:
      return peak_lr;
    case LrScheduleKind::Cosine:
      return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
    case LrScheduleKind::Linear:
      return min_lr + (peak_lr - min_lr) * (1.0 - progress);
    case LrScheduleKind::Step: {
      const auto passed = std::upper_bound(milestone_steps.begin(), milestone_steps.end(), step) -
                          milestone_steps.begin();
      return peak_lr * std::pow(gamma, static_cast<double>(passed));
    }
  }
  return peak_lr;
}

LrSchedule make_lr_schedule(const LrOptions& options, int64_t global_batch_size,
                            int64_t steps_per_epoch, int64_t total_steps) {
  LrSchedule schedule;
  schedule.base_lr = options.lr;
  schedule.peak_lr = scaled_peak_lr(options.lr, global_batch_size, options.base_batch_size, options.scaling);
  schedule.warmup_steps = options.warmup_steps > 0
                              ? options.warmup_steps
                              : std::llround(options.warmup_epochs * static_cast<double>(steps_per_epoch));
  schedule.total_steps = total_steps;
  schedule.kind = options.schedule;
  for (double epoch : options.milestones_epochs) {
    schedule.milestone_steps.push_back(std::llround(epoch * static_cast<double>(steps_per_epoch)));
  }
  schedule.gamma = options.gamma;
  schedule.min_lr = options.min_lr;
  return schedule;
}

}  // namespace dtrain
