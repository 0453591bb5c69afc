// The --on-nonfinite verdict and its counters.
#include "run/nonfinite.h"

#include <cmath>

namespace dtrain {

StepVerdict NonFiniteGuard::judge(bool finite) {
  if (finite) {
    consecutive_ = 0;
    return StepVerdict::Update;
  }
  if (policy_ == NonFinitePolicy::Stop) return StepVerdict::Diverge;
  ++skipped_total_;
  return ++consecutive_ >= kMaxConsecutiveSkips ? StepVerdict::Diverge : StepVerdict::Skip;
}

}  // namespace dtrain
