// What a step with a non-finite loss or gradient does (--on-nonfinite).
// The check reads the all-reduced gradient, which is the same on every rank,
// so every rank decides alike without communicating; a NaN or Inf loss on any
// rank makes that gradient non-finite too.
#pragma once
#include "cli/config.h"

#include <cstdint>

namespace dtrain {

constexpr int64_t kMaxConsecutiveSkips = 10;

enum class StepVerdict {
  Update,   // finite: take the optimizer step
  Skip,     // --on-nonfinite skip: no rank updates on this step
  Diverge,  // stop the run as diverged
};

class NonFiniteGuard {
 public:
  explicit NonFiniteGuard(NonFinitePolicy policy) : policy_(policy) {}
  // `finite`: whether every element of the all-reduced gradient is finite.
  StepVerdict judge(bool finite);
  int64_t skipped_total() const { return skipped_total_; }
  int64_t consecutive() const { return consecutive_; }
  // Restored from a checkpoint.
  void restore(int64_t skipped_total, int64_t consecutive) {
    skipped_total_ = skipped_total;
    consecutive_ = consecutive;
  }

 private:
  NonFinitePolicy policy_;
  int64_t skipped_total_ = 0;
  int64_t consecutive_ = 0;
};

}  // namespace dtrain
