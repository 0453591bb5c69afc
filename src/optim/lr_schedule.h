// The learning rate as a pure function of the optimizer step. The peak LR
// follows the global batch (linear or square-root scaling from a reference
// batch); gradual warmup rises linearly from the unscaled LR to the peak
// (Goyal et al. 2017); afterwards constant, cosine, linear or step decay.
#pragma once
#include "cli/config.h"

#include <cstdint>
#include <vector>

namespace dtrain {

// lr x f(global_batch / base_batch), f = x, sqrt(x) or 1.
double scaled_peak_lr(double lr, int64_t global_batch_size, int64_t base_batch_size,
                      LrScaling scaling);

struct LrSchedule {
  double base_lr = 0;         // the unscaled --lr: where warmup starts
  double peak_lr = 0;         // after warmup
  int64_t warmup_steps = 0;   // N
  int64_t total_steps = 0;    // T: cosine and linear reach min_lr at T
  LrScheduleKind kind = LrScheduleKind::Constant;
  std::vector<int64_t> milestone_steps;  // step schedule
  double gamma = 0.1;
  double min_lr = 0;

  // The LR used by optimizer step `step` (0-based).
  double at(int64_t step) const;
  // The same at a fractional step: under a changing batch, the samples
  // consumed over the final batch (data/batch_schedule.h).
  double at_position(double step) const;
};

// Builds the schedule from the options, converting epochs to steps with
// `steps_per_epoch`.
LrSchedule make_lr_schedule(const LrOptions& options, int64_t global_batch_size,
                            int64_t steps_per_epoch, int64_t total_steps);

}  // namespace dtrain
